//! The background indexer: writes the search indexes ([`crate::index`]) of stored events in
//! large transactions, behind the ingest path.
//!
//! # Why
//! Each index entry is a B-tree insert, and redb copies every page a transaction touches the
//! first time it touches it. Written in the ingest transaction (one group of agent batches,
//! often one 2,000-event batch), the ~6 inserts per event land on pages spread over five
//! trees (one insertion point per host, site, severity...) and most pages are copied for a
//! handful of entries. Written here, in transactions of [`MIN_CHUNK`] to [`MAX_CHUNK`]
//! events, each page is copied once for many entries, and the ingest transaction holds only
//! what exactly-once needs: the events, the per-agent sequences and agent records.
//!
//! # Invariants
//! - `meta.indexed_through` (a store key) is the watermark: the index tables hold entries for
//!   exactly the stored events with a key at or below it, and none above. The indexer writes
//!   the entries of the events above it and moves it up in the same transaction; everything
//!   else that writes index entries (count updates, incident changes, retention) does so only
//!   for events at or below it ([`crate::store`]).
//! - A search reads the watermark, the indexes and the events above the watermark (the
//!   *tail*) in one read transaction, so it sees every stored event exactly once: indexed
//!   ones through the indexes, the tail by decoding and filtering it.
//! - Crash safety is redb's: an indexer transaction commits entries and watermark together
//!   or not at all. After a crash the indexer resumes from the persisted watermark; index
//!   writes are overwrites, so nothing is written twice.
//!
//! # When it runs
//! The store writer wakes it after every commit. It indexes when at least [`MIN_CHUNK`]
//! events wait, or when the oldest waiting events have waited [`MAX_DELAY`], or when someone
//! asks ([`crate::store::Store::wait_indexed`]), at most [`MAX_CHUNK`] per transaction.
//!
//! redb has one writer at a time, so an indexer transaction makes ingest commits wait, and
//! the indexer's CPU is CPU ingest does not get. So the indexer gives way to ingest, within a
//! bound ([`step`]):
//! - **It yields.** An ingest commit announces itself before asking for the write lock
//!   ([`IndexState::ingest_commit`]); the indexer writes its chunk in pieces of [`SUB_CHUNK`]
//!   events and commits after the first piece a commit has been waiting for: ingest waits for
//!   one piece, not a chunk.
//! - **It defers.** While ingest is saturated (its commits, waiting for the lock included,
//!   take at least half the time, or one is waiting now) and fewer than
//!   `index_max_lag_events` ([`DEFAULT_MAX_LAG`]) events wait, it does not index at all: a
//!   backlog drain stores without sharing the lock or the CPU with it. It catches up when
//!   ingest quiets down.
//! - **Within a bound.** At `index_max_lag_events` waiting events it goes first, saturated or
//!   not: whole chunks that do not yield, and ingest commits queue behind it (through
//!   [`IndexState`]'s `turn`, since redb's lock is not fair) until the lag is back under the
//!   bound, so the lag exceeds the bound by at most the one ingest group that got the lock
//!   first. The bound is what a search pays extra during a burst (it scans the lag). 0 turns
//!   deferring and yielding off.
//! - **For a while.** A deferral lasts at most [`MAX_DEFERRAL`]; then the indexer catches up
//!   (yielding) until nothing waits before it may defer again, so an ingest that only looks
//!   saturated (slow fsyncs, many small commits) cannot hold the lag near the bound.
//!
//! `weir_aggregator_index_lag_events` is how many stored events are not indexed yet;
//! `weir_aggregator_store_lock_wait_seconds` how long ingest commits waited for the lock. The
//! log says when the indexer starts deferring, when ingest quiets down, and when the lag
//! reaches its bound (`/readyz` says so too).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use redb::{Database, Durability, ReadableTable};

use crate::index::{self, IndexTables};
use crate::store::{EVENTS, META, StoreError};

/// Fewest waiting events worth a transaction of their own (while they are younger than
/// [`MAX_DELAY`]): large enough that the index pages copied per transaction are shared by
/// many entries, small enough that a search's unindexed tail stays cheap to scan.
pub const MIN_CHUNK: u64 = 16_384;
/// Most events per indexer transaction: bounds how long ingest waits for the write lock.
pub const MAX_CHUNK: usize = 32_768;
/// Longest an event waits to be indexed when fewer than [`MIN_CHUNK`] are waiting.
pub const MAX_DELAY: Duration = Duration::from_millis(200);
/// Events written per piece of an indexer transaction that yields to ingest
/// ([`index_pending`]): the longest an ingest commit waits for the indexer is one piece's
/// writes.
pub const SUB_CHUNK: usize = 2_048;
/// Ingest counts as saturated when its commits take this share of the time (asking for the
/// write lock included): an indexer transaction then delays ingest, so the indexer defers.
const SATURATED: f64 = 0.5;
/// Longest the indexer defers to ingest in one go: then it catches up (sharing the lock,
/// yielding to ingest) until nothing waits, before it may defer again. Ingest that merely
/// *looks* saturated (slow fsyncs, many small commits) so cannot keep the lag near the bound
/// and every search slow; a real drain stores its first million events well within it.
const MAX_DEFERRAL: Duration = Duration::from_secs(10);
/// The default `index_max_lag_events`: the lag up to which the indexer defers to a
/// saturated ingest. Each search scans the events not indexed yet, at about 1 µs each
/// (`examples/store_cost.rs` reports it), so this bounds what a search pays during a burst
/// to about a second; it is also how much of a backlog drain ingest stores without sharing
/// the CPU and the write lock with the indexer. A drain after a WAN outage is when the NOC
/// most needs the sites' events safely central: storing 1M events takes ~2.5 s this way
/// (indexed ~4 s later) against ~5 s when indexing keeps pace (`weir-loadgen bench-drain`
/// with `WEIR_BENCH_INDEX_MAX_LAG`), and searches meanwhile stay complete, only slower.
pub const DEFAULT_MAX_LAG: u64 = 1_000_000;

/// The `meta` key of the watermark.
pub(crate) const INDEXED_THROUGH: &str = "indexed_through";

/// Shared between the store, its writers and the indexer thread.
#[derive(Debug, Default)]
pub(crate) struct IndexState {
    /// Highest store key committed (the events table's last key).
    pub last_key: AtomicU64,
    /// The watermark as last committed by the indexer.
    pub indexed_through: AtomicU64,
    /// Index now, whatever the lag, until the watermark reaches this key (set by
    /// [`crate::store::Store::wait_indexed`]; a target, not a flag, so it cannot stay set
    /// and turn every later commit into a small index transaction).
    flush_to: AtomicU64,
    /// The lag below which the indexer defers to a saturated ingest (`index_max_lag_events`).
    max_lag: AtomicU64,
    /// Ingest commits that asked for the write lock and do not have it yet: an indexer
    /// transaction seeing one commits what it has written and lets them in.
    ingest_waiting: AtomicU64,
    /// Microseconds ingest commits have spent since the store opened, from asking for the
    /// write lock to their commit returning (the indexer's measure of how busy ingest is).
    ingest_busy_us: AtomicU64,
    /// Ingest commits, and the microseconds they waited for the write lock (total, most).
    lock_waits: AtomicU64,
    lock_wait_us: AtomicU64,
    lock_wait_max_us: AtomicU64,
    /// Events the indexer passed over because their stored bytes did not decode (also
    /// `weir_aggregator_index_undecodable_total`).
    pub undecodable: AtomicU64,
    /// Held by an indexer transaction that takes priority (the lag at its bound) until it
    /// has the write lock; ingest commits pass through it before asking for the lock, so a
    /// writer committing back to back cannot keep the lock from the indexer (redb's lock is
    /// not fair).
    turn: Mutex<()>,
    stop: AtomicBool,
    /// Bumped to wake the indexer (new commits, flush, stop).
    wake: Mutex<u64>,
    cv: Condvar,
}

/// How long ingest commits waited for the store's write lock (see
/// [`crate::store::Store::ingest_lock_waits`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LockWaits {
    /// Ingest commits since the store opened.
    pub commits: u64,
    /// Their waits for the write lock, added up.
    pub total: Duration,
    /// The longest wait.
    pub max: Duration,
}

/// An ingest commit in progress, from asking for the write lock to its end
/// ([`IndexState::ingest_commit`]).
pub(crate) struct IngestCommit<'a> {
    state: &'a IndexState,
    asked: Instant,
    waiting: bool,
}

impl IngestCommit<'_> {
    /// The commit has the write lock.
    pub(crate) fn locked(&mut self) {
        if std::mem::take(&mut self.waiting) {
            self.state.ingest_waiting.fetch_sub(1, Ordering::AcqRel);
            let us = self.asked.elapsed().as_micros() as u64;
            self.state.lock_waits.fetch_add(1, Ordering::Relaxed);
            self.state.lock_wait_us.fetch_add(us, Ordering::Relaxed);
            self.state.lock_wait_max_us.fetch_max(us, Ordering::Relaxed);
            metrics::histogram!("weir_aggregator_store_lock_wait_seconds").record(us as f64 / 1e6);
        }
    }
}

impl Drop for IngestCommit<'_> {
    fn drop(&mut self) {
        if self.waiting {
            self.state.ingest_waiting.fetch_sub(1, Ordering::AcqRel);
        }
        // Busy = asking for the lock and holding it. Counting the wait means an indexer
        // transaction that delays ingest makes ingest look saturated, so the indexer defers:
        // deliberate (measured: with the wait left out, the indexer competed with a
        // co-located agent at 150k UDP lines/s and 2-3% were lost in the kernel instead of
        // none). MAX_DEFERRAL keeps that from holding the lag near the bound for long.
        let us = self.asked.elapsed().as_micros() as u64;
        self.state.ingest_busy_us.fetch_add(us, Ordering::Relaxed);
    }
}

impl IndexState {
    pub(crate) fn new(last_key: u64, indexed_through: u64) -> IndexState {
        IndexState {
            last_key: AtomicU64::new(last_key),
            indexed_through: AtomicU64::new(indexed_through),
            max_lag: AtomicU64::new(DEFAULT_MAX_LAG),
            ..Default::default()
        }
    }

    /// Stored events not indexed yet.
    pub(crate) fn lag(&self) -> u64 {
        self.last_key
            .load(Ordering::Acquire)
            .saturating_sub(self.indexed_through.load(Ordering::Acquire))
    }

    pub(crate) fn max_lag(&self) -> u64 {
        self.max_lag.load(Ordering::Relaxed)
    }

    pub(crate) fn set_max_lag(&self, events: u64) {
        self.max_lag.store(events, Ordering::Relaxed);
        self.wake();
    }

    /// Called by an ingest commit before it asks for the write lock; it calls
    /// [`IngestCommit::locked`] once it has it and drops the guard when done.
    pub(crate) fn ingest_commit(&self) -> IngestCommit<'_> {
        self.ingest_waiting.fetch_add(1, Ordering::AcqRel);
        drop(self.turn.lock().unwrap_or_else(|p| p.into_inner()));
        IngestCommit {
            state: self,
            asked: Instant::now(),
            waiting: true,
        }
    }

    pub(crate) fn lock_waits(&self) -> LockWaits {
        LockWaits {
            commits: self.lock_waits.load(Ordering::Relaxed),
            total: Duration::from_micros(self.lock_wait_us.load(Ordering::Relaxed)),
            max: Duration::from_micros(self.lock_wait_max_us.load(Ordering::Relaxed)),
        }
    }

    /// Records a commit that stored events up to `last_key` and wakes the indexer.
    pub(crate) fn committed(&self, last_key: u64) {
        self.last_key.fetch_max(last_key, Ordering::AcqRel);
        self.wake();
    }

    /// Asks for every event up to `target` to be indexed now.
    pub(crate) fn request_flush(&self, target: u64) {
        self.flush_to.fetch_max(target, Ordering::AcqRel);
        self.wake();
    }

    pub(crate) fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        self.wake();
    }

    fn flushing(&self) -> bool {
        self.indexed_through.load(Ordering::Acquire) < self.flush_to.load(Ordering::Acquire)
    }

    fn wake(&self) {
        let mut g = self.wake.lock().unwrap_or_else(|p| p.into_inner());
        *g = g.wrapping_add(1);
        self.cv.notify_all();
    }

    /// Sleeps until woken or `timeout` passes.
    fn sleep(&self, seen: &mut u64, timeout: Duration) {
        let g = self.wake.lock().unwrap_or_else(|p| p.into_inner());
        let (g, _) = self
            .cv
            .wait_timeout_while(g, timeout, |g| *g == *seen)
            .unwrap_or_else(|p| p.into_inner());
        *seen = *g;
    }
}

/// How busy ingest has been lately: the share of wall time its commits spent asking for or
/// holding the write lock, over windows of about [`MAX_DELAY`].
struct IngestLoad {
    since: Instant,
    busy_us: u64,
    share: f64,
}

impl IngestLoad {
    fn new(state: &IndexState) -> IngestLoad {
        IngestLoad {
            since: Instant::now(),
            busy_us: state.ingest_busy_us.load(Ordering::Relaxed),
            share: 0.0,
        }
    }

    /// Ingest is saturated: a commit is waiting for the lock now, or commits took at least
    /// [`SATURATED`] of the last window's time.
    fn saturated(&mut self, state: &IndexState) -> bool {
        let elapsed = self.since.elapsed();
        if elapsed >= MAX_DELAY {
            let busy = state.ingest_busy_us.load(Ordering::Relaxed);
            self.share = busy.saturating_sub(self.busy_us) as f64 / elapsed.as_micros() as f64;
            (self.since, self.busy_us) = (Instant::now(), busy);
        }
        state.ingest_waiting.load(Ordering::Acquire) > 0 || self.share >= SATURATED
    }
}

/// Indexes up to `max` events above the watermark in one transaction and moves the
/// watermark past them. Returns how many events it indexed (0: none were waiting). With
/// `yield_to_ingest`, it writes in pieces of [`SUB_CHUNK`] events and commits after the first
/// piece an ingest commit has been waiting for: ingest waits for one piece, not a chunk.
pub(crate) fn index_pending(
    db: &Database,
    path: &Path,
    state: &IndexState,
    max: usize,
    yield_to_ingest: bool,
) -> Result<usize, StoreError> {
    index_pending_with(db, path, state, max, yield_to_ingest, !yield_to_ingest)
}

/// [`index_pending`]; `take_turn`: go ahead of waiting ingest commits for this transaction
/// (false when the caller already holds the turn, or yields).
fn index_pending_with(
    db: &Database,
    path: &Path,
    state: &IndexState,
    max: usize,
    yield_to_ingest: bool,
    take_turn: bool,
) -> Result<usize, StoreError> {
    let err = |e: redb::Error| StoreError {
        path: path.to_path_buf(),
        error: e,
    };
    let mut txn = if !take_turn {
        db.begin_write()
    } else {
        let _turn = state.turn.lock().unwrap_or_else(|p| p.into_inner());
        db.begin_write()
    }
    .map_err(|e| err(e.into()))?;
    // Synced, like every commit here. `Durability::None` (entries and watermark persisted by
    // the writer's next durable commit) drained 25% faster, but each durable commit then
    // flushed the indexer's pages too: the disk stalls it caused made a co-located agent's
    // queue commits wait, and UDP syslog at 100k/s lost 27-57% instead of nothing.
    txn.set_durability(Durability::Immediate)
        .map_err(|e| err(redb::Error::from(e)))?;
    let mut done = 0;
    let mut through;
    {
        let events = txn.open_table(EVENTS).map_err(|e| err(e.into()))?;
        let mut meta = txn.open_table(META).map_err(|e| err(e.into()))?;
        let mut idx = IndexTables::open(&txn).map_err(err)?;
        through = crate::store::watermark_in(&meta).map_err(|e| err(e.into()))?;
        let start = through.saturating_add(1);
        let piece = if yield_to_ingest { SUB_CHUNK } else { max };
        let mut bulk = index::Bulk::default();
        for item in events.range(start..).map_err(|e| err(e.into()))? {
            if done == max {
                break;
            }
            let (k, v) = item.map_err(|e| err(e.into()))?;
            // Undecodable events (an incompatible build's, or a damaged page) are passed
            // over: searches skip them too, so they are neither indexed nor found. Counted
            // and logged, never silent.
            if !bulk.add_encoded(k.value(), v.value()) {
                passed_over(state, k.value());
            }
            through = k.value();
            done += 1;
            if done % piece == 0 {
                std::mem::take(&mut bulk)
                    .write(&mut idx)
                    .map_err(|e| err(e.into()))?;
                if state.ingest_waiting.load(Ordering::Acquire) > 0 {
                    break;
                }
            }
        }
        bulk.write(&mut idx).map_err(|e| err(e.into()))?;
        if done > 0 {
            meta.insert(INDEXED_THROUGH, through)
                .map_err(|e| err(e.into()))?;
        } else {
            // Nothing above the watermark: the store's newest events were deleted (retention)
            // after `last_key` counted them. Nothing is waiting.
            let last = events
                .last()
                .map_err(|e| err(e.into()))?
                .map_or(0, |(k, _)| k.value());
            through = through
                .max(last)
                .max(state.last_key.load(Ordering::Acquire));
        }
    }
    if done == 0 {
        txn.abort().map_err(|e| err(e.into()))?;
        state.indexed_through.fetch_max(through, Ordering::AcqRel);
        return Ok(0);
    }
    txn.commit().map_err(|e| err(e.into()))?;
    state.indexed_through.fetch_max(through, Ordering::AcqRel);
    Ok(done)
}

/// Counts (metric, state) and logs, rate-limited, a stored event the indexer cannot decode.
fn passed_over(state: &IndexState, key: u64) {
    state.undecodable.fetch_add(1, Ordering::Relaxed);
    metrics::counter!("weir_aggregator_index_undecodable_total").increment(1);
    weir_common::warn_limited!(
        "index_undecodable",
        store_key = key,
        "a stored event does not decode, so it is neither indexed nor found by searches; \
         it was written by an incompatible build or its page is damaged: keep a copy of \
         the store file and report it with this store key"
    );
}

/// At the bound: indexes whole chunks, ahead of ingest (holding the turn, so ingest commits
/// queue behind it), until the lag is under `max_lag` again. Returns how many it indexed.
fn index_to_bound(
    db: &Database,
    path: &Path,
    state: &IndexState,
    max_lag: u64,
) -> Result<usize, StoreError> {
    let _turn = state.turn.lock().unwrap_or_else(|p| p.into_inner());
    let mut total = 0;
    loop {
        let n = index_pending_with(db, path, state, MAX_CHUNK, false, false)?;
        total += n;
        if n == 0 || state.lag() < max_lag || state.stop.load(Ordering::Acquire) {
            return Ok(total);
        }
    }
}

/// What the indexer does next, given the lag (> 0) and how things stand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Ingest is saturated and the lag is under the bound: leave it the CPU and the lock.
    Defer,
    /// Too few events waited too briefly to be worth a transaction.
    Wait,
    /// Index a chunk; `yield_to_ingest` unless the lag is at the bound.
    Index { yield_to_ingest: bool },
}

/// The indexer's policy (module docs, "When it runs"). `due`: at least [`MIN_CHUNK`] events
/// wait, or the oldest has waited [`MAX_DELAY`]. `max_lag` 0: never defer nor yield.
fn step(lag: u64, max_lag: u64, saturated: bool, flushing: bool, due: bool) -> Step {
    let under = lag < max_lag;
    if saturated && under && !flushing {
        return Step::Defer;
    }
    // The bound holds whether or not ingest is saturated (0: no bound).
    let over = max_lag > 0 && !under;
    if due || flushing || over {
        Step::Index {
            yield_to_ingest: under,
        }
    } else {
        Step::Wait
    }
}

/// Handle of the indexer thread; stops and joins it when dropped.
#[derive(Debug)]
pub(crate) struct Indexer {
    state: Arc<IndexState>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Indexer {
    pub(crate) fn spawn(
        db: Arc<Database>,
        path: PathBuf,
        state: Arc<IndexState>,
    ) -> std::io::Result<Indexer> {
        let s = state.clone();
        let thread = std::thread::Builder::new()
            .name("store-indexer".into())
            .spawn(move || run_indexer(&db, &path, &s))?;
        Ok(Indexer {
            state,
            thread: Some(thread),
        })
    }
}

impl Drop for Indexer {
    fn drop(&mut self) {
        self.state.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The indexer thread's loop (see the module docs), until the store is dropped. Never
/// inlined, so profiles (and `examples/store_cost.rs`'s callgrind toggle) find the indexer's
/// work under its name.
#[inline(never)]
fn run_indexer(db: &Database, path: &Path, state: &IndexState) {
    let mut seen = 0u64;
    // When the oldest event still waiting was first seen waiting.
    let mut waiting_since: Option<Instant> = None;
    let mut load = IngestLoad::new(state);
    // What the operator was last told: deferring to ingest, or behind the bound.
    let mut deferring = false;
    let mut behind = false;
    // When the current deferral began; catching up after one lasted MAX_DEFERRAL.
    let mut deferring_since: Option<Instant> = None;
    let mut catching_up = false;
    while !state.stop.load(Ordering::Acquire) {
        let lag = state.lag();
        metrics::gauge!("weir_aggregator_index_lag_events").set(lag as f64);
        let max_lag = state.max_lag();
        if behind && lag <= max_lag / 2 {
            behind = false;
            tracing::info!(lag, max_lag, "search indexing is back within its lag bound");
        }
        if lag == 0 {
            waiting_since = None;
            catching_up = false;
            state.sleep(&mut seen, MAX_DELAY);
            continue;
        }
        let flushing = state.flushing();
        let saturated = load.saturated(state) && !catching_up;
        let since = *waiting_since.get_or_insert_with(Instant::now);
        let due = lag >= MIN_CHUNK || since.elapsed() >= MAX_DELAY;
        let yield_to_ingest = match step(lag, max_lag, saturated, flushing, due) {
            Step::Defer => {
                // Ingest has the CPU and the write lock; the indexer catches up when it
                // quiets down, when the lag reaches the bound, or after MAX_DEFERRAL.
                let began = *deferring_since.get_or_insert_with(Instant::now);
                if began.elapsed() >= MAX_DEFERRAL {
                    (catching_up, deferring, deferring_since) = (true, false, None);
                    tracing::info!(
                        lag,
                        "search indexing has deferred to ingest for {}s: it now catches up, sharing the write lock with ingest, before it defers again",
                        MAX_DEFERRAL.as_secs()
                    );
                    continue;
                }
                if !deferring {
                    deferring = true;
                    tracing::info!(
                        lag,
                        max_lag,
                        "ingest is saturated: search indexing waits until it quiets down or {max_lag} events wait (index_max_lag_events); searches stay complete, scanning the events not indexed yet"
                    );
                }
                metrics::counter!("weir_aggregator_index_deferrals_total").increment(1);
                state.sleep(&mut seen, MAX_DELAY);
                continue;
            }
            Step::Wait => {
                state.sleep(&mut seen, MAX_DELAY.saturating_sub(since.elapsed()));
                continue;
            }
            Step::Index { yield_to_ingest } => yield_to_ingest,
        };
        deferring_since = None;
        if deferring && !saturated {
            deferring = false;
            tracing::info!(lag, "ingest quieted down: search indexing catches up");
        }
        // At the bound (not when deferring is off: max_lag 0 never yields either).
        let at_bound = !yield_to_ingest && max_lag > 0;
        if at_bound && saturated && !behind {
            // At the bound the indexer takes priority: whole chunks, ingest waits for them.
            behind = true;
            tracing::warn!(
                lag,
                max_lag,
                "search indexing is {lag} events behind a saturated ingest, at its bound (index_max_lag_events = {max_lag}): it now takes the write lock ahead of ingest, which slows ingest down, so that searches (which scan the events not indexed yet) do not slow down further. If this lasts, the machine is short of CPU or disk for this event rate"
            );
        }
        let started = Instant::now();
        let result = if at_bound {
            // Keep priority until the lag is back under the bound: ingest commits queue on
            // the turn meanwhile, so the lag exceeds the bound by at most the one ingest group
            // that got the lock before the indexer (up to the writer's largest group).
            index_to_bound(db, path, state, max_lag)
        } else {
            index_pending(db, path, state, MAX_CHUNK, yield_to_ingest)
        };
        match result {
            Ok(n) => {
                metrics::counter!("weir_aggregator_events_indexed_total").increment(n as u64);
                metrics::histogram!("weir_aggregator_index_commit_seconds")
                    .record(started.elapsed().as_secs_f64());
                // The next batch waits its own delay (a full chunk is due at once anyway).
                waiting_since = None;
            }
            Err(e) => {
                metrics::counter!("weir_aggregator_index_errors_total").increment(1);
                weir_common::warn_limited!(
                    "indexer",
                    error = %e,
                    lag,
                    "cannot write the search indexes; retrying. Searches stay complete but slow down while events wait. Check the disk under data_dir"
                );
                state.sleep(&mut seen, MAX_DELAY);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{AgentBatch, Prepared, Store, StoredEvent};
    use jiff::Timestamp;
    use weir_common::{Event, InputKind, Severity};

    /// Commits events `seqs` of agent `paris/gw-1`, one second apart.
    fn commit(store: &Store, seqs: std::ops::Range<u64>) {
        let now = Timestamp::from_second(1_700_000_000).unwrap();
        let records: Vec<Prepared> = seqs
            .map(|seq| {
                let t = Timestamp::from_second(1_700_000_000 + seq as i64).unwrap();
                Prepared::event(&StoredEvent {
                    site: "paris".into(),
                    agent: "gw-1".into(),
                    seq,
                    stored_at: now,
                    correlated_incident: None,
                    event: Event::new(
                        InputKind::Syslog,
                        "syslog",
                        format!("core-{}", seq % 5),
                        Severity::ALL[seq as usize % 5],
                        format!("Link down on port {seq}"),
                        t,
                    ),
                })
            })
            .collect();
        let batch = [AgentBatch {
            site: "paris",
            name: "gw-1",
            records: &records,
        }];
        store.commit(&batch, now).unwrap();
    }

    /// Events a search over everything finds (hidden or not), with the store's lag then.
    fn found(store: &Store) -> u64 {
        let params = crate::query::EventParams {
            hidden: Some("include".into()),
            q: Some("link down".into()),
            ..Default::default()
        };
        let f = crate::query::EventFilter::parse(&params).unwrap();
        store.search(&f, 10, None).unwrap().total
    }

    #[test]
    fn the_policy_defers_to_a_saturated_ingest_only_under_the_bound() {
        use Step::*;
        let index = |y| Index { yield_to_ingest: y };
        // (lag, max_lag, saturated, flushing, due)
        for (case, want) in [
            ((10, 100, true, false, true), Defer),
            ((10, 100, true, false, false), Defer),
            // At the bound: whole chunks ahead of ingest, due or not.
            ((100, 100, true, false, false), index(false)),
            ((500, 100, true, false, true), index(false)),
            // Asked to flush (wait_indexed): index now, still yielding under the bound.
            ((10, 100, true, true, false), index(true)),
            // Ingest quiet: as before, when due, yielding to a commit that comes in.
            ((10, 100, false, false, true), index(true)),
            ((10, 100, false, false, false), Wait),
            ((500, 100, false, false, true), index(false)),
            ((500, 100, false, false, false), index(false)),
            // 0: never defer nor yield.
            ((10, 0, true, false, false), Wait),
            ((10, 0, true, false, true), index(false)),
            ((10, 0, false, false, false), Wait),
            ((10, 0, false, false, true), index(false)),
        ] {
            let (lag, max, sat, flush, due) = case;
            assert_eq!(step(lag, max, sat, flush, due), want, "{case:?}");
        }
    }

    #[test]
    fn an_indexer_transaction_commits_early_for_a_waiting_ingest_commit() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_unindexed(
            &dir.path().join("e.redb"),
            crate::store::DEFAULT_CACHE_BYTES,
        )
        .unwrap();
        commit(&store, 1..10_001);
        let index = |yield_to_ingest| {
            index_pending(
                store.database(),
                dir.path(),
                &store.index,
                MAX_CHUNK,
                yield_to_ingest,
            )
            .unwrap()
        };
        {
            // An ingest commit asks for the lock (it would block on the indexer's).
            let _waiting = store.index.ingest_commit();
            assert_eq!(index(true), SUB_CHUNK, "one piece, then the lock is let go");
            assert_eq!(store.index_lag(), 10_000 - SUB_CHUNK as u64);
            assert_eq!(found(&store), 10_000, "indexed piece and tail, each once");
            // Without yielding (at the bound) the whole chunk is written.
            assert_eq!(index(false), 10_000 - SUB_CHUNK);
        }
        commit(&store, 10_001..15_001);
        assert_eq!(index(true), 5_000, "nobody waiting: one transaction");
        assert_eq!(store.index_lag(), 0);
        assert_eq!(found(&store), 15_000);
        let w = store.ingest_lock_waits();
        assert_eq!(w.commits, 2, "each commit's wait is measured");
    }

    #[test]
    fn an_undecodable_event_is_passed_over_counted_and_the_rest_indexed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_unindexed(
            &dir.path().join("e.redb"),
            crate::store::DEFAULT_CACHE_BYTES,
        )
        .unwrap();
        commit(&store, 1..101);
        let last = store.index.last_key.load(Ordering::Acquire);
        // A damaged (or foreign) event between two committed runs.
        {
            let txn = store.database().begin_write().unwrap();
            txn.open_table(EVENTS)
                .unwrap()
                .insert(last + 1, &b"\x05ab"[..])
                .unwrap();
            // As the store's commit does: the next event goes after it.
            txn.open_table(META)
                .unwrap()
                .insert("next_key", last + 2)
                .unwrap();
            txn.commit().unwrap();
        }
        store.index.last_key.fetch_max(last + 1, Ordering::AcqRel);
        commit(&store, 101..201);
        let indexed =
            index_pending(store.database(), dir.path(), &store.index, MAX_CHUNK, false).unwrap();
        assert_eq!(indexed, 201, "every stored entry was visited once");
        assert_eq!(store.index.undecodable.load(Ordering::Relaxed), 1);
        assert_eq!(store.index_lag(), 0, "the watermark passed it");
        assert_eq!(found(&store), 200, "the others are indexed and found");
    }

    #[test]
    fn at_the_bound_the_indexer_keeps_priority_until_the_lag_is_under_it() {
        // An ingest group can be larger than an indexer chunk (64 batches of 2,000): one
        // chunk per turn would let the lag grow without bound.
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_unindexed(
            &dir.path().join("e.redb"),
            crate::store::DEFAULT_CACHE_BYTES,
        )
        .unwrap();
        let events = MAX_CHUNK as u64 + 7_000;
        for start in (1..=events).step_by(5_000) {
            commit(&store, start..(start + 5_000).min(events + 1));
        }
        assert_eq!(store.index_lag(), events);
        let n = index_to_bound(store.database(), dir.path(), &store.index, 1_000).unwrap();
        assert!(store.index_lag() < 1_000, "lag {}", store.index_lag());
        assert_eq!(n as u64, events - store.index_lag());
        assert_eq!(found(&store), events);
    }

    #[test]
    fn a_saturated_ingest_proceeds_while_the_indexer_defers_within_its_bound() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(Store::open(&dir.path().join("e.redb")).unwrap());
        const BOUND: u64 = 3_000;
        const BATCH: u64 = 100;
        store.set_index_max_lag(BOUND);
        // Ingest saturated: one commit after another for a while, checking as it goes that
        // searches find every event committed so far, indexed or not.
        let mut next = 1;
        let mut max_seen = 0;
        let mut deferred = false;
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(3) {
            commit(&store, next..next + BATCH);
            next += BATCH;
            let lag = store.index_lag();
            max_seen = max_seen.max(lag);
            // Beyond what a quiet ingest lets wait (one commit's events, or what arrives
            // in MAX_DELAY), yet under the bound: the indexer is deferring.
            deferred |= lag > 2 * BATCH && lag < BOUND;
            if next % (10 * BATCH) == 1 {
                assert_eq!(found(&store), next - 1, "lag {lag}");
            }
        }
        assert!(next > 2 * BOUND, "the test committed too little: {next}");
        assert!(
            deferred,
            "the indexer never deferred (largest lag {max_seen})"
        );
        // Past the bound by at most the commits that slip in before the indexer's turn.
        assert!(
            max_seen <= BOUND + 2 * BATCH,
            "lag {max_seen} beyond the bound {BOUND}"
        );
        // Ingest quiet: the indexer catches up by itself.
        let deadline = Instant::now() + Duration::from_secs(30);
        while store.index_lag() > 0 {
            assert!(Instant::now() < deadline, "never caught up");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(found(&store), next - 1);
    }
}
