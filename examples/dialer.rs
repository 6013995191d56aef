//! The dialer role: connect to a listener on 127.0.0.1:PORT and serve "hello" over the flip.
//!
//! Run: `cargo run --example listener -- 8080`, then `cargo run --example dialer -- 8080`.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use ptth::{Limits, UpgradeRequest};

async fn hello(req: http::Request<Incoming>) -> Result<http::Response<Full<Bytes>>, Infallible> {
    println!("serving {} {}", req.method(), req.uri());
    Ok(http::Response::new(Full::from(
        "hello from behind the NAT\n",
    )))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let port = std::env::args().nth(1).unwrap_or_else(|| "8080".into());
    let addr = format!("127.0.0.1:{port}");
    let stream = tokio::net::TcpStream::connect(&addr).await?;
    let request = UpgradeRequest::new(addr.parse()?);
    let limits = Limits::default();
    let flipped = ptth::dialer::handshake(stream, &request, &limits).await?;
    println!(
        "connected to {addr}; switched to {}; serving",
        flipped.protocol()
    );
    flipped
        .serve(hyper::service::service_fn(hello), &limits)
        .await?;
    println!("listener closed the connection");
    Ok(())
}
