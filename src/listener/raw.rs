//! The listener on a raw byte stream, with no hyper server in front.
//!
//! [`read_offer`] reads and judges the upgrade request (head and whole body, with caps and a
//! deadline) and answers bad requests itself. The caller then inspects the [`Offer`] (path,
//! `Authorization`, body) and either [`Offer::accept`]s it (`101`, flip) or [`Offer::refuse`]s
//! it (a final response, then close).

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, StatusCode, request};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::h2::{ReversedH2Client, reverse_h2};
use super::{ListenerConfig, Offer, ReversedClient, ReversedConnection, reverse};
use crate::error::{BodyError, Error, OfferError};
use crate::io::{read_body, read_head, write_flush};
use crate::proto::body::{BodyDecoder, Framing};
use crate::proto::request::{self as req, OfferTerms};
use crate::proto::response;
use crate::service::SendBody;

/// An offer at the raw listener: the stream is here, and the listener writes the answer.
impl<IO: AsyncRead + AsyncWrite + Unpin> Offer<IO> {
    /// Answer `101 Switching Protocols` (in one write) and return the switched stream.
    pub async fn accept(mut self) -> Result<IO, Error> {
        let head = response::encode_switching(&self.terms.token, self.terms.alpn.as_ref());
        write_flush(&mut self.stream, &head, "writing the 101").await?;
        Ok(self.stream)
    }

    /// Answer `101` and start the reversed HTTP/1.1 client on the stream. For a `ptth` offer
    /// that chose `h2` this is [`Error::InnerProtocol`], before anything is written: use
    /// [`Offer::accept_h2`].
    pub async fn accept_reversed<B>(
        self,
        config: &ListenerConfig,
    ) -> Result<(ReversedClient<B>, ReversedConnection), Error>
    where
        IO: Send + 'static,
        B: SendBody,
    {
        self.expect_inner(false)?;
        let io = self.accept().await?;
        reverse(io, config).await
    }

    /// Answer `101` (`Upgrade: ptth`, `ALPN: h2`) and start the reversed HTTP/2 client on the
    /// stream. For any other offer this is [`Error::InnerProtocol`], before anything is written.
    pub async fn accept_h2<B>(
        self,
        config: &ListenerConfig,
    ) -> Result<(ReversedH2Client<B>, ReversedConnection), Error>
    where
        IO: Send + 'static,
        B: SendBody + Unpin,
    {
        self.expect_inner(true)?;
        let io = self.accept().await?;
        reverse_h2(io, config).await
    }

    /// Refuse with a final response and close the stream. `extra` carries fields such as
    /// `WWW-Authenticate` or `Retry-After`. A `426` names the protocol this offer chose.
    pub async fn refuse(
        mut self,
        status: StatusCode,
        extra: &HeaderMap,
        body: &[u8],
    ) -> Result<(), Error> {
        let out = response::encode_refusal(status, &[self.terms.protocol], extra, body);
        write_flush(&mut self.stream, &out, "writing a refusal").await?;
        let _ = self.stream.shutdown().await;
        Ok(())
    }
}

/// Read one upgrade request from `io` and judge it.
///
/// Every failure has already been answered on the stream, then closed, when this returns:
/// `400` for malformed heads and framing, `431`/`414` past the size caps, `413` for an oversize
/// body, `426` for a request that is not a PTTH offer (with `Upgrade` listing what is accepted),
/// `400` for bytes sent after the request before the `101` (RFC 9931). A deadline miss or a
/// closed stream gets no answer. The whole exchange must finish within
/// [`crate::Limits::handshake_timeout`].
pub async fn read_offer<IO>(io: IO, config: &ListenerConfig) -> Result<Offer<IO>, Error>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let limits = &config.limits;
    let mut io = io;
    let mut buf = BytesMut::new();
    let outcome = tokio::time::timeout(
        limits.handshake_timeout,
        read_offer_inner(&mut io, &mut buf, config),
    )
    .await
    .unwrap_or(Err(Error::Timeout {
        phase: "reading the upgrade request",
        after: limits.handshake_timeout,
    }));
    match outcome {
        Ok((head, body, terms)) => Ok(Offer {
            head,
            body,
            terms,
            stream: io,
        }),
        Err(err) => {
            if let Some(status) = answer_for(&err) {
                let body = response::refusal_body(&err);
                let accepted = &config.rules.protocols;
                let out = response::encode_refusal(status, accepted, &HeaderMap::new(), &body);
                // The peer may be gone already; its error is the one worth reporting.
                let _ = write_flush(&mut io, &out, "writing a refusal").await;
                let _ = io.shutdown().await;
            }
            Err(err)
        }
    }
}

fn answer_for(err: &Error) -> Option<StatusCode> {
    match err {
        Error::Head(e) => Some(e.status()),
        Error::Offer(e) => Some(e.status()),
        Error::Body(crate::error::BodyError::TooLarge { .. }) => {
            Some(StatusCode::PAYLOAD_TOO_LARGE)
        }
        Error::Body(_) => Some(StatusCode::BAD_REQUEST),
        _ => None,
    }
}

async fn read_offer_inner<IO>(
    io: &mut IO,
    buf: &mut BytesMut,
    config: &ListenerConfig,
) -> Result<(request::Parts, Bytes, OfferTerms), Error>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let limits = &config.limits;
    let (head, len) = read_head(io, buf, "reading the upgrade request", |b| {
        req::parse(b, limits)
    })
    .await?;
    let _ = buf.split_to(len);
    let terms = req::check_offer(&head, &config.rules)?;
    let framing = terms.framing;
    if let Framing::Length(n) = framing
        && n > limits.max_upgrade_body as u64
    {
        // Refuse a declared oversize body at once (and before any `100 Continue`): waiting for
        // it would only end in the handshake timeout, with no answer, if the body never comes.
        return Err(BodyError::TooLarge {
            limit: limits.max_upgrade_body,
        }
        .into());
    }
    if req::expects_continue(&head.headers) {
        write_flush(io, response::CONTINUE, "writing 100 Continue").await?;
    }
    let body = BodyDecoder::new(framing, limits.max_upgrade_body, false);
    let (body, _) = read_body(io, buf, body, "reading the upgrade request body").await?;
    if !buf.is_empty() {
        // The dialer wrote past its request before seeing our answer. After a 101 those bytes
        // would be unsolicited responses; RFC 9931 says not to read them as anything.
        return Err(OfferError::EarlyData.into());
    }
    Ok((head, body, terms))
}
