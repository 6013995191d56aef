//! Socket options for every TCP connection the relay and the agent carry traffic over.
//!
//! Both sides proxy small HTTP messages in both directions, so Nagle's algorithm (delaying a
//! small write until the previous one is acknowledged) would add a round trip per message; the
//! shared bench results show peers losing 400x throughput without `TCP_NODELAY`. Keepalive is
//! what finds a dead peer behind a NAT on a connection that is *supposed* to sit idle (a parked
//! reversed connection), and it keeps the NAT mapping alive meanwhile.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// Listen backlog asked for on the relay's listeners: 65,535, so the kernel's own cap
/// (`net.core.somaxconn`, 4096 by default) is the one in force. A relay restart brings every
/// parked connection back within about a second; with tokio's default of 1024 a storm of
/// 10,000 overflows the accept queue, and the dropped SYNs are retried only after 1, 3, 7 s.
pub const LISTEN_BACKLOG: u32 = 65_535;

/// Interval between TCP keepalive probes once the idle time has passed: 5 s.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);

/// Unanswered keepalive probes before the kernel drops the connection: 3. With the interval
/// above, a dead peer is found 15 s after the first probe.
pub const KEEPALIVE_RETRIES: u32 = 3;

/// Bind a listener on `addr` with the [`LISTEN_BACKLOG`] (and `SO_REUSEADDR`, as
/// `TcpListener::bind` sets it).
pub fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Turn on `TCP_NODELAY`, and keepalive with its first probe after `keepalive_idle` of silence.
pub(crate) fn tune(stream: &TcpStream, keepalive_idle: Duration) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(keepalive_idle)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_RETRIES);
    socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive)
}
