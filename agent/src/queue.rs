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
//!   Acknowledgement deletes are not fsynced on their own: they become durable with the next
//!   append, or by themselves once [`ACK_DURABLE_EVERY`] has passed. After a crash a few
//!   acknowledged records may be sent again, and the aggregator recognises them by sequence.
//!
//! # On-disk format (redb tables)
//! Records are stored in blocks, one redb entry per group commit (a larger commit is cut into
//! blocks of at most 1,024 records or 256 KiB), so the B-tree is touched once per commit, not
//! once per record, and an ack deletes whole blocks in one range delete.
//! - `blocks`: `u64` key → a block: `[1]` then per record
//!   `[seq: u64 LE][len: u32 LE][rank: u8][received_at µs: i64 LE][postcard Record]`
//!   (see `block.rs`). Sequences increase within a block and from one block to the next; a
//!   block's key is at or below its first record's sequence and above the previous block's
//!   records.
//! - `block_index`: the same key → `[last seq][live bytes][live records per rank]`, the block's
//!   summary, so acks and evictions find what they need without reading blocks.
//! - `meta`: `&str` → `u64`: `next_seq`, `bytes`, `count.<rank>` (records per severity rank),
//!   `acked` (every sequence at or below it is acknowledged). An ack that ends inside a block
//!   leaves the block in place and only raises `acked`; reads skip what it covers, and the
//!   summary no longer counts it.
//! - `drops`: `&str` reason → `u64` cumulative drops since the queue was created.
//! - `records`: the format before blocks (`u64` sequence → one record). A queue file written by
//!   an older agent is migrated into blocks when it is opened, oldest first, in durable chunks,
//!   keeping every sequence; the emptied table is then deleted (see `legacy.rs`).
//!
//! # The tail in memory
//! The records appended last (up to [`TAIL_BYTES`]) are also kept in memory until acknowledged,
//! so the forwarder, which normally reads what was just committed, reads them from there instead
//! of walking redb's B-tree again (a tenth of the agent's work per message). Invariant: every
//! queued record with a sequence at or above `Tail::start` is in the tail, and nothing else is.
//! An append that dropped or evicted anything, or a renumbering, empties it (start moves past
//! the queue's end), and reads below `start` go to the file, so the tail is only ever a shortcut.
//!
//! # When full
//! The limit is on records and on logical bytes (header + payload; the file itself is larger by
//! redb's page overhead). A new record that does not fit evicts the oldest record of the lowest
//! severity present, if that severity is not above the new record's; otherwise the new record is
//! the one dropped. Drops are counted as `queue_full_<severity>`. The block summaries say which
//! blocks hold a severity, so the search reads only the block it evicts from; blocks changed by
//! an append's evictions are rewritten once, at the end of its transaction.

mod block;
mod legacy;

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use weir_common::wire::{WireRecord, WireRecordRef};
use weir_common::{Record, Severity};

use self::block::{BlockLimits, Summary};

const BLOCKS: TableDefinition<u64, &[u8]> = TableDefinition::new("blocks");
const INDEX: TableDefinition<u64, &[u8]> = TableDefinition::new("block_index");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const DROPS: TableDefinition<&str, u64> = TableDefinition::new("drops");

/// redb page cache. The queue is written at its end and read from its start (mostly from the
/// tail in memory), so a small cache serves it well, and it keeps the agent within its memory
/// budget on a small gateway: the former 8 MiB cache and 4 MiB tail cost ~13 MB more peak RSS
/// at 100k lines/s than 2 MiB and 1 MiB, for no measurable throughput.
const CACHE_BYTES: usize = 2 << 20;

/// Longest time acknowledgement deletes stay non-durable (see `State::last_durable`).
const ACK_DURABLE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Most bytes of records kept in memory for the forwarder (see "The tail in memory"). With the
/// link up, acknowledgements trim it to a few milliseconds of input; during an outage it holds
/// the newest records and the forwarder reads the older ones from the file.
const TAIL_BYTES: usize = 1 << 20;

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
        match record {
            // Every input event takes this path: written directly, in postcard's format.
            Record::Event(ev) => Encoded::event(EventFields::of(ev), received_at_us),
            Record::Count { .. } => {
                let mut bytes = Vec::with_capacity(9 + 32);
                bytes.push(record.severity().rank());
                bytes.extend_from_slice(&received_at_us.to_le_bytes());
                bytes = postcard::to_extend(record, bytes).expect("postcard encoding into a Vec");
                Encoded { bytes, dedup: None }
            }
        }
    }

    /// A [`Record::Event`] given by its fields, in exactly the bytes [`Encoded::new`] gives the
    /// owned event with those fields (it calls this), so an input can encode an event it never
    /// built (see `syslog::draft`).
    pub(crate) fn event<'a, T>(ev: EventFields<'a, T>, received_at_us: i64) -> Encoded
    where
        T: Iterator<Item = (&'a str, &'a str)> + ExactSizeIterator + Clone,
    {
        // Size the buffer once: growing it from a guess copied each event two or three times.
        let mut bytes = Vec::with_capacity(9 + ev.size_hint());
        bytes.push(ev.severity.rank());
        bytes.extend_from_slice(&received_at_us.to_le_bytes());
        bytes.push(0); // the `Record::Event` variant
        write_event(&mut bytes, ev);
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

    /// The memory this record holds: its buffer as allocated and the struct itself (what the
    /// sink's byte bound counts).
    pub fn footprint(&self) -> usize {
        self.bytes.capacity() + std::mem::size_of::<Encoded>()
    }
}

/// The fields of a [`weir_common::Event`], borrowed, in its field order; `tags` yields the
/// tags in increasing key order, each key once (as a `BTreeMap` holds them).
#[derive(Debug, Clone)]
pub(crate) struct EventFields<'a, T> {
    pub source: &'a str,
    pub hostname: &'a str,
    pub severity: Severity,
    pub message: &'a str,
    pub event_type: Option<&'a str>,
    pub tag: Option<&'a str>,
    pub input: weir_common::InputKind,
    pub event_time: jiff::Timestamp,
    pub received_at: jiff::Timestamp,
    pub tags: T,
    pub raw_payload: Option<&'a [u8]>,
    pub peer: Option<&'a str>,
    pub count: u64,
    pub first_seen: jiff::Timestamp,
    pub last_seen: jiff::Timestamp,
}

type TagIter<'a> = std::iter::Map<
    std::collections::btree_map::Iter<'a, String, String>,
    fn((&'a String, &'a String)) -> (&'a str, &'a str),
>;

impl<'a> EventFields<'a, TagIter<'a>> {
    pub(crate) fn of(ev: &'a weir_common::Event) -> Self {
        let pair: fn((&'a String, &'a String)) -> (&'a str, &'a str) =
            |(k, v)| (k.as_str(), v.as_str());
        EventFields {
            source: &ev.source,
            hostname: &ev.hostname,
            severity: ev.severity,
            message: &ev.message,
            event_type: ev.event_type.as_deref(),
            tag: ev.tag.as_deref(),
            input: ev.input,
            event_time: ev.event_time,
            received_at: ev.received_at,
            tags: ev.tags.iter().map(pair),
            raw_payload: ev.raw_payload.as_deref(),
            peer: ev.peer.as_deref(),
            count: ev.count,
            first_seen: ev.first_seen,
            last_seen: ev.last_seen,
        }
    }
}

impl<'a, T> EventFields<'a, T>
where
    T: Iterator<Item = (&'a str, &'a str)> + ExactSizeIterator + Clone,
{
    /// An upper estimate of the event's postcard size (strings plus a few bytes of framing each).
    fn size_hint(&self) -> usize {
        let tags: usize = self.tags.clone().map(|(k, v)| k.len() + v.len() + 4).sum();
        64 + self.source.len()
            + self.hostname.len()
            + self.message.len()
            + self.event_type.map_or(0, str::len)
            + self.tag.map_or(0, str::len)
            + self.peer.map_or(0, str::len)
            + self.raw_payload.map_or(0, <[u8]>::len)
            + tags
    }
}

/// Appends `ev` exactly as `postcard` serialises it (the property test
/// `event_encoding_is_postcard` holds the two together): serde's generic path cost ~2,000
/// instructions per syslog event, this ~400. Field order is [`weir_common::Event`]'s, which
/// its module promises never to reorder.
fn write_event<'a, T>(out: &mut Vec<u8>, ev: EventFields<'a, T>)
where
    T: Iterator<Item = (&'a str, &'a str)> + ExactSizeIterator,
{
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
    opt_str(out, ev.event_type);
    opt_str(out, ev.tag);
    let input = weir_common::InputKind::ALL
        .iter()
        .position(|k| *k == ev.input)
        .expect("every input kind is in ALL");
    varint(out, input as u64);
    zigzag(out, ev.event_time.as_microsecond());
    zigzag(out, ev.received_at.as_microsecond());
    varint(out, ev.tags.len() as u64);
    for (k, v) in ev.tags {
        bytes(out, k.as_bytes());
        bytes(out, v.as_bytes());
    }
    match ev.raw_payload {
        Some(b) => {
            out.push(1);
            bytes(out, b);
        }
        None => out.push(0),
    }
    opt_str(out, ev.peer);
    varint(out, ev.count);
    zigzag(out, ev.first_seen.as_microsecond());
    zigzag(out, ev.last_seen.as_microsecond());
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
    /// Only a bug or an edited file makes one (redb checksums its pages). Found at open, the
    /// file is moved aside like any unreadable queue; found later, reads stop there rather than
    /// skip records silently, and the next start moves the file aside. "Later" needs the file
    /// changed under the running agent (by hand, or storage corrupting a page after open):
    /// every block written after open comes from `put_chunked`, encoding records this process
    /// holds (new ones, or those of a block it parsed and rewrites), so it parses by
    /// construction (`behaves_like_the_model` and `check_blocks` test that).
    #[error(
        "queue {path}: block {block} is malformed at byte {offset}. Stop weir-agent, move {path} aside (keep it for analysis) and start it again with a fresh queue"
    )]
    Malformed {
        path: PathBuf,
        block: u64,
        offset: usize,
    },
}

impl QueueError {
    /// An error of the machine (disk full, read-only file system, permissions, memory), not of
    /// the file: moving the file aside would not help and would hide the queued records, so
    /// [`Queue::open`] returns it instead and the agent refuses to start, saying why.
    fn is_environment(&self) -> bool {
        use std::io::ErrorKind as K;
        matches!(
            self,
            QueueError::Db { error: redb::Error::Io(e), .. }
                if matches!(
                    e.kind(),
                    K::StorageFull
                        | K::QuotaExceeded
                        | K::ReadOnlyFilesystem
                        | K::PermissionDenied
                        | K::OutOfMemory
                )
        )
    }
}

/// In-memory mirror of the counters in `meta`, plus eviction cursors.
#[derive(Debug, Clone)]
struct State {
    next_seq: u64,
    /// Every sequence at or below this is acknowledged (`meta` key `acked`).
    acked: u64,
    bytes: u64,
    counts: [u64; RANKS],
    /// For each rank r: no block with a key below `cursor[r]` holds a live record of rank r.
    /// Appends only add blocks with higher keys, so the eviction scan for a rank never needs to
    /// look below its cursor.
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
    blocks: BlockLimits,
    state: Mutex<State>,
    /// Taken after `state` when both are held.
    tail: Mutex<Tail>,
    /// Tests: appends fail as a disk error would (see [`Queue::fail_appends`]).
    #[cfg(test)]
    fail_appends: std::sync::atomic::AtomicBool,
}

/// The newest queued records, in sequence order (see "The tail in memory").
#[derive(Debug, Default)]
struct Tail {
    /// Every queued record with a sequence `>= start` is in `records`, and only those.
    start: u64,
    /// (sequence, header + payload) in increasing sequence order.
    records: VecDeque<(u64, Vec<u8>)>,
    /// Memory the records hold ([`Tail::held`]: buffer capacity and the entry), at most
    /// [`TAIL_BYTES`].
    bytes: usize,
}

impl Tail {
    /// Forgets everything: no queued record is at or above `next_seq` yet.
    fn reset(&mut self, next_seq: u64) {
        self.records.clear();
        self.bytes = 0;
        self.start = next_seq;
    }

    /// What a record costs the tail: its buffer's capacity (the record's own buffer, kept as
    /// it came) and its entry in `records`, which for small records (count updates, ~40
    /// bytes) is nearly as much again.
    fn held(bytes: &Vec<u8>) -> usize {
        bytes.capacity() + std::mem::size_of::<(u64, Vec<u8>)>()
    }

    /// Adds the record after the newest one; the bound counts [`Tail::held`].
    fn push(&mut self, seq: u64, bytes: Vec<u8>) {
        self.bytes += Tail::held(&bytes);
        self.records.push_back((seq, bytes));
        while self.bytes > TAIL_BYTES {
            let Some((seq, b)) = self.records.pop_front() else {
                break;
            };
            self.bytes -= Tail::held(&b);
            self.start = seq + 1;
        }
    }

    /// The forwarder has read (and sent) every record below `from`: they leave the tail, so
    /// it keeps room for what is still to be sent. A resend after a reconnect reads them from
    /// the file, as any record below `start`.
    fn sent_below(&mut self, from: u64) {
        while self.records.front().is_some_and(|(seq, _)| *seq < from) {
            let (seq, b) = self.records.pop_front().expect("front exists");
            self.bytes -= Tail::held(&b);
            self.start = seq + 1;
        }
    }

    /// The records at or below `up_to` left the queue.
    fn ack(&mut self, up_to: u64) {
        while self.records.front().is_some_and(|(seq, _)| *seq <= up_to) {
            let (_, b) = self.records.pop_front().expect("front exists");
            self.bytes -= Tail::held(&b);
        }
    }
}

/// Test rigs' queue and read-back.
#[cfg(test)]
impl Queue {
    /// A queue at `path` whose limits a test never reaches (10M records, 1 GiB).
    pub(crate) fn open_roomy(path: &Path) -> std::sync::Arc<Queue> {
        let limits = Limits {
            max_records: 10_000_000,
            max_bytes: 1 << 30,
        };
        std::sync::Arc::new(Queue::open(path, limits).expect("opening a test queue"))
    }

    /// Every event in the queue, in order (tests read back what the inputs committed).
    pub(crate) fn events(&self) -> Vec<weir_common::Event> {
        self.read_from(0, usize::MAX, usize::MAX)
            .expect("reading the queue")
            .into_iter()
            .filter_map(|w| match weir_common::Record::from_bytes(&w.payload) {
                Ok(weir_common::Record::Event(e)) => Some(e),
                _ => None,
            })
            .collect()
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

fn malformed(path: &Path, block: u64, m: block::Malformed) -> QueueError {
    QueueError::Malformed {
        path: path.to_path_buf(),
        block,
        offset: m.at,
    }
}

/// A block's live records, owned: the form a block takes while an append's evictions change
/// it, before it is written back.
type Owned = Vec<(u64, Vec<u8>)>;

/// Blocks an append's evictions changed, by key, not yet written back.
#[derive(Default)]
struct Dirty {
    blocks: BTreeMap<u64, Owned>,
    /// Bytes of records loaded into `blocks`: bounds the memory one append's evictions take.
    bytes: usize,
}

impl Dirty {
    /// Writes every changed block back and forgets them. A block is written under its first
    /// record's sequence, which is at or above its old key and below the next block's, so the
    /// order of blocks is unchanged; an emptied block is deleted.
    fn write_back(
        &mut self,
        blocks: &mut redb::Table<u64, &[u8]>,
        index: &mut redb::Table<u64, &[u8]>,
        limits: BlockLimits,
    ) -> Result<(), redb::StorageError> {
        for (key, recs) in std::mem::take(&mut self.blocks) {
            blocks.remove(key)?;
            index.remove(key)?;
            if !recs.is_empty() {
                put_chunked(blocks, index, &recs, limits)?;
            }
        }
        self.bytes = 0;
        Ok(())
    }
}

/// Parses every stored block once at open, so a malformed one (a bug or an edited file: redb
/// checksums its pages) makes the file unreadable as a whole and [`Queue::open`] moves it aside,
/// instead of the forwarder stopping at that block later. Reads one block at a time: the cost is
/// one pass over the queue file at start.
fn check_blocks_parse(db: &Database, path: &Path) -> Result<(), QueueError> {
    let txn = db.begin_read().map_err(|e| db_err(path, e))?;
    let table = txn.open_table(BLOCKS).map_err(|e| db_err(path, e))?;
    for item in table.iter().map_err(|e| db_err(path, e))? {
        let (k, v) = item.map_err(|e| db_err(path, e))?;
        for entry in block::records(v.value()) {
            entry.map_err(|m| malformed(path, k.value(), m))?;
        }
    }
    Ok(())
}

/// The live records (above `acked`) of the block stored at `key`.
fn load_block(
    path: &Path,
    blocks: &impl ReadableTable<u64, &'static [u8]>,
    key: u64,
    acked: u64,
) -> Result<Owned, QueueError> {
    let Some(v) = blocks.get(key).map_err(|e| db_err(path, e))? else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for item in block::records(v.value()) {
        let (seq, rec) = item.map_err(|m| malformed(path, key, m))?;
        if seq > acked {
            out.push((seq, rec.to_vec()));
        }
    }
    Ok(out)
}

/// Writes `records` as blocks of at most `limits`, each with its summary.
fn put_chunked<B: AsRef<[u8]>>(
    blocks: &mut redb::Table<u64, &[u8]>,
    index: &mut redb::Table<u64, &[u8]>,
    records: &[(u64, B)],
    limits: BlockLimits,
) -> Result<(), redb::StorageError> {
    let mut start = 0;
    let mut bytes = 0;
    for (i, (_, rec)) in records.iter().enumerate() {
        // What the record takes in the stored block, framing included.
        let len = block::ENTRY_HEADER + rec.as_ref().len();
        if i > start && (i - start >= limits.max_records || bytes + len > limits.max_bytes) {
            block::put(blocks, index, &records[start..i])?;
            start = i;
            bytes = 0;
        }
        bytes += len;
    }
    block::put(blocks, index, &records[start..])
}

/// Reads the `u64` counters of `meta` into a fresh [`State`], creating `next_seq` for a new
/// queue.
fn load_state(path: &Path, txn: &redb::WriteTransaction) -> Result<State, QueueError> {
    let mut meta = txn.open_table(META).map_err(|e| db_err(path, e))?;
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
    Ok(State {
        next_seq,
        acked: get(&meta, "acked")?.unwrap_or(0),
        bytes: get(&meta, "bytes")?.unwrap_or(0),
        counts,
        cursor: [0; RANKS],
        drops,
        last_durable: std::time::Instant::now(),
    })
}

impl Queue {
    /// Opens the queue at `path`, creating it if absent. A file that cannot be opened as a queue
    /// (corrupt, truncated, not a redb file, unreadable contents) is renamed to
    /// `<path>.corrupt-<unix time>` with an error log and a fresh queue is started, so the agent
    /// keeps receiving instead of crash-looping. A file locked by another process is an error.
    /// A file in the format before blocks is migrated first (see the module docs).
    pub fn open(path: &Path, limits: Limits) -> Result<Queue, QueueError> {
        Self::open_with(path, limits, BlockLimits::default())
    }

    fn open_with(path: &Path, limits: Limits, blocks: BlockLimits) -> Result<Queue, QueueError> {
        match Self::try_open(path, limits, blocks) {
            Ok(q) => Ok(q),
            Err(QueueError::InUse { path }) => Err(QueueError::InUse { path }),
            // A full disk during the migration, say, must not cost the queued records.
            Err(err) if err.is_environment() => Err(err),
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
                Self::try_open(path, limits, blocks)
            }
            Err(err) => Err(err),
        }
    }

    fn try_open(path: &Path, limits: Limits, blocks: BlockLimits) -> Result<Queue, QueueError> {
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
        txn.open_table(BLOCKS).map_err(|e| db_err(path, e))?;
        txn.open_table(INDEX).map_err(|e| db_err(path, e))?;
        let state = load_state(path, &txn)?;
        txn.commit().map_err(|e| db_err(path, e))?;
        legacy::migrate(&db, path, blocks)?;
        check_blocks_parse(&db, path)?;
        Ok(Queue {
            db,
            path: path.to_path_buf(),
            limits,
            blocks,
            tail: Mutex::new(Tail {
                start: state.next_seq,
                ..Tail::default()
            }),
            state: Mutex::new(state),
            #[cfg(test)]
            fail_appends: std::sync::atomic::AtomicBool::new(false),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends records in one durable transaction, applying the drop policy when full. Takes
    /// the records by value: the ones kept go on to the tail in memory as they are, not copied.
    pub fn append(&self, records: Vec<Encoded>) -> Result<AppendOutcome, QueueError> {
        self.append_inner(records, true)
    }

    /// Appends Weir's own reports (queue-drop events) without evicting anything: a report about
    /// drops must not cause a drop, or a full, idle queue would lose one event per report,
    /// forever. The queue may exceed its limits by these few records until the next ordinary
    /// append, whose evictions bring it back under them.
    pub fn append_internal(&self, records: Vec<Encoded>) -> Result<AppendOutcome, QueueError> {
        self.append_inner(records, false)
    }

    /// Tests: makes every append fail (or succeed again) as a disk error would, before the
    /// transaction writes anything.
    #[cfg(test)]
    pub(crate) fn fail_appends(&self, fail: bool) {
        self.fail_appends
            .store(fail, std::sync::atomic::Ordering::Relaxed);
    }

    fn append_inner(
        &self,
        records: Vec<Encoded>,
        enforce_limits: bool,
    ) -> Result<AppendOutcome, QueueError> {
        let mut st = self.state.lock().expect("queue state lock");
        // A failed transaction is rolled back on disk; roll the in-memory mirror back too.
        let saved = st.clone();
        let result = self.append_locked(&mut st, &records, enforce_limits);
        if let Ok(out) = &result {
            // Only now, with the transaction committed, may the tail hold these records.
            self.tail_push(records, out, st.next_seq);
        }
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
        #[cfg(test)]
        if self.fail_appends.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(QueueError::Db {
                path: path.clone(),
                error: redb::Error::Io(std::io::Error::other("an append failure a test asked for")),
            });
        }
        let mut out = AppendOutcome::default();
        let txn = self.db.begin_write().map_err(|e| db_err(path, e))?;
        {
            let mut blocks = txn.open_table(BLOCKS).map_err(|e| db_err(path, e))?;
            let mut index = txn.open_table(INDEX).map_err(|e| db_err(path, e))?;
            // The records kept so far, becoming this commit's block(s) at the end.
            let mut new: VecDeque<(u64, &[u8])> = VecDeque::with_capacity(records.len());
            // Blocks changed by evictions, written back at the end (or sooner if they grow).
            let mut dirty = Dirty::default();
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
                    match self.evict_for(&blocks, &index, &mut dirty, &mut new, st, rec.rank())? {
                        Some((reason, from_new)) => {
                            bump(&mut out.drops, reason);
                            if let Some(seq) = from_new {
                                // A record this append had kept was evicted after all: it is
                                // not stored, so its caller must not be told it was.
                                if let Some(slot) = out.seqs.iter_mut().rev().find(|s| **s == seq) {
                                    *slot = 0;
                                }
                                out.kept -= 1;
                            }
                            if dirty.bytes > self.blocks.max_dirty_bytes {
                                dirty
                                    .write_back(&mut blocks, &mut index, self.blocks)
                                    .map_err(|e| db_err(path, e))?;
                            }
                        }
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
                new.push_back((seq, rec.bytes.as_slice()));
                st.next_seq += 1;
                st.bytes += size;
                st.counts[rec.rank() as usize] += 1;
                out.kept += 1;
            }
            if let (Some(first), Some(last)) = (new.front(), new.back()) {
                out.first_seq = first.0;
                out.last_seq = last.0;
            }
            dirty
                .write_back(&mut blocks, &mut index, self.blocks)
                .map_err(|e| db_err(path, e))?;
            if !new.is_empty() {
                put_chunked(&mut blocks, &mut index, new.make_contiguous(), self.blocks)
                    .map_err(|e| db_err(path, e))?;
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
        Ok(out)
    }

    /// Hands the records of a committed append to the tail in memory: each keeps its own buffer
    /// (copying them cost a quarter of the append). Called with the state lock still held, so
    /// the tail follows appends in sequence order.
    fn tail_push(&self, records: Vec<Encoded>, out: &AppendOutcome, next_seq: u64) {
        let mut tail = self.tail.lock().expect("queue tail lock");
        if !out.drops.is_empty() {
            // Evictions may have taken records the tail holds: start it afresh.
            tail.reset(next_seq);
            return;
        }
        for (rec, &seq) in records.into_iter().zip(&out.seqs) {
            if seq != 0 {
                tail.push(seq, rec.bytes);
            }
        }
    }

    /// Evicts the oldest record of the lowest severity rank `<= incoming`, returning the drop
    /// reason and, when the victim was one of this append's own records (`new`), its sequence;
    /// `None` when every queued record is more severe than the incoming one.
    ///
    /// Looks in the stored blocks first (through their summaries, from the rank's cursor; a
    /// block evicted from is loaded into `dirty` and changed there), then in `new`, the records
    /// this append has kept so far, which are newer than any stored one.
    fn evict_for(
        &self,
        blocks: &redb::Table<u64, &[u8]>,
        index: &redb::Table<u64, &[u8]>,
        dirty: &mut Dirty,
        new: &mut VecDeque<(u64, &[u8])>,
        st: &mut State,
        incoming: u8,
    ) -> Result<Option<(String, Option<u64>)>, QueueError> {
        let path = &self.path;
        for rank in 0..=incoming as usize {
            if st.counts[rank] == 0 {
                continue;
            }
            let mut found = None;
            for item in index
                .range(st.cursor[rank]..)
                .map_err(|e| db_err(path, e))?
            {
                let (k, v) = item.map_err(|e| db_err(path, e))?;
                let key = k.value();
                let recs = match dirty.blocks.entry(key) {
                    std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                    std::collections::btree_map::Entry::Vacant(e) => {
                        // A summary that cannot be read is checked against its block.
                        if Summary::decode(v.value()).is_some_and(|s| s.counts[rank] == 0) {
                            st.cursor[rank] = key + 1;
                            continue;
                        }
                        let recs = load_block(path, blocks, key, st.acked)?;
                        dirty.bytes += recs.iter().map(|(_, r)| r.len()).sum::<usize>();
                        e.insert(recs)
                    }
                };
                if let Some(i) = recs.iter().position(|(_, r)| block::rank_of(r) == rank) {
                    found = Some(recs.remove(i));
                    // Older records of this rank may remain in this block.
                    st.cursor[rank] = key;
                    break;
                }
                st.cursor[rank] = key + 1;
            }
            let victim = match found {
                Some((_, rec)) => Some((rec.len(), None)),
                None => new
                    .iter()
                    .position(|(_, r)| block::rank_of(r) == rank)
                    .and_then(|i| new.remove(i))
                    .map(|(seq, r)| (r.len(), Some(seq))),
            };
            match victim {
                Some((len, from_new)) => {
                    st.counts[rank] -= 1;
                    st.bytes = st.bytes.saturating_sub(len as u64);
                    return Ok(Some((full_reason(rank as u8), from_new)));
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

    /// Removes every record with a sequence `<= up_to` (the aggregator has stored them): whole
    /// blocks in one range delete, and the acknowledged start of a block that goes on past
    /// `up_to` by raising `acked`. Returns how many records were removed.
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
        // Never above what was issued: `acked` also hides records from reads.
        let up_to = up_to.min(st.next_seq.saturating_sub(1));
        if up_to <= st.acked {
            self.tail.lock().expect("queue tail lock").ack(up_to);
            return Ok(0);
        }
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
            let mut blocks = txn.open_table(BLOCKS).map_err(|e| db_err(path, e))?;
            let mut index = txn.open_table(INDEX).map_err(|e| db_err(path, e))?;
            let mut whole_up_to = None;
            // Blocks that go on past `up_to` (only the last one can), or whose summary cannot
            // be read: counted from the blocks themselves.
            let mut partial = Vec::new();
            for item in index.range(..=up_to).map_err(|e| db_err(path, e))? {
                let (k, v) = item.map_err(|e| db_err(path, e))?;
                let key = k.value();
                match Summary::decode(v.value()) {
                    Some(s) if s.last <= up_to => {
                        for (r, c) in s.counts.iter().enumerate() {
                            st.counts[r] = st.counts[r].saturating_sub(u64::from(*c));
                        }
                        st.bytes = st.bytes.saturating_sub(s.bytes);
                        removed += s.records();
                        whole_up_to = Some(key);
                    }
                    s => partial.push((key, s.is_some())),
                }
            }
            for &(key, summary_ok) in &partial {
                let recs = load_block(path, &blocks, key, st.acked)?;
                let mut gone = Summary::default();
                let mut left = Summary::default();
                for (seq, rec) in &recs {
                    if *seq <= up_to {
                        gone.add(*seq, rec);
                    } else {
                        left.add(*seq, rec);
                    }
                }
                for (r, c) in gone.counts.iter().enumerate() {
                    st.counts[r] = st.counts[r].saturating_sub(u64::from(*c));
                }
                st.bytes = st.bytes.saturating_sub(gone.bytes);
                removed += gone.records();
                if left.records() == 0 {
                    blocks.remove(key).map_err(|e| db_err(path, e))?;
                    index.remove(key).map_err(|e| db_err(path, e))?;
                } else if !summary_ok || gone.records() > 0 {
                    index
                        .insert(key, left.encode().as_slice())
                        .map_err(|e| db_err(path, e))?;
                }
            }
            if let Some(last) = whole_up_to {
                let keep = |k: u64| partial.iter().any(|&(p, _)| p == k);
                blocks
                    .retain_in(..=last, |k, _| keep(k))
                    .map_err(|e| db_err(path, e))?;
                index
                    .retain_in(..=last, |k, _| keep(k))
                    .map_err(|e| db_err(path, e))?;
            }
            st.acked = up_to;
            let mut meta = txn.open_table(META).map_err(|e| db_err(path, e))?;
            write_counters(&mut meta, st).map_err(|e| db_err(path, e))?;
        }
        txn.commit().map_err(|e| db_err(path, e))?;
        if durable {
            st.last_durable = std::time::Instant::now();
        }
        self.tail.lock().expect("queue tail lock").ack(up_to);
        Ok(removed)
    }

    /// Reads up to `max_records` records (and about `max_bytes`) starting at `from`, copied
    /// out: [`Queue::read_with`] (the forwarder's read, which also leaves the tail the records
    /// below `from`) with owned payloads.
    pub fn read_from(
        &self,
        from: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<WireRecord>, QueueError> {
        self.read_with(from, max_records, max_bytes, |records| {
            records
                .into_iter()
                .map(|r| WireRecord {
                    seq: r.seq,
                    payload: r.payload.to_vec(),
                })
                .collect()
        })
    }

    /// Up to `max_records` records (and about `max_bytes`) starting at `from`, lent to `f`:
    /// from the tail in memory the payloads are borrowed (no allocation per record), so the forwarder
    /// encodes its batch frame with one copy of each payload, into the frame. `f` runs under
    /// the tail's lock, which appends wait for: it should only encode.
    pub fn read_with<T>(
        &self,
        from: u64,
        max_records: usize,
        max_bytes: usize,
        f: impl FnOnce(Vec<WireRecordRef<'_>>) -> T,
    ) -> Result<T, QueueError> {
        {
            let mut tail = self.tail.lock().expect("queue tail lock");
            if from >= tail.start {
                // What was sent before waits for its ack in the file only: under load the
                // acks lag by many batches, and kept here those records pushed the ones still
                // to send out of the tail, which the forwarder then read back from redb.
                tail.sent_below(from);
                let at = tail.records.partition_point(|(seq, _)| *seq < from);
                let mut out = Vec::with_capacity(max_records.min(tail.records.len() - at));
                let mut bytes = 0;
                for (seq, v) in tail.records.range(at..) {
                    let payload = v.get(HEADER_LEN..).unwrap_or_default();
                    // The same limits as the file's loop in `read_from_file`.
                    if !out.is_empty() && bytes + payload.len() > max_bytes {
                        break;
                    }
                    bytes += payload.len();
                    out.push(WireRecordRef { seq: *seq, payload });
                    if out.len() >= max_records || bytes >= max_bytes {
                        break;
                    }
                }
                return Ok(f(out));
            }
        }
        // A backlog below the tail: the file's records are copied out (their blocks are only
        // borrowed one at a time), then lent.
        let owned = self.read_from_file(from, max_records, max_bytes)?;
        let out: Vec<WireRecordRef<'_>> = owned
            .iter()
            .map(|r| WireRecordRef {
                seq: r.seq,
                payload: &r.payload,
            })
            .collect();
        Ok(f(out))
    }

    /// [`Queue::read_with`]'s records from the file, not the tail in memory, copied out.
    fn read_from_file(
        &self,
        from: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<WireRecord>, QueueError> {
        let path = &self.path;
        let txn = self.db.begin_read().map_err(|e| db_err(path, e))?;
        // From the same snapshot as the blocks, so a concurrent ack cannot skew it.
        let from = from.max(read_acked(path, &txn)?.saturating_add(1));
        let table = txn.open_table(BLOCKS).map_err(|e| db_err(path, e))?;
        // The block holding `from` starts at or below it.
        let start = match table
            .range(..=from)
            .map_err(|e| db_err(path, e))?
            .next_back()
        {
            Some(item) => item.map_err(|e| db_err(path, e))?.0.value(),
            None => from,
        };
        let mut out = Vec::with_capacity(max_records.min(4096));
        let mut bytes = 0;
        'blocks: for item in table.range(start..).map_err(|e| db_err(path, e))? {
            let (k, v) = item.map_err(|e| db_err(path, e))?;
            for entry in block::records(v.value()) {
                let (seq, rec) = entry.map_err(|m| malformed(path, k.value(), m))?;
                if seq < from {
                    continue;
                }
                let payload = rec.get(HEADER_LEN..).unwrap_or_default();
                // Stop before a record would take the batch past max_bytes (a batch always
                // holds at least one record), so batches stay under the wire's frame limit.
                if !out.is_empty() && bytes + payload.len() > max_bytes {
                    break 'blocks;
                }
                bytes += payload.len();
                out.push(WireRecord {
                    seq,
                    payload: payload.to_vec(),
                });
                if out.len() >= max_records || bytes >= max_bytes {
                    break 'blocks;
                }
            }
        }
        Ok(out)
    }

    /// The oldest queued record's sequence and receive time (µs), if any.
    fn first_live(&self) -> Result<Option<(u64, i64)>, QueueError> {
        let path = &self.path;
        let txn = self.db.begin_read().map_err(|e| db_err(path, e))?;
        let acked = read_acked(path, &txn)?;
        let table = txn.open_table(BLOCKS).map_err(|e| db_err(path, e))?;
        for item in table.iter().map_err(|e| db_err(path, e))? {
            let (k, v) = item.map_err(|e| db_err(path, e))?;
            for entry in block::records(v.value()) {
                let (seq, rec) = entry.map_err(|m| malformed(path, k.value(), m))?;
                if seq > acked {
                    let received = rec
                        .get(1..HEADER_LEN)
                        .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")))
                        .unwrap_or(0);
                    return Ok(Some((seq, received)));
                }
            }
        }
        Ok(None)
    }

    /// The first queued sequence, if any.
    pub fn first_seq(&self) -> Result<Option<u64>, QueueError> {
        Ok(self.first_live()?.map(|(seq, _)| seq))
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
                let mut blocks = txn.open_table(BLOCKS).map_err(|e| db_err(path, e))?;
                let mut index = txn.open_table(INDEX).map_err(|e| db_err(path, e))?;
                let mut seq = committed + 1;
                // Block by block, so memory stays at one block: every old key is below
                // `next_seq <= committed`, every new one above.
                loop {
                    let key = match blocks.first().map_err(|e| db_err(path, e))? {
                        Some((k, _)) if k.value() <= committed => k.value(),
                        _ => break,
                    };
                    let recs = load_block(path, &blocks, key, st.acked)?;
                    blocks.remove(key).map_err(|e| db_err(path, e))?;
                    index.remove(key).map_err(|e| db_err(path, e))?;
                    let renumbered: Vec<(u64, &[u8])> = recs
                        .iter()
                        .map(|(_, rec)| {
                            seq += 1;
                            (seq - 1, rec.as_slice())
                        })
                        .collect();
                    moved += renumbered.len() as u64;
                    if !renumbered.is_empty() {
                        put_chunked(&mut blocks, &mut index, &renumbered, self.blocks)
                            .map_err(|e| db_err(path, e))?;
                    }
                }
                st.next_seq = seq;
                st.acked = committed;
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
        let (records, bytes, next_seq, drops) = {
            let st = self.state.lock().expect("queue state lock");
            (st.records(), st.bytes, st.next_seq, st.drops.clone())
        };
        let oldest_us = self.first_live()?.map_or(0, |(_, t)| t);
        Ok(Stats {
            records,
            bytes,
            oldest_us,
            next_seq,
            drops,
        })
    }
}

fn read_acked(path: &Path, txn: &redb::ReadTransaction) -> Result<u64, QueueError> {
    let meta = txn.open_table(META).map_err(|e| db_err(path, e))?;
    Ok(meta
        .get("acked")
        .map_err(|e| db_err(path, e))?
        .map_or(0, |v| v.value()))
}

fn write_counters(meta: &mut redb::Table<&str, u64>, st: &State) -> Result<(), redb::StorageError> {
    meta.insert("next_seq", st.next_seq)?;
    meta.insert("acked", st.acked)?;
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
                .append(vec![rec(Severity::Info, "a"), rec(Severity::Info, "b")])
                .unwrap();
            assert_eq!(out.kept, 2);
            first = out.first_seq;
            assert_eq!(out.last_seq, first + 1);
            let out = q.append(vec![rec(Severity::Error, "c")]).unwrap();
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
        q.append(vec![
            rec(Severity::Info, "i1"),
            rec(Severity::Debug, "d1"),
            rec(Severity::Error, "e1"),
            rec(Severity::Debug, "d2"),
        ])
        .unwrap();
        // Full: a warning evicts the oldest debug.
        let out = q.append(vec![rec(Severity::Warning, "w1")]).unwrap();
        assert_eq!(out.drops, BTreeMap::from([("queue_full_debug".into(), 1)]));
        assert_eq!(messages(&q), vec!["i1", "e1", "d2", "w1"]);
        // Then the next debug, then info.
        q.append(vec![
            rec(Severity::Critical, "c1"),
            rec(Severity::Critical, "c2"),
        ])
        .unwrap();
        assert_eq!(messages(&q), vec!["e1", "w1", "c1", "c2"]);
        // A debug cannot evict anything more severe: it is dropped itself.
        let out = q.append(vec![rec(Severity::Debug, "d3")]).unwrap();
        assert_eq!(out.kept, 0);
        assert_eq!(out.drops, BTreeMap::from([("queue_full_debug".into(), 1)]));
        // Lowest severity present goes first (the warning), then, at equal severity, the oldest.
        q.append(vec![rec(Severity::Error, "e2")]).unwrap();
        assert_eq!(messages(&q), vec!["e1", "c1", "c2", "e2"]);
        q.append(vec![rec(Severity::Error, "e3")]).unwrap();
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
        q.append(vec![rec(Severity::Debug, "d1"), rec(Severity::Debug, "d2")])
            .unwrap();
        let out = q
            .append_internal(vec![rec(Severity::Error, "report")])
            .unwrap();
        assert!(out.drops.is_empty());
        assert_eq!(messages(&q), vec!["d1", "d2", "report"]);
        // The next ordinary append brings the queue back under its limit.
        q.append(vec![rec(Severity::Info, "i1")]).unwrap();
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
            q.append(vec![rec(Severity::Info, "x")]).unwrap();
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
                    let lent = q
                        .read_with(from, n, bytes, |recs| {
                            recs.into_iter()
                                .map(|r| WireRecord {
                                    seq: r.seq,
                                    payload: r.payload.to_vec(),
                                })
                                .collect::<Vec<_>>()
                        })
                        .unwrap();
                    assert_eq!(a, lent, "from {from}, {n} records, {bytes} bytes");
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
        let out = q.append(batch(20, Severity::Info)).unwrap();
        check(&q);
        q.ack(out.first_seq + 4).unwrap();
        check(&q);
        // Past the record limit: evictions, so the tail starts afresh and reads go to the file.
        let out = q.append(batch(40, Severity::Error)).unwrap();
        assert!(!out.drops.is_empty());
        check(&q);
        q.ack(out.last_seq - 10).unwrap();
        check(&q);
        q.append(batch(5, Severity::Critical)).unwrap();
        assert!(q.tail.lock().unwrap().records.len() == 5);
        check(&q);
        let last = q.next_seq() - 1;
        q.ack(last - 2).unwrap();
        check(&q);
        // Renumbered above what the aggregator has seen.
        q.reconcile(q.next_seq() + 1_000).unwrap();
        check(&q);
        q.append(batch(3, Severity::Info)).unwrap();
        check(&q);
        // Past the tail's byte bound: its oldest records go, read from the file.
        let big = Severity::Info;
        let long = "x".repeat(600 << 10);
        q.append(vec![rec(big, &long), rec(big, &long)]).unwrap();
        q.append(vec![rec(big, &long); 6]).unwrap();
        check(&q);
        assert!(q.tail.lock().unwrap().bytes <= TAIL_BYTES);
    }

    /// What the forwarder has read leaves the tail (it waits for its ack in the file), so the
    /// tail keeps room for records still to send; a resend after a reconnect gets the same
    /// records from the file.
    #[test]
    fn read_records_leave_the_tail_and_are_resent_from_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(&dir.path().join("q.redb"), big()).unwrap();
        let recs = (0..10).map(|i| rec(Severity::Info, &format!("m{i}")));
        let out = q.append(recs.collect()).unwrap();
        let lend = |from: u64, n: usize| {
            q.read_with(from, n, usize::MAX, |recs| {
                recs.into_iter()
                    .map(|r| WireRecord {
                        seq: r.seq,
                        payload: r.payload.to_vec(),
                    })
                    .collect::<Vec<_>>()
            })
            .unwrap()
        };
        let first = lend(out.first_seq, 4);
        assert_eq!(q.tail.lock().unwrap().records.len(), 10);
        let second = lend(out.first_seq + 4, 4);
        assert_eq!(second[0].seq, out.first_seq + 4);
        {
            let tail = q.tail.lock().unwrap();
            assert_eq!(tail.records.len(), 6);
            assert_eq!(tail.start, out.first_seq + 4);
        }
        // Reconnected: the aggregator has none of them, everything is sent again, in order.
        let again = lend(out.first_seq, 100);
        assert_eq!(again.len(), 10);
        assert_eq!(again[..4], first[..]);
        assert_eq!(again[4..8], second[..]);
        assert_eq!(
            again,
            q.read_from_file(out.first_seq, 100, usize::MAX).unwrap()
        );
        // Acks still empty the tail and the file alike.
        assert_eq!(q.ack(out.last_seq).unwrap(), 10);
        assert!(lend(out.first_seq, 100).is_empty());
        assert!(q.tail.lock().unwrap().records.is_empty());
    }

    /// The tail keeps each appended record's own buffer, so its bound counts what the buffers
    /// hold (capacity), not only their length: records with spare capacity fill it sooner, and
    /// the records it let go are read from the file, all of them once and in order.
    #[test]
    fn tail_bound_counts_the_buffers_it_keeps() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(&dir.path().join("q.redb"), big()).unwrap();
        let spare = 16 << 10;
        let recs: Vec<Encoded> = (0..100)
            .map(|i| {
                let mut r = rec(Severity::Info, &format!("m{i}"));
                r.bytes.reserve_exact(spare);
                r
            })
            .collect();
        let lens: usize = recs.iter().map(Encoded::len).sum();
        let held: usize = recs.iter().map(|r| r.bytes.capacity()).sum();
        assert!(lens < TAIL_BYTES && held > TAIL_BYTES, "{lens} {held}");
        let out = q.append(recs).unwrap();
        let start = {
            let tail = q.tail.lock().unwrap();
            let in_tail: usize = tail.records.iter().map(|(_, b)| Tail::held(b)).sum();
            assert_eq!(tail.bytes, in_tail);
            assert!(tail.bytes <= TAIL_BYTES);
            assert!(tail.records.len() < 100 && !tail.records.is_empty());
            assert_eq!(tail.start, tail.records[0].0);
            assert_eq!(tail.records.back().unwrap().0, out.last_seq);
            tail.start
        };
        let from_tail = q.read_from(start, usize::MAX, usize::MAX).unwrap();
        let from_file = q.read_from_file(start, usize::MAX, usize::MAX).unwrap();
        assert_eq!(from_tail, from_file);
        let got = messages(&q);
        assert_eq!(got, (0..100).map(|i| format!("m{i}")).collect::<Vec<_>>());
        q.ack(out.last_seq).unwrap();
        let tail = q.tail.lock().unwrap();
        assert_eq!((tail.bytes, tail.records.len()), (0, 0));
    }

    /// Small records cost the tail their entry as well as their buffer: a run of them whose
    /// buffers alone fit the bound does not fit it with their entries, and the tail stays
    /// within it, counting both.
    #[test]
    fn tail_bound_counts_each_entry_too() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(&dir.path().join("q.redb"), big()).unwrap();
        let entry = std::mem::size_of::<(u64, Vec<u8>)>();
        let cap = rec(Severity::Info, "m").bytes.capacity();
        let n = TAIL_BYTES / (cap + entry / 2);
        let recs: Vec<Encoded> = (0..n).map(|_| rec(Severity::Info, "m")).collect();
        let buffers: usize = recs.iter().map(|r| r.bytes.capacity()).sum();
        assert!(buffers < TAIL_BYTES && buffers + n * entry > TAIL_BYTES);
        let out = q.append(recs).unwrap();
        let tail = q.tail.lock().unwrap();
        let held: usize = tail.records.iter().map(|(_, b)| Tail::held(b)).sum();
        assert_eq!(tail.bytes, held);
        assert!(tail.bytes <= TAIL_BYTES, "{}", tail.bytes);
        assert!(tail.records.len() < n, "some records left the tail");
        assert_eq!(tail.records.back().unwrap().0, out.last_seq);
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
        q.append(vec![rec(Severity::Info, "fresh")]).unwrap();
        let aside: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with("queue.redb.corrupt-"))
            .collect();
        assert_eq!(aside.len(), 1, "{aside:?}");
    }

    #[test]
    fn a_record_evicted_by_a_later_one_in_the_same_append_is_not_reported_kept() {
        let dir = tempfile::tempdir().unwrap();
        let limits = Limits {
            max_records: 3,
            max_bytes: 1 << 30,
        };
        let q = Queue::open(&dir.path().join("queue.redb"), limits).unwrap();
        q.append(vec![
            rec(Severity::Debug, "debug"),
            rec(Severity::Critical, "crit-1"),
            rec(Severity::Critical, "crit-2"),
        ])
        .unwrap();
        // info-a evicts the debug record; info-b then evicts info-a (the oldest info).
        let out = q
            .append(vec![
                rec(Severity::Info, "info-a"),
                rec(Severity::Info, "info-b"),
            ])
            .unwrap();
        assert_eq!(out.kept, 1);
        assert_eq!(out.seqs[0], 0, "info-a was evicted: {:?}", out.seqs);
        assert_ne!(out.seqs[1], 0);
        assert_eq!((out.first_seq, out.last_seq), (out.seqs[1], out.seqs[1]));
        assert_eq!(messages(&q), ["crit-1", "crit-2", "info-b"]);
    }

    #[test]
    fn machine_errors_are_not_treated_as_a_corrupt_file() {
        let db = |kind| QueueError::Db {
            path: PathBuf::from("q"),
            error: redb::Error::Io(std::io::Error::from(kind)),
        };
        assert!(db(std::io::ErrorKind::StorageFull).is_environment());
        assert!(db(std::io::ErrorKind::ReadOnlyFilesystem).is_environment());
        assert!(!db(std::io::ErrorKind::UnexpectedEof).is_environment());
        let corrupt = QueueError::Db {
            path: PathBuf::from("q"),
            error: redb::Error::Corrupted("bad page".into()),
        };
        assert!(!corrupt.is_environment());
    }

    #[test]
    fn malformed_block_found_at_open_moves_the_file_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("queue.redb");
        {
            let q = Queue::open(&path, big()).unwrap();
            q.append(vec![rec(Severity::Info, "one"), rec(Severity::Info, "two")])
                .unwrap();
        }
        {
            // Cut the stored block inside its second record, as an edit or a bug could.
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut t = txn.open_table(BLOCKS).unwrap();
                let (k, v) = {
                    let (k, v) = t.first().unwrap().unwrap();
                    (k.value(), v.value().to_vec())
                };
                t.insert(k, &v[..v.len() - 3]).unwrap();
            }
            txn.commit().unwrap();
        }
        let q = Queue::open(&path, big()).unwrap();
        assert!(messages(&q).is_empty(), "a fresh queue");
        q.append(vec![rec(Severity::Info, "fresh")]).unwrap();
        assert_eq!(messages(&q), ["fresh"]);
        let aside = std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                let name = e.as_ref().unwrap().file_name();
                name.to_string_lossy().starts_with("queue.redb.corrupt-")
            })
            .count();
        assert_eq!(aside, 1);
    }

    #[test]
    fn reconcile_deletes_stored_records_or_renumbers_unstored_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.redb");
        let q = Queue::open(&path, big()).unwrap();
        let out = q
            .append(vec![
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
        let out = q.append(vec![rec(Severity::Info, "d")]).unwrap();
        assert_eq!(out.first_seq, committed + 3);
        drop(q);
        // It survives a reopen.
        let q = Queue::open(&path, big()).unwrap();
        assert_eq!(q.next_seq(), committed + 4);
        assert_eq!(messages(&q), vec!["b", "c", "d"]);
    }

    /// Blocks of 4 records, so small tests cross block boundaries.
    fn small_blocks() -> BlockLimits {
        BlockLimits {
            max_records: 4,
            max_bytes: 4 << 10,
            // Written back after a block or two, so one append's evictions cross write-backs.
            max_dirty_bytes: 300,
        }
    }

    /// Every block's summary describes exactly its live records, no block is empty, blocks
    /// are in sequence order, and the counters in memory add up to the summaries.
    fn check_blocks(q: &Queue) {
        let st = q.state.lock().unwrap().clone();
        let txn = q.db.begin_read().unwrap();
        let blocks = txn.open_table(BLOCKS).unwrap();
        let index = txn.open_table(INDEX).unwrap();
        assert_eq!(read_acked(&q.path, &txn).unwrap(), st.acked);
        let mut total = Summary::default();
        let mut prev = 0;
        let mut keys = Vec::new();
        for item in blocks.iter().unwrap() {
            let (k, v) = item.unwrap();
            let key = k.value();
            keys.push(key);
            let recs: Vec<(u64, Vec<u8>)> = block::records(v.value())
                .map(|r| r.map(|(s, b)| (s, b.to_vec())).unwrap())
                .collect();
            assert!(
                recs.first().unwrap().0 >= key,
                "block {key} starts below its key"
            );
            assert!(key > prev || prev == 0, "blocks out of order");
            assert!(recs.windows(2).all(|w| w[0].0 < w[1].0));
            prev = recs.last().unwrap().0;
            let live: Vec<_> = recs.into_iter().filter(|(s, _)| *s > st.acked).collect();
            assert!(!live.is_empty(), "block {key} has no live record");
            let want = Summary::of(&live);
            let have = Summary::decode(index.get(key).unwrap().unwrap().value()).unwrap();
            assert_eq!(have, want, "summary of block {key}");
            for (r, c) in want.counts.iter().enumerate() {
                total.counts[r] += c;
            }
            total.bytes += want.bytes;
        }
        let indexed: Vec<u64> = index
            .iter()
            .unwrap()
            .map(|i| i.unwrap().0.value())
            .collect();
        assert_eq!(indexed, keys, "index and blocks hold the same keys");
        assert_eq!(total.counts.map(u64::from), st.counts);
        assert_eq!(total.bytes, st.bytes);
    }

    #[test]
    fn partial_ack_across_a_block_then_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.redb");
        let first;
        {
            let q = Queue::open_with(&path, big(), small_blocks()).unwrap();
            let msgs: Vec<_> = (0..10)
                .map(|i| rec(Severity::Info, &format!("m{i}")))
                .collect();
            // 10 records: blocks of 4, 4 and 2.
            first = q.append(msgs.clone()).unwrap().first_seq;
            check_blocks(&q);
            // Into the middle of the second block: the first goes, the second stays.
            assert_eq!(q.ack(first + 5).unwrap(), 6);
            check_blocks(&q);
            assert_eq!(q.first_seq().unwrap(), Some(first + 6));
            assert_eq!(messages(&q), ["m6", "m7", "m8", "m9"]);
            let st = q.stats().unwrap();
            assert_eq!(st.records, 4);
            assert_eq!(st.bytes, 4 * msgs[6].len() as u64);
            // The same ack again removes nothing.
            assert_eq!(q.ack(first + 5).unwrap(), 0);
            // Reads from the file skip the acknowledged start of the block, even from below it.
            let from_file = q.read_from_file(first, 100, usize::MAX).unwrap();
            assert_eq!(from_file.first().unwrap().seq, first + 6);
        }
        // After a restart the acknowledged part of the block is still skipped: nothing that
        // was acknowledged is sent again.
        let q = Queue::open_with(&path, big(), small_blocks()).unwrap();
        check_blocks(&q);
        assert_eq!(q.first_seq().unwrap(), Some(first + 6));
        assert_eq!(messages(&q), ["m6", "m7", "m8", "m9"]);
        assert_eq!(q.stats().unwrap().records, 4);
        // Further partial acks in the same block, then the rest.
        assert_eq!(q.ack(first + 6).unwrap(), 1);
        check_blocks(&q);
        assert_eq!(q.ack(first + 8).unwrap(), 2);
        check_blocks(&q);
        assert_eq!(messages(&q), ["m9"]);
        // An ack beyond what was issued does not hide records appended later.
        assert_eq!(q.ack(u64::MAX).unwrap(), 1);
        let out = q.append(vec![rec(Severity::Info, "later")]).unwrap();
        assert_eq!(messages(&q), ["later"]);
        assert_eq!(q.first_seq().unwrap(), Some(out.first_seq));
        check_blocks(&q);
    }

    #[test]
    fn eviction_inside_a_block_then_reads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.redb");
        let limits = Limits {
            max_records: 6,
            max_bytes: 1 << 30,
        };
        let q = Queue::open_with(&path, limits, small_blocks()).unwrap();
        // One block of 4 (e1 d1 i1 d2) and one of 2 (e2 d3).
        let out = q
            .append(vec![
                rec(Severity::Error, "e1"),
                rec(Severity::Debug, "d1"),
                rec(Severity::Info, "i1"),
                rec(Severity::Debug, "d2"),
                rec(Severity::Error, "e2"),
                rec(Severity::Debug, "d3"),
            ])
            .unwrap();
        let first = out.first_seq;
        // Acknowledge e1 only: the block stays, partly acknowledged.
        q.ack(first).unwrap();
        q.append(vec![rec(Severity::Warning, "w1")]).unwrap();
        check_blocks(&q);
        // Full: two warnings evict d1 and d2 from inside the first block, in one rewrite.
        let out = q
            .append(vec![
                rec(Severity::Warning, "w2"),
                rec(Severity::Warning, "w3"),
            ])
            .unwrap();
        assert_eq!(out.drops, BTreeMap::from([("queue_full_debug".into(), 2)]));
        check_blocks(&q);
        assert_eq!(messages(&q), ["i1", "e2", "d3", "w1", "w2", "w3"]);
        let seqs: Vec<u64> = q
            .read_from(0, 100, usize::MAX)
            .unwrap()
            .iter()
            .map(|w| w.seq)
            .collect();
        assert_eq!(seqs[0], first + 2, "i1 keeps its sequence");
        // Reading from inside the rewritten block, and from an evicted sequence.
        let from = q.read_from_file(first + 1, 2, usize::MAX).unwrap();
        assert_eq!(
            from.iter().map(|w| w.seq).collect::<Vec<_>>(),
            [first + 2, first + 4]
        );
        // Then i1 (the whole first block's last live record), then d3 from the second.
        q.append(vec![rec(Severity::Error, "e3"), rec(Severity::Error, "e4")])
            .unwrap();
        check_blocks(&q);
        assert_eq!(messages(&q), ["e2", "w1", "w2", "w3", "e3", "e4"]);
        drop(q);
        let q = Queue::open_with(&path, limits, small_blocks()).unwrap();
        check_blocks(&q);
        assert_eq!(messages(&q), ["e2", "w1", "w2", "w3", "e3", "e4"]);
        let drops = q.stats().unwrap().drops;
        assert_eq!(drops["queue_full_debug"], 3);
        assert_eq!(drops["queue_full_info"], 1);
    }

    /// Writes a queue file as the agent did before blocks: one `records` entry per record and
    /// the counters in `meta`.
    fn write_old_format(path: &Path, first_seq: u64, recs: &[Encoded]) {
        let db = Database::create(path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut table = txn.open_table(legacy::RECORDS).unwrap();
            let mut meta = txn.open_table(META).unwrap();
            txn.open_table(DROPS).unwrap();
            let mut counts = [0u64; RANKS];
            let mut bytes = 0;
            for (i, r) in recs.iter().enumerate() {
                table
                    .insert(first_seq + i as u64, r.bytes.as_slice())
                    .unwrap();
                counts[r.rank() as usize] += 1;
                bytes += r.len() as u64;
            }
            meta.insert("next_seq", first_seq + recs.len() as u64)
                .unwrap();
            meta.insert("bytes", bytes).unwrap();
            for (r, key) in RANK_KEYS.iter().enumerate() {
                meta.insert(*key, counts[r]).unwrap();
            }
        }
        txn.commit().unwrap();
    }

    /// A site gateway upgraded with a non-empty queue delivers every record once, with the
    /// sequence it had, and the file is in the new format afterwards.
    #[test]
    fn migration_from_the_old_format() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("queue.redb");
        let first = 1_700_000_000_000_000;
        let sevs = [Severity::Info, Severity::Debug, Severity::Critical];
        let old: Vec<Encoded> = (0..2500)
            .map(|i| rec(sevs[i % 3], &format!("old{i}")))
            .collect();
        write_old_format(&path, first, &old);
        {
            let q = Queue::open(&path, big()).unwrap();
            check_blocks(&q);
            let st = q.stats().unwrap();
            assert_eq!(st.records, 2500);
            assert_eq!(st.next_seq, first + 2500);
            assert_eq!(st.oldest_us, 1_700_000_000_000_000);
            assert_eq!(q.first_seq().unwrap(), Some(first));
            let all = q.read_from(0, usize::MAX, usize::MAX).unwrap();
            assert_eq!(all.len(), 2500);
            for (i, w) in all.iter().enumerate() {
                assert_eq!(w.seq, first + i as u64);
                assert_eq!(w.payload, old[i].bytes[HEADER_LEN..]);
            }
            // The old table is gone; the new records follow the old ones.
            let txn = q.db.begin_read().unwrap();
            assert!(txn.open_table(legacy::RECORDS).is_err());
            drop(txn);
            let out = q.append(vec![rec(Severity::Info, "new")]).unwrap();
            assert_eq!(out.first_seq, first + 2500);
            assert_eq!(q.ack(first + 999).unwrap(), 1000);
        }
        let q = Queue::open(&path, big()).unwrap();
        check_blocks(&q);
        let msgs = messages(&q);
        assert_eq!(msgs.len(), 1501);
        assert_eq!(msgs[0], "old1000");
        assert_eq!(msgs[1500], "new");
    }

    /// A migration cut short (some records already in blocks, the rest still in `records`)
    /// carries on at the next open without losing or repeating any.
    #[test]
    fn interrupted_migration_carries_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("queue.redb");
        let first = 5_000;
        let old: Vec<Encoded> = (0..10)
            .map(|i| rec(Severity::Info, &format!("old{i}")))
            .collect();
        write_old_format(&path, first, &old);
        {
            // What one migration transaction leaves: the oldest 4 moved.
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut table = txn.open_table(legacy::RECORDS).unwrap();
                let moved: Vec<(u64, Vec<u8>)> = (0..4)
                    .map(|i| {
                        (
                            first + i,
                            table.remove(first + i).unwrap().unwrap().value().to_vec(),
                        )
                    })
                    .collect();
                let mut blocks = txn.open_table(BLOCKS).unwrap();
                let mut index = txn.open_table(INDEX).unwrap();
                put_chunked(&mut blocks, &mut index, &moved, small_blocks()).unwrap();
            }
            txn.commit().unwrap();
        }
        let q = Queue::open_with(&path, big(), small_blocks()).unwrap();
        check_blocks(&q);
        let want: Vec<String> = (0..10).map(|i| format!("old{i}")).collect();
        assert_eq!(messages(&q), want);
        assert_eq!(q.first_seq().unwrap(), Some(first));
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// Records as (severity rank, message length).
        Append(Vec<(u8, usize)>),
        AppendInternal(Vec<(u8, usize)>),
        /// Acknowledge up to a point in the queued range, given as a fraction of 255.
        Ack(u8),
        Reopen,
        /// The aggregator reports a sequence this queue never issued.
        Renumber,
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        let recs = || proptest::collection::vec((0u8..5, 0usize..120), 0..12);
        prop_oneof![
            4 => recs().prop_map(Op::Append),
            1 => recs().prop_map(Op::AppendInternal),
            3 => any::<u8>().prop_map(Op::Ack),
            1 => Just(Op::Reopen),
            1 => Just(Op::Renumber),
        ]
    }

    /// The queue as a plain ordered map, with the documented drop policy written out directly.
    #[derive(Debug, Default)]
    struct Model {
        recs: BTreeMap<u64, Vec<u8>>,
        next: u64,
        drops: BTreeMap<String, u64>,
    }

    impl Model {
        fn bytes(&self) -> u64 {
            self.recs.values().map(|r| r.len() as u64).sum()
        }

        fn append(&mut self, recs: &[Encoded], limits: Limits, enforce: bool) -> Vec<u64> {
            let mut seqs = Vec::new();
            for r in recs {
                let size = r.len() as u64;
                if size > limits.max_bytes {
                    bump(&mut self.drops, "oversize_record".into());
                    seqs.push(0);
                    continue;
                }
                let mut keep = true;
                while enforce
                    && (self.recs.len() as u64 + 1 > limits.max_records
                        || self.bytes() + size > limits.max_bytes)
                {
                    let victim = (0..=r.rank()).find_map(|rank| {
                        self.recs
                            .iter()
                            .find(|(_, b)| b[0] == rank)
                            .map(|(s, _)| (*s, rank))
                    });
                    match victim {
                        Some((seq, rank)) => {
                            self.recs.remove(&seq);
                            bump(&mut self.drops, full_reason(rank));
                            // One of this append's own records: not stored after all.
                            if let Some(s) = seqs.iter_mut().find(|s| **s == seq) {
                                *s = 0;
                            }
                        }
                        None => {
                            bump(&mut self.drops, full_reason(r.rank()));
                            keep = false;
                            break;
                        }
                    }
                }
                if keep {
                    self.recs.insert(self.next, r.bytes.clone());
                    seqs.push(self.next);
                    self.next += 1;
                } else {
                    seqs.push(0);
                }
            }
            seqs
        }
    }

    fn check_against(q: &Queue, m: &Model) {
        check_blocks(q);
        let want: Vec<(u64, &[u8])> = m.recs.iter().map(|(s, b)| (*s, &b[HEADER_LEN..])).collect();
        let have = q.read_from(0, usize::MAX, usize::MAX).unwrap();
        let have: Vec<(u64, &[u8])> = have.iter().map(|w| (w.seq, &w.payload[..])).collect();
        assert_eq!(have, want);
        let file = q.read_from_file(0, usize::MAX, usize::MAX).unwrap();
        assert_eq!(file.len(), want.len());
        // Reads that start inside the queue, in small batches, as the forwarder reads.
        if let Some(&mid) = m.recs.keys().nth(m.recs.len() / 2) {
            let batch = q.read_from(mid, 3, usize::MAX).unwrap();
            let expect: Vec<u64> = m.recs.range(mid..).take(3).map(|(s, _)| *s).collect();
            assert_eq!(batch.iter().map(|w| w.seq).collect::<Vec<_>>(), expect);
        }
        let st = q.stats().unwrap();
        assert_eq!(st.records, m.recs.len() as u64);
        assert_eq!(st.bytes, m.bytes());
        assert_eq!(st.next_seq, m.next);
        assert_eq!(st.drops, m.drops);
        assert_eq!(q.first_seq().unwrap(), m.recs.keys().next().copied());
        let mut counts = [0u64; RANKS];
        for r in m.recs.values() {
            counts[r[0] as usize] += 1;
        }
        assert_eq!(q.state.lock().unwrap().counts, counts);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]

        /// Random appends, evictions, acks, renumberings and reopens give what the model gives.
        #[test]
        fn behaves_like_the_model(ops in proptest::collection::vec(op(), 1..40)) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("q.redb");
            let limits = Limits { max_records: 20, max_bytes: 2_000 };
            let mut q = Queue::open_with(&path, limits, small_blocks()).unwrap();
            let mut m = Model { next: q.next_seq(), ..Model::default() };
            let mut n = 0;
            let mut make = |spec: &[(u8, usize)]| -> Vec<Encoded> {
                spec.iter()
                    .map(|&(rank, len)| {
                        n += 1;
                        let msg = format!("{n}{}", "x".repeat(len));
                        rec(Severity::from_rank(rank).unwrap(), &msg)
                    })
                    .collect()
            };
            for op in ops {
                match op {
                    Op::Append(spec) => {
                        let recs = make(&spec);
                        let out = q.append(recs.clone()).unwrap();
                        let seqs = m.append(&recs, limits, true);
                        let kept: Vec<u64> = seqs.iter().copied().filter(|s| *s != 0).collect();
                        proptest::prop_assert_eq!(out.kept as usize, kept.len());
                        if let (Some(first), Some(last)) = (kept.first(), kept.last()) {
                            proptest::prop_assert_eq!((out.first_seq, out.last_seq), (*first, *last));
                        }
                        proptest::prop_assert_eq!(out.seqs, seqs);
                    }
                    Op::AppendInternal(spec) => {
                        let recs = make(&spec);
                        let out = q.append_internal(recs.clone()).unwrap();
                        let seqs = m.append(&recs, limits, false);
                        proptest::prop_assert_eq!(out.seqs, seqs);
                    }
                    Op::Ack(f) => {
                        let lo = m.recs.keys().next().copied().unwrap_or(m.next).saturating_sub(1);
                        let up_to = lo + (m.next - lo) * u64::from(f) / 255;
                        let gone: Vec<u64> = m.recs.range(..=up_to).map(|(s, _)| *s).collect();
                        for s in &gone {
                            m.recs.remove(s);
                        }
                        proptest::prop_assert_eq!(q.ack(up_to).unwrap(), gone.len() as u64);
                    }
                    Op::Reopen => {
                        drop(q);
                        q = Queue::open_with(&path, limits, small_blocks()).unwrap();
                    }
                    Op::Renumber => {
                        let committed = m.next + 100;
                        let moved = q.reconcile(committed).unwrap();
                        proptest::prop_assert_eq!(moved, m.recs.len() as u64);
                        let old = std::mem::take(&mut m.recs);
                        m.next = committed + 1;
                        for (_, r) in old {
                            m.recs.insert(m.next, r);
                            m.next += 1;
                        }
                    }
                }
                check_against(&q, &m);
            }
        }
    }
}
