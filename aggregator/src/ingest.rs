//! Agent ingest: the mutual-TLS QUIC listener and the single store writer.
//!
//! Each connection is one agent, identified by its certificate (never by what it says). Its
//! handler reads batches and hands them to the writer through a bounded channel (backpressure
//! reaches the agent through QUIC flow control); the writer commits whatever batches are
//! waiting in one durable transaction and answers each connection with the agent's new
//! committed sequence, which the handler sends back as an ack.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use jiff::Timestamp;
use quinn::crypto::rustls::QuicServerConfig;
use rustls_pki_types::CertificateDer;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;
use weir_common::wire::io::{FrameIoError, read_frame, read_frame_body, write_frame};
use weir_common::wire::{self, Ack, AgentFrame, AgentFrameRef, AggregatorFrame, HelloAck, Refused};

use crate::alarm::Outcome;
use crate::alarm::persist::Engine;
use crate::config::QuicConfig;
use crate::registry::{AgentLive, Registry};
use crate::store::{AgentBatch, Prepared, Store};

/// Most batches committed in one transaction.
const MAX_GROUP_BATCHES: usize = 64;
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// A batch on its way to the writer, with where to send the outcome.
#[derive(Debug)]
pub struct IngestItem {
    pub site: Arc<str>,
    pub name: Arc<str>,
    /// The batch's records, decoded and encoded by the connection task (see [`crate::alarm::prepare_batch`]).
    pub records: Vec<Prepared>,
    /// What processing decided for the batch's events that need the writer (alarm updates,
    /// events not stored), applied in the commit's transaction unless they are redeliveries.
    pub outcomes: Vec<Outcome>,
    /// Receives the agent's committed sequence after the commit, or `Err` if it failed.
    pub reply: mpsc::UnboundedSender<Result<u64, ()>>,
    /// Set when a commit of this connection's batches failed: its later batches must not be
    /// committed either, or the agent's committed sequence would jump over the failed ones and
    /// they would never be resent. The connection is closed and the agent resumes cleanly.
    pub poisoned: Arc<std::sync::atomic::AtomicBool>,
    /// Events posted to the API: the writer assigns their sequences and fills `records`
    /// (see [`crate::api_ingest`]). `None` for agent batches.
    pub api: Option<Box<crate::api_ingest::Pending>>,
}

/// Builds the QUIC server config from the TLS files (and the CRL, when configured).
pub fn server_config(cfg: &QuicConfig) -> anyhow::Result<quinn::ServerConfig> {
    let tls = weir_certs::tls::server_config(
        &cfg.ca,
        &cfg.cert,
        &cfg.key,
        cfg.crl.as_deref(),
        &[wire::ALPN],
    )
    .context("loading the aggregator's TLS files")?;
    let quic = QuicServerConfig::try_from(tls).context("TLS config unusable for QUIC")?;
    let mut sc = quinn::ServerConfig::with_crypto(Arc::new(quic));
    let mut t = quinn::TransportConfig::default();
    t.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(cfg.idle_timeout.0).context("quic.idle_timeout too large")?,
    ));
    // Room for many batches in flight per agent over long round trips.
    t.stream_receive_window((32u32 << 20).into());
    t.receive_window((64u32 << 20).into());
    t.max_concurrent_bidi_streams(4u32.into());
    t.max_concurrent_uni_streams(0u32.into());
    sc.transport_config(Arc::new(t));
    Ok(sc)
}

/// Shared by every connection handler.
#[derive(Debug)]
pub struct Ingest {
    pub store: Arc<Store>,
    pub registry: Arc<Registry>,
    pub writer: mpsc::Sender<IngestItem>,
    /// Transformation rules, event definitions, alarms.
    pub alarms: Arc<Engine>,
    /// The site of events posted to the API: `<api_site>/api` is their pseudo-agent, whose
    /// sequences the store writer assigns, so no real agent may connect as it.
    pub api_site: Arc<str>,
}

/// Accepts agent connections until `shutdown`.
pub async fn run_listener(
    endpoint: quinn::Endpoint,
    ingest: Arc<Ingest>,
    max_connections: usize,
    tracker: TaskTracker,
    shutdown: CancellationToken,
) {
    // Acquired before accepting, so a flood of connections waits instead of growing memory.
    let limit = Arc::new(Semaphore::new(max_connections));
    loop {
        let permit = tokio::select! {
            p = limit.clone().acquire_owned() => p.expect("semaphore never closed"),
            _ = shutdown.cancelled() => break,
        };
        let incoming = tokio::select! {
            i = endpoint.accept() => match i { Some(i) => i, None => break },
            _ = shutdown.cancelled() => break,
        };
        let ingest = ingest.clone();
        let shutdown = shutdown.clone();
        let remote = incoming.remote_address();
        tracker.spawn(
            async move {
                handle(incoming, ingest, shutdown).await;
                drop(permit);
            }
            .instrument(tracing::info_span!("agent_conn", %remote)),
        );
    }
    endpoint.close(0u32.into(), b"aggregator shutting down");
}

async fn handle(incoming: quinn::Incoming, ingest: Arc<Ingest>, shutdown: CancellationToken) {
    let remote = incoming.remote_address();
    let conn = match incoming.await {
        Ok(c) => c,
        Err(e) => {
            metrics::counter!("weir_aggregator_connections_refused_total", "reason" => "tls")
                .increment(1);
            weir_common::warn_limited!(
                &format!("refused:{}", remote.ip()),
                %remote, error = %e,
                "refused a connection during the TLS handshake (certificate missing, expired, revoked or from another CA?)"
            );
            return;
        }
    };
    let Some((site, name, serial, not_after)) = peer_identity(&conn) else {
        metrics::counter!("weir_aggregator_connections_refused_total", "reason" => "not_agent_cert").increment(1);
        weir_common::warn_limited!(&format!("notagent:{}", remote.ip()), %remote, "refused a connection: its certificate is not an agent certificate (no weir://agent/ URI)");
        conn.close(2u32.into(), b"not an agent certificate");
        return;
    };
    if *site == *ingest.api_site && *name == *crate::api_ingest::API_AGENT {
        metrics::counter!("weir_aggregator_connections_refused_total", "reason" => "reserved_identity").increment(1);
        weir_common::warn_limited!(
            "reserved_identity",
            %remote, site = %site, name = %name,
            "refused an agent named like the API's pseudo-agent ([api] site + /api): its events would collide with posted ones. Issue it a certificate with another --name"
        );
        conn.close(6u32.into(), b"reserved agent identity");
        return;
    }
    let span = tracing::info_span!("agent", site = %site, name = %name);
    async {
        let live = AgentLive {
            site: site.to_string(),
            name: name.to_string(),
            remote: Some(remote.to_string()),
            cert_serial: Some(serial),
            cert_not_after: not_after,
            last_seen: Some(Timestamp::now()),
            ..Default::default()
        };
        if !ingest.registry.connected(live, &conn) {
            metrics::counter!("weir_aggregator_connections_refused_total", "reason" => "too_many_sessions").increment(1);
            weir_common::warn_limited!(&format!("sessions:{site}/{name}"), "refused a session: this agent already holds the maximum number of sessions (is the same certificate used by several agents?)");
            conn.close(5u32.into(), b"too many sessions for this agent");
            return;
        }
        let result = session(&conn, &ingest, &site, &name, &shutdown).await;
        ingest.registry.disconnected(&site, &name, &conn);
        match result {
            Ok(()) => tracing::info!("agent disconnected"),
            Err(e) => weir_common::warn_limited!(
                &format!("session:{site}/{name}"),
                error = format!("{e:#}"),
                "agent session ended"
            ),
        }
    }
    .instrument(span)
    .await
}

/// Site, name, serial and expiry read from an agent's certificate.
type PeerIdentity = (Arc<str>, Arc<str>, String, Option<Timestamp>);

/// Site, name, serial and expiry from the peer's certificate.
fn peer_identity(conn: &quinn::Connection) -> Option<PeerIdentity> {
    let certs = conn
        .peer_identity()?
        .downcast::<Vec<CertificateDer<'static>>>()
        .ok()?;
    let der = certs.first()?;
    let id = weir_certs::agent_identity(der).ok()?;
    let serial = weir_certs::cert_serial_hex(der).unwrap_or_default();
    let not_after = weir_certs::cert_not_after(der).ok();
    Some((id.site.into(), id.name.into(), serial, not_after))
}

async fn session(
    conn: &quinn::Connection,
    ingest: &Arc<Ingest>,
    site: &Arc<str>,
    name: &Arc<str>,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let (mut send, mut recv) = tokio::time::timeout(HELLO_TIMEOUT, conn.accept_bi())
        .await
        .context("no stream opened")?
        .context("waiting for the agent's stream")?;
    let mut buf = Vec::with_capacity(64 * 1024);
    let hello = match tokio::time::timeout(
        HELLO_TIMEOUT,
        read_frame::<_, AgentFrame>(&mut recv, &mut buf),
    )
    .await
    .context("no hello")??
    {
        Some(AgentFrame::Hello(h)) => h,
        other => anyhow::bail!("protocol error: expected hello, got {other:?}"),
    };
    let mut out = Vec::with_capacity(256);
    let Some(version) = wire::negotiate(hello.min_version, hello.max_version) else {
        let reason = format!(
            "protocol versions {}..={} not supported (this aggregator speaks {}..={}); upgrade the agent or the aggregator",
            hello.min_version,
            hello.max_version,
            wire::MIN_PROTOCOL_VERSION,
            wire::PROTOCOL_VERSION
        );
        let _ = write_frame(
            &mut send,
            &AggregatorFrame::Refused(Refused {
                reason: reason.clone(),
            }),
            &mut out,
        )
        .await;
        let _ = send.finish();
        anyhow::bail!("{reason}");
    };
    let store = ingest.store.clone();
    let (s, n) = (site.clone(), name.clone());
    let committed_seq = tokio::task::spawn_blocking(move || store.committed_seq(&s, &n)).await??;
    if committed_seq >= hello.next_seq {
        tracing::warn!(
            committed_seq,
            agent_next_seq = hello.next_seq,
            "agent's queue is behind what we stored (restored from an old copy?); it will continue above our sequence"
        );
    }
    let ack = HelloAck {
        version,
        committed_seq,
        identity: format!("{site}/{name}"),
    };
    write_frame(&mut send, &AggregatorFrame::HelloAck(ack), &mut out).await?;
    tracing::info!(software = %hello.software, version, committed_seq, "agent connected");
    // Agents speaking v2 get the trap drop policy now and after every rule reload.
    let mut trap_policy =
        (version >= wire::TRAP_POLICY_VERSION).then(|| ingest.alarms.trap_policy());
    if let Some(rx) = &mut trap_policy {
        let policy = AggregatorFrame::TrapPolicy((**rx.borrow_and_update()).clone());
        write_frame(&mut send, &policy, &mut out).await?;
    }

    // Acks go back from their own task so reading batches never waits on writing acks.
    let (reply_tx, mut reply_rx) = mpsc::unbounded_channel::<Result<u64, ()>>();
    let poisoned = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let acker_conn = conn.clone();
    let mut acker = tokio::spawn(async move {
        let mut out = Vec::with_capacity(64);
        loop {
            let first = tokio::select! {
                r = reply_rx.recv() => match r {
                    Some(r) => r,
                    None => return,
                },
                Ok(()) = changed(&mut trap_policy) => {
                    let Some(rx) = &mut trap_policy else { continue };
                    let policy = (**rx.borrow_and_update()).clone();
                    tracing::debug!(version = format_args!("{:016x}", policy.version), "sending the agent its new trap drop policy");
                    let frame = AggregatorFrame::TrapPolicy(policy);
                    if write_frame(&mut send, &frame, &mut out).await.is_err() {
                        return;
                    }
                    continue;
                }
            };
            // Coalesce: only the highest committed sequence matters.
            let mut best = first;
            while let Ok(next) = reply_rx.try_recv() {
                best = match (best, next) {
                    (Ok(a), Ok(b)) => Ok(a.max(b)),
                    _ => Err(()),
                };
            }
            let Ok(committed_seq) = best else {
                acker_conn.close(4u32.into(), b"aggregator store error; retry later");
                return;
            };
            if write_frame(
                &mut send,
                &AggregatorFrame::Ack(Ack { committed_seq }),
                &mut out,
            )
            .await
            .is_err()
            {
                return;
            }
        }
    });

    let result = loop {
        // The body stays in `buf` and a batch's records borrow from it: no copy per record.
        let read = tokio::select! {
            r = read_frame_body(&mut recv, &mut buf) => r,
            _ = shutdown.cancelled() => {
                conn.close(0u32.into(), b"aggregator shutting down");
                break Ok(());
            }
            _ = &mut acker => break Err(anyhow::anyhow!("could not send acknowledgements")),
        };
        let frame = match read {
            Ok(true) => wire::decode_body_ref::<AgentFrameRef<'_>>(&buf)
                .map(Some)
                .map_err(FrameIoError::from),
            Ok(false) => Ok(None),
            Err(e) => Err(e),
        };
        match frame {
            Ok(Some(AgentFrameRef::Batch(batch))) => {
                metrics::counter!("weir_aggregator_records_received_total")
                    .increment(batch.records.len() as u64);
                ingest.registry.seen(site, name, None);
                // Decoding and encoding happen here, on this connection's task, so the single
                // store writer only inserts (and several agents' batches prepare in parallel).
                // Transforms and definitions (stateless) run here too.
                let (records, outcomes) = crate::alarm::prepare_records(
                    &ingest.alarms.processor(),
                    site,
                    name,
                    &batch.records,
                    Timestamp::now(),
                );
                drop(batch);
                let item = IngestItem {
                    site: site.clone(),
                    name: name.clone(),
                    records,
                    outcomes,
                    reply: reply_tx.clone(),
                    poisoned: poisoned.clone(),
                    api: None,
                };
                if ingest.writer.send(item).await.is_err() {
                    break Ok(()); // store writer stopped: shutting down
                }
            }
            Ok(Some(AgentFrameRef::Status(status))) => {
                metrics::gauge!("weir_aggregator_agent_backlog_records", "site" => site.to_string(), "agent" => name.to_string())
                    .set(status.backlog_records as f64);
                ingest.registry.seen(site, name, Some(status));
            }
            Ok(Some(AgentFrameRef::Hello(_))) => {
                break Err(anyhow::anyhow!("protocol error: second hello"));
            }
            Ok(None) => break Ok(()),
            Err(e) => {
                // An agent that closed with code 0 is shutting down cleanly: not an error.
                if let Some(quinn::ConnectionError::ApplicationClosed(c)) = conn.close_reason()
                    && c.error_code == quinn::VarInt::from_u32(0)
                {
                    break Ok(());
                }
                metrics::counter!("weir_aggregator_protocol_errors_total").increment(1);
                break Err(anyhow::Error::new(e).context("reading from the agent"));
            }
        }
    };
    acker.abort();
    result
}

/// Waits for a change of the trap policy; never, for a v1 session (or once the engine is gone).
async fn changed(
    rx: &mut Option<tokio::sync::watch::Receiver<Arc<weir_common::trap_policy::TrapPolicy>>>,
) -> Result<(), ()> {
    match rx {
        Some(rx) => match rx.changed().await {
            Ok(()) => Ok(()),
            Err(_) => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

/// The single store writer: drains the channel, commits groups, replies. Runs on its own
/// thread (redb writes block) until every sender is gone.
pub fn run_writer(
    store: Arc<Store>,
    alarms: Arc<Engine>,
    correlation: Arc<crate::correlation::Correlator>,
    mut rx: mpsc::Receiver<IngestItem>,
) {
    let mut api_seqs = crate::api_ingest::Sequencer::default();
    while let Some(first) = rx.blocking_recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP_BATCHES {
            match rx.try_recv() {
                Ok(item) => group.push(item),
                Err(_) => break,
            }
        }
        commit_group(&store, &alarms, &correlation, &mut api_seqs, group);
    }
    tracing::debug!("store writer stopped");
}

/// What [`run_writer`] does with each group of batches it took from the channel: refuses those
/// behind a failed commit, numbers API events, commits the rest in one durable transaction with
/// their alarm updates, replies to each, then feeds correlation. Public so that benchmarks
/// (`examples/store_cost.rs`) run exactly the writer's path.
pub fn commit_group(
    store: &Store,
    alarms: &Engine,
    correlation: &crate::correlation::Correlator,
    api_seqs: &mut crate::api_ingest::Sequencer,
    mut group: Vec<IngestItem>,
) {
    use std::sync::atomic::Ordering;
    // Batches behind a failed commit on the same connection are refused, not committed.
    group.retain(|item| {
        let poisoned = item.poisoned.load(Ordering::Acquire);
        if poisoned {
            let _ = item.reply.send(Err(()));
        }
        !poisoned
    });
    // API events get their sequences here, in commit order.
    group.retain_mut(|item| match api_seqs.assign(store, item) {
        Ok(()) => true,
        Err(e) => {
            tracing::error!(error = %e, "cannot read the event store to number API events; they are refused (503)");
            let _ = item.reply.send(Err(()));
            false
        }
    });
    if group.is_empty() {
        return;
    }
    let batches: Vec<AgentBatch<'_>> = group
        .iter()
        .map(|i| AgentBatch {
            site: &i.site,
            name: &i.name,
            records: &i.records,
        })
        .collect();
    let started = Instant::now();
    let now = Timestamp::now();
    let mut applied = None;
    let mut priors = Vec::new();
    let committed = store.commit_with(&batches, now, |txn, prior| {
        priors = prior.to_vec();
        // Only records above the agent's previous committed sequence are new.
        let fresh = group
            .iter()
            .zip(prior)
            .flat_map(|(item, &p)| item.outcomes.iter().filter(move |o| o.seq > p));
        applied = Some(crate::alarm::persist::apply(
            txn,
            fresh,
            &alarms.config,
            now,
        )?);
        Ok(())
    });
    match committed {
        Ok(out) => {
            if let Some(a) = applied {
                a.record_metrics();
            }
            out.alarm_counts.record_metrics();
            metrics::histogram!("weir_aggregator_commit_seconds")
                .record(started.elapsed().as_secs_f64());
            metrics::counter!("weir_aggregator_events_stored_total").increment(out.stored);
            metrics::counter!("weir_aggregator_duplicates_total").increment(out.duplicates);
            metrics::counter!("weir_aggregator_count_updates_total").increment(out.count_updates);
            if out.orphan_updates > 0 {
                metrics::counter!("weir_aggregator_dropped_total", "reason" => "count_update_orphan").increment(out.orphan_updates);
            }
            if out.malformed > 0 {
                metrics::counter!("weir_aggregator_dropped_total", "reason" => "malformed_record")
                    .increment(out.malformed);
            }
            for (item, committed) in group.iter().zip(out.committed) {
                let _ = item.reply.send(Ok(committed));
            }
            // Fresh events (not redeliveries) go to correlation, moved, after the replies;
            // so do fresh `donotpersist` events (not stored, still correlated).
            if correlation.enabled() {
                // One pass over the group: each item's fresh records (moved), the fresh
                // `donotpersist` events, and which alarm each fresh problem raised (for
                // combination rules).
                let (mut fresh, mut unstored, mut alarm_keys) =
                    (Vec::new(), Vec::new(), Vec::new());
                for (item, &p) in group.iter_mut().zip(&priors) {
                    for o in item.outcomes.iter_mut().filter(|o| o.seq > p) {
                        unstored.extend(o.unstored.take());
                        if let Some(pr) = &o.problem {
                            alarm_keys.push((pr.event_id.clone(), pr.key.clone()));
                        }
                    }
                    fresh.extend(
                        std::mem::take(&mut item.records)
                            .into_iter()
                            .filter_map(|r| match r {
                                Prepared::Event { seq, bytes } if seq > p => Some(bytes),
                                _ => None,
                            }),
                    );
                }
                correlation.feed_with(fresh, unstored, alarm_keys, now);
            }
        }
        Err(e) => {
            metrics::counter!("weir_aggregator_commit_errors_total").increment(1);
            tracing::error!(error = %e, "cannot write to the event store; agents keep their events and will resend. Check the disk under data_dir");
            api_seqs.reset();
            for item in &group {
                item.poisoned.store(true, Ordering::Release);
                let _ = item.reply.send(Err(()));
            }
        }
    }
}

/// Watches the CRL file; when it changes, installs a new server config (new handshakes see the
/// new CRL) and closes live sessions of agents it revokes.
pub async fn run_crl_watch(
    endpoint: quinn::Endpoint,
    cfg: QuicConfig,
    crl: PathBuf,
    registry: Arc<Registry>,
    shutdown: CancellationToken,
) {
    let fingerprint = |p: &PathBuf| std::fs::read(p).ok();
    let mut last = fingerprint(&crl);
    let mut tick = tokio::time::interval(cfg.crl_check_interval.0);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        let now = fingerprint(&crl);
        if now == last {
            continue;
        }
        match server_config(&cfg) {
            Ok(sc) => {
                endpoint.set_server_config(Some(sc));
                let revoked: Vec<String> = weir_certs::tls::load_crls(&crl)
                    .map(|crls| {
                        crls.iter()
                            .flat_map(|c| weir_certs::crl_revoked_serials(c).unwrap_or_default())
                            .collect()
                    })
                    .unwrap_or_default();
                let closed = registry.disconnect_revoked(&revoked);
                metrics::counter!("weir_aggregator_crl_reloads_total").increment(1);
                tracing::info!(crl = %crl.display(), revoked = revoked.len(), disconnected = closed, "reloaded the CRL");
                last = now;
            }
            Err(e) => {
                // Keep the previous config: a half-written or bad CRL must not lock agents out.
                weir_common::warn_limited!("crl_reload", crl = %crl.display(), error = format!("{e:#}"), "cannot use the changed CRL; keeping the previous one. Fix the file (weir-certs revoke writes it)");
            }
        }
    }
}
