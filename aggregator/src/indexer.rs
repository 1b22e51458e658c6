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
//! asks ([`crate::store::Store::wait_indexed`]), at most [`MAX_CHUNK`] per transaction (the
//! store has one writer at a time: ingest waits while an indexer transaction runs).
//! `weir_aggregator_index_lag_events` is how many stored events are not indexed yet.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use redb::{Database, Durability, ReadableTable};

use crate::index::{self, IndexTables};
use crate::store::{EVENTS, META, StoreError, StoredEvent};

/// Fewest waiting events worth a transaction of their own (while they are younger than
/// [`MAX_DELAY`]): large enough that the index pages copied per transaction are shared by
/// many entries, small enough that a search's unindexed tail stays cheap to scan.
pub const MIN_CHUNK: u64 = 16_384;
/// Most events per indexer transaction: bounds how long ingest waits for the write lock.
pub const MAX_CHUNK: usize = 32_768;
/// Longest an event waits to be indexed when fewer than [`MIN_CHUNK`] are waiting.
pub const MAX_DELAY: Duration = Duration::from_millis(200);
/// Lag at which the indexer warns that searches are slowing down (each scans the tail).
const LAG_WARNING: u64 = 1_000_000;

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
    stop: AtomicBool,
    /// Bumped to wake the indexer (new commits, flush, stop).
    wake: Mutex<u64>,
    cv: Condvar,
}

impl IndexState {
    pub(crate) fn new(last_key: u64, indexed_through: u64) -> IndexState {
        IndexState {
            last_key: AtomicU64::new(last_key),
            indexed_through: AtomicU64::new(indexed_through),
            ..Default::default()
        }
    }

    /// Stored events not indexed yet.
    pub(crate) fn lag(&self) -> u64 {
        self.last_key
            .load(Ordering::Acquire)
            .saturating_sub(self.indexed_through.load(Ordering::Acquire))
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

/// Indexes up to `max` events above the watermark in one transaction and moves the
/// watermark past them. Returns how many events it indexed (0: none were waiting).
pub(crate) fn index_pending(
    db: &Database,
    path: &Path,
    state: &IndexState,
    max: usize,
) -> Result<usize, StoreError> {
    let err = |e: redb::Error| StoreError {
        path: path.to_path_buf(),
        error: e,
    };
    let mut txn = db.begin_write().map_err(|e| err(e.into()))?;
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
        let mut bulk = index::Bulk::default();
        for item in events.range(start..).map_err(|e| err(e.into()))? {
            if done == max {
                break;
            }
            let (k, v) = item.map_err(|e| err(e.into()))?;
            // Undecodable events (an incompatible build's) are passed over: searches skip
            // them too, so they are neither indexed nor found.
            if let Ok(s) = postcard::from_bytes::<StoredEvent>(v.value()) {
                bulk.add(k.value(), s);
            }
            through = k.value();
            done += 1;
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
    let mut warned = false;
    while !state.stop.load(Ordering::Acquire) {
        let lag = state.lag();
        metrics::gauge!("weir_aggregator_index_lag_events").set(lag as f64);
        if lag == 0 {
            waiting_since = None;
            state.sleep(&mut seen, MAX_DELAY);
            continue;
        }
        let since = *waiting_since.get_or_insert_with(Instant::now);
        let due = lag >= MIN_CHUNK
            || since.elapsed() >= MAX_DELAY
            || state.indexed_through.load(Ordering::Acquire)
                < state.flush_to.load(Ordering::Acquire);
        if !due {
            state.sleep(&mut seen, MAX_DELAY.saturating_sub(since.elapsed()));
            continue;
        }
        if lag >= LAG_WARNING && !warned {
            warned = true;
            tracing::warn!(
                lag,
                "search indexing is {lag} events behind ingest: searches stay complete but scan those events unindexed, so they slow down until it catches up (the aggregator is storing faster than it indexes; is the machine short of CPU?)"
            );
        } else if lag < MIN_CHUNK && warned {
            warned = false;
            tracing::info!(lag, "search indexing caught up");
        }
        let started = Instant::now();
        match index_pending(db, path, state, MAX_CHUNK) {
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
