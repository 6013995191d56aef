//! The bounds the library puts on the services it serves and the bodies it carries, named once
//! instead of spelt out on every function: a body sent or answered on a reversed connection
//! ([`SendBody`]), and a hyper or tower service answering reversed requests ([`HttpService`],
//! [`TowerService`]). Each has a blanket impl: any type that meets the bounds has the trait,
//! and nothing needs to implement it.

use http::{Request, Response};
use hyper::body::Incoming;

/// The error type bodies and services are boxed into (hyper's own).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A body the library can send across tasks: `Send + 'static`, its chunks `Send`, its error
/// convertible into a [`BoxError`].
pub trait SendBody: http_body::Body<Data: Send, Error: Into<BoxError>> + Send + 'static {}

impl<B> SendBody for B
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
}

/// A hyper service that answers reversed requests with a [`SendBody`].
pub trait HttpService:
    hyper::service::Service<
        Request<Incoming>,
        Response = Response<<Self as HttpService>::ResBody>,
        Error: Into<BoxError>,
        Future: Send + 'static,
    >
{
    /// The body of its responses.
    type ResBody: SendBody;
}

impl<S, B> HttpService for S
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    B: SendBody,
{
    type ResBody = B;
}

/// A `tower::Service` (an axum `Router`, for example) that answers reversed requests with a
/// [`SendBody`]; it is served through hyper's `TowerToHyperService`.
pub trait TowerService:
    tower_service::Service<
        Request<Incoming>,
        Response = Response<<Self as TowerService>::ResBody>,
        Error: Into<BoxError>,
        Future: Send + 'static,
    > + Clone
    + Send
    + 'static
{
    /// The body of its responses.
    type ResBody: SendBody;
}

impl<S, B> TowerService for S
where
    S: tower_service::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    B: SendBody,
{
    type ResBody = B;
}
