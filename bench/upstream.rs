//! The benchmark's origin server: the same upstream behind every path (direct, nginx, ptth,
//! rathole, bore), so the paths differ only in what sits in front of it.
//!
//! Routes match the *last* path segment, so `/NAME/hello` works whether or not a tunnel strips
//! the name: `GET …/hello` (13 bytes), `GET …/64k` (65,536 bytes), `POST …/echo` (the body,
//! streamed back). One tokio worker thread, so the upstream costs the same on every path.
//!
//! `cargo run --release --example bench-upstream -- 127.0.0.1:18080`

use std::convert::Infallible;

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;

const HELLO: &[u8] = b"Hello, world!";
const BIG_LEN: usize = 64 * 1024;
const DEFAULT_ADDR: &str = "127.0.0.1:18080";

type Body = BoxBody<Bytes, hyper::Error>;

fn full(bytes: Bytes) -> Body {
    Full::new(bytes).map_err(|never| match never {}).boxed()
}

async fn handle(req: Request<Incoming>, big: Bytes) -> Result<Response<Body>, Infallible> {
    let last = req.uri().path().rsplit('/').next().unwrap_or_default();
    let mut res = match (req.method(), last) {
        (&Method::GET | &Method::HEAD, "hello") => Response::new(full(Bytes::from_static(HELLO))),
        (&Method::GET | &Method::HEAD, "64k") => Response::new(full(big)),
        (&Method::POST | &Method::PUT, "echo") => {
            let length = req.headers().get(CONTENT_LENGTH).cloned();
            let mut res = Response::new(req.into_body().boxed());
            if let Some(length) = length {
                res.headers_mut().insert(CONTENT_LENGTH, length);
            }
            res
        }
        _ => {
            let mut res = Response::new(full(Bytes::from_static(b"not found\n")));
            *res.status_mut() = StatusCode::NOT_FOUND;
            res
        }
    };
    res.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    Ok(res)
}

fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| DEFAULT_ADDR.to_string());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&addr).await?;
        eprintln!(
            "bench-upstream listening on http://{}",
            listener.local_addr()?
        );
        let big = Bytes::from(vec![b'x'; BIG_LEN]);
        loop {
            let (tcp, _) = listener.accept().await?;
            tcp.set_nodelay(true)?;
            let big = big.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| handle(req, big.clone()));
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    })
}
