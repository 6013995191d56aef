//! The admin listener: `/metrics` (Prometheus text format) and `/agents` (JSON).
//!
//! Off by default; bind it to a private address. The series are `super::metrics`'.

use std::convert::Infallible;
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
use tokio_util::sync::CancellationToken;

use super::Shared;
use super::metrics::Pool;

/// The Prometheus text exposition, with the pool as it is now.
pub(crate) fn render(shared: &Shared) -> String {
    shared.metrics.render(Pool {
        agents: shared.registry.total(),
        names: shared.registry.stats(),
        http_connections: shared.http_connections(),
    })
}

async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (status, ctype, body) = match req.uri().path() {
        "/metrics" => (
            StatusCode::OK,
            crate::metrics::CONTENT_TYPE,
            render(&shared),
        ),
        "/agents" => (
            StatusCode::OK,
            "application/json",
            serde_json::to_string(&shared.registry.stats()).unwrap_or_else(|_| "[]".into()),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "try /metrics or /agents\n".into(),
        ),
    };
    let mut res = Response::new(Full::from(body));
    *res.status_mut() = status;
    res.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(ctype));
    Ok(res)
}

/// Serve the admin endpoints until `stop` is cancelled.
pub(crate) async fn serve(listener: TcpListener, shared: Arc<Shared>, stop: CancellationToken) {
    loop {
        let stream = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(%e, "admin accept failed");
                    tokio::time::sleep(super::ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| handle(shared.clone(), req));
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
