//! A request body still uploading while the response already streams back: the relay must
//! keep carrying the upload even while the public client does not read the download yet.

mod support;

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::Response;
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use support::{DEADLINE, handler, start_agent, start_relay};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// More than the socket buffers along the path can hold, so a stalled upload cannot finish.
const UPLOAD: usize = 32 * 1024 * 1024;
/// Likewise for the response that starts before the upload ends.
const DOWNLOAD: usize = 16 * 1024 * 1024;
const FRAME: usize = 64 * 1024;

/// A response body of `DOWNLOAD` bytes, always ready.
struct Repeat(usize);

impl http_body::Body for Repeat {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.0 == 0 {
            return Poll::Ready(None);
        }
        let n = self.0.min(FRAME);
        self.0 -= n;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![b'y'; n])))))
    }
    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.0 as u64)
    }
}

#[tokio::test]
async fn upload_is_not_stalled_by_an_unread_streaming_response() {
    tokio::time::timeout(DEADLINE, async {
        let relay = start_relay(ptth::relay::Config::default()).await;
        let (count_tx, mut count_rx) = mpsc::unbounded_channel();
        // The agent answers at once with a large body and drains the upload on the side.
        let agent = handler(move |req: http::Request<hyper::body::Incoming>| {
            let count_tx = count_tx.clone();
            async move {
                tokio::spawn(async move {
                    let mut body = req.into_body();
                    let mut n = 0usize;
                    while let Some(Ok(f)) = body.frame().await {
                        n += f.data_ref().map_or(0, |d| d.len());
                    }
                    let _ = count_tx.send(n);
                });
                Response::new(Repeat(DOWNLOAD).boxed())
            }
        });
        let _agent = start_agent(&relay, "up", 1, None, agent).await;

        // A client that writes its whole body before it reads anything (as many do).
        let tcp = TcpStream::connect(relay.addr).await.unwrap();
        let (mut rd, mut wr) = tcp.into_split();
        let head = format!(
            "POST /up/x HTTP/1.1\r\nHost: {}\r\nContent-Length: {UPLOAD}\r\n\r\n",
            relay.addr
        );
        wr.write_all(head.as_bytes()).await.unwrap();
        let chunk = vec![b'x'; FRAME];
        for _ in 0..UPLOAD / FRAME {
            wr.write_all(&chunk).await.unwrap();
        }
        assert_eq!(
            count_rx.recv().await,
            Some(UPLOAD),
            "the agent got the whole upload"
        );

        // Now read the response: 200 and every byte of it.
        let mut got = Vec::new();
        let mut buf = vec![0u8; 256 * 1024];
        let end = loop {
            let n = rd.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed before the response head");
            got.extend_from_slice(&buf[..n]);
            if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                break end;
            }
        };
        let head = String::from_utf8_lossy(&got[..end]).to_lowercase();
        assert!(head.starts_with("http/1.1 200"), "{head}");
        assert!(
            head.contains(&format!("content-length: {DOWNLOAD}")),
            "{head}"
        );
        let mut body = got.len() - end - 4;
        while body < DOWNLOAD {
            let n = rd.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed after {body} of {DOWNLOAD} bytes");
            body += n;
        }
        assert_eq!(body, DOWNLOAD);
    })
    .await
    .expect("deadline: the upload stalled behind the unread response");
}
