//! Syslog over streams: the TCP accept loop and the per-connection reader that TCP and TLS
//! (see [`super::tls`]) share.
//!
//! Limits: one semaphore caps the open TCP and TLS connections together (`tcp_max_connections`);
//! a permit is taken *before* accepting, so at the limit new connections wait in the kernel's
//! backlog. A connection without a complete message for `tcp_idle_timeout` is closed.
//!
//! Backpressure: a connection task awaits the sink before it reads again, so when the queue
//! pushes back the socket is not read, the receive window closes and the sender slows down.
//! Nothing is dropped on a stream input while the agent runs.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt as _, StreamExt as _};
use jiff::Timestamp;
use tokio::io::AsyncRead;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use super::{SyslogFramer, encode, submit};
use crate::pipeline::Sink;

/// Most frames handed over per submission.
const BATCH: usize = 256;

/// Most bytes of encoded records a connection gathers before handing them over: with the read
/// buffer, this is what one connection holds while the sink makes it wait (the sink's own byte
/// bound only covers what it has accepted).
const BATCH_BYTES: usize = 128 << 10;

/// What every stream connection task needs.
#[derive(Debug, Clone)]
pub(super) struct StreamSettings {
    pub max_message: usize,
    pub idle_timeout: Duration,
    /// `tcp_max_connections`, for log lines.
    pub max_connections: usize,
    /// Permits for open connections, shared by all TCP and TLS listeners: they protect this
    /// process's memory and file descriptors.
    pub limit: Arc<Semaphore>,
    /// The configured parser (sender time zones).
    pub parser: Arc<super::Parser>,
}

impl StreamSettings {
    /// Waits for a connection permit; `None` on shutdown. Logs (rate-limited) when at the limit.
    pub async fn permit(&self, shutdown: &CancellationToken) -> Option<OwnedSemaphorePermit> {
        if let Ok(p) = self.limit.clone().try_acquire_owned() {
            return Some(p);
        }
        weir_common::warn_limited!(
            "syslog_tcp_limit",
            limit = self.max_connections,
            "syslog TCP/TLS connection limit reached; new connections wait until one closes \
             (raise [syslog] tcp_max_connections if this many senders are expected)"
        );
        tokio::select! {
            _ = shutdown.cancelled() => None,
            p = self.limit.clone().acquire_owned() => p.ok(),
        }
    }
}

/// Accepts TCP connections until `shutdown`; each gets a task on `tracker`.
pub(super) async fn run_tcp(
    listener: TcpListener,
    settings: StreamSettings,
    sink: Sink,
    tracker: TaskTracker,
    shutdown: CancellationToken,
) {
    while let Some((stream, peer, permit)) =
        accept(&listener, &settings, &shutdown, "syslog_tcp").await
    {
        let span = tracing::debug_span!("syslog_tcp_connection", %peer);
        tracker.spawn(
            run_connection(
                stream,
                peer,
                "syslog_tcp",
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

/// Waits for a connection permit, then for a connection (TCP and TLS listeners alike); `None`
/// on shutdown. Accept errors (usually out of file descriptors) are logged and retried after a
/// pause rather than spun on.
pub(super) async fn accept(
    listener: &TcpListener,
    settings: &StreamSettings,
    shutdown: &CancellationToken,
    input: &'static str,
) -> Option<(TcpStream, SocketAddr, OwnedSemaphorePermit)> {
    let permit = settings.permit(shutdown).await?;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            r = listener.accept() => match r {
                Ok((stream, peer)) => return Some((stream, peer, permit)),
                Err(e) => {
                    weir_common::warn_limited!("syslog_stream_accept", input, error = %e, "accepting a syslog connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
}

/// Keeps `weir_agent_syslog_connections` right however a connection task ends.
struct ConnectionGauge(&'static str);

impl ConnectionGauge {
    fn open(input: &'static str) -> ConnectionGauge {
        metrics::gauge!("weir_agent_syslog_connections", "input" => input).increment(1.0);
        ConnectionGauge(input)
    }
}

impl Drop for ConnectionGauge {
    fn drop(&mut self) {
        metrics::gauge!("weir_agent_syslog_connections", "input" => self.0).decrement(1.0);
    }
}

/// Reads frames off one connection until it ends, handing them to the sink in batches.
/// `input` labels metrics (`syslog_tcp`, `syslog_tls`).
pub(super) async fn run_connection<S: AsyncRead + Unpin>(
    stream: S,
    peer: SocketAddr,
    input: &'static str,
    settings: StreamSettings,
    sink: Sink,
    shutdown: CancellationToken,
    _permit: OwnedSemaphorePermit,
) {
    let _gauge = ConnectionGauge::open(input);
    tracing::debug!("syslog {input} connection opened");
    let received = metrics::counter!("weir_agent_received_total", "input" => input);
    let ip = peer.ip().to_canonical();
    let mut frames =
        FramedRead::with_capacity(stream, SyslogFramer::new(settings.max_message), 64 << 10);
    let read_failed = |e: &io::Error| {
        if e.kind() == io::ErrorKind::ConnectionReset {
            tracing::debug!("syslog connection reset by the peer");
        } else {
            weir_common::warn_limited!("syslog_stream_read", %peer, input, error = %e, "reading a syslog connection failed; the sender will reconnect");
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
        let received_at = Timestamp::now();
        let mut batch = Vec::with_capacity(BATCH);
        let first = encode(
            &settings.parser,
            &sink,
            &first.bytes,
            first.truncated,
            ip,
            input,
            received_at,
        );
        let mut bytes = first.footprint();
        batch.push(first);
        // Frames already buffered (or readable without waiting) go into the same submission.
        let mut ended = None;
        while batch.len() < BATCH && bytes < BATCH_BYTES {
            match frames.next().now_or_never() {
                Some(Some(Ok(f))) => {
                    let e = encode(
                        &settings.parser,
                        &sink,
                        &f.bytes,
                        f.truncated,
                        ip,
                        input,
                        received_at,
                    );
                    bytes += e.footprint();
                    batch.push(e);
                }
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
        received.increment(batch.len() as u64);
        // Not reading while this waits is the backpressure: the sender's TCP window fills.
        if !submit(&sink, batch, &shutdown).await {
            break "shutdown";
        }
        if let Some(reason) = ended {
            break reason;
        }
    };
    tracing::debug!(reason, "syslog {input} connection closed");
}
