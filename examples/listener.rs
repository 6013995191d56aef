//! The listener role: accept dialers on 127.0.0.1:PORT and send each one a `GET /`.
//!
//! Run: `cargo run --example listener -- 8080`, then `cargo run --example dialer -- 8080`.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use ptth::listener::{ListenerConfig, raw};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let port = std::env::args().nth(1).unwrap_or_else(|| "8080".into());
    let tcp = tokio::net::TcpListener::bind(format!("127.0.0.1:{port}")).await?;
    println!("listening on {}", tcp.local_addr()?);
    loop {
        let (stream, peer) = tcp.accept().await?;
        tokio::spawn(async move {
            let cfg = ListenerConfig::default();
            let offer = match raw::read_offer(stream, &cfg).await {
                Ok(offer) => offer,
                Err(e) => return println!("{peer}: refused: {e}"),
            };
            println!(
                "{peer}: offer {} {} ({})",
                offer.head().method,
                offer.head().uri,
                offer.protocol()
            );
            let (mut client, conn) = match offer.accept_reversed::<Empty<Bytes>>(&cfg).await {
                Ok(pair) => pair,
                Err(e) => return println!("{peer}: switch failed: {e}"),
            };
            tokio::spawn(conn);
            println!("{peer}: switched; sending GET /");
            match client
                .send(http::Request::get("/").body(Empty::new()).unwrap())
                .await
            {
                Ok(res) => {
                    let status = res.status();
                    let body = res.into_body().collect().await.map(|b| b.to_bytes());
                    println!("{peer}: {status} {:?}", body.unwrap_or_default());
                }
                Err(e) => println!("{peer}: request failed: {e}"),
            }
        });
    }
}
