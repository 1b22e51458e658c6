//! The path from inputs to the durable queue: inputs hold a [`Sink`] and hand it records; one
//! [`run_writer`] task drains the bounded channel behind it and appends what it finds to the
//! queue in group commits (one durable transaction for everything that arrived meanwhile).
//!
//! Backpressure: [`Sink::send`] awaits channel capacity, so when the disk cannot keep up, TCP and
//! HTTP inputs stop reading and their senders slow down, and UDP packets wait in the kernel's
//! receive buffer (whose overflows are counted by the kernel and exported as a metric).
//!
//! Queue-full drops are reported to the aggregator as an internal event every
//! `drop_report_interval`, besides the drop counters the agent's status carries.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use weir_common::{Event, InputKind, Record, Severity};

use crate::queue::{AppendOutcome, Encoded, Queue};

/// Records committed since the process started (reported in the agent's status).
static COMMITTED_TOTAL: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

pub fn committed_total() -> u64 {
    COMMITTED_TOTAL.load(std::sync::atomic::Ordering::Relaxed)
}

/// Most records appended in one transaction.
const MAX_GROUP: usize = 16 * 1024;

/// One hand-over from an input: records, and optionally a channel that learns when they are
/// durable (the HTTP input answers its client only then).
#[derive(Debug)]
pub struct Submission {
    pub records: Vec<Encoded>,
    pub committed: Option<oneshot::Sender<Result<AppendOutcome, String>>>,
    /// Capacity this submission holds until it is committed (one permit per record).
    _permit: Option<OwnedSemaphorePermit>,
}

/// Counters of records dropped before reaching the queue (malformed input, oversize, ...), by
/// reason; reported in the agent's status alongside the queue's own drop counts.
#[derive(Debug, Default)]
pub struct InputDrops {
    map: Mutex<BTreeMap<String, u64>>,
}

impl InputDrops {
    /// Counts one drop in memory and in the `weir_agent_dropped_total` metric.
    pub fn count(&self, reason: &'static str) {
        metrics::counter!("weir_agent_dropped_total", "reason" => reason).increment(1);
        *self
            .map
            .lock()
            .expect("drops lock")
            .entry(reason.to_string())
            .or_insert(0) += 1;
    }

    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        self.map.lock().expect("drops lock").clone()
    }
}

/// The handle inputs use to submit records. Cheap to clone.
///
/// Capacity is counted in records, not submissions: a semaphore with one permit per record
/// that may wait for the writer, so memory and the power-cut window are bounded however the
/// inputs batch.
#[derive(Debug, Clone)]
pub struct Sink {
    tx: mpsc::UnboundedSender<Submission>,
    capacity: Arc<Semaphore>,
    max_permits: u32,
    pub drops: Arc<InputDrops>,
}

/// The writer is gone (the agent is shutting down).
#[derive(Debug, thiserror::Error)]
#[error("the agent is shutting down")]
pub struct Closed;

impl Sink {
    /// Waits for capacity for `records`, then hands them to the writer (backpressure).
    async fn submit(
        &self,
        records: Vec<Encoded>,
        committed: Option<oneshot::Sender<Result<AppendOutcome, String>>>,
    ) -> Result<(), Closed> {
        let n = (records.len() as u32).clamp(1, self.max_permits);
        let permit = self
            .capacity
            .clone()
            .acquire_many_owned(n)
            .await
            .map_err(|_| Closed)?;
        self.tx
            .send(Submission {
                records,
                committed,
                _permit: Some(permit),
            })
            .map_err(|_| Closed)
    }

    /// Encodes and submits records, waiting for capacity (backpressure).
    pub async fn send(&self, records: Vec<Record>, received_at: Timestamp) -> Result<(), Closed> {
        let us = received_at.as_microsecond();
        let records = records.iter().map(|r| Encoded::new(r, us)).collect();
        self.submit(records, None).await
    }

    /// Submits already-encoded records (inputs that batch encode themselves).
    pub async fn send_encoded(&self, records: Vec<Encoded>) -> Result<(), Closed> {
        self.submit(records, None).await
    }

    /// Submits records and waits until they are durably in the queue.
    pub async fn send_committed(
        &self,
        records: Vec<Record>,
        received_at: Timestamp,
    ) -> Result<AppendOutcome, String> {
        let us = received_at.as_microsecond();
        let records = records.iter().map(|r| Encoded::new(r, us)).collect();
        let (tx, rx) = oneshot::channel();
        self.submit(records, Some(tx))
            .await
            .map_err(|e| e.to_string())?;
        rx.await.map_err(|_| Closed.to_string())?
    }
}

/// Creates the sink and the receiver [`run_writer`] drains. `capacity` bounds the records that
/// can sit between inputs and the queue (the power-cut exposure window).
pub fn channel(capacity: usize) -> (Sink, SinkReceiver) {
    let (tx, rx) = mpsc::unbounded_channel();
    let max_permits = capacity.clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize)) as u32;
    let capacity = Arc::new(Semaphore::new(max_permits as usize));
    (
        Sink {
            tx,
            capacity: capacity.clone(),
            max_permits,
            drops: Arc::new(InputDrops::default()),
        },
        SinkReceiver { rx, capacity },
    )
}

/// The writer's end of a [`channel`].
#[derive(Debug)]
pub struct SinkReceiver {
    rx: mpsc::UnboundedReceiver<Submission>,
    /// Closed when the writer stops accepting, so inputs waiting for capacity learn at once.
    capacity: Arc<Semaphore>,
}

/// Appends submissions to the queue until every sink is dropped or `shutdown` fires (then it
/// drains what is already in the channel first). Publishes the last committed sequence on
/// `committed` so the forwarder wakes up.
pub async fn run_writer(
    queue: Arc<Queue>,
    rx: SinkReceiver,
    committed: watch::Sender<u64>,
    drop_report_interval: Duration,
    shutdown: CancellationToken,
) {
    let SinkReceiver { mut rx, capacity } = rx;
    let mut pending_report: BTreeMap<String, u64> = BTreeMap::new();
    let mut report_tick = tokio::time::interval(drop_report_interval);
    report_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut closing = false;
    loop {
        let first = tokio::select! {
            // The report tick comes first: under sustained input the channel is never empty,
            // and a biased select would otherwise never report drops, exactly when they happen.
            biased;
            _ = report_tick.tick() => {
                if !pending_report.is_empty() {
                    let ev = drop_report_event(&std::mem::take(&mut pending_report), drop_report_interval);
                    let sub = Submission {
                        records: vec![Encoded::new(&Record::Event(ev), Timestamp::now().as_microsecond())],
                        committed: None,
                        _permit: None,
                    };
                    append_group(&queue, vec![sub], &committed, &mut pending_report, Kind::Report).await;
                }
                continue;
            }
            _ = shutdown.cancelled(), if !closing => {
                // Stop accepting, then drain what the inputs already handed over.
                closing = true;
                capacity.close();
                rx.close();
                continue;
            }
            sub = rx.recv() => match sub {
                Some(sub) => sub,
                None => break,
            },
        };
        let mut group = vec![first];
        let mut n = group[0].records.len();
        while n < MAX_GROUP {
            match rx.try_recv() {
                Ok(sub) => {
                    n += sub.records.len();
                    group.push(sub);
                }
                Err(_) => break,
            }
        }
        append_group(&queue, group, &committed, &mut pending_report, Kind::Input).await;
    }
    if !pending_report.is_empty() {
        let ev = drop_report_event(&pending_report, drop_report_interval);
        let sub = Submission {
            records: vec![Encoded::new(
                &Record::Event(ev),
                Timestamp::now().as_microsecond(),
            )],
            committed: None,
            _permit: None,
        };
        let mut ignore = BTreeMap::new();
        append_group(&queue, vec![sub], &committed, &mut ignore, Kind::Report).await;
    }
    capacity.close();
    tracing::debug!("queue writer stopped");
}

/// What is being appended: input records obey the queue's drop policy; Weir's own drop
/// reports never evict anything (see [`Queue::append_internal`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Input,
    Report,
}

async fn append_group(
    queue: &Arc<Queue>,
    mut group: Vec<Submission>,
    committed: &watch::Sender<u64>,
    pending_report: &mut BTreeMap<String, u64>,
    kind: Kind,
) {
    let records: Vec<Encoded> = group
        .iter_mut()
        .flat_map(|s| std::mem::take(&mut s.records))
        .collect();
    let count = records.len() as u64;
    let q = queue.clone();
    let started = std::time::Instant::now();
    let result = tokio::task::spawn_blocking(move || match kind {
        Kind::Input => q.append(&records),
        Kind::Report => q.append_internal(&records),
    })
    .await
    .unwrap_or_else(|e| panic!("queue append task panicked: {e}"));
    metrics::histogram!("weir_agent_queue_commit_seconds").record(started.elapsed().as_secs_f64());
    match result {
        Ok(out) => {
            metrics::counter!("weir_agent_committed_total").increment(out.kept);
            COMMITTED_TOTAL.fetch_add(out.kept, std::sync::atomic::Ordering::Relaxed);
            for (reason, n) in &out.drops {
                metrics::counter!("weir_agent_dropped_total", "reason" => reason.clone())
                    .increment(*n);
                *pending_report.entry(reason.clone()).or_insert(0) += n;
            }
            if !out.drops.is_empty() {
                weir_common::warn_limited!(
                    "queue_full",
                    drops = ?out.drops,
                    "queue is full: dropped the lowest-severity, oldest records. The aggregator is unreachable or too slow; raise [queue] max_bytes/max_records or restore the link"
                );
            }
            if out.kept > 0 {
                committed.send_replace(out.last_seq);
            }
            for sub in group {
                if let Some(tx) = sub.committed {
                    let _ = tx.send(Ok(out.clone()));
                }
            }
        }
        Err(e) => {
            // Nothing in this group is durable. This is data loss unless the sender retries
            // (HTTP clients get a 503 and do).
            metrics::counter!("weir_agent_dropped_total", "reason" => "queue_write_error")
                .increment(count);
            tracing::error!(error = %e, records = count, "could not write to the queue; these records are lost. Check the disk under data_dir");
            for sub in group {
                if let Some(tx) = sub.committed {
                    let _ = tx.send(Err(e.to_string()));
                }
            }
        }
    }
}

/// The internal event that tells the aggregator about queue-full drops.
pub fn drop_report_event(drops: &BTreeMap<String, u64>, interval: Duration) -> Event {
    let total: u64 = drops.values().sum();
    let detail = drops
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ");
    let mut ev = Event::new(
        InputKind::Internal,
        "weir-agent",
        hostname(),
        Severity::Error,
        format!(
            "agent queue full: dropped {total} records in the last {}s ({detail})",
            interval.as_secs()
        ),
        Timestamp::now(),
    );
    ev.tag = Some("WEIR_QUEUE_DROPS".into());
    ev.event_type = Some("queue_drops".into());
    for (k, v) in drops {
        ev.tags.insert(k.clone(), v.to_string());
    }
    ev
}

/// This machine's host name, for internal events.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}
