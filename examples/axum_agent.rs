//! An axum app served through a PTTH relay, with no local port.
//!
//! `cargo run --example axum_agent -- http://127.0.0.1:8080/demo`, then
//! `curl http://127.0.0.1:8080/demo/`.

use axum::{Router, routing::get};
use ptth::agent::Agent;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // INFO unless RUST_LOG says otherwise: the agent's "connected to the relay: service
    // reachable at URL" line is the one to see.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let relay = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "http://127.0.0.1:8080/demo".into());
    let app = Router::new().route("/{*path}", get(|| async { "hello from axum, via PTTH\n" }));
    let app = app.route("/", get(|| async { "hello from axum, via PTTH\n" }));
    let mut agent = Agent::builder(relay);
    if let Ok(token) = std::env::var("PTTH_TOKEN") {
        agent = agent.token(token);
    }
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    agent.build()?.serve_tower(app, shutdown).await?;
    Ok(())
}
