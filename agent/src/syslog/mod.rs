//! The syslog input: UDP and TCP listeners that turn every datagram or frame into an event
//! (see [`parse`]) and hand it to the [`Sink`], which puts it in the durable queue.
//!
//! Backpressure: each task awaits the sink before it reads again. On UDP, datagrams then wait in
//! the kernel's receive buffer (asked to be 8 MiB; what overflows it the kernel counts); on TCP,
//! the connection stops being read and the sender's window closes, so nothing is lost.
//!
//! Batching: after one blocking receive, a task takes what is already waiting (up to
//! [`BATCH`] messages) and submits it as one hand-over, so a burst costs one channel send and
//! one queue transaction per batch rather than per message.
//!
//! Limits: messages longer than `max_message_bytes` are cut to it and tagged
//! `weir_truncated=true` (metric `weir_agent_truncated_total`); TCP connections are capped at
//! `tcp_max_connections` (more wait in the kernel's accept backlog) and closed after
//! `tcp_idle_timeout` without a complete message.

mod framing;
mod parse;
mod vendor;

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt as _, StreamExt as _};
use jiff::Timestamp;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;
use weir_common::Record;

pub use framing::{Frame, SyslogFramer};
pub use parse::{Parser, parse};

use crate::config::SyslogConfig;
use crate::pipeline::Sink;
use crate::queue::Encoded;

/// Receive buffer asked for on UDP sockets: room for a burst of ~8000 full-size lines while the
/// queue commits.
const UDP_RECV_BUFFER: usize = 8 << 20;
/// Largest UDP payload (65,507 bytes over IPv4), rounded up.
const DATAGRAM_MAX: usize = 64 << 10;
/// Most messages in one submission to the sink.
const BATCH: usize = 64;

/// Bound syslog sockets, ready to [`spawn`](Listeners::spawn).
#[derive(Debug)]
pub struct Listeners {
    udp: Vec<UdpSocket>,
    tcp: Vec<TcpListener>,
    /// Built from the config here, so a bad time zone fails startup, not the first message.
    parser: Arc<Parser>,
}

impl Listeners {
    /// Binds every UDP and TCP address in the config; the error names the address and says what
    /// to do (port in use, privileged port needing CAP_NET_BIND_SERVICE, address not local).
    pub async fn bind(cfg: &SyslogConfig) -> anyhow::Result<Listeners> {
        let mut udp = Vec::with_capacity(cfg.udp.len());
        for &addr in &cfg.udp {
            let sock = UdpSocket::bind(addr)
                .await
                .map_err(|e| bind_error("UDP", addr, e))?;
            grow_receive_buffer(&sock, addr);
            udp.push(sock);
        }
        let mut tcp = Vec::with_capacity(cfg.tcp.len());
        for &addr in &cfg.tcp {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|e| bind_error("TCP", addr, e))?;
            tcp.push(listener);
        }
        let parser = Arc::new(Parser::new(cfg)?);
        Ok(Listeners { udp, tcp, parser })
    }

    /// The bound UDP addresses (port 0 resolved).
    pub fn udp_addrs(&self) -> Vec<SocketAddr> {
        self.udp
            .iter()
            .filter_map(|s| s.local_addr().ok())
            .collect()
    }

    /// The bound TCP addresses (port 0 resolved).
    pub fn tcp_addrs(&self) -> Vec<SocketAddr> {
        self.tcp
            .iter()
            .filter_map(|s| s.local_addr().ok())
            .collect()
    }

    /// Spawns one task per socket on `tracker` (TCP connections get a task each, also on
    /// `tracker`); they all stop when `shutdown` is cancelled.
    pub fn spawn(
        self,
        cfg: &SyslogConfig,
        sink: Sink,
        tracker: &TaskTracker,
        shutdown: CancellationToken,
    ) {
        let max_message = usize::try_from(cfg.max_message_bytes.0)
            .unwrap_or(usize::MAX)
            .max(1);
        for sock in self.udp {
            let local = sock.local_addr().ok();
            tracing::info!(addr = ?local, "receiving syslog on UDP");
            let span = tracing::info_span!("syslog_udp", local = ?local);
            tracker.spawn(
                run_udp(
                    sock,
                    max_message,
                    self.parser.clone(),
                    sink.clone(),
                    shutdown.clone(),
                )
                .instrument(span),
            );
        }
        let settings = TcpSettings {
            max_message,
            idle_timeout: cfg.tcp_idle_timeout.0,
            max_connections: cfg.tcp_max_connections,
            // One limit for all TCP listeners: it protects this process's memory and files.
            limit: Arc::new(Semaphore::new(
                cfg.tcp_max_connections.clamp(1, Semaphore::MAX_PERMITS),
            )),
            parser: self.parser.clone(),
        };
        for listener in self.tcp {
            let local = listener.local_addr().ok();
            tracing::info!(addr = ?local, "receiving syslog on TCP");
            let span = tracing::info_span!("syslog_tcp", local = ?local);
            tracker.spawn(
                run_tcp(
                    listener,
                    settings.clone(),
                    sink.clone(),
                    tracker.clone(),
                    shutdown.clone(),
                )
                .instrument(span),
            );
        }
    }
}

fn bind_error(proto: &str, addr: SocketAddr, err: io::Error) -> anyhow::Error {
    let hint = match err.kind() {
        io::ErrorKind::AddrInUse => {
            "the port is in use (another syslog daemon such as rsyslog or syslog-ng?): stop it or \
             choose another port in [syslog]"
        }
        io::ErrorKind::PermissionDenied => {
            "ports below 1024 need CAP_NET_BIND_SERVICE (systemd: \
             AmbientCapabilities=CAP_NET_BIND_SERVICE), or choose a port of 1024 or above"
        }
        io::ErrorKind::AddrNotAvailable => {
            "that IP address is not on this host: use one of its addresses, or 0.0.0.0 / [::]"
        }
        _ => "check the [syslog] addresses in the config",
    };
    anyhow::Error::new(err).context(format!(
        "cannot listen for syslog on {proto} {addr}: {hint}"
    ))
}

/// Asks for [`UDP_RECV_BUFFER`] and warns when the kernel caps it (`net.core.rmem_max`).
fn grow_receive_buffer(sock: &UdpSocket, addr: SocketAddr) {
    let sock = socket2::SockRef::from(sock);
    if let Err(e) = sock.set_recv_buffer_size(UDP_RECV_BUFFER) {
        tracing::warn!(%addr, error = %e, "could not enlarge the UDP receive buffer; bursts may lose datagrams");
        return;
    }
    // Linux reports twice what was granted (its bookkeeping share); less than asked means capped.
    match sock.recv_buffer_size() {
        Ok(got) if got < UDP_RECV_BUFFER => tracing::warn!(
            %addr, requested = UDP_RECV_BUFFER, got,
            "the kernel capped the UDP receive buffer, so bursts may overflow it and lose datagrams; \
             raise it with sysctl net.core.rmem_max=16777216"
        ),
        Ok(_) => {}
        Err(e) => {
            tracing::debug!(%addr, error = %e, "could not read back the UDP receive buffer size")
        }
    }
}

/// Parses one message and encodes it for the queue; `input` labels the truncation metric.
fn encode(
    parser: &Parser,
    bytes: &[u8],
    truncated: bool,
    peer: IpAddr,
    input: &'static str,
) -> Encoded {
    let received_at = Timestamp::now();
    let mut ev = parser.parse(bytes, peer, received_at);
    if truncated {
        ev.tags.insert("weir_truncated".into(), "true".into());
        metrics::counter!("weir_agent_truncated_total", "input" => input).increment(1);
    }
    Encoded::new(&Record::Event(ev), received_at.as_microsecond())
}

/// Hands a batch to the sink, waiting for room. False when the agent is shutting down; the
/// batch is then counted as dropped (reason `shutdown`), never lost silently.
async fn submit(sink: &Sink, batch: Vec<Encoded>, shutdown: &CancellationToken) -> bool {
    let n = batch.len();
    let sent = tokio::select! {
        biased;
        r = sink.send_encoded(batch) => r.is_ok(),
        _ = shutdown.cancelled() => false,
    };
    if !sent {
        for _ in 0..n {
            sink.drops.count("shutdown");
        }
    }
    sent
}

async fn run_udp(
    sock: UdpSocket,
    max_message: usize,
    parser: Arc<Parser>,
    sink: Sink,
    shutdown: CancellationToken,
) {
    let mut buf = vec![0u8; DATAGRAM_MAX];
    loop {
        let first = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = sock.recv_from(&mut buf) => r,
        };
        let mut batch = Vec::new();
        match first {
            Ok((n, peer)) => {
                take_datagram(&parser, &buf[..n], peer, max_message, &sink, &mut batch)
            }
            Err(e) => {
                weir_common::warn_limited!("syslog_udp_recv", error = %e, "receiving a syslog datagram failed");
                // Do not spin on a persistent error.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        }
        // Whatever else is already waiting goes into the same submission.
        for _ in 1..BATCH {
            match sock.try_recv_from(&mut buf) {
                Ok((n, peer)) => {
                    take_datagram(&parser, &buf[..n], peer, max_message, &sink, &mut batch)
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    weir_common::warn_limited!("syslog_udp_recv", error = %e, "receiving a syslog datagram failed");
                    break;
                }
            }
        }
        if batch.is_empty() {
            continue;
        }
        metrics::counter!("weir_agent_received_total", "input" => "syslog_udp")
            .increment(batch.len() as u64);
        if !submit(&sink, batch, &shutdown).await {
            break;
        }
    }
    tracing::debug!("syslog UDP listener stopped");
}

fn take_datagram(
    parser: &Parser,
    data: &[u8],
    peer: SocketAddr,
    max_message: usize,
    sink: &Sink,
    batch: &mut Vec<Encoded>,
) {
    if data.iter().all(|b| b.is_ascii_whitespace() || *b == 0) {
        sink.drops.count("empty_message");
        return;
    }
    let truncated = data.len() > max_message;
    let data = &data[..data.len().min(max_message)];
    batch.push(encode(
        parser,
        data,
        truncated,
        peer.ip().to_canonical(),
        "syslog_udp",
    ));
}

/// What every TCP connection task needs.
#[derive(Debug, Clone)]
struct TcpSettings {
    max_message: usize,
    idle_timeout: Duration,
    /// `tcp_max_connections`, for log lines.
    max_connections: usize,
    /// Permits for open connections, shared by all TCP listeners.
    limit: Arc<Semaphore>,
    parser: Arc<Parser>,
}

async fn run_tcp(
    listener: TcpListener,
    settings: TcpSettings,
    sink: Sink,
    tracker: TaskTracker,
    shutdown: CancellationToken,
) {
    loop {
        // Take a permit before accepting: at the limit, new connections wait in the backlog.
        let permit = match settings.limit.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                weir_common::warn_limited!(
                    "syslog_tcp_limit",
                    limit = settings.max_connections,
                    "syslog TCP connection limit reached; new connections wait until one closes \
                     (raise [syslog] tcp_max_connections if this is expected)"
                );
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    p = settings.limit.clone().acquire_owned() => {
                        p.expect("the connection semaphore is never closed")
                    }
                }
            }
        };
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Usually out of file descriptors: back off rather than spin.
                    weir_common::warn_limited!("syslog_tcp_accept", error = %e, "accepting a syslog TCP connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let span = tracing::debug_span!("syslog_tcp_connection", %peer);
        tracker.spawn(
            run_connection(
                stream,
                peer,
                settings.clone(),
                sink.clone(),
                shutdown.clone(),
                permit,
            )
            .instrument(span),
        );
    }
    tracing::debug!("syslog TCP listener stopped");
}

/// Keeps `weir_agent_syslog_tcp_connections` right however a connection task ends.
struct ConnectionGauge;

impl ConnectionGauge {
    fn open() -> ConnectionGauge {
        metrics::gauge!("weir_agent_syslog_tcp_connections").increment(1.0);
        ConnectionGauge
    }
}

impl Drop for ConnectionGauge {
    fn drop(&mut self) {
        metrics::gauge!("weir_agent_syslog_tcp_connections").decrement(1.0);
    }
}

async fn run_connection(
    stream: TcpStream,
    peer: SocketAddr,
    settings: TcpSettings,
    sink: Sink,
    shutdown: CancellationToken,
    _permit: OwnedSemaphorePermit,
) {
    let _gauge = ConnectionGauge::open();
    tracing::debug!("syslog TCP connection opened");
    let ip = peer.ip().to_canonical();
    let mut frames = FramedRead::new(stream, SyslogFramer::new(settings.max_message));
    let read_failed = |e: &io::Error| {
        if e.kind() == io::ErrorKind::ConnectionReset {
            tracing::debug!("syslog TCP connection reset by the peer");
        } else {
            weir_common::warn_limited!("syslog_tcp_read", %peer, error = %e, "reading a syslog TCP connection failed");
        }
    };
    let reason = loop {
        // The idle timer restarts with each complete message.
        let next = tokio::select! {
            _ = shutdown.cancelled() => break "shutdown",
            r = tokio::time::timeout(settings.idle_timeout, frames.next()) => r,
        };
        let first = match next {
            Err(_) => break "idle timeout",
            Ok(None) => break "closed by peer",
            Ok(Some(Err(e))) => {
                read_failed(&e);
                break "read error";
            }
            Ok(Some(Ok(frame))) => frame,
        };
        let mut batch = vec![encode(
            &settings.parser,
            &first.bytes,
            first.truncated,
            ip,
            "syslog_tcp",
        )];
        // Frames already buffered (or readable without waiting) go into the same submission.
        let mut ended = None;
        while batch.len() < BATCH {
            match frames.next().now_or_never() {
                Some(Some(Ok(f))) => batch.push(encode(
                    &settings.parser,
                    &f.bytes,
                    f.truncated,
                    ip,
                    "syslog_tcp",
                )),
                Some(Some(Err(e))) => {
                    read_failed(&e);
                    ended = Some("read error");
                    break;
                }
                Some(None) => {
                    ended = Some("closed by peer");
                    break;
                }
                None => break,
            }
        }
        metrics::counter!("weir_agent_received_total", "input" => "syslog_tcp")
            .increment(batch.len() as u64);
        // Not reading while this waits is the backpressure: the sender's TCP window fills.
        if !submit(&sink, batch, &shutdown).await {
            break "shutdown";
        }
        if let Some(reason) = ended {
            break reason;
        }
    };
    tracing::debug!(reason, "syslog TCP connection closed");
}
