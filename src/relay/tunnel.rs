//! A public upgrade (WebSocket and others) over an agent's connection, once the agent has
//! answered `101` in the engine's exchange: bytes are copied both ways until either side
//! closes (or the drain ends), and the agent's connection is never parked again (its
//! reservation goes when the tunnel ends). An agent that declines the upgrade answers an
//! ordinary response, which the exchange passes on; `forward` does not reuse that connection.
//! Over HTTP/2 the agent's side is the pipe to the bridge, which splices an extended CONNECT
//! stream (RFC 8441) onto it.

use std::sync::Arc;

use super::Shared;
use super::registry::AgentStream;
use crate::h1::{self, Conn};

/// Join the public connection and the agent's (or, for a forward, the connection to the relay
/// of the fleet that holds the name), in a task of the relay's (a drain lets open
/// tunnels run until the drain timeout instead of cutting them).
pub(super) fn tunnel<S: AgentStream, A: AgentStream>(
    shared: &Arc<Shared>,
    public: Conn<S>,
    agent: Conn<A>,
) {
    let hard = shared.hard.clone();
    let metrics = shared.metrics.clone();
    shared.tasks.spawn(async move {
        tokio::select! {
            (up, down) = h1::tunnel(public, agent) => metrics.tunnel_closed(up, down),
            () = hard.cancelled() => {}
        }
    });
}
