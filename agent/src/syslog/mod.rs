//! The syslog inputs: UDP ([`udp`]), TCP ([`stream`]) and TLS ([`tls`]) listeners that turn
//! every datagram or frame into an event (see [`parse`]) and hand it to the [`Sink`], which puts
//! it in the durable queue.
//!
//! Backpressure: each receive loop (a thread per UDP socket, a task per TCP or TLS connection)
//! waits for the sink before it reads again. On UDP, datagrams then wait in the kernel's receive
//! buffer (`udp_receive_buffer`; what overflows it the kernel counts and we export); on TCP and
//! TLS, the connection stops being read and the sender's window closes, so nothing is lost.
//!
//! Batching: a receive loop hands over everything one receive produced (a `recvmmsg` batch, or
//! every frame already buffered on a connection) as one submission, so a burst costs one channel
//! send and a share of one queue transaction per batch rather than per message.
//!
//! Limits: messages longer than `max_message_bytes` are cut to it and tagged
//! `weir_truncated=true` (metric `weir_agent_truncated_total`); TCP and TLS connections together
//! are capped at `tcp_max_connections` (more wait in the kernel's accept backlog) and closed
//! after `tcp_idle_timeout` without a complete message.

mod draft;
mod fast3164;
mod framing;
mod parse;
mod stream;
#[cfg(test)]
mod test_corpus;
#[cfg(test)]
mod tests;
pub mod tls;
pub(crate) mod udp;
mod vendor;

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use jiff::Timestamp;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;
use weir_common::Record;

pub use framing::{Frame, SyslogFramer};
pub use parse::{Parser, parse};

use crate::config::SyslogConfig;
use crate::pipeline::Sink;
use crate::queue::Encoded;
use stream::StreamSettings;

/// Bound syslog sockets, ready to [`spawn`](Listeners::spawn).
#[derive(Debug)]
pub struct Listeners {
    udp: Vec<std::net::UdpSocket>,
    tcp: Vec<TcpListener>,
    tls: Vec<TcpListener>,
    /// Built when TLS addresses are configured (certificate problems fail [`Listeners::bind`]);
    /// SIGHUP replaces it through [`Listeners::tls_reload`].
    tls_config: Option<tls::ConfigSlot>,
    /// Built from the config here, so a bad time zone fails startup, not the first message.
    parser: Arc<Parser>,
}

impl Listeners {
    /// Binds every UDP, TCP and TLS address in the config and loads the TLS files; the error
    /// names the address or file and says what to do (port in use, privileged port needing
    /// CAP_NET_BIND_SERVICE, address not local, unreadable certificate).
    pub async fn bind(cfg: &SyslogConfig) -> anyhow::Result<Listeners> {
        let rcvbuf = usize::try_from(cfg.udp_receive_buffer.0).unwrap_or(usize::MAX);
        let mut udp = Vec::with_capacity(cfg.udp.len() * cfg.udp_sockets_per_address);
        for &addr in &cfg.udp {
            udp.extend(
                udp::bind(addr, cfg.udp_sockets_per_address, rcvbuf)
                    .map_err(|e| bind_error("UDP", addr, e))?,
            );
        }
        let mut tcp = Vec::with_capacity(cfg.tcp.len());
        for &addr in &cfg.tcp {
            tcp.push(
                TcpListener::bind(addr)
                    .await
                    .map_err(|e| bind_error("TCP", addr, e))?,
            );
        }
        let mut tls = Vec::with_capacity(cfg.tls.len());
        let mut tls_config = None;
        if !cfg.tls.is_empty() {
            let (Some(cert), Some(key)) = (&cfg.tls_cert, &cfg.tls_key) else {
                anyhow::bail!("[syslog] tls listeners need tls_cert and tls_key");
            };
            let config = tls::server_config(cert, key, cfg.tls_client_ca.as_deref())?;
            tls_config = Some(tls::ConfigSlot::new(config));
            for &addr in &cfg.tls {
                tls.push(
                    TcpListener::bind(addr)
                        .await
                        .map_err(|e| bind_error("TLS", addr, e))?,
                );
            }
        }
        let parser = Arc::new(Parser::new(cfg)?);
        Ok(Listeners {
            udp,
            tcp,
            tls,
            tls_config,
            parser,
        })
    }

    /// The bound UDP addresses (port 0 resolved; one entry per address, however many sockets).
    pub fn udp_addrs(&self) -> Vec<SocketAddr> {
        let mut addrs: Vec<SocketAddr> = Vec::new();
        for a in self.udp.iter().filter_map(|s| s.local_addr().ok()) {
            if !addrs.contains(&a) {
                addrs.push(a);
            }
        }
        addrs
    }

    /// The bound TCP addresses (port 0 resolved).
    pub fn tcp_addrs(&self) -> Vec<SocketAddr> {
        self.tcp
            .iter()
            .filter_map(|s| s.local_addr().ok())
            .collect()
    }

    /// The reload hook for the TLS listeners' certificate, key and client CA (`None` without
    /// TLS listeners): it re-reads the files named in `cfg`, and new connections use them
    /// while open ones keep theirs. A file that does not load leaves the current ones in use.
    pub fn tls_reload(
        &self,
        cfg: &SyslogConfig,
    ) -> Option<impl Fn() -> anyhow::Result<String> + Send + Sync + 'static> {
        let slot = self.tls_config.clone()?;
        let (cert, key) = (cfg.tls_cert.clone()?, cfg.tls_key.clone()?);
        let client_ca = cfg.tls_client_ca.clone();
        Some(move || slot.reload(&cert, &key, client_ca.as_deref()))
    }

    /// The bound TLS addresses (port 0 resolved).
    pub fn tls_addrs(&self) -> Vec<SocketAddr> {
        self.tls
            .iter()
            .filter_map(|s| s.local_addr().ok())
            .collect()
    }

    /// Spawns one task per socket on `tracker` (a UDP socket's task runs its receive thread; TCP
    /// and TLS connections get a task each, also on `tracker`); they all stop when `shutdown`
    /// is cancelled.
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
                udp::run(
                    sock,
                    max_message,
                    self.parser.clone(),
                    sink.clone(),
                    shutdown.clone(),
                )
                .instrument(span),
            );
        }
        let settings = StreamSettings {
            max_message,
            idle_timeout: cfg.tcp_idle_timeout.0,
            max_connections: cfg.tcp_max_connections,
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
                stream::run_tcp(
                    listener,
                    settings.clone(),
                    sink.clone(),
                    tracker.clone(),
                    shutdown.clone(),
                )
                .instrument(span),
            );
        }
        if let Some(config) = self.tls_config {
            for listener in self.tls {
                let local = listener.local_addr().ok();
                tracing::info!(addr = ?local, client_certs = cfg.tls_client_ca.is_some(), "receiving syslog on TLS");
                let span = tracing::info_span!("syslog_tls", local = ?local);
                tracker.spawn(
                    tls::run(
                        listener,
                        config.clone(),
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

/// Parses one message and encodes it for the queue; `input` labels the truncation metric.
/// This is every listener's per-message step (public for the ingest-cost harness,
/// `agent/examples/ingest_cost.rs`). Plain lines never become an owned event (see [`draft`]);
/// the bytes and dedup tag are those of the owned event [`Parser::parse`] returns (the tests
/// hold them to `encode_owned`).
pub fn encode(
    parser: &Parser,
    sink: &Sink,
    bytes: &[u8],
    truncated: bool,
    peer: IpAddr,
    input: &'static str,
    received_at: Timestamp,
) -> Encoded {
    if truncated {
        metrics::counter!("weir_agent_truncated_total", "input" => input).increment(1);
    }
    let us = received_at.as_microsecond();
    match parser.draft(bytes, peer, received_at) {
        draft::Parsed::Draft(mut d) => {
            if truncated {
                d.insert_tag("weir_truncated", "true");
            }
            d.encode(&sink.dedup, us)
        }
        draft::Parsed::Event(mut ev) => {
            if truncated {
                ev.tags.insert("weir_truncated".into(), "true".into());
            }
            sink.encode(&Record::Event(ev), us)
        }
    }
}

/// [`encode`] through the owned [`weir_common::Event`] that [`Parser::parse`] returns: the
/// definition the fast path is tested against (`syslog/draft/tests.rs`).
#[cfg(test)]
pub(crate) fn encode_owned(
    parser: &Parser,
    sink: &Sink,
    bytes: &[u8],
    truncated: bool,
    peer: IpAddr,
    input: &'static str,
    received_at: Timestamp,
) -> Encoded {
    let mut ev = parser.parse(bytes, peer, received_at);
    if truncated {
        ev.tags.insert("weir_truncated".into(), "true".into());
        metrics::counter!("weir_agent_truncated_total", "input" => input).increment(1);
    }
    sink.encode(&Record::Event(ev), received_at.as_microsecond())
}

/// Reads syslog frames off any byte stream until it ends, exactly as a TCP connection is read
/// (framing, batching, backpressure). Public for the ingest-cost harness
/// (`agent/examples/ingest_cost.rs`), which feeds it from memory; not an API.
#[doc(hidden)]
pub async fn read_stream<S: tokio::io::AsyncRead + Unpin>(
    stream: S,
    peer: SocketAddr,
    parser: Arc<Parser>,
    sink: Sink,
    max_message: usize,
) {
    let settings = StreamSettings {
        max_message,
        idle_timeout: std::time::Duration::from_secs(24 * 3600),
        max_connections: 1,
        limit: Arc::new(Semaphore::new(1)),
        parser,
    };
    let permit = (settings.limit.clone().try_acquire_owned())
        .expect("a fresh one-permit semaphore has its permit");
    stream::run_connection(
        stream,
        peer,
        "syslog_tcp",
        settings,
        sink,
        CancellationToken::new(),
        permit,
    )
    .await;
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
        sink.drops.count_n("shutdown", n as u64);
    }
    sent
}
