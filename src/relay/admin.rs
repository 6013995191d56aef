//! The relay's admin pages: `/metrics` (Prometheus text format) and `/agents` (JSON), served
//! by the admin listener both roles share (`crate::admin`). The series are `super::metrics`'.

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::Shared;
use super::metrics::Pool;
use crate::admin::{self, Pages};

/// The Prometheus text exposition, with the pool as it is now.
pub(crate) fn render(shared: &Shared) -> String {
    shared.metrics.render(Pool {
        agents: shared.registry.total(),
        names: shared.registry.stats(),
        http_connections: shared.http_connections(),
    })
}

/// The relay's pages.
struct RelayPages(Arc<Shared>);

impl Pages for RelayPages {
    fn page(&self, path: &str) -> Option<(&'static str, String)> {
        match path {
            "/metrics" => admin::metrics_page(render(&self.0)),
            "/agents" => Some((
                "application/json",
                serde_json::to_string(&self.0.registry.stats()).unwrap_or_else(|_| "[]".into()),
            )),
            _ => None,
        }
    }

    fn index(&self) -> &'static str {
        "try /metrics or /agents\n"
    }
}

/// Serve the admin endpoints until `stop` is cancelled.
pub(crate) async fn serve(listener: TcpListener, shared: Arc<Shared>, stop: CancellationToken) {
    admin::serve(
        listener,
        Arc::new(RelayPages(shared)),
        stop.cancelled_owned(),
    )
    .await;
}
