//! The dialer's handshake: send the upgrade request, read answers until the `101`, and hand the
//! stream over as a [`Flipped`] with every byte read past the `101` head.

use std::future::Future;

use bytes::BytesMut;
use http::StatusCode;
use tokio::io::{AsyncRead, AsyncWrite};

use super::Flipped;
use crate::error::{Error, Refusal};
use crate::io::{Rewind, read_body, read_head, write_flush};
use crate::limits::{Limits, MAX_NO_CONTENT_ROUNDS};
use crate::proto::alpn::AlpnId;
use crate::proto::body::BodyDecoder;
use crate::proto::request::UpgradeRequest;
use crate::proto::{Protocol, response};

/// Send the upgrade request on `io` and wait for the switch.
///
/// The request is written in one piece and nothing else is written until the `101` has been
/// read (RFC 9931). `1xx` answers other than `101` are skipped (RFC 9110 §15.2). A `204` with
/// nothing after it is answered by sending the request again on the same stream, up to
/// [`MAX_NO_CONTENT_ROUNDS`] times. Each round (request to final answer) must finish within
/// [`Limits::handshake_timeout`].
pub async fn handshake<IO>(
    mut io: IO,
    request: &UpgradeRequest,
    limits: &Limits,
) -> Result<Flipped<IO>, Error>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let encoded = request.encode();
    let mut buf = BytesMut::new();
    for _round in 0..MAX_NO_CONTENT_ROUNDS {
        let answer =
            with_deadline(limits, round(&mut io, &encoded, &mut buf, request, limits)).await?;
        match answer {
            Answer::Switched(protocol, alpn) => {
                return Ok(Flipped {
                    io: Rewind::new(buf.freeze(), io),
                    protocol,
                    alpn,
                });
            }
            Answer::Refused(refusal)
                if refusal.status == StatusCode::NO_CONTENT && buf.is_empty() =>
            {
                tracing::debug!("listener answered 204: sending the upgrade request again");
            }
            Answer::Refused(refusal) => return Err(Error::Refused(refusal)),
        }
    }
    Err(Error::Refused(Box::new(Refusal {
        status: StatusCode::NO_CONTENT,
        headers: Default::default(),
        body: Default::default(),
        body_truncated: false,
    })))
}

enum Answer {
    Switched(Protocol, Option<AlpnId>),
    Refused(Box<Refusal>),
}

async fn with_deadline<T>(
    limits: &Limits,
    fut: impl Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    tokio::time::timeout(limits.handshake_timeout, fut)
        .await
        .map_err(|_| Error::Timeout {
            phase: "upgrade handshake",
            after: limits.handshake_timeout,
        })?
}

/// One request and its final answer. On a switch, `buf` is left holding the bytes after the
/// `101` head (with `ptth` and `h2`, the listener's preface may already be there); on a
/// refusal, the bytes after the refusal's body.
async fn round<IO>(
    io: &mut IO,
    encoded: &[u8],
    buf: &mut BytesMut,
    request: &UpgradeRequest,
    limits: &Limits,
) -> Result<Answer, Error>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    write_flush(io, encoded, "writing the upgrade request").await?;
    loop {
        let (head, len) = read_head(io, buf, "reading the answer to the upgrade request", |b| {
            response::parse(b, limits)
        })
        .await?;
        let _ = buf.split_to(len);
        if head.status == StatusCode::SWITCHING_PROTOCOLS {
            // A 1xx has no body (RFC 9112 §6.3): any Content-Length on it is ignored, and every
            // byte after the head is reversed traffic.
            let protocol = response::check_switch(&head, &request.protocols)?;
            let alpn = if protocol.negotiates_alpn() {
                Some(response::check_alpn(&head, &request.alpn)?)
            } else {
                None
            };
            return Ok(Answer::Switched(protocol, alpn));
        }
        if head.status.is_informational() {
            tracing::debug!(status = %head.status, "skipping interim response");
            continue;
        }
        let body = BodyDecoder::new(response::framing(&head)?, limits.max_refusal_body, true);
        let (body, body_truncated) = read_body(io, buf, body, "reading a refusal body").await?;
        return Ok(Answer::Refused(Box::new(Refusal {
            status: head.status,
            headers: head.headers,
            body,
            body_truncated,
        })));
    }
}
