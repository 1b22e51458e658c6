//! The path from inputs to the durable queue: inputs hold a [`Sink`] and hand it records; one
//! [`run_writer`] task drains the bounded channel behind it and appends what it finds to the
//! queue in group commits (one durable transaction for everything that arrived meanwhile).
//!
//! Backpressure: [`Sink::send`] awaits channel capacity, so when the disk cannot keep up, TCP and
//! HTTP inputs stop reading and their senders slow down, and UDP packets wait in the kernel's
//! receive buffer (whose overflows are counted by the kernel and exported as a metric).
//!
//! Capacity is bounded twice, in records (`channel_capacity`) and in bytes of memory
//! (`channel_max_bytes`): a submission holds its share of both from the moment it is accepted
//! until its group commit is durable, so the bound covers what waits in the channel *and* the
//! group being written (whose copy in redb's dirty pages is the same size again). The byte bound
//! is the one that matters for memory: records vary from 100 bytes to 64 KiB, and under load
//! the channel stays full, so a record count alone let it hold 8 MB of 200-byte lines.
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

use crate::dedup::{DedupRules, Deduper};
use crate::queue::{AppendOutcome, Encoded, Queue};

/// Records committed since the process started (reported in the agent's status).
static COMMITTED_TOTAL: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

pub fn committed_total() -> u64 {
    COMMITTED_TOTAL.load(std::sync::atomic::Ordering::Relaxed)
}

/// Most records appended in one transaction.
const MAX_GROUP: usize = 16 * 1024;

/// Shortest time between the starts of two group commits of input records
/// ([`WriterOptions::min_commit_interval`]'s default). Each commit costs an fdatasync, a
/// forwarder wakeup and a batch frame whatever its size: without this pause, 100k lines/s
/// arrived in ~1,000 commits/s of ~100 lines, and those fixed costs were most of the agent's
/// CPU. A record that arrives after a quiet spell is committed at once; under load a record
/// waits at most this long (plus the timer's millisecond) before its commit starts.
pub const MIN_COMMIT_INTERVAL: Duration = Duration::from_millis(2);

/// A group of at least this many records is committed without waiting for
/// [`MIN_COMMIT_INTERVAL`]: its commit's fixed costs are already shared by many records, and
/// at high rates waiting would only let the channel fill.
const WAIT_BELOW_RECORDS: usize = 256;

/// Moves the submissions waiting in `rx` into `group` (`n` records), up to [`MAX_GROUP`].
fn take_waiting(
    rx: &mut mpsc::UnboundedReceiver<Submission>,
    group: &mut Vec<Submission>,
    n: &mut usize,
) {
    while *n < MAX_GROUP {
        match rx.try_recv() {
            Ok(sub) => {
                *n += sub.records.len();
                group.push(sub);
            }
            Err(_) => break,
        }
    }
}

/// One hand-over from an input: records, and optionally a channel that learns when they are
/// durable (the HTTP input answers its client only then).
#[derive(Debug)]
pub struct Submission {
    pub records: Vec<Encoded>,
    pub committed: Option<oneshot::Sender<Result<AppendOutcome, String>>>,
    /// Capacity this submission holds until it is committed (see [`Held`]).
    _permit: Option<Held>,
}

/// A submission's share of the channel: one record permit per record and one byte permit per
/// byte of memory its records hold ([`Encoded::footprint`]), returned when it is dropped.
#[derive(Debug)]
struct Held {
    _records: OwnedSemaphorePermit,
    _bytes: OwnedSemaphorePermit,
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
        self.count_n(reason, 1);
    }

    /// Counts `n` drops of one reason at once (a burst of kernel UDP drops, a lost batch).
    pub fn count_n(&self, reason: &'static str, n: u64) {
        if n == 0 {
            return;
        }
        metrics::counter!("weir_agent_dropped_total", "reason" => reason).increment(n);
        *self
            .map
            .lock()
            .expect("drops lock")
            .entry(reason.to_string())
            .or_insert(0) += n;
    }

    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        self.map.lock().expect("drops lock").clone()
    }
}

/// The handle inputs use to submit records. Cheap to clone.
///
/// Capacity is counted in records and in bytes, not submissions: two semaphores, one permit per
/// record and one per byte that may wait for the writer, so memory and the power-cut window are
/// bounded however the inputs batch.
#[derive(Debug, Clone)]
pub struct Sink {
    tx: mpsc::UnboundedSender<Submission>,
    capacity: Arc<Semaphore>,
    max_permits: u32,
    /// Bytes of memory the records between the inputs and the end of their commit may hold.
    bytes: Arc<Semaphore>,
    max_bytes: u32,
    pub drops: Arc<InputDrops>,
    /// First-stage dedup rules: [`Sink::encode`] tags each event with its key.
    pub dedup: Arc<DedupRules>,
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
        // A submission larger than the whole budget takes all of it: it then waits for an
        // empty channel and goes alone, so it still makes progress. The vector's spare slots
        // count too: a one-line TCP batch sits in a vector sized for 256.
        let spare = records.capacity() - records.len();
        let size = records.iter().map(Encoded::footprint).sum::<usize>()
            + spare * std::mem::size_of::<Encoded>();
        let size = u32::try_from(size)
            .unwrap_or(u32::MAX)
            .clamp(1, self.max_bytes);
        let records_permit = self
            .capacity
            .clone()
            .acquire_many_owned(n)
            .await
            .map_err(|_| Closed)?;
        let bytes_permit = self
            .bytes
            .clone()
            .acquire_many_owned(size)
            .await
            .map_err(|_| Closed)?;
        self.tx
            .send(Submission {
                records,
                committed,
                _permit: Some(Held {
                    _records: records_permit,
                    _bytes: bytes_permit,
                }),
            })
            .map_err(|_| Closed)
    }

    /// Bytes of memory held by records accepted but not yet committed (channel plus the group
    /// being written), as counted by the byte bound.
    #[cfg(test)]
    fn held_bytes(&self) -> usize {
        self.max_bytes as usize - self.bytes.available_permits().min(self.max_bytes as usize)
    }

    /// Encodes a record for [`Sink::send_encoded`], tagged for first-stage dedup.
    pub fn encode(&self, record: &Record, received_at_us: i64) -> Encoded {
        self.dedup.encode(record, received_at_us)
    }

    /// Encodes and submits records, waiting for capacity (backpressure).
    pub async fn send(&self, records: Vec<Record>, received_at: Timestamp) -> Result<(), Closed> {
        let us = received_at.as_microsecond();
        let records = records.iter().map(|r| self.encode(r, us)).collect();
        self.submit(records, None).await
    }

    /// Submits already-encoded records (inputs that batch encode themselves).
    pub async fn send_encoded(&self, records: Vec<Encoded>) -> Result<(), Closed> {
        self.submit(records, None).await
    }

    /// Submits already-encoded records and waits until they are durably in the queue.
    pub async fn send_encoded_committed(
        &self,
        records: Vec<Encoded>,
    ) -> Result<AppendOutcome, String> {
        let committed = self
            .submit_for_commit(records)
            .await
            .map_err(|e| e.to_string())?;
        committed.await.map_err(|_| Closed.to_string())?
    }

    /// Submits already-encoded records once there is room, and returns what will say when they
    /// are durable (or why not). Once submitted, the writer commits them even while the agent
    /// shuts down (it drains its channel), so a caller may stop waiting for room on shutdown
    /// and still wait for the commit of what it handed over.
    pub async fn submit_for_commit(
        &self,
        records: Vec<Encoded>,
    ) -> Result<oneshot::Receiver<Result<AppendOutcome, String>>, Closed> {
        let (tx, rx) = oneshot::channel();
        self.submit(records, Some(tx)).await?;
        Ok(rx)
    }

    /// Submits records and waits until they are durably in the queue.
    pub async fn send_committed(
        &self,
        records: Vec<Record>,
        received_at: Timestamp,
    ) -> Result<AppendOutcome, String> {
        let us = received_at.as_microsecond();
        let records = records.iter().map(|r| self.encode(r, us)).collect();
        self.send_encoded_committed(records).await
    }
}

/// Default of `[queue] channel_max_bytes`, for [`channel`].
pub const DEFAULT_CHANNEL_BYTES: usize = 2 << 20;

/// Creates the sink and the receiver [`run_writer`] drains. `capacity` bounds the records that
/// can sit between inputs and the queue (the power-cut exposure window); their memory is bounded
/// by [`DEFAULT_CHANNEL_BYTES`] (see [`channel_with_bytes`]).
pub fn channel(capacity: usize, dedup: DedupRules) -> (Sink, SinkReceiver) {
    channel_with_bytes(capacity, DEFAULT_CHANNEL_BYTES, dedup)
}

/// [`channel`] with a bound of `max_bytes` on the memory its records hold (at most 4 GiB).
pub fn channel_with_bytes(
    capacity: usize,
    max_bytes: usize,
    dedup: DedupRules,
) -> (Sink, SinkReceiver) {
    let (tx, rx) = mpsc::unbounded_channel();
    let limit = Semaphore::MAX_PERMITS.min(u32::MAX as usize);
    let max_permits = capacity.clamp(1, limit) as u32;
    let max_bytes = max_bytes.clamp(1, limit) as u32;
    let capacity = Arc::new(Semaphore::new(max_permits as usize));
    let bytes = Arc::new(Semaphore::new(max_bytes as usize));
    (
        Sink {
            tx,
            capacity: capacity.clone(),
            max_permits,
            bytes: bytes.clone(),
            max_bytes,
            drops: Arc::new(InputDrops::default()),
            dedup: Arc::new(dedup),
        },
        SinkReceiver {
            rx,
            capacity,
            bytes,
        },
    )
}

/// The writer's end of a [`channel`].
#[derive(Debug)]
pub struct SinkReceiver {
    rx: mpsc::UnboundedReceiver<Submission>,
    /// Closed when the writer stops accepting, so inputs waiting for capacity learn at once.
    capacity: Arc<Semaphore>,
    /// The byte budget, closed with `capacity`.
    bytes: Arc<Semaphore>,
}

#[cfg(test)]
impl SinkReceiver {
    /// The number of records in the next submission (tests of inputs).
    pub(crate) async fn recv_for_test(&mut self) -> Option<usize> {
        self.rx.recv().await.map(|s| s.records.len())
    }
}

/// How the writer reports drops and flushes dedup counts.
#[derive(Debug, Clone)]
pub struct WriterOptions {
    /// How often queue-full drops are reported as an internal event.
    pub drop_report_interval: Duration,
    /// Longest a dedup count waits when no input arrives to carry it.
    pub dedup_flush_interval: Duration,
    /// Most dedup keys remembered.
    pub dedup_max_keys: usize,
    /// Shortest time between the starts of two group commits (see [`MIN_COMMIT_INTERVAL`]).
    pub min_commit_interval: Duration,
}

#[cfg(test)]
impl WriterOptions {
    /// What the input tests' writers use: drop reports out of the way, dedup counts flushed
    /// within a second.
    pub(crate) fn for_tests() -> WriterOptions {
        WriterOptions {
            drop_report_interval: Duration::from_secs(3600),
            dedup_flush_interval: Duration::from_secs(1),
            dedup_max_keys: 1,
            min_commit_interval: MIN_COMMIT_INTERVAL,
        }
    }
}

/// Appends submissions to the queue until every sink is dropped or `shutdown` fires (then it
/// drains what is already in the channel first). Publishes the last committed sequence on
/// `committed` so the forwarder wakes up.
pub async fn run_writer(
    queue: Arc<Queue>,
    rx: SinkReceiver,
    committed: watch::Sender<u64>,
    opts: WriterOptions,
    shutdown: CancellationToken,
) {
    let drop_report_interval = opts.drop_report_interval;
    let SinkReceiver {
        mut rx,
        capacity,
        bytes,
    } = rx;
    let mut dedup = Deduper::new(opts.dedup_max_keys);
    let mut pending_report: BTreeMap<String, u64> = BTreeMap::new();
    let mut report_tick = tokio::time::interval(drop_report_interval);
    report_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut flush_tick = tokio::time::interval(opts.dedup_flush_interval);
    flush_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut closing = false;
    // When the last group commit of input records started.
    let mut last_commit: Option<tokio::time::Instant> = None;
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
                    append_group(&queue, vec![sub], &committed, &mut pending_report, None).await;
                }
                continue;
            }
            // Counts of events first seen in the last commit, when nothing else carries them.
            _ = flush_tick.tick() => {
                if dedup.has_pending() {
                    append_group(&queue, Vec::new(), &committed, &mut pending_report, Some(&mut dedup)).await;
                }
                continue;
            }
            _ = shutdown.cancelled(), if !closing => {
                // Stop accepting, then drain what the inputs already handed over.
                closing = true;
                capacity.close();
                bytes.close();
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
        take_waiting(&mut rx, &mut group, &mut n);
        // Group commit: if the last commit started less than `min_commit_interval` ago and
        // the group is small, let it grow until then. The writer sleeps instead of waking per
        // submission. A large group (the rate already amortises a commit), a full sink
        // (inputs waiting on capacity) or shutdown commits at once.
        let deadline = last_commit.map(|t| t + opts.min_commit_interval);
        if let Some(deadline) = deadline.filter(|d| {
            n < WAIT_BELOW_RECORDS
                && !closing
                && capacity.available_permits() > 0
                && bytes.available_permits() > 0
                && tokio::time::Instant::now() < *d
        }) {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => {}
                _ = shutdown.cancelled() => {}
            }
            take_waiting(&mut rx, &mut group, &mut n);
        }
        last_commit = Some(tokio::time::Instant::now());
        append_group(
            &queue,
            group,
            &committed,
            &mut pending_report,
            Some(&mut dedup),
        )
        .await;
    }
    // Counts still pending (repeats of events first seen in the last commit).
    if dedup.has_pending() {
        append_group(
            &queue,
            Vec::new(),
            &committed,
            &mut pending_report,
            Some(&mut dedup),
        )
        .await;
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
        append_group(&queue, vec![sub], &committed, &mut ignore, None).await;
    }
    capacity.close();
    bytes.close();
    tracing::debug!("queue writer stopped");
}

/// Appends one group in one durable transaction. With a deduper (input records), repeats are
/// merged first and pending count updates ride along; without one (Weir's own drop reports),
/// nothing is evicted to make room (see [`Queue::append_internal`]).
async fn append_group(
    queue: &Arc<Queue>,
    mut group: Vec<Submission>,
    committed: &watch::Sender<u64>,
    pending_report: &mut BTreeMap<String, u64>,
    mut dedup: Option<&mut Deduper>,
) {
    let mut records: Vec<Encoded> = group
        .iter_mut()
        .flat_map(|s| std::mem::take(&mut s.records))
        .collect();
    let mut opened = Vec::new();
    let mut inputs = records.len();
    if let Some(d) = dedup.as_deref_mut() {
        opened = d.filter(&mut records).opened;
        inputs = records.len();
        records.extend(d.take_counts());
    }
    if records.is_empty() {
        // Every record was a repeat: nothing to write, but it is as safe as it will get.
        for sub in group {
            if let Some(tx) = sub.committed {
                let _ = tx.send(Ok(AppendOutcome::default()));
            }
        }
        return;
    }
    let internal = dedup.is_none();
    let count = records.len() as u64;
    let q = queue.clone();
    let started = std::time::Instant::now();
    let result = tokio::task::spawn_blocking(move || {
        if internal {
            q.append_internal(records)
        } else {
            q.append(records)
        }
    })
    .await
    .unwrap_or_else(|e| panic!("queue append task panicked: {e}"));
    metrics::histogram!("weir_agent_queue_commit_seconds").record(started.elapsed().as_secs_f64());
    match result {
        Ok(mut out) => {
            if let Some(d) = dedup {
                let lost = d.assign(&opened, &out.seqs[..inputs.min(out.seqs.len())]);
                if lost > 0 {
                    // Repeats merged into an event the full queue then refused.
                    *out.drops
                        .entry("dedup_repeats_of_dropped".into())
                        .or_insert(0) += lost;
                }
            }
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
            if let Some(d) = dedup {
                // The first occurrences were not stored: forget them (their repeats are lost
                // with them, counted below as part of this group's loss).
                d.assign(&opened, &[]);
            }
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

#[cfg(test)]
mod tests {
    use std::pin::pin;

    use super::*;

    /// An event whose encoding has the same size for every `i` below a million.
    fn record(i: usize) -> Encoded {
        let ev = Event::new(
            InputKind::Syslog,
            "test",
            "host",
            Severity::Info,
            format!("{i:06} {}", "x".repeat(400)),
            Timestamp::now(),
        );
        Encoded::new(&Record::Event(ev), 0)
    }

    #[tokio::test]
    async fn the_byte_bound_blocks_the_sender_at_its_limit_and_loses_nothing() {
        let one = record(0).footprint();
        // Room for ten records by bytes; the record bound is far away.
        let (sink, mut rx) = channel_with_bytes(1_000_000, one * 10, DedupRules::default());
        let mut accepted = 0;
        loop {
            let mut send = pin!(sink.send_encoded(vec![record(accepted)]));
            if futures::poll!(send.as_mut()).is_ready() {
                accepted += 1;
                assert!(
                    accepted <= 10,
                    "accepted {accepted} records past the byte bound"
                );
                continue;
            }
            // Blocked at the limit, not before it, with exactly the limit held.
            assert_eq!(accepted, 10);
            assert_eq!(sink.held_bytes(), one * 10);
            // The writer taking one submission (and finishing with it) lets the sender on.
            assert_eq!(rx.recv_for_test().await, Some(1));
            send.await.unwrap();
            accepted += 1;
            break;
        }
        let mut received = 1;
        while sink.held_bytes() > 0 {
            received += rx.recv_for_test().await.unwrap();
        }
        assert_eq!(
            received, accepted,
            "every accepted record reached the writer"
        );
        assert!(
            sink.drops.snapshot().is_empty(),
            "{:?}",
            sink.drops.snapshot()
        );
    }

    #[tokio::test]
    async fn a_submission_larger_than_the_byte_bound_goes_alone() {
        let one = record(0).footprint();
        let (sink, mut rx) = channel_with_bytes(1_000_000, one * 2, DedupRules::default());
        sink.send_encoded((0..5).map(record).collect())
            .await
            .expect("an oversize submission into an empty channel is accepted");
        assert_eq!(sink.held_bytes(), one * 2, "it holds the whole budget");
        let mut next = pin!(sink.send_encoded(vec![record(5)]));
        assert!(futures::poll!(next.as_mut()).is_pending());
        assert_eq!(rx.recv_for_test().await, Some(5));
        next.await.unwrap();
        assert_eq!(rx.recv_for_test().await, Some(1));
    }

    /// With the real writer and queue, a bound far below the input (64 KiB against ~1 MB)
    /// slows the inputs but every record is committed, once.
    #[tokio::test]
    async fn a_small_byte_bound_commits_everything_through_the_real_writer() {
        let dir = tempfile::tempdir().unwrap();
        let queue = Queue::open_roomy(&dir.path().join("queue.redb"));
        let (sink, rx) = channel_with_bytes(1_000_000, 64 << 10, DedupRules::default());
        let (committed_tx, _committed_rx) = watch::channel(0);
        let shutdown = CancellationToken::new();
        let writer = tokio::spawn(run_writer(
            queue.clone(),
            rx,
            committed_tx,
            WriterOptions {
                drop_report_interval: Duration::from_secs(3600),
                dedup_flush_interval: Duration::from_secs(3600),
                dedup_max_keys: 1000,
                min_commit_interval: MIN_COMMIT_INTERVAL,
            },
            shutdown.clone(),
        ));
        let producers: Vec<_> = (0..4)
            .map(|p| {
                let sink = sink.clone();
                tokio::spawn(async move {
                    for batch in 0..10 {
                        let first = p * 1000 + batch * 64;
                        let records = (first..first + 64).map(record).collect();
                        sink.send_encoded(records).await.unwrap();
                    }
                })
            })
            .collect();
        // A deadlock between the two bounds fails here instead of hanging the suite.
        for p in producers {
            tokio::time::timeout(Duration::from_secs(60), p)
                .await
                .expect("producers blocked for a minute: the bounds deadlocked")
                .unwrap();
        }
        let drops = sink.drops.snapshot();
        drop(sink);
        writer.await.unwrap();
        let stats = queue.stats().unwrap();
        assert_eq!(stats.records, 4 * 10 * 64);
        assert!(
            drops.is_empty() && stats.drops.is_empty(),
            "{drops:?} {stats:?}"
        );
    }

    /// The writer's group commits and their minimum interval.
    mod group_commit {
        use std::time::Instant;

        use super::record as line;
        use super::*;

        /// A writer on a real queue with a long `min_commit_interval`, so that "at once" and "after
        /// the interval" are far apart even on a loaded machine.
        struct Rig {
            sink: Sink,
            committed: watch::Receiver<u64>,
            _dir: tempfile::TempDir,
            writer: tokio::task::JoinHandle<()>,
            shutdown: CancellationToken,
        }

        const INTERVAL: Duration = Duration::from_secs(4);
        /// Far below [`INTERVAL`]: what "at once" allows for a commit on a loaded machine.
        const AT_ONCE: Duration = Duration::from_millis(2500);

        fn rig(capacity: usize, max_bytes: usize) -> Rig {
            let dir = tempfile::tempdir().unwrap();
            let queue = Queue::open_roomy(&dir.path().join("queue.redb"));
            let (sink, rx) = channel_with_bytes(capacity, max_bytes, DedupRules::default());
            let (tx, committed) = watch::channel(0);
            let shutdown = CancellationToken::new();
            let writer = tokio::spawn(run_writer(
                queue,
                rx,
                tx,
                WriterOptions {
                    min_commit_interval: INTERVAL,
                    ..WriterOptions::for_tests()
                },
                shutdown.clone(),
            ));
            Rig {
                sink,
                committed,
                _dir: dir,
                writer,
                shutdown,
            }
        }

        impl Rig {
            /// Commits one line and waits for it: the writer's interval starts now. Returns
            /// the committed sequence after it.
            async fn first_commit(&mut self) -> u64 {
                self.sink.send_encoded(vec![line(0)]).await.unwrap();
                self.next_commit().await;
                *self.committed.borrow()
            }

            /// Waits for the committed sequence to change; how long that took.
            async fn next_commit(&mut self) -> Duration {
                let started = Instant::now();
                tokio::time::timeout(INTERVAL * 3, self.committed.changed())
                    .await
                    .expect("no commit within three intervals")
                    .unwrap();
                started.elapsed()
            }
        }

        #[tokio::test]
        async fn a_line_after_a_quiet_spell_commits_at_once_and_the_next_waits_for_the_interval() {
            let mut r = rig(1_000_000, 64 << 20);
            r.sink.send_encoded(vec![line(0)]).await.unwrap();
            let first = r.next_commit().await;
            assert!(first < AT_ONCE, "a lone line waited {first:?}");
            let base = *r.committed.borrow();
            // Right after a commit: this one waits for the interval, and no longer (its bound).
            let sent = Instant::now();
            r.sink.send_encoded(vec![line(1)]).await.unwrap();
            r.sink.send_encoded(vec![line(2)]).await.unwrap();
            r.next_commit().await;
            let waited = sent.elapsed();
            assert!(
                waited >= INTERVAL - Duration::from_millis(100) - first,
                "committed after {waited:?}, before the interval"
            );
            assert!(waited < INTERVAL + AT_ONCE, "committed after {waited:?}");
            assert_eq!(
                *r.committed.borrow() - base,
                2,
                "both lines in one group commit"
            );
            drop(r.sink);
            r.writer.await.unwrap();
        }

        /// A line that arrives more than the interval after the last commit is not held back.
        #[tokio::test]
        async fn a_line_after_the_interval_commits_at_once() {
            let mut r = rig(1_000_000, 64 << 20);
            r.first_commit().await;
            tokio::time::sleep(INTERVAL + Duration::from_millis(100)).await;
            r.sink.send_encoded(vec![line(1)]).await.unwrap();
            let took = r.next_commit().await;
            assert!(took < AT_ONCE, "a line after a quiet spell waited {took:?}");
            drop(r.sink);
            r.writer.await.unwrap();
        }

        /// Shutdown cuts the wait short, and what was waiting is committed.
        #[tokio::test]
        async fn shutdown_cuts_the_wait_short_and_commits_what_waited() {
            let mut r = rig(1_000_000, 64 << 20);
            let base = r.first_commit().await;
            r.sink.send_encoded(vec![line(1)]).await.unwrap();
            // Let the writer take the line and start waiting for the interval.
            tokio::time::sleep(Duration::from_millis(200)).await;
            let started = Instant::now();
            r.shutdown.cancel();
            r.writer.await.unwrap();
            let took = started.elapsed();
            assert!(took < AT_ONCE, "shutdown waited {took:?}");
            assert_eq!(
                *r.committed.borrow() - base,
                1,
                "the waiting line is committed"
            );
        }

        /// Right after a commit, `n` more lines into a sink of `capacity` records must commit
        /// at once, without waiting for the interval.
        async fn commit_at_once(capacity: usize, n: usize, what: &str) {
            let mut r = rig(capacity, 64 << 20);
            let base = r.first_commit().await;
            r.sink
                .send_encoded((1..=n).map(line).collect())
                .await
                .unwrap();
            let took = r.next_commit().await;
            assert!(took < AT_ONCE, "{what} waited {took:?}");
            assert_eq!(*r.committed.borrow() - base, n as u64);
            drop(r.sink);
            r.writer.await.unwrap();
        }

        #[tokio::test]
        async fn a_large_group_commits_at_once() {
            commit_at_once(1_000_000, WAIT_BELOW_RECORDS, "a large group").await;
        }

        /// Inputs waiting on a full sink are not kept waiting for the interval.
        #[tokio::test]
        async fn a_full_sink_commits_at_once() {
            commit_at_once(10, 10, "a full sink").await;
        }
    }
}
