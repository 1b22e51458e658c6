//! The agent's durable queue: every record the agent accepts is written here, in a redb file,
//! before anything else happens to it, and leaves only when the aggregator has acknowledged it.
//!
//! # Invariants
//! - Sequence numbers are strictly increasing and never reused, also across a queue that had to
//!   be recreated: a fresh queue starts at the current time in microseconds, which is above any
//!   sequence an older queue could have reached unless it averaged more than a million records a
//!   second over its whole life.
//! - A record is removed only by [`Queue::ack`] (the aggregator stored it) or by the drop policy
//!   when the queue is full; every drop is counted by reason in the same transaction.
//! - Appends are group commits with [`Durability::Immediate`]: when [`Queue::append`] returns, the
//!   records survive a power cut. What can be lost in a power cut is only what the inputs had
//!   received but the writer had not yet committed: the bounded channel in front of the writer
//!   plus the transaction being written, in practice one fsync's worth (a few milliseconds).
//!   Acknowledgement deletes are not fsynced on their own (they become durable with the next
//!   append): after a crash a few acknowledged records may be sent again, and the aggregator
//!   recognises them by sequence.
//!
//! # On-disk format (redb tables)
//! - `records`: `u64` sequence → `[rank: u8][received_at µs: i64 LE][postcard Record]`.
//! - `meta`: `&str` → `u64`: `next_seq`, `bytes`, `count.<rank>` (records per severity rank).
//! - `drops`: `&str` reason → `u64` cumulative drops since the queue was created.
//!
//! # The tail in memory
//! The records appended last (up to [`TAIL_BYTES`]) are also kept in memory until acknowledged,
//! so the forwarder, which normally reads what was just committed, reads them from there instead
//! of walking redb's B-tree again (a tenth of the agent's work per message). Invariant: every
//! queued record with a sequence at or above `Tail::start` is in the tail, and nothing else is.
//! An append that evicted records to fit, or a renumbering, empties it (start moves past the
//! queue's end), and reads below `start` go to the file, so the tail is only ever a shortcut.
//!
//! # When full
//! The limit is on records and on logical bytes (header + payload; the file itself is larger by
//! redb's page overhead). A new record that does not fit evicts the oldest record of the lowest
//! severity present, if that severity is not above the new record's; otherwise the new record is
//! the one dropped. Drops are counted as `queue_full_<severity>`.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use weir_common::wire::WireRecord;
use weir_common::{Record, Severity};

const RECORDS: TableDefinition<u64, &[u8]> = TableDefinition::new("records");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const DROPS: TableDefinition<&str, u64> = TableDefinition::new("drops");

/// redb page cache. The queue is written at its end and read from its start, so a small cache
/// serves it well, and it keeps the agent within its memory budget on a small gateway.
const CACHE_BYTES: usize = 8 << 20;

/// Longest time acknowledgement deletes stay non-durable (see `State::last_durable`).
const ACK_DURABLE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Most bytes of records kept in memory for the forwarder (see "The tail in memory"). With the
/// link up, acknowledgements trim it to a few milliseconds of input; during an outage it holds
/// the newest records and the forwarder reads the older ones from the file.
const TAIL_BYTES: usize = 4 << 20;

/// Bytes of the per-record header: severity rank and receive time.
pub const HEADER_LEN: usize = 9;
const RANKS: usize = Severity::ALL.len();
const RANK_KEYS: [&str; RANKS] = ["count.0", "count.1", "count.2", "count.3", "count.4"];

/// A record encoded for the queue, ready to append (encoding happens in the input tasks, not in
/// the single writer).
#[derive(Debug, Clone)]
pub struct Encoded {
    bytes: Vec<u8>,
    /// First-stage dedup identity of an event (see [`crate::dedup`]); `None` for records that
    /// are never deduplicated (count updates, Weir's own events, inputs with dedup off).
    pub(crate) dedup: Option<crate::dedup::DedupTag>,
}

impl Encoded {
    pub fn new(record: &Record, received_at_us: i64) -> Encoded {
        // Size the buffer once: growing it from a guess copied each event two or three times.
        let mut bytes = Vec::with_capacity(9 + encoded_size_hint(record));
        bytes.push(record.severity().rank());
        bytes.extend_from_slice(&received_at_us.to_le_bytes());
        match record {
            // Every input event takes this path: written directly, in postcard's format.
            Record::Event(ev) => {
                bytes.push(0); // the `Record::Event` variant
                write_event(&mut bytes, ev);
            }
            Record::Count { .. } => {
                bytes = postcard::to_extend(record, bytes).expect("postcard encoding into a Vec");
            }
        }
        Encoded { bytes, dedup: None }
    }

    /// When the agent received the record (microseconds since the epoch).
    pub fn received_at_us(&self) -> i64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.bytes[1..9]);
        i64::from_le_bytes(b)
    }

    pub fn rank(&self) -> u8 {
        self.bytes[0]
    }

    #[cfg(test)]
    pub(crate) fn bytes_for_test(&self) -> &[u8] {
        &self.bytes
    }

    pub(crate) fn len(&self) -> usize {
        self.bytes.len()
    }
}

/// Appends `ev` exactly as `postcard` serialises it (the property test
/// `event_encoding_is_postcard` holds the two together): serde's generic path cost ~2,000
/// instructions per syslog event, this ~400. Field order is [`weir_common::Event`]'s, which
/// its module promises never to reorder.
fn write_event(out: &mut Vec<u8>, ev: &weir_common::Event) {
    fn varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push(v as u8 | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }
    fn zigzag(out: &mut Vec<u8>, v: i64) {
        varint(out, ((v << 1) ^ (v >> 63)) as u64);
    }
    fn bytes(out: &mut Vec<u8>, b: &[u8]) {
        varint(out, b.len() as u64);
        out.extend_from_slice(b);
    }
    fn opt_str(out: &mut Vec<u8>, s: Option<&str>) {
        match s {
            Some(s) => {
                out.push(1);
                bytes(out, s.as_bytes());
            }
            None => out.push(0),
        }
    }
    bytes(out, ev.source.as_bytes());
    bytes(out, ev.hostname.as_bytes());
    out.push(ev.severity.rank());
    bytes(out, ev.message.as_bytes());
    opt_str(out, ev.event_type.as_deref());
    opt_str(out, ev.tag.as_deref());
    let input = weir_common::InputKind::ALL
        .iter()
        .position(|k| *k == ev.input)
        .expect("every input kind is in ALL");
    varint(out, input as u64);
    zigzag(out, ev.event_time.as_microsecond());
    zigzag(out, ev.received_at.as_microsecond());
    varint(out, ev.tags.len() as u64);
    for (k, v) in &ev.tags {
        bytes(out, k.as_bytes());
        bytes(out, v.as_bytes());
    }
    match &ev.raw_payload {
        Some(b) => {
            out.push(1);
            bytes(out, b);
        }
        None => out.push(0),
    }
    opt_str(out, ev.peer.as_deref());
    varint(out, ev.count);
    zigzag(out, ev.first_seen.as_microsecond());
    zigzag(out, ev.last_seen.as_microsecond());
}

/// An upper estimate of a record's postcard size (strings plus a few bytes of framing each).
fn encoded_size_hint(record: &Record) -> usize {
    match record {
        Record::Event(e) => {
            let tags: usize = e.tags.iter().map(|(k, v)| k.len() + v.len() + 4).sum();
            64 + e.source.len()
                + e.hostname.len()
                + e.message.len()
                + e.event_type.as_ref().map_or(0, String::len)
                + e.tag.as_ref().map_or(0, String::len)
                + e.peer.as_ref().map_or(0, String::len)
                + e.raw_payload.as_ref().map_or(0, Vec::len)
                + tags
        }
        Record::Count { .. } => 32,
    }
}

/// Size limits for the queue.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_records: u64,
    pub max_bytes: u64,
}

/// What one append did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct AppendOutcome {
    /// Sequence numbers given to the appended records that were kept (empty range if none).
    pub first_seq: u64,
    pub last_seq: u64,
    pub kept: u64,
    /// The sequence number each appended record got, in order; 0 for one that was not kept.
    pub seqs: Vec<u64>,
    /// Drops made to fit, by reason.
    pub drops: BTreeMap<String, u64>,
}

/// A snapshot of the queue's size.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stats {
    pub records: u64,
    pub bytes: u64,
    /// Receive time of the oldest record, µs since the epoch; 0 when empty.
    pub oldest_us: i64,
    pub next_seq: u64,
    pub drops: BTreeMap<String, u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("queue {path}: {error}")]
    Db {
        path: PathBuf,
        /// In the message, not a `source`, so a printed chain says it once.
        error: redb::Error,
    },
    #[error(
        "queue {path} is in use by another process (is another weir-agent running with the same data_dir?)"
    )]
    InUse { path: PathBuf },
}

/// In-memory mirror of the counters in `meta`, plus eviction cursors.
#[derive(Debug, Clone)]
struct State {
    next_seq: u64,
    bytes: u64,
    counts: [u64; RANKS],
    /// For each rank r: no record of rank r has a sequence below `cursor[r]`. Appends only add
    /// higher sequences, so the eviction scan for a rank never needs to look below its cursor.
    cursor: [u64; RANKS],
    drops: BTreeMap<String, u64>,
    /// When a transaction was last made durable. Ack deletes are cheap non-durable commits, but
    /// redb holds non-durable state in memory until a durable commit, and a crash would replay
    /// everything acked since; so an ack commit is made durable when this is over a second old.
    last_durable: std::time::Instant,
}

impl State {
    fn records(&self) -> u64 {
        self.counts.iter().sum()
    }
}

/// The durable queue. Methods block on disk I/O: call them from blocking threads.
pub struct Queue {
    db: Database,
    path: PathBuf,
    limits: Limits,
    state: Mutex<State>,
    /// Taken after `state` when both are held.
    tail: Mutex<Tail>,
}

/// The newest queued records, in sequence order (see "The tail in memory").
#[derive(Debug, Default)]
struct Tail {
    /// Every queued record with a sequence `>= start` is in `records`, and only those.
    start: u64,
    /// (sequence, header + payload) in increasing sequence order.
    records: VecDeque<(u64, Vec<u8>)>,
    bytes: usize,
}

impl Tail {
    /// Forgets everything: no queued record is at or above `next_seq` yet.
    fn reset(&mut self, next_seq: u64) {
        self.records.clear();
        self.bytes = 0;
        self.start = next_seq;
    }

    fn push(&mut self, seq: u64, bytes: Vec<u8>) {
        self.bytes += bytes.len();
        self.records.push_back((seq, bytes));
        while self.bytes > TAIL_BYTES {
            let Some((seq, b)) = self.records.pop_front() else {
                break;
            };
            self.bytes -= b.len();
            self.start = seq + 1;
        }
    }

    /// The records at or below `up_to` left the queue.
    fn ack(&mut self, up_to: u64) {
        while self.records.front().is_some_and(|(seq, _)| *seq <= up_to) {
            let (_, b) = self.records.pop_front().expect("front exists");
            self.bytes -= b.len();
        }
    }
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue").field("path", &self.path).finish()
    }
}

fn db_err(path: &Path, e: impl Into<redb::Error>) -> QueueError {
    QueueError::Db {
        path: path.to_path_buf(),
        error: e.into(),
    }
}

impl Queue {
    /// Opens the queue at `path`, creating it if absent. A file that cannot be opened as a queue
    /// (corrupt, truncated, not a redb file, unreadable contents) is renamed to
    /// `<path>.corrupt-<unix time>` with an error log and a fresh queue is started, so the agent
    /// keeps receiving instead of crash-looping. A file locked by another process is an error.
    pub fn open(path: &Path, limits: Limits) -> Result<Queue, QueueError> {
        match Self::try_open(path, limits) {
            Ok(q) => Ok(q),
            Err(QueueError::InUse { path }) => Err(QueueError::InUse { path }),
            Err(err) if path.exists() => {
                let aside = PathBuf::from(format!(
                    "{}.corrupt-{}",
                    path.display(),
                    jiff::Timestamp::now().as_second()
                ));
                tracing::error!(
                    queue = %path.display(), moved_to = %aside.display(), error = %err,
                    "queue file is unreadable; moved it aside and starting a fresh queue. Records in it were not delivered: keep the moved file for analysis"
                );
                std::fs::rename(path, &aside).map_err(|e| db_err(path, e))?;
                metrics::counter!("weir_agent_queue_reset_total").increment(1);
                Self::try_open(path, limits)
            }
            Err(err) => Err(err),
        }
    }

    fn try_open(path: &Path, limits: Limits) -> Result<Queue, QueueError> {
        let db = match Database::builder().set_cache_size(CACHE_BYTES).create(path) {
            Ok(db) => db,
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                return Err(QueueError::InUse {
                    path: path.to_path_buf(),
                });
            }
            Err(e) => return Err(db_err(path, e)),
        };
        let txn = db.begin_write().map_err(|e| db_err(path, e))?;
        let state = {
            let mut meta = txn.open_table(META).map_err(|e| db_err(path, e))?;
            txn.open_table(RECORDS).map_err(|e| db_err(path, e))?;
            let drops_table = txn.open_table(DROPS).map_err(|e| db_err(path, e))?;
            let get = |meta: &redb::Table<&str, u64>, k: &str| -> Result<Option<u64>, QueueError> {
                Ok(meta.get(k).map_err(|e| db_err(path, e))?.map(|v| v.value()))
            };
            let next_seq = match get(&meta, "next_seq")? {
                Some(n) => n,
                None => {
                    // A fresh queue: start above anything an earlier queue could have used.
                    let start = jiff::Timestamp::now().as_microsecond().max(1) as u64;
                    meta.insert("next_seq", start)
                        .map_err(|e| db_err(path, e))?;
                    start
                }
            };
            let mut counts = [0; RANKS];
            for (r, key) in RANK_KEYS.iter().enumerate() {
                counts[r] = get(&meta, key)?.unwrap_or(0);
            }
            let mut drops = BTreeMap::new();
            for item in drops_table.iter().map_err(|e| db_err(path, e))? {
                let (k, v) = item.map_err(|e| db_err(path, e))?;
                drops.insert(k.value().to_string(), v.value());
            }
            State {
                next_seq,
                bytes: get(&meta, "bytes")?.unwrap_or(0),
                counts,
                cursor: [0; RANKS],
                drops,
                last_durable: std::time::Instant::now(),
            }
        };
        txn.commit().map_err(|e| db_err(path, e))?;
        Ok(Queue {
            db,
            path: path.to_path_buf(),
            limits,
            tail: Mutex::new(Tail {
                start: state.next_seq,
                ..Tail::default()
            }),
            state: Mutex::new(state),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends records in one durable transaction, applying the drop policy when full.
    pub fn append(&self, records: &[Encoded]) -> Result<AppendOutcome, QueueError> {
        self.append_inner(records, true)
    }

    /// Appends Weir's own reports (queue-drop events) without evicting anything: a report about
    /// drops must not cause a drop, or a full, idle queue would lose one event per report,
    /// forever. The queue may exceed its limits by these few records until the next ordinary
    /// append, whose evictions bring it back under them.
    pub fn append_internal(&self, records: &[Encoded]) -> Result<AppendOutcome, QueueError> {
        self.append_inner(records, false)
    }

    fn append_inner(
        &self,
        records: &[Encoded],
        enforce_limits: bool,
    ) -> Result<AppendOutcome, QueueError> {
        let mut st = self.state.lock().expect("queue state lock");
        // A failed transaction is rolled back on disk; roll the in-memory mirror back too.
        let saved = st.clone();
        let result = self.append_locked(&mut st, records, enforce_limits);
        if result.is_err() {
            *st = saved;
        }
        result
    }

    fn append_locked(
        &self,
        st: &mut State,
        records: &[Encoded],
        enforce_limits: bool,
    ) -> Result<AppendOutcome, QueueError> {
        let path = &self.path;
        let mut out = AppendOutcome::default();
        let txn = self.db.begin_write().map_err(|e| db_err(path, e))?;
        {
            let mut table = txn.open_table(RECORDS).map_err(|e| db_err(path, e))?;
            for rec in records {
                let size = rec.len() as u64;
                if size > self.limits.max_bytes {
                    bump(&mut out.drops, "oversize_record".to_string());
                    out.seqs.push(0);
                    continue;
                }
                let mut keep = true;
                while enforce_limits
                    && (st.records() + 1 > self.limits.max_records
                        || st.bytes + size > self.limits.max_bytes)
                {
                    match self.evict_for(&mut table, st, rec.rank())? {
                        Some(reason) => bump(&mut out.drops, reason),
                        None => {
                            keep = false;
                            bump(&mut out.drops, full_reason(rec.rank()));
                            break;
                        }
                    }
                }
                if !keep {
                    out.seqs.push(0);
                    continue;
                }
                let seq = st.next_seq;
                out.seqs.push(seq);
                table
                    .insert(seq, rec.bytes.as_slice())
                    .map_err(|e| db_err(path, e))?;
                st.next_seq += 1;
                st.bytes += size;
                st.counts[rec.rank() as usize] += 1;
                if out.kept == 0 {
                    out.first_seq = seq;
                }
                out.last_seq = seq;
                out.kept += 1;
            }
            let mut meta = txn.open_table(META).map_err(|e| db_err(path, e))?;
            write_counters(&mut meta, st).map_err(|e| db_err(path, e))?;
            if !out.drops.is_empty() {
                let mut drops = txn.open_table(DROPS).map_err(|e| db_err(path, e))?;
                for (reason, n) in &out.drops {
                    let total = st.drops.entry(reason.clone()).or_insert(0);
                    *total += n;
                    drops
                        .insert(reason.as_str(), *total)
                        .map_err(|e| db_err(path, e))?;
                }
            }
        }
        let mut txn = txn;
        txn.set_durability(Durability::Immediate)
            .map_err(|e| db_err(path, redb::Error::from(e)))?;
        txn.commit().map_err(|e| db_err(path, e))?;
        st.last_durable = std::time::Instant::now();
        let mut tail = self.tail.lock().expect("queue tail lock");
        if out.drops.is_empty() {
            for (rec, &seq) in records.iter().zip(&out.seqs) {
                if seq != 0 {
                    tail.push(seq, rec.bytes.clone());
                }
            }
        } else {
            // Evictions may have taken records the tail holds: start it afresh.
            tail.reset(st.next_seq);
        }
        Ok(out)
    }

    /// Evicts the oldest record of the lowest severity rank `<= incoming`, returning the drop
    /// reason, or `None` when every queued record is more severe than the incoming one.
    fn evict_for(
        &self,
        table: &mut redb::Table<u64, &[u8]>,
        st: &mut State,
        incoming: u8,
    ) -> Result<Option<String>, QueueError> {
        let path = &self.path;
        for rank in 0..=incoming as usize {
            if st.counts[rank] == 0 {
                continue;
            }
            let mut victim = None;
            for item in table
                .range(st.cursor[rank]..)
                .map_err(|e| db_err(path, e))?
            {
                let (k, v) = item.map_err(|e| db_err(path, e))?;
                if v.value().first() == Some(&(rank as u8)) {
                    victim = Some((k.value(), v.value().len() as u64));
                    break;
                }
            }
            match victim {
                Some((seq, size)) => {
                    table.remove(seq).map_err(|e| db_err(path, e))?;
                    st.cursor[rank] = seq + 1;
                    st.counts[rank] -= 1;
                    st.bytes = st.bytes.saturating_sub(size);
                    return Ok(Some(full_reason(rank as u8)));
                }
                None => {
                    // The counter was stale (cannot happen unless the file was edited): repair.
                    st.counts[rank] = 0;
                    st.cursor[rank] = st.next_seq;
                }
            }
        }
        Ok(None)
    }

    /// Removes every record with a sequence `<= up_to` (the aggregator has stored them).
    /// Returns how many were removed.
    pub fn ack(&self, up_to: u64) -> Result<u64, QueueError> {
        let mut st = self.state.lock().expect("queue state lock");
        let saved = st.clone();
        let result = self.ack_locked(&mut st, up_to);
        if result.is_err() {
            *st = saved;
        }
        result
    }

    fn ack_locked(&self, st: &mut State, up_to: u64) -> Result<u64, QueueError> {
        let path = &self.path;
        let mut txn = self.db.begin_write().map_err(|e| db_err(path, e))?;
        let durable = st.last_durable.elapsed() >= ACK_DURABLE_EVERY;
        txn.set_durability(if durable {
            Durability::Immediate
        } else {
            Durability::None
        })
        .map_err(|e| db_err(path, redb::Error::from(e)))?;
        let mut removed = 0;
        {
            let mut table = txn.open_table(RECORDS).map_err(|e| db_err(path, e))?;
            let extracted = table
                .extract_from_if(..=up_to, |_, _| true)
                .map_err(|e| db_err(path, e))?;
            for item in extracted {
                let (_, v) = item.map_err(|e| db_err(path, e))?;
                let v = v.value();
                let rank = v.first().copied().unwrap_or(0) as usize % RANKS;
                st.counts[rank] = st.counts[rank].saturating_sub(1);
                st.bytes = st.bytes.saturating_sub(v.len() as u64);
                removed += 1;
            }
            if removed > 0 {
                let mut meta = txn.open_table(META).map_err(|e| db_err(path, e))?;
                write_counters(&mut meta, st).map_err(|e| db_err(path, e))?;
            }
        }
        txn.commit().map_err(|e| db_err(path, e))?;
        if durable {
            st.last_durable = std::time::Instant::now();
        }
        self.tail.lock().expect("queue tail lock").ack(up_to);
        Ok(removed)
    }

    /// Reads up to `max_records` records (and about `max_bytes`) starting at `from`.
    pub fn read_from(
        &self,
        from: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<WireRecord>, QueueError> {
        {
            let tail = self.tail.lock().expect("queue tail lock");
            if from >= tail.start {
                let at = tail.records.partition_point(|(seq, _)| *seq < from);
                let mut out = Vec::new();
                let mut bytes = 0;
                for (seq, v) in tail.records.range(at..) {
                    let payload = v.get(HEADER_LEN..).unwrap_or_default();
                    // The same limits as the file's loop below.
                    if !out.is_empty() && bytes + payload.len() > max_bytes {
                        break;
                    }
                    bytes += payload.len();
                    out.push(WireRecord {
                        seq: *seq,
                        payload: payload.to_vec(),
                    });
                    if out.len() >= max_records || bytes >= max_bytes {
                        break;
                    }
                }
                return Ok(out);
            }
        }
        self.read_from_file(from, max_records, max_bytes)
    }

    /// [`Queue::read_from`] from the file, not the tail in memory.
    fn read_from_file(
        &self,
        from: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<WireRecord>, QueueError> {
        let path = &self.path;
        let txn = self.db.begin_read().map_err(|e| db_err(path, e))?;
        let table = txn.open_table(RECORDS).map_err(|e| db_err(path, e))?;
        let mut out = Vec::with_capacity(max_records.min(4096));
        let mut bytes = 0;
        for item in table.range(from..).map_err(|e| db_err(path, e))? {
            let (k, v) = item.map_err(|e| db_err(path, e))?;
            let v = v.value();
            let payload = v.get(HEADER_LEN..).unwrap_or_default();
            // Stop before a record would take the batch past max_bytes (a batch always holds
            // at least one record), so batches stay under the wire's frame limit.
            if !out.is_empty() && bytes + payload.len() > max_bytes {
                break;
            }
            bytes += payload.len();
            out.push(WireRecord {
                seq: k.value(),
                payload: payload.to_vec(),
            });
            if out.len() >= max_records || bytes >= max_bytes {
                break;
            }
        }
        Ok(out)
    }

    /// The first queued sequence, if any.
    pub fn first_seq(&self) -> Result<Option<u64>, QueueError> {
        let path = &self.path;
        let txn = self.db.begin_read().map_err(|e| db_err(path, e))?;
        let table = txn.open_table(RECORDS).map_err(|e| db_err(path, e))?;
        Ok(table
            .first()
            .map_err(|e| db_err(path, e))?
            .map(|(k, _)| k.value()))
    }

    /// The sequence the next appended record will get.
    pub fn next_seq(&self) -> u64 {
        self.state.lock().expect("queue state lock").next_seq
    }

    /// Makes the queue consistent with what the aggregator says it has stored for this agent
    /// (`committed`), atomically with respect to appends:
    ///
    /// - Normally every queued sequence at or below `committed` was stored, and is deleted.
    /// - If `committed` is at or above this queue's next sequence, this queue never issued the
    ///   numbers the aggregator has seen: the file was recreated with the clock behind, or
    ///   restored from an old copy. Then none of its records were stored (the aggregator would
    ///   have skipped them as duplicates), so they are renumbered above `committed`, in order,
    ///   instead of being mistaken for delivered. Returns how many were renumbered.
    pub fn reconcile(&self, committed: u64) -> Result<u64, QueueError> {
        let path = &self.path;
        let mut st = self.state.lock().expect("queue state lock");
        if committed < st.next_seq {
            drop(st);
            self.ack(committed)?;
            return Ok(0);
        }
        let saved = st.clone();
        let result = (|| {
            let txn = self.db.begin_write().map_err(|e| db_err(path, e))?;
            let mut moved = 0;
            {
                let mut table = txn.open_table(RECORDS).map_err(|e| db_err(path, e))?;
                let old: Vec<Vec<u8>> = table
                    .extract_from_if(0u64.., |_, _| true)
                    .map_err(|e| db_err(path, e))?
                    .map(|item| item.map(|(_, v)| v.value().to_vec()))
                    .collect::<Result<_, _>>()
                    .map_err(|e| db_err(path, e))?;
                let mut seq = committed + 1;
                for v in old {
                    table
                        .insert(seq, v.as_slice())
                        .map_err(|e| db_err(path, e))?;
                    seq += 1;
                    moved += 1;
                }
                st.next_seq = seq;
                st.cursor = [0; RANKS];
                let mut meta = txn.open_table(META).map_err(|e| db_err(path, e))?;
                write_counters(&mut meta, &st).map_err(|e| db_err(path, e))?;
            }
            let mut txn = txn;
            txn.set_durability(Durability::Immediate)
                .map_err(|e| db_err(path, redb::Error::from(e)))?;
            txn.commit().map_err(|e| db_err(path, e))?;
            self.tail
                .lock()
                .expect("queue tail lock")
                .reset(st.next_seq);
            Ok(moved)
        })();
        if result.is_err() {
            *st = saved;
        }
        result
    }

    pub fn stats(&self) -> Result<Stats, QueueError> {
        let path = &self.path;
        let (records, bytes, next_seq, drops) = {
            let st = self.state.lock().expect("queue state lock");
            (st.records(), st.bytes, st.next_seq, st.drops.clone())
        };
        let txn = self.db.begin_read().map_err(|e| db_err(path, e))?;
        let table = txn.open_table(RECORDS).map_err(|e| db_err(path, e))?;
        let oldest_us = match table.first().map_err(|e| db_err(path, e))? {
            Some((_, v)) => v
                .value()
                .get(1..HEADER_LEN)
                .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")))
                .unwrap_or(0),
            None => 0,
        };
        Ok(Stats {
            records,
            bytes,
            oldest_us,
            next_seq,
            drops,
        })
    }
}

fn write_counters(meta: &mut redb::Table<&str, u64>, st: &State) -> Result<(), redb::StorageError> {
    meta.insert("next_seq", st.next_seq)?;
    meta.insert("bytes", st.bytes)?;
    for (r, key) in RANK_KEYS.iter().enumerate() {
        meta.insert(*key, st.counts[r])?;
    }
    Ok(())
}

fn full_reason(rank: u8) -> String {
    let sev = Severity::from_rank(rank).unwrap_or(Severity::Debug);
    format!("queue_full_{sev}")
}

fn bump(map: &mut BTreeMap<String, u64>, reason: String) {
    *map.entry(reason).or_insert(0) += 1;
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::Timestamp;
    use weir_common::{Event, InputKind};

    fn rec(sev: Severity, msg: &str) -> Encoded {
        let t = Timestamp::from_second(1_700_000_000).unwrap();
        let r = Record::Event(Event::new(InputKind::Api, "t", "h", sev, msg, t));
        Encoded::new(&r, t.as_microsecond())
    }

    fn big() -> Limits {
        Limits {
            max_records: 1_000_000,
            max_bytes: 1 << 30,
        }
    }

    fn messages(q: &Queue) -> Vec<String> {
        q.read_from(0, usize::MAX, usize::MAX)
            .unwrap()
            .into_iter()
            .map(|w| match Record::from_bytes(&w.payload).unwrap() {
                Record::Event(e) => e.message,
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn append_read_ack_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("queue.redb");
        let first;
        {
            let q = Queue::open(&path, big()).unwrap();
            let out = q
                .append(&[rec(Severity::Info, "a"), rec(Severity::Info, "b")])
                .unwrap();
            assert_eq!(out.kept, 2);
            first = out.first_seq;
            assert_eq!(out.last_seq, first + 1);
            let out = q.append(&[rec(Severity::Error, "c")]).unwrap();
            assert_eq!(out.first_seq, first + 2);
            let recs = q.read_from(first + 1, 10, usize::MAX).unwrap();
            assert_eq!(
                recs.iter().map(|r| r.seq).collect::<Vec<_>>(),
                vec![first + 1, first + 2]
            );
            assert_eq!(q.ack(first).unwrap(), 1);
            assert_eq!(q.stats().unwrap().records, 2);
        }
        // Reopen: counters and sequence survive.
        let q = Queue::open(&path, big()).unwrap();
        let st = q.stats().unwrap();
        assert_eq!(st.records, 2);
        assert_eq!(st.next_seq, first + 3);
        assert_eq!(st.oldest_us, 1_700_000_000_000_000);
        assert_eq!(messages(&q), vec!["b", "c"]);
        assert_eq!(q.ack(u64::MAX).unwrap(), 2);
        let st = q.stats().unwrap();
        assert_eq!((st.records, st.bytes, st.oldest_us), (0, 0, 0));
    }

    #[test]
    fn full_queue_drops_lowest_severity_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(
            &dir.path().join("q.redb"),
            Limits {
                max_records: 4,
                max_bytes: 1 << 30,
            },
        )
        .unwrap();
        q.append(&[
            rec(Severity::Info, "i1"),
            rec(Severity::Debug, "d1"),
            rec(Severity::Error, "e1"),
            rec(Severity::Debug, "d2"),
        ])
        .unwrap();
        // Full: a warning evicts the oldest debug.
        let out = q.append(&[rec(Severity::Warning, "w1")]).unwrap();
        assert_eq!(out.drops, BTreeMap::from([("queue_full_debug".into(), 1)]));
        assert_eq!(messages(&q), vec!["i1", "e1", "d2", "w1"]);
        // Then the next debug, then info.
        q.append(&[rec(Severity::Critical, "c1"), rec(Severity::Critical, "c2")])
            .unwrap();
        assert_eq!(messages(&q), vec!["e1", "w1", "c1", "c2"]);
        // A debug cannot evict anything more severe: it is dropped itself.
        let out = q.append(&[rec(Severity::Debug, "d3")]).unwrap();
        assert_eq!(out.kept, 0);
        assert_eq!(out.drops, BTreeMap::from([("queue_full_debug".into(), 1)]));
        // Lowest severity present goes first (the warning), then, at equal severity, the oldest.
        q.append(&[rec(Severity::Error, "e2")]).unwrap();
        assert_eq!(messages(&q), vec!["e1", "c1", "c2", "e2"]);
        q.append(&[rec(Severity::Error, "e3")]).unwrap();
        assert_eq!(messages(&q), vec!["c1", "c2", "e2", "e3"]);
        let drops = q.stats().unwrap().drops;
        assert_eq!(drops["queue_full_debug"], 3);
        assert_eq!(drops["queue_full_info"], 1);
        assert_eq!(drops["queue_full_warning"], 1);
        assert_eq!(drops["queue_full_error"], 1);
        assert!(!drops.contains_key("queue_full_critical"));
    }

    #[test]
    fn internal_reports_never_evict() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(
            &dir.path().join("q.redb"),
            Limits {
                max_records: 2,
                max_bytes: 1 << 30,
            },
        )
        .unwrap();
        q.append(&[rec(Severity::Debug, "d1"), rec(Severity::Debug, "d2")])
            .unwrap();
        let out = q
            .append_internal(&[rec(Severity::Error, "report")])
            .unwrap();
        assert!(out.drops.is_empty());
        assert_eq!(messages(&q), vec!["d1", "d2", "report"]);
        // The next ordinary append brings the queue back under its limit.
        q.append(&[rec(Severity::Info, "i1")]).unwrap();
        assert_eq!(messages(&q), vec!["report", "i1"]);
    }

    #[test]
    fn byte_limit_applies() {
        let dir = tempfile::tempdir().unwrap();
        let one = rec(Severity::Info, "x").len() as u64;
        let q = Queue::open(
            &dir.path().join("q.redb"),
            Limits {
                max_records: 100,
                max_bytes: one * 3,
            },
        )
        .unwrap();
        for _ in 0..5 {
            q.append(&[rec(Severity::Info, "x")]).unwrap();
        }
        let st = q.stats().unwrap();
        assert_eq!(st.records, 3);
        assert_eq!(st.bytes, one * 3);
        assert_eq!(st.drops["queue_full_info"], 2);
    }

    /// The tail in memory answers exactly as the file would, through appends, acks, evictions
    /// and renumbering.
    #[test]
    fn reads_from_the_tail_match_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(
            &dir.path().join("q.redb"),
            Limits {
                max_records: 50,
                max_bytes: 1 << 30,
            },
        )
        .unwrap();
        let check = |q: &Queue| {
            let first = q.first_seq().unwrap().unwrap_or(q.next_seq());
            for from in [
                0,
                first,
                first + 1,
                first + 7,
                q.next_seq() - 1,
                q.next_seq(),
            ] {
                for (n, bytes) in [(usize::MAX, usize::MAX), (3, usize::MAX), (100, 40)] {
                    let a = q.read_from(from, n, bytes).unwrap();
                    let b = q.read_from_file(from, n, bytes).unwrap();
                    let seqs = |v: &[WireRecord]| v.iter().map(|w| w.seq).collect::<Vec<_>>();
                    assert_eq!(
                        seqs(&a),
                        seqs(&b),
                        "from {from}, {n} records, {bytes} bytes"
                    );
                    assert!(a.iter().zip(&b).all(|(x, y)| x.payload == y.payload));
                }
            }
        };
        let mut i = 0;
        let mut batch = |n: usize, sev: Severity| {
            (0..n)
                .map(|_| {
                    i += 1;
                    rec(sev, &format!("m{i}"))
                })
                .collect::<Vec<_>>()
        };
        let out = q.append(&batch(20, Severity::Info)).unwrap();
        check(&q);
        q.ack(out.first_seq + 4).unwrap();
        check(&q);
        // Past the record limit: evictions, so the tail starts afresh and reads go to the file.
        let out = q.append(&batch(40, Severity::Error)).unwrap();
        assert!(!out.drops.is_empty());
        check(&q);
        q.ack(out.last_seq - 10).unwrap();
        check(&q);
        q.append(&batch(5, Severity::Critical)).unwrap();
        check(&q);
        assert!(q.tail.lock().unwrap().records.len() == 5);
        let last = q.next_seq() - 1;
        q.ack(last - 2).unwrap();
        check(&q);
        // Renumbered above what the aggregator has seen.
        q.reconcile(q.next_seq() + 1_000).unwrap();
        check(&q);
        q.append(&batch(3, Severity::Info)).unwrap();
        check(&q);
        // Past the tail's byte bound: its oldest records go, read from the file.
        let big = Severity::Info;
        let long = "x".repeat(600 << 10);
        q.append(&[rec(big, &long), rec(big, &long)]).unwrap();
        q.append(&vec![rec(big, &long); 6]).unwrap();
        check(&q);
        assert!(q.tail.lock().unwrap().bytes <= TAIL_BYTES);
    }

    proptest::proptest! {
        /// The direct encoder writes what postcard writes, for any event.
        #[test]
        fn event_encoding_is_postcard(
            source in ".{0,20}", host in ".{0,300}", msg in ".{0,300}", sev in 0u8..5,
            input in 0usize..5, ty in proptest::option::of(".{0,10}"),
            tag in proptest::option::of(".{0,10}"), peer in proptest::option::of(".{0,40}"),
            times in proptest::array::uniform4(proptest::num::i64::ANY),
            tags in proptest::collection::btree_map(".{0,10}", ".{0,200}", 0..8),
            raw in proptest::option::of(proptest::collection::vec(proptest::num::u8::ANY, 0..300)),
            count in proptest::num::u64::ANY,
        ) {
            let t = |us: i64| {
                // jiff's range in whole microseconds.
                Timestamp::from_microsecond(us.clamp(-377_705_023_201_000_000, 253_402_207_200_000_000))
                .unwrap()
            };
            let mut e = Event::new(
                InputKind::ALL[input], source, host, Severity::from_rank(sev).unwrap(), msg, t(times[0]),
            );
            e.event_type = ty;
            e.tag = tag;
            e.peer = peer;
            e.event_time = t(times[1]);
            e.first_seen = t(times[2]);
            e.last_seen = t(times[3]);
            e.tags = tags;
            e.raw_payload = raw;
            e.count = count;
            let r = Record::Event(e);
            let enc = Encoded::new(&r, 7);
            proptest::prop_assert_eq!(&enc.bytes[HEADER_LEN..], &r.to_bytes()[..]);
            proptest::prop_assert_eq!(Record::from_bytes(&enc.bytes[HEADER_LEN..]).unwrap(), r);
        }
    }

    #[test]
    fn corrupt_file_is_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("queue.redb");
        std::fs::write(&path, b"this is not a redb file, it is garbage".repeat(200)).unwrap();
        let q = Queue::open(&path, big()).unwrap();
        q.append(&[rec(Severity::Info, "fresh")]).unwrap();
        let aside: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with("queue.redb.corrupt-"))
            .collect();
        assert_eq!(aside.len(), 1, "{aside:?}");
    }

    #[test]
    fn reconcile_deletes_stored_records_or_renumbers_unstored_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.redb");
        let q = Queue::open(&path, big()).unwrap();
        let out = q
            .append(&[
                rec(Severity::Info, "a"),
                rec(Severity::Info, "b"),
                rec(Severity::Info, "c"),
            ])
            .unwrap();
        // Normal: the aggregator has the first one.
        assert_eq!(q.reconcile(out.first_seq).unwrap(), 0);
        assert_eq!(messages(&q), vec!["b", "c"]);
        // Restored/recreated queue: the aggregator has seen far higher numbers. Nothing queued
        // was stored, so nothing may be deleted: the records move above, in order.
        let committed = q.next_seq() + 1_000_000;
        assert_eq!(q.reconcile(committed).unwrap(), 2);
        let recs = q.read_from(0, 10, usize::MAX).unwrap();
        assert_eq!(
            recs.iter().map(|r| r.seq).collect::<Vec<_>>(),
            vec![committed + 1, committed + 2]
        );
        assert_eq!(messages(&q), vec!["b", "c"]);
        assert_eq!(q.stats().unwrap().records, 2);
        let out = q.append(&[rec(Severity::Info, "d")]).unwrap();
        assert_eq!(out.first_seq, committed + 3);
        drop(q);
        // It survives a reopen.
        let q = Queue::open(&path, big()).unwrap();
        assert_eq!(q.next_seq(), committed + 4);
        assert_eq!(messages(&q), vec!["b", "c", "d"]);
    }
}
