//! The two roles of the library against each other over an in-memory pipe.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use ptth::listener::{ListenerConfig, raw};
use ptth::{Limits, UpgradeRequest};

async fn echo(
    req: http::Request<Incoming>,
) -> Result<http::Response<Full<Bytes>>, std::convert::Infallible> {
    let host = req
        .headers()
        .get("host")
        .map(|h| h.to_str().unwrap().to_string());
    let body = req.into_body().collect().await.unwrap().to_bytes();
    let text = format!("host={host:?} body={}", String::from_utf8_lossy(&body));
    Ok(http::Response::new(Full::from(text)))
}

#[tokio::test]
async fn dialer_and_raw_listener_flip_and_talk() {
    tokio::time::timeout(Duration::from_secs(10), async {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let dialer = tokio::spawn(async move {
            let req = UpgradeRequest::new(http::HeaderValue::from_static("relay"));
            let flipped = ptth::dialer::handshake(a, &req, &Limits::default())
                .await
                .unwrap();
            flipped
                .serve(hyper::service::service_fn(echo), &Limits::default())
                .await
        });
        let cfg = ListenerConfig::default();
        let offer = raw::read_offer(b, &cfg).await.unwrap();
        assert_eq!(offer.protocol(), ptth::Protocol::Ptth09);
        let (mut client, conn) = offer.accept_reversed::<Empty<Bytes>>(&cfg).await.unwrap();
        tokio::spawn(conn);
        for _ in 0..3 {
            let res = client
                .send(http::Request::get("/status").body(Empty::new()).unwrap())
                .await
                .unwrap();
            assert_eq!(res.status(), 200);
            let body = res.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(&body[..], b"host=Some(\"\") body=");
        }
        drop(client);
        dialer.await.unwrap().unwrap();
    })
    .await
    .expect("deadline");
}
