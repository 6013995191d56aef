//! How long a stop may take, for both roles that serve traffic (decisions D21).
//!
//! The relay and the agent stop the same way on SIGINT/SIGTERM: stop taking new work, let what
//! is in flight finish for a bounded time, then cut what is left. They share the bound, so that
//! an operator who stops both sides of a deployment waits for one number, not two.

use std::time::Duration;

/// Default drain timeout of the relay and the agent (`--drain-timeout`): 30 s for requests in
/// flight (and, at the relay, open upgrade tunnels) after a stop is asked for; whatever is still
/// open then is closed. Long enough for an ordinary request or download to finish, short enough
/// that a stuck upstream or an endless stream cannot keep a restart waiting (systemd's default
/// stop timeout is 90 s).
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
