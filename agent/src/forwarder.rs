//! The forwarder: sends the durable queue to the aggregator over mutual-TLS QUIC, and deletes
//! records from the queue only when the aggregator acknowledges that it has stored them.
//!
//! One session = one QUIC connection with one bidirectional stream (see
//! [`weir_common::wire`]). After the hello, the aggregator says what it already has; the
//! forwarder resumes right after that, keeps up to `max_in_flight_batches` batches unacknowledged
//! (so a long round trip does not bound throughput), and reports its status periodically.
//!
//! Failures of any kind (unreachable, TLS refusal, protocol error, timeout) end the session;
//! the forwarder then tries the next address after an exponential backoff with jitter. Nothing
//! here ever deletes a record except an acknowledgement, and no failure disables forwarding.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use bytes::Bytes;
use quinn::crypto::rustls::QuicClientConfig;
use rand::Rng;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use weir_common::wire::io::{read_frame, write_frame};
use weir_common::wire::{
    self, AgentFrame, AgentFrameRef, AgentStatus, AggregatorFrame, BatchRef, Hello, WireRecordRef,
};

use crate::config::{AggregatorLink, split_host_port};
use crate::pipeline::InputDrops;
use crate::queue::Queue;
use crate::trap_policy::TrapPolicyState;

/// How long a shutting-down agent waits for in-flight batches to be acknowledged.
const DRAIN_DEADLINE: Duration = Duration::from_secs(5);
/// Limit on connecting plus the hello exchange.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether the forwarder currently has a working session (for `/healthz` and tests).
#[derive(Debug, Default)]
pub struct LinkState {
    pub connected: AtomicBool,
}

pub struct Forwarder {
    pub link: AggregatorLink,
    pub queue: Arc<Queue>,
    /// Last sequence committed to the queue; changes wake the sender.
    pub committed: watch::Receiver<u64>,
    pub input_drops: Arc<InputDrops>,
    pub state: Arc<LinkState>,
    /// Where trap drop policies from the aggregator go (protocol v2).
    pub trap_policy: Arc<TrapPolicyState>,
    /// Client endpoints by address family, created on first use and reused across sessions.
    endpoints: [Option<quinn::Endpoint>; 2],
}

impl Forwarder {
    pub fn new(
        link: AggregatorLink,
        queue: Arc<Queue>,
        committed: watch::Receiver<u64>,
        input_drops: Arc<InputDrops>,
        state: Arc<LinkState>,
        trap_policy: Arc<TrapPolicyState>,
    ) -> Forwarder {
        Forwarder {
            link,
            queue,
            committed,
            input_drops,
            state,
            trap_policy,
            endpoints: [None, None],
        }
    }

    /// Runs sessions until `shutdown`, reconnecting with backoff.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let min = self.link.reconnect_min.0;
        let max = self.link.reconnect_max.0.max(min);
        let mut delay = min;
        let mut attempt: usize = 0;
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            let target = self.link.addresses[attempt % self.link.addresses.len()].clone();
            attempt += 1;
            let mut established = false;
            let span = tracing::info_span!("session", aggregator = %target);
            let result = self
                .session(&target, &mut established, &shutdown)
                .instrument(span)
                .await;
            self.state.connected.store(false, Ordering::Relaxed);
            metrics::gauge!("weir_agent_connected").set(0.0);
            match result {
                // Ok only when shutdown was requested and the session closed cleanly.
                Ok(()) => break,
                Err(e) => {
                    metrics::counter!("weir_agent_reconnects_total").increment(1);
                    let hint = if established {
                        "connection lost; reconnecting"
                    } else {
                        "cannot reach the aggregator; events stay queued and will be sent when it is back. If this persists, check the address, the firewall (UDP), and that the certificates are from the fleet CA, valid and not revoked"
                    };
                    weir_common::warn_limited!(
                        &format!("session:{target}"),
                        aggregator = %target, error = format!("{e:#}"), "{hint}"
                    );
                }
            }
            if established {
                delay = min;
            }
            // Full jitter on the upper half: spreads a fleet's reconnects after an outage.
            let jittered = delay.mul_f64(rand::rng().random_range(0.5..=1.0));
            tokio::select! {
                _ = tokio::time::sleep(jittered) => {}
                _ = shutdown.cancelled() => break,
            }
            delay = (delay * 2).min(max);
        }
        for ep in self.endpoints.iter().flatten() {
            ep.close(0u32.into(), b"agent shutting down");
            let _ = tokio::time::timeout(Duration::from_secs(2), ep.wait_idle()).await;
        }
        tracing::debug!("forwarder stopped");
    }

    fn endpoint_for(&mut self, addr: SocketAddr) -> anyhow::Result<quinn::Endpoint> {
        let slot = usize::from(addr.is_ipv6());
        if let Some(ep) = &self.endpoints[slot] {
            return Ok(ep.clone());
        }
        let bind: SocketAddr = if addr.is_ipv6() {
            "[::]:0".parse().expect("literal")
        } else {
            "0.0.0.0:0".parse().expect("literal")
        };
        let ep = quinn::Endpoint::client(bind).context("cannot open a UDP socket for QUIC")?;
        self.endpoints[slot] = Some(ep.clone());
        Ok(ep)
    }

    /// Builds the QUIC client config, re-reading certificate files each time so a renewed
    /// certificate is picked up on the next reconnect.
    fn client_config(&self) -> anyhow::Result<quinn::ClientConfig> {
        let tls = weir_certs::tls::client_config(
            &self.link.ca,
            &self.link.cert,
            &self.link.key,
            &[wire::ALPN],
        )
        .context("loading the agent's TLS files")?;
        let quic = QuicClientConfig::try_from(tls).context("TLS config unusable for QUIC")?;
        let mut cfg = quinn::ClientConfig::new(Arc::new(quic));
        cfg.transport_config(Arc::new(transport(&self.link)?));
        Ok(cfg)
    }

    async fn session(
        &mut self,
        target: &str,
        established: &mut bool,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<()> {
        let (host, port) =
            split_host_port(target).ok_or_else(|| anyhow!("bad address {target:?}"))?;
        let addr = tokio::net::lookup_host((host.as_str(), port))
            .await
            .with_context(|| format!("resolving {host}"))?
            .next()
            .ok_or_else(|| anyhow!("{host} resolves to no address"))?;
        let server_name = self.link.server_name.clone().unwrap_or(host);
        let config = self.client_config()?;
        let endpoint = self.endpoint_for(addr)?;
        let connecting = endpoint
            .connect_with(config, addr, &server_name)
            .context("starting the QUIC connection")?;
        let conn = tokio::time::timeout(HANDSHAKE_TIMEOUT, connecting)
            .await
            .map_err(|_| anyhow!("no answer within {HANDSHAKE_TIMEOUT:?}"))?
            .context("QUIC/TLS handshake failed")?;

        let (mut send, mut recv) = conn.open_bi().await.context("opening the stream")?;
        let mut scratch = Vec::with_capacity(64 * 1024);
        let hello = AgentFrame::Hello(Hello {
            min_version: wire::MIN_PROTOCOL_VERSION,
            max_version: wire::PROTOCOL_VERSION,
            software: software(),
            next_seq: self.queue.next_seq(),
        });
        write_frame(&mut send, &hello, &mut scratch)
            .await
            .context("sending hello")?;
        let reply = tokio::time::timeout(HANDSHAKE_TIMEOUT, read_frame::<_, AggregatorFrame>(&mut recv, &mut scratch))
            .await
            .map_err(|_| anyhow!("no hello answer within {HANDSHAKE_TIMEOUT:?}"))?
            .context(
                "the aggregator closed the connection before answering the hello (it refuses this agent's certificate if it is revoked, expired or from another CA: see the aggregator's log)",
            )?;
        let ack = match reply {
            Some(AggregatorFrame::HelloAck(ack)) => ack,
            Some(AggregatorFrame::Refused(r)) => {
                bail!("the aggregator refused this agent: {}", r.reason)
            }
            Some(other) => bail!("protocol error: expected a hello answer, got {other:?}"),
            None => bail!("the aggregator closed the stream before answering the hello"),
        };
        *established = true;
        self.state.connected.store(true, Ordering::Relaxed);
        metrics::gauge!("weir_agent_connected").set(1.0);

        let queue = self.queue.clone();
        let committed_seq = ack.committed_seq;
        let (first, renumbered) = blocking(move || {
            let renumbered = queue.reconcile(committed_seq)?;
            Ok((queue.first_seq()?.unwrap_or(queue.next_seq()), renumbered))
        })
        .await?;
        if renumbered > 0 {
            tracing::warn!(
                committed_seq,
                renumbered,
                "the aggregator has stored sequences this queue never issued (queue recreated with the clock behind, or restored from an old copy); renumbered the queued records above them so none is mistaken for delivered"
            );
        }
        // Everything at or below committed_seq is stored; the queue holds nothing below `first`.
        let mut cursor = first.max(committed_seq + 1);
        tracing::info!(
            identity = %ack.identity, version = ack.version, committed_seq, resume_from = cursor,
            "connected to the aggregator"
        );

        // The reader publishes each acknowledged sequence; the applier deletes acknowledged
        // records from the queue, coalescing acks (at most one delete transaction per
        // ACK_APPLY_INTERVAL), so deletes do not crowd out the appends for redb's write lock.
        let (acked_tx, mut acked_rx) = watch::channel(committed_seq);
        let trap_policy = self.trap_policy.clone();
        let mut reader = tokio::spawn(async move {
            let mut buf = Vec::with_capacity(1024);
            loop {
                match read_frame::<_, AggregatorFrame>(&mut recv, &mut buf).await {
                    Ok(Some(AggregatorFrame::Ack(a))) => {
                        acked_tx.send_replace(a.committed_seq);
                    }
                    Ok(Some(AggregatorFrame::TrapPolicy(p))) => {
                        let state = trap_policy.clone();
                        // A refused or unwritable policy does not end the session: the
                        // aggregator still discards those traps itself.
                        match tokio::task::spawn_blocking(move || state.install(&p)).await {
                            Ok(Ok(_)) => {}
                            Ok(Err(e)) => weir_common::warn_limited!(
                                "trap_policy",
                                error = format!("{e:#}"),
                                "trap drop policy not fully applied; the aggregator still discards those traps itself"
                            ),
                            Err(e) => bail!("trap policy task failed: {e}"),
                        }
                    }
                    Ok(Some(AggregatorFrame::Refused(r))) => {
                        bail!("the aggregator ended the session: {}", r.reason)
                    }
                    Ok(Some(other)) => bail!("protocol error: unexpected {other:?}"),
                    Ok(None) => bail!("the aggregator closed the stream"),
                    Err(e) => return Err(anyhow::Error::new(e).context("reading acknowledgements")),
                }
            }
        });
        tokio::spawn(apply_acks(
            self.queue.clone(),
            acked_rx.clone(),
            committed_seq,
        ));

        let mut inflight: VecDeque<(u64, Instant)> = VecDeque::new();
        let mut status_tick = tokio::time::interval(self.link.status_interval.0);
        let max_in_flight = self.link.max_in_flight_batches;
        let result: anyhow::Result<()> = loop {
            let acked = *acked_rx.borrow_and_update();
            while let Some(&(last, sent)) = inflight.front() {
                if last > acked {
                    break;
                }
                metrics::histogram!("weir_agent_batch_rtt_seconds")
                    .record(sent.elapsed().as_secs_f64());
                inflight.pop_front();
            }
            let room = inflight.len() < max_in_flight;
            if room {
                self.committed.borrow_and_update();
                let q = self.queue.clone();
                let (max_records, max_bytes) = (
                    self.link.batch_max_records,
                    self.link.batch_max_bytes.0 as usize,
                );
                // An error ends the session through the common exit below (reader stopped,
                // connection closed), not by returning early.
                let batch = match blocking(move || {
                    q.read_with(cursor, max_records, max_bytes, encode_batch)
                })
                .await
                .and_then(|b| b.context("encoding a batch"))
                {
                    Ok(batch) => batch,
                    Err(e) => break Err(e),
                };
                if let Some(EncodedBatch {
                    last_seq,
                    records,
                    frame,
                }) = batch
                {
                    // Handed to QUIC as it is: its send buffer keeps the frame until the
                    // aggregator has it, instead of copying it in.
                    if let Err(e) = send.write_chunk(frame).await {
                        break Err(anyhow::Error::new(e).context("sending a batch"));
                    }
                    metrics::counter!("weir_agent_sent_total").increment(records);
                    cursor = last_seq + 1;
                    inflight.push_back((last_seq, Instant::now()));
                    continue;
                }
            }
            tokio::select! {
                r = self.committed.changed(), if room => {
                    if r.is_err() {
                        // The writer is gone: the agent is stopping. Drain below.
                        break self.drain(&conn, &mut acked_rx, &inflight).await;
                    }
                }
                _ = acked_rx.changed() => {}
                r = &mut reader => {
                    break Err(match r {
                        Ok(Err(e)) => e,
                        Ok(Ok(())) => anyhow!("reader ended"),
                        Err(e) => anyhow!("reader task failed: {e}"),
                    });
                }
                _ = status_tick.tick() => {
                    let frame = AgentFrame::Status(self.status().await);
                    if let Err(e) = write_frame(&mut send, &frame, &mut scratch).await {
                        break Err(anyhow::Error::new(e).context("sending status"));
                    }
                }
                _ = shutdown.cancelled() => {
                    break self.drain(&conn, &mut acked_rx, &inflight).await;
                }
            }
        };
        reader.abort();
        if result.is_err() {
            conn.close(1u32.into(), b"agent session error");
        }
        result
    }

    /// Waits (bounded) for in-flight batches to be acknowledged, then closes the connection.
    async fn drain(
        &self,
        conn: &quinn::Connection,
        acked_rx: &mut watch::Receiver<u64>,
        inflight: &VecDeque<(u64, Instant)>,
    ) -> anyhow::Result<()> {
        if let Some(&(last, _)) = inflight.back() {
            let waited =
                tokio::time::timeout(DRAIN_DEADLINE, acked_rx.wait_for(|a| *a >= last)).await;
            if waited.is_err() {
                tracing::info!(
                    "shutting down with batches unacknowledged; they stay queued and are resent on restart"
                );
            }
        }
        conn.close(0u32.into(), b"agent shutting down");
        Ok(())
    }

    async fn status(&self) -> AgentStatus {
        let q = self.queue.clone();
        let stats = blocking(move || q.stats()).await.unwrap_or_default();
        let mut drops = stats.drops;
        for (k, v) in self.input_drops.snapshot() {
            *drops.entry(k).or_insert(0) += v;
        }
        AgentStatus {
            software: software(),
            backlog_records: stats.records,
            backlog_bytes: stats.bytes,
            oldest_queued_us: stats.oldest_us,
            drops,
            committed_total: crate::pipeline::committed_total(),
        }
    }
}

/// A batch frame ready to send, and what it holds.
#[derive(Debug)]
struct EncodedBatch {
    last_seq: u64,
    records: u64,
    /// The whole frame, length prefix included.
    frame: Bytes,
}

/// Encodes the records lent by [`Queue::read_with`] as one batch frame (`None` for no records).
/// The records borrow the queue's buffers, so each payload is copied once, into the frame; the
/// bytes are those of an owned [`wire::AgentFrame::Batch`] (see `weir_common::wire`'s tests).
fn encode_batch(records: Vec<WireRecordRef<'_>>) -> Result<Option<EncodedBatch>, wire::WireError> {
    let (Some(first), Some(last)) = (records.first(), records.last()) else {
        return Ok(None);
    };
    let (first_seq, last_seq, n) = (first.seq, last.seq, records.len() as u64);
    // Sized once for the frame (payloads plus a few bytes of framing each): grown by doubling,
    // a 1 MB batch took a 2 MB buffer and two copies.
    let size: usize = records.iter().map(|r| r.payload.len() + 16).sum();
    let mut frame = Vec::with_capacity(size + 64);
    let batch = AgentFrameRef::Batch(BatchRef {
        first_seq,
        last_seq,
        records,
    });
    wire::encode_frame(&batch, &mut frame)?;
    Ok(Some(EncodedBatch {
        last_seq,
        records: n,
        frame: Bytes::from(frame),
    }))
}

/// Longest an acknowledged record waits before it is deleted from the queue.
const ACK_APPLY_INTERVAL: Duration = Duration::from_millis(20);

/// Deletes acknowledged records from the queue, coalescing acks; applies the last one and ends
/// when the session's reader is gone.
async fn apply_acks(queue: Arc<Queue>, mut acked: watch::Receiver<u64>, mut applied: u64) {
    loop {
        let ended = acked.changed().await.is_err();
        let target = *acked.borrow_and_update();
        if target > applied {
            let q = queue.clone();
            match blocking(move || q.ack(target)).await {
                Ok(removed) => {
                    metrics::counter!("weir_agent_acked_total").increment(removed);
                    applied = target;
                }
                Err(e) => {
                    // The records stay queued and are sent again; the aggregator skips them.
                    weir_common::warn_limited!(
                        "ack_apply",
                        error = format!("{e:#}"),
                        "cannot delete acknowledged records from the queue"
                    );
                }
            }
        }
        if ended {
            return;
        }
        tokio::time::sleep(ACK_APPLY_INTERVAL).await;
    }
}

fn transport(link: &AggregatorLink) -> anyhow::Result<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(link.keepalive.0));
    t.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(link.idle_timeout.0).context("idle_timeout too large")?,
    ));
    t.send_window(link.send_window.0);
    t.stream_receive_window((1u32 << 20).into());
    Ok(t)
}

pub fn software() -> String {
    format!("weir-agent {}", env!("CARGO_PKG_VERSION"))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, crate::queue::QueueError> + Send + 'static,
) -> anyhow::Result<T> {
    Ok(tokio::task::spawn_blocking(f)
        .await
        .context("queue task panicked")??)
}
