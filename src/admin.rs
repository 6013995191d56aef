//! The admin listener both roles serve with `--admin`: a few read-only pages over HTTP/1.1
//! (`/metrics` in the Prometheus text format; the relay adds `/agents`).
//!
//! Off by default and without authentication: bind it to a private address (the binaries
//! refuse a non-loopback one unless `--allow-public-admin` says so). Each role says what its
//! pages are ([`Pages`]); the server, its accept loop and its 404 are this module's. The accept
//! loop ([`accept_loop`]) also serves the agent's inspector.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::relay::ACCEPT_ERROR_PAUSE;
use crate::service::HttpService;

/// What one role's admin listener shows.
pub(crate) trait Pages: Send + Sync + 'static {
    /// The page at `path`: its content type and body, or `None` for a 404.
    fn page(&self, path: &str) -> Option<(&'static str, String)>;

    /// The text of the 404, naming the pages there are.
    fn index(&self) -> &'static str;
}

/// The Prometheus text exposition as a page.
pub(crate) fn metrics_page(text: String) -> Option<(&'static str, String)> {
    Some((crate::metrics::CONTENT_TYPE, text))
}

async fn handle<P: Pages>(
    pages: Arc<P>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (status, ctype, body) = match pages.page(req.uri().path()) {
        Some((ctype, body)) => (StatusCode::OK, ctype, body),
        None => (StatusCode::NOT_FOUND, "text/plain", pages.index().into()),
    };
    let mut res = Response::new(Full::from(body));
    *res.status_mut() = status;
    res.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(ctype));
    Ok(res)
}

/// Serve `pages` on `listener` until `stop` completes.
pub(crate) async fn serve<P: Pages>(
    listener: TcpListener,
    pages: Arc<P>,
    stop: impl Future<Output = ()>,
) {
    accept_loop(listener, "admin", stop, move || {
        let pages = pages.clone();
        service_fn(move |req| handle(pages.clone(), req))
    })
    .await;
}

/// Accept on `listener` until `stop` completes, and serve each connection with hyper's
/// HTTP/1.1 server and the service `service` makes for it: the one accept loop of the local
/// HTTP listeners (the admin pages, the agent's inspector). `TCP_NODELAY` is on (small answers
/// to small requests). A failed accept (out of descriptors, say) is logged under `what`, and
/// the loop pauses [`ACCEPT_ERROR_PAUSE`] and goes on: the next accept may work.
pub(crate) async fn accept_loop<S>(
    listener: TcpListener,
    what: &'static str,
    stop: impl Future<Output = ()>,
    service: impl Fn() -> S,
) where
    S: HttpService + Send + 'static,
{
    tokio::pin!(stop);
    loop {
        let stream = tokio::select! {
            () = &mut stop => return,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "{what}: accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let svc = service();
        tokio::spawn(async move {
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
