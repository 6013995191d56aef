//! Socket options for every TCP connection the relay and the agent carry traffic over.
//!
//! Both sides proxy small HTTP messages in both directions, so Nagle's algorithm (delaying a
//! small write until the previous one is acknowledged) would add a round trip per message; the
//! shared bench results show peers losing 400x throughput without `TCP_NODELAY`. Keepalive is
//! what finds a dead peer behind a NAT on a connection that is *supposed* to sit idle (a parked
//! reversed connection), and it keeps the NAT mapping alive meanwhile.

use std::io;
use std::time::Duration;

use tokio::net::TcpStream;

/// Interval between TCP keepalive probes once the idle time has passed: 5 s.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);

/// Unanswered keepalive probes before the kernel drops the connection: 3. With the interval
/// above, a dead peer is found 15 s after the first probe.
pub const KEEPALIVE_RETRIES: u32 = 3;

/// Turn on `TCP_NODELAY`, and keepalive with its first probe after `keepalive_idle` of silence.
pub(crate) fn tune(stream: &TcpStream, keepalive_idle: Duration) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(keepalive_idle)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_RETRIES);
    socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive)
}
