//! Where an agent stands, as a `tokio::sync::watch` for a program to show
//! ([`super::Agent::state`]): connecting, connected (with the public URL), reconnecting after
//! an outage, refused by the relay, stopped.
//!
//! The pool is the only writer, and writes only changes: a watcher wakes once per transition,
//! never per request.

use std::sync::Arc;

use http::StatusCode;
use tokio::sync::watch;

/// The agent's state.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum AgentState {
    /// Dialling the relay; no connection has parked yet.
    #[default]
    Connecting,
    /// At least one connection is parked: the service is reachable at `public_url`.
    Connected {
        /// Where the public reaches the service.
        public_url: String,
    },
    /// The service was reachable and is not now: the agent redials with backoff.
    Reconnecting {
        /// Where the public will reach the service again.
        public_url: String,
        /// Failures counted in this outage so far.
        failures: u32,
    },
    /// The relay refused the credentials (`401`/`403`); the agent stops.
    Refused {
        /// `401` or `403`.
        status: StatusCode,
        /// The refusal, with the start of its body.
        detail: String,
    },
    /// `serve` has returned.
    Stopped,
}

/// The writing side, shared by an [`super::Agent`] and its clones.
#[derive(Debug, Clone, Default)]
pub(crate) struct StateTx(Arc<watch::Sender<AgentState>>);

impl StateTx {
    /// A new watcher of the state.
    pub(crate) fn subscribe(&self) -> watch::Receiver<AgentState> {
        self.0.subscribe()
    }

    /// Set the state; watchers are woken only when it changes.
    pub(crate) fn set(&self, state: AgentState) {
        self.0.send_if_modified(|now| {
            let changed = *now != state;
            if changed {
                *now = state;
            }
            changed
        });
    }
}
