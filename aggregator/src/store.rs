//! The aggregator's event store: one redb file holding every event exactly once.
//!
//! Exactly-once rests on one rule: a batch's events and the agent's highest committed sequence
//! are written in the same transaction. A record at or below that sequence is a redelivery and is
//! skipped (counted as a duplicate); a record above it is stored. Agents send in sequence order on
//! one stream and resume after the committed sequence, so nothing above it was stored before.
//!
//! # Tables
//! - `events`: `u64` store key (aggregator-wide, increasing with arrival) → postcard [`StoredEvent`].
//! - `agent_runs`: `(agent number u32, first agent sequence u64)` → `(last agent sequence,
//!   store key of the first)`: one entry per run of an agent's events stored with consecutive
//!   sequences under consecutive store keys (usually one per batch), so event `seq` of the run
//!   is at `first key + (seq - first sequence)`. It finds an event by its fleet id and applies
//!   first-stage dedup count updates. A run outlives the events of it that expired (their keys
//!   find nothing) until all of them have.
//! - `agent_seq`: the same per event, `(agent number, agent sequence)` → store key, as builds
//!   before `agent_runs` wrote it (one B-tree insert per event). Still read for the events they
//!   stored and emptied by retention; nothing new goes in.
//! - `agents`: identity `site/name` → postcard [`AgentRecord`] (number, committed sequence, …).
//! - `meta`: `&str` → `u64` (`next_key`, `next_agent`, `index_version`, `indexed_through`).
//! - `idx_*`: secondary indexes ([`crate::index`]) of the events up to the `indexed_through`
//!   watermark, written behind ingest by the background indexer ([`crate::indexer`]).
//!
//! # Transactions
//! The ingest commit ([`Store::commit_with`], durable) writes only what exactly-once needs:
//! events, `agent_runs`, agent records and `next_key`, plus what its caller adds (alarms). It
//! neither decodes the events nor indexes them. Searches ([`Store::search`],
//! [`Store::histogram`], [`Store::time_span`]) read the indexes for the events up to the
//! watermark and decode and filter the events above it (the tail, visited one by one and
//! holding at most a page of it), in one read transaction, so they see every stored event once. Count updates and incident changes rewrite index entries
//! only of events at or below the watermark; the indexer indexes the others as it finds them.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use jiff::Timestamp;
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
};
use serde::{Deserialize, Serialize};
use weir_common::event::EventView;
use weir_common::event::micros;
use weir_common::wire::Batch;
use weir_common::{Event, Record};

use crate::index::{self, IndexTables};
use crate::indexer::{INDEXED_THROUGH, IndexState, Indexer};
use crate::query::{Cursor, EventFilter};

pub(crate) const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
const AGENT_SEQ: TableDefinition<(u32, u64), u64> = TableDefinition::new("agent_seq");
const AGENT_RUNS: TableDefinition<(u32, u64), (u64, u64)> = TableDefinition::new("agent_runs");
const AGENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("agents");
pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// One page of a search: events in list order with their positions, the number of events
/// matching in all, and whether there are more after this page.
#[derive(Debug, Default)]
pub struct SearchPage {
    pub events: Vec<(Cursor, StoredEvent)>,
    pub total: u64,
    pub more: bool,
}

/// Per time bucket, per severity rank (debug = 0 … critical = 4): events and occurrences (the
/// sum of their first-stage dedup counts).
pub type Histogram = Vec<[(u64, u64); 5]>;

/// The tag a correlation rule with `suppress_individual` sets on the events it absorbed (the
/// rule's name): they stay stored and counted in the incident, hidden from default views.
pub const SUPPRESSED_TAG: &str = "weir.suppressed_by";

/// An event as stored: the agent's event plus where it came from and when it was stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredEvent {
    pub site: String,
    pub agent: String,
    /// The agent's sequence number for it (with site and agent, the fleet-wide id).
    pub seq: u64,
    #[serde(with = "micros")]
    pub stored_at: Timestamp,
    pub correlated_incident: Option<String>,
    pub event: Event,
}

impl StoredEvent {
    pub fn id(&self) -> String {
        weir_common::event_id(&self.site, &self.agent, self.seq)
    }

    /// Hidden from default views: its event definition says `logonly`
    /// ([`crate::alarm::DEST_TAG`]), or a correlation rule suppressed it
    /// ([`SUPPRESSED_TAG`]). `hidden=include` (or `only`) shows it.
    pub fn hidden(&self) -> bool {
        let tags = &self.event.tags;
        tags.get(crate::alarm::DEST_TAG).map(String::as_str) == Some("logonly")
            || tags.contains_key(SUPPRESSED_TAG)
    }
}

/// What the store remembers of each agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentRecord {
    pub number: u32,
    pub site: String,
    pub name: String,
    /// Highest agent sequence durably stored.
    pub committed_seq: u64,
    #[serde(with = "micros")]
    pub first_seen: Timestamp,
    #[serde(with = "micros")]
    pub last_commit: Timestamp,
}

/// A batch from one agent, prepared by [`prepare`], for [`Store::commit`].
#[derive(Debug)]
pub struct AgentBatch<'a> {
    pub site: &'a str,
    pub name: &'a str,
    pub records: &'a [Prepared],
}

/// One record, decoded and (for events) encoded as stored, outside the store's single writer:
/// connection tasks do this work in parallel, the writer only inserts.
#[derive(Debug, Clone, PartialEq)]
pub enum Prepared {
    /// An event: its agent sequence and its [`StoredEvent`] bytes (a batch's events share
    /// one buffer: one allocation per batch, not per event).
    Event { seq: u64, bytes: Bytes },
    /// A first-stage dedup count update.
    Count {
        seq: u64,
        target_seq: u64,
        count: u64,
        last_seen: Timestamp,
    },
    /// A record that does not decode (counted and skipped at commit, never stored).
    Malformed { seq: u64, error: String },
    /// An event that processing decided not to store (suppressed, `donotpersist`, ...): it
    /// only advances the agent's committed sequence. Its effects travel beside the batch.
    Skip { seq: u64 },
}

impl Prepared {
    /// An event to store, encoded (for paths that build [`StoredEvent`]s themselves, such as
    /// local ingest and benchmarks). Its `seq` is the stored event's.
    pub fn event(stored: &StoredEvent) -> Prepared {
        Prepared::Event {
            seq: stored.seq,
            bytes: postcard::to_allocvec(stored)
                .expect("encode StoredEvent")
                .into(),
        }
    }

    pub fn seq(&self) -> u64 {
        match self {
            Prepared::Event { seq, .. }
            | Prepared::Count { seq, .. }
            | Prepared::Malformed { seq, .. }
            | Prepared::Skip { seq } => *seq,
        }
    }
}

/// Decodes a batch's records and encodes its events as stored, stamped `stored_at = now`.
pub fn prepare(site: &str, name: &str, batch: &Batch, now: Timestamp) -> Vec<Prepared> {
    let records = batch.records.iter().map(|r| (r.seq, r.payload.as_slice()));
    prepare_with(site, name, records, now, |_| true, |_| true)
}

/// [`prepare`] of a batch's records (sequence and encoded [`Record`]), with processing.
///
/// An event for which `as_is` says processing would neither change it nor have any effect
/// is stored without being decoded into an [`Event`] or encoded again: its stored bytes are
/// the [`StoredEvent`] header followed by the agent's own encoding of the event (a
/// `StoredEvent` ends with its event, and postcard encodes a struct as its fields in order, so
/// the stored bytes decode to the same event; they are the agent's bytes, so not necessarily
/// the canonical encoding, e.g. an overlong varint, which decodes alike). The view `as_is`
/// gets has checked everything decoding the event would (UTF-8, ranges) and that the tag keys
/// increase strictly (so every reader sees the same tags), so the stored bytes always decode.
/// Other events are decoded, handed to `process`, which may change them and returns whether
/// to store them (`false` gives [`Prepared::Skip`]), and encoded.
///
/// The events stored as they are get their bytes from one buffer sized for the whole batch
/// (a record's payload bounds its event's length), split off as each is written.
pub fn prepare_with<'r>(
    site: &str,
    name: &str,
    records: impl ExactSizeIterator<Item = (u64, &'r [u8])> + Clone,
    now: Timestamp,
    as_is: impl Fn(&EventView<'_>) -> bool,
    mut process: impl FnMut(&mut StoredEvent) -> bool,
) -> Vec<Prepared> {
    let header = StoredHeader::new(site, name, now);
    let mut out = Vec::with_capacity(records.len());
    let room: usize = records
        .clone()
        .map(|(_, payload)| header.max_len(payload.len()))
        .sum();
    let mut buf = BytesMut::with_capacity(room);
    for (seq, payload) in records {
        if let Some((view, event)) = EventView::from_record(payload)
            && as_is(&view)
        {
            header.encode(seq, event, &mut buf);
            out.push(Prepared::Event {
                seq,
                bytes: buf.split().freeze(),
            });
            continue;
        }
        out.push(match Record::from_bytes(payload) {
            Ok(Record::Event(event)) => {
                let mut stored = StoredEvent {
                    site: site.to_string(),
                    agent: name.to_string(),
                    seq,
                    stored_at: now,
                    correlated_incident: None,
                    event,
                };
                if !process(&mut stored) {
                    out.push(Prepared::Skip { seq });
                    continue;
                }
                let bytes = postcard::to_allocvec(&stored).expect("encode StoredEvent");
                Prepared::Event {
                    seq,
                    bytes: bytes.into(),
                }
            }
            Ok(Record::Count {
                target_seq,
                count,
                last_seen,
            }) => Prepared::Count {
                seq,
                target_seq,
                count,
                last_seen,
            },
            Err(e) => Prepared::Malformed {
                seq,
                error: e.to_string(),
            },
        });
    }
    out
}

/// The encoded fields of a [`StoredEvent`] before its event, for one batch: site and agent
/// (the same for every event of the batch), the event's sequence, then `stored_at` and
/// `correlated_incident` (the same for every event: stamped now, none yet).
struct StoredHeader {
    site_agent: Vec<u8>,
    stamp: Vec<u8>,
}

impl StoredHeader {
    fn new(site: &str, agent: &str, stored_at: Timestamp) -> StoredHeader {
        #[derive(Serialize)]
        struct Stamp {
            #[serde(with = "micros")]
            stored_at: Timestamp,
            correlated_incident: Option<String>,
        }
        let stamp = Stamp {
            stored_at,
            correlated_incident: None,
        };
        StoredHeader {
            site_agent: postcard::to_allocvec(&(site, agent)).expect("encode header"),
            stamp: postcard::to_allocvec(&stamp).expect("encode header"),
        }
    }

    /// The most bytes [`StoredHeader::encode`] writes for an event of `event_len` bytes.
    fn max_len(&self, event_len: usize) -> usize {
        // A varint u64 takes at most 10 bytes.
        self.site_agent.len() + 10 + self.stamp.len() + event_len
    }

    /// Appends the [`StoredEvent`] bytes of the event encoded as `event`, agent sequence
    /// `seq`, to `out`.
    fn encode(&self, seq: u64, event: &[u8], out: &mut BytesMut) {
        out.reserve(self.max_len(event.len()));
        out.extend_from_slice(&self.site_agent);
        let mut varint = [0u8; 10];
        let seq = postcard::to_slice(&seq, &mut varint).expect("a u64 varint fits 10 bytes");
        out.extend_from_slice(seq);
        out.extend_from_slice(&self.stamp);
        out.extend_from_slice(event);
    }
}

/// What a commit did, per batch (same order as the input) and in total.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CommitOutcome {
    /// Committed sequence of each batch's agent after the commit.
    pub committed: Vec<u64>,
    pub stored: u64,
    pub duplicates: u64,
    pub count_updates: u64,
    /// Count updates whose event is not in the store (it was dropped or aged out).
    pub orphan_updates: u64,
    /// Records that could not be decoded (counted, logged, skipped: they must not wedge the
    /// agent's pipeline).
    pub malformed: u64,
    /// Events processing decided not to store ([`Prepared::Skip`]; counted where decided).
    pub not_stored: u64,
    /// Alarms raised by count updates ([`crate::alarm::persist::apply_counts`]).
    pub alarm_counts: crate::alarm::persist::Applied,
}

#[derive(Debug, thiserror::Error)]
#[error("event store {path}: {error}")]
pub struct StoreError {
    pub path: PathBuf,
    /// In the message, not a `source`, so a printed chain says it once.
    pub error: redb::Error,
}

/// What one [`Store::expire`] transaction did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Expired {
    pub deleted: u64,
    /// Handed to the archive before deletion.
    pub archived: u64,
    /// Deleted without archiving: the record did not decode.
    pub unreadable: u64,
    /// More events are older than the cutoff.
    pub more: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ExpireError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("writing the archive: {0}")]
    Archive(std::io::Error),
}

pub struct Store {
    db: Arc<Database>,
    path: PathBuf,
    /// Committed and indexed store keys, shared with the indexer thread.
    pub(crate) index: Arc<IndexState>,
    /// The background indexer (`None` in tests that drive it by hand); stopped on drop.
    indexer: Option<Indexer>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

/// The store's page cache unless configured: 2 GiB, which holds the time index of a
/// 10M-event store (redb's own default, 1 GiB, does not: a `q=` over one day then re-reads
/// pages and its p99 doubles).
pub const DEFAULT_CACHE_BYTES: u64 = 2 << 30;

impl Store {
    /// Opens or creates the store. Unlike the agent's queue, a corrupt store is never moved
    /// aside automatically: it is the system of record, and an operator must decide.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        Store::open_with_cache(path, DEFAULT_CACHE_BYTES)
    }

    /// [`Store::open`] with `cache_bytes` of page cache (`store_cache` in aggregator.toml).
    pub fn open_with_cache(path: &Path, cache_bytes: u64) -> Result<Store, StoreError> {
        let mut store = Store::open_unindexed(path, cache_bytes)?;
        let indexer = Indexer::spawn(store.db.clone(), store.path.clone(), store.index.clone())
            .map_err(|e| store.err(redb::StorageError::Io(e)))?;
        store.indexer = Some(indexer);
        Ok(store)
    }

    /// Opens the store without starting its background indexer: events stored through it
    /// are indexed only by [`Store::index_pending`] (tests that stop indexing part-way).
    pub(crate) fn open_unindexed(path: &Path, cache_bytes: u64) -> Result<Store, StoreError> {
        let err = |e: redb::Error| StoreError {
            path: path.to_path_buf(),
            error: e,
        };
        let db = Database::builder()
            .set_cache_size(usize::try_from(cache_bytes).unwrap_or(usize::MAX))
            .create(path)
            .map_err(|e| err(e.into()))?;
        let txn = db.begin_write().map_err(|e| err(e.into()))?;
        let (indexed, last_key, watermark) = {
            let events = txn.open_table(EVENTS).map_err(|e| err(e.into()))?;
            txn.open_table(AGENT_SEQ).map_err(|e| err(e.into()))?;
            txn.open_table(AGENT_RUNS).map_err(|e| err(e.into()))?;
            txn.open_table(AGENTS).map_err(|e| err(e.into()))?;
            let mut meta = txn.open_table(META).map_err(|e| err(e.into()))?;
            IndexTables::open(&txn).map_err(err)?;
            let mut version = meta
                .get("index_version")
                .map_err(|e| err(e.into()))?
                .map_or(0, |v| v.value());
            let last_key = events
                .last()
                .map_err(|e| err(e.into()))?
                .map_or(0, |(k, _)| k.value());
            let mut watermark = watermark_in(&meta).map_err(|e| err(e.into()))?;
            if version == 0 && last_key == 0 {
                version = index::INDEX_VERSION;
                meta.insert("index_version", version)
                    .map_err(|e| err(e.into()))?;
            } else if version == index::SYNC_INDEX_VERSION {
                // Written by a build that indexed in the ingest transaction: every event is
                // indexed. From now on the indexer keeps the watermark.
                (version, watermark) = (index::INDEX_VERSION, last_key);
                meta.insert(INDEXED_THROUGH, watermark)
                    .map_err(|e| err(e.into()))?;
                meta.insert("index_version", version)
                    .map_err(|e| err(e.into()))?;
            }
            (version == index::INDEX_VERSION, last_key, watermark)
        };
        txn.commit().map_err(|e| err(e.into()))?;
        let mut store = Store {
            db: Arc::new(db),
            path: path.to_path_buf(),
            index: Arc::new(IndexState::new(last_key, watermark)),
            indexer: None,
        };
        if !indexed {
            store.rebuild_indexes()?;
            store.index = Arc::new(IndexState::new(last_key, last_key));
        }
        Ok(store)
    }

    /// Builds the secondary indexes of a store written by a version without them (or an older
    /// layout): drops whatever index tables it has, sets the watermark to 0 and the version to
    /// the current one in one transaction, then runs the indexer's own chunks to the end. A
    /// crash part-way leaves a current-version store with a lower watermark, which the
    /// background indexer finishes (searches scan what it has not reached).
    fn rebuild_indexes(&self) -> Result<(), StoreError> {
        let total = self.len()?;
        tracing::warn!(
            store = %self.path.display(), events = total,
            "building the event store's search indexes (once, after an upgrade); the aggregator starts when done"
        );
        let started = std::time::Instant::now();
        let txn = self.db.begin_write().map_err(|e| self.err(e))?;
        txn.delete_table(index::BY_TIME).map_err(|e| self.err(e))?;
        txn.delete_table(index::BY_SEVERITY)
            .map_err(|e| self.err(e))?;
        txn.delete_table(index::BY_HOST).map_err(|e| self.err(e))?;
        txn.delete_table(index::BY_SITE).map_err(|e| self.err(e))?;
        txn.delete_table(index::BY_INCIDENT)
            .map_err(|e| self.err(e))?;
        txn.delete_table(index::HIDDEN).map_err(|e| self.err(e))?;
        IndexTables::open(&txn).map_err(|e| self.err(e))?;
        {
            let mut meta = txn.open_table(META).map_err(|e| self.err(e))?;
            meta.insert(INDEXED_THROUGH, 0).map_err(|e| self.err(e))?;
            meta.insert("index_version", index::INDEX_VERSION)
                .map_err(|e| self.err(e))?;
        }
        txn.commit().map_err(|e| self.err(e))?;
        self.index.indexed_through.store(0, Ordering::Release);
        while self.index_pending(crate::indexer::MAX_CHUNK)? > 0 {
            tracing::info!(
                indexed_through = self.index.indexed_through.load(Ordering::Acquire),
                "still building search indexes"
            );
        }
        tracing::warn!(
            events = total,
            seconds = started.elapsed().as_secs_f64(),
            "event store search indexes built"
        );
        Ok(())
    }

    fn err(&self, e: impl Into<redb::Error>) -> StoreError {
        StoreError {
            path: self.path.clone(),
            error: e.into(),
        }
    }

    /// The redb database, for state kept beside the events (alarms, incidents) in the same
    /// file and, through [`Store::commit_with`], the same transactions.
    pub fn database(&self) -> &Database {
        &self.db
    }

    /// Stores several agents' batches in one durable transaction.
    pub fn commit(
        &self,
        batches: &[AgentBatch<'_>],
        now: Timestamp,
    ) -> Result<CommitOutcome, StoreError> {
        self.commit_with(batches, now, |_, _| Ok(()))
    }

    /// [`Store::commit`], running `also` in the same transaction before it commits. `also`
    /// gets each batch's committed sequence *before* this commit: the batch's records above it
    /// are new, the rest redeliveries (whose effects must not be applied twice).
    pub fn commit_with(
        &self,
        batches: &[AgentBatch<'_>],
        now: Timestamp,
        also: impl FnOnce(&redb::WriteTransaction, &[u64]) -> Result<(), redb::Error>,
    ) -> Result<CommitOutcome, StoreError> {
        let mut prior = Vec::with_capacity(batches.len());
        let mut out = CommitOutcome::default();
        // Count updates of events that raised an alarm: applied after `also`.
        let mut raises = Vec::new();
        let last_key;
        // Tells the indexer ingest is waiting (it yields) and how busy ingest is (it defers).
        let mut ingest = self.index.ingest_commit();
        let mut txn = self.db.begin_write().map_err(|e| self.err(e))?;
        ingest.locked();
        txn.set_durability(Durability::Immediate)
            .map_err(|e| self.err(redb::Error::from(e)))?;
        {
            let mut events = txn.open_table(EVENTS).map_err(|e| self.err(e))?;
            let agent_seq = txn.open_table(AGENT_SEQ).map_err(|e| self.err(e))?;
            let mut runs = txn.open_table(AGENT_RUNS).map_err(|e| self.err(e))?;
            let mut agents = txn.open_table(AGENTS).map_err(|e| self.err(e))?;
            let mut meta = txn.open_table(META).map_err(|e| self.err(e))?;
            // Index tables are opened only for a count update of an indexed event: new events
            // are indexed later, in bulk, by the indexer.
            let mut idx: Option<IndexTables<'_>> = None;
            let watermark = watermark_in(&meta).map_err(|e| self.err(e))?;
            let mut next_key = meta
                .get("next_key")
                .map_err(|e| self.err(e))?
                .map_or(1, |v| v.value());
            let mut next_agent = meta
                .get("next_agent")
                .map_err(|e| self.err(e))?
                .map_or(1, |v| v.value());
            let mut touched: HashMap<String, AgentRecord> = HashMap::new();

            for ab in batches {
                let identity = format!("{}/{}", ab.site, ab.name);
                let mut rec = match touched.remove(&identity) {
                    Some(r) => r,
                    None => match agents.get(identity.as_str()).map_err(|e| self.err(e))? {
                        Some(v) => postcard::from_bytes(v.value()).map_err(|e| {
                            self.err(redb::StorageError::Corrupted(format!(
                                "agent record {identity}: {e}"
                            )))
                        })?,
                        None => {
                            let number = next_agent as u32;
                            next_agent += 1;
                            AgentRecord {
                                number,
                                site: ab.site.to_string(),
                                name: ab.name.to_string(),
                                committed_seq: 0,
                                first_seen: now,
                                last_commit: now,
                            }
                        }
                    },
                };
                prior.push(rec.committed_seq);
                // The run of this batch's events being stored, written when it ends.
                let mut run: Option<Run> = None;
                for p in ab.records {
                    let seq = p.seq();
                    if seq <= rec.committed_seq {
                        out.duplicates += 1;
                        continue;
                    }
                    rec.committed_seq = seq;
                    match p {
                        Prepared::Event { bytes, .. } => {
                            events
                                .insert(next_key, &bytes[..])
                                .map_err(|e| self.err(e))?;
                            if !run.as_mut().is_some_and(|r| r.extend(seq, next_key))
                                && let Some(r) = run.replace(Run::start(seq, next_key))
                            {
                                r.write(&mut runs, rec.number).map_err(|e| self.err(e))?;
                            }
                            next_key += 1;
                            out.stored += 1;
                        }
                        Prepared::Count {
                            target_seq,
                            count,
                            last_seen,
                            ..
                        } => {
                            // It may update an event stored earlier in this batch.
                            if let Some(r) = run.take() {
                                r.write(&mut runs, rec.number).map_err(|e| self.err(e))?;
                            }
                            let key = stored_key(&runs, &agent_seq, rec.number, *target_seq)
                                .map_err(|e| self.err(e))?;
                            let Some(key) = key else {
                                out.orphan_updates += 1;
                                continue;
                            };
                            let current = events
                                .get(key)
                                .map_err(|e| self.err(e))?
                                .map(|v| v.value().to_vec());
                            if let Some(bytes) = current
                                && let Ok(mut stored) = postcard::from_bytes::<StoredEvent>(&bytes)
                            {
                                // Absolute counts: keep the largest, so replays cannot inflate.
                                let old_count = stored.event.count;
                                if *count > stored.event.count {
                                    stored.event.count = *count;
                                }
                                if *last_seen > stored.event.last_seen {
                                    stored.event.last_seen = *last_seen;
                                }
                                let bytes =
                                    postcard::to_allocvec(&stored).expect("encode StoredEvent");
                                events
                                    .insert(key, bytes.as_slice())
                                    .map_err(|e| self.err(e))?;
                                // The summaries carry the count (totals, histograms); an event
                                // above the watermark gets it when the indexer reaches it.
                                if key <= watermark {
                                    if idx.is_none() {
                                        idx =
                                            Some(IndexTables::open(&txn).map_err(|e| self.err(e))?);
                                    }
                                    if let Some(idx) = &mut idx {
                                        index::index_event(idx, key, &stored)
                                            .map_err(|e| self.err(e))?;
                                    }
                                }
                                raises.extend(crate::alarm::persist::CountRaise::of(
                                    old_count, &stored,
                                ));
                                out.count_updates += 1;
                            } else {
                                out.orphan_updates += 1;
                            }
                        }
                        Prepared::Skip { .. } => out.not_stored += 1,
                        Prepared::Malformed { error, .. } => {
                            out.malformed += 1;
                            weir_common::warn_limited!(
                                "malformed_record",
                                agent = %identity, seq, error = %error,
                                "skipping a record that does not decode (the agent may run an incompatible version)"
                            );
                        }
                    }
                }
                if let Some(r) = run.take() {
                    r.write(&mut runs, rec.number).map_err(|e| self.err(e))?;
                }
                rec.last_commit = now;
                out.committed.push(rec.committed_seq);
                touched.insert(identity, rec);
            }
            for (identity, rec) in &touched {
                let bytes = postcard::to_allocvec(rec).expect("encode AgentRecord");
                agents
                    .insert(identity.as_str(), bytes.as_slice())
                    .map_err(|e| self.err(e))?;
            }
            meta.insert("next_key", next_key).map_err(|e| self.err(e))?;
            last_key = next_key - 1;
            meta.insert("next_agent", next_agent)
                .map_err(|e| self.err(e))?;
        }
        also(&txn, &prior).map_err(|e| self.err(e))?;
        out.alarm_counts =
            crate::alarm::persist::apply_counts(&txn, &raises, now).map_err(|e| self.err(e))?;
        txn.commit().map_err(|e| self.err(e))?;
        if out.stored > 0 {
            self.index.committed(last_key);
        }
        Ok(out)
    }

    /// The agent's highest committed sequence (0 if never seen).
    pub fn committed_seq(&self, site: &str, name: &str) -> Result<u64, StoreError> {
        Ok(self.agent(site, name)?.map_or(0, |a| a.committed_seq))
    }

    pub fn agent(&self, site: &str, name: &str) -> Result<Option<AgentRecord>, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let agents = txn.open_table(AGENTS).map_err(|e| self.err(e))?;
        let identity = format!("{site}/{name}");
        Ok(
            match agents.get(identity.as_str()).map_err(|e| self.err(e))? {
                Some(v) => postcard::from_bytes(v.value()).ok(),
                None => None,
            },
        )
    }

    pub fn agents(&self) -> Result<Vec<AgentRecord>, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let agents = txn.open_table(AGENTS).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for item in agents.iter().map_err(|e| self.err(e))? {
            let (_, v) = item.map_err(|e| self.err(e))?;
            if let Ok(r) = postcard::from_bytes(v.value()) {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// Total stored events.
    pub fn len(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let events = txn.open_table(EVENTS).map_err(|e| self.err(e))?;
        events.len().map_err(|e| self.err(e))
    }

    pub fn is_empty(&self) -> Result<bool, StoreError> {
        Ok(self.len()? == 0)
    }

    /// Newest first: up to `limit` events with a store key below `before` (all when `None`),
    /// each with its store key.
    pub fn newest(
        &self,
        limit: usize,
        before: Option<u64>,
    ) -> Result<Vec<(u64, StoredEvent)>, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let events = txn.open_table(EVENTS).map_err(|e| self.err(e))?;
        let mut out = Vec::with_capacity(limit.min(1000));
        let range = events
            .range(..before.unwrap_or(u64::MAX))
            .map_err(|e| self.err(e))?;
        for item in range.rev() {
            let (k, v) = item.map_err(|e| self.err(e))?;
            if let Ok(ev) = postcard::from_bytes::<StoredEvent>(v.value()) {
                out.push((k.value(), ev));
            }
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// Searches through the indexes (see [`EventFilter::plan`]): up to `limit` matching events
    /// after `cursor` in list order (newest event time first, ties by store key), whether more
    /// follow, and how many match in all.
    pub fn search(
        &self,
        filter: &EventFilter,
        limit: usize,
        cursor: Option<Cursor>,
    ) -> Result<SearchPage, StoreError> {
        // Each slice keeps up to `limit` events of its own, so only API-sized pages go parallel:
        // a dry-run's 200k-event page would be held once per slice.
        let slices = if limit <= MAX_PARALLEL_LIMIT {
            scan_threads()
        } else {
            1
        };
        self.search_in_slices(filter, limit, cursor, slices)
    }

    /// [`Store::search`] with the scan cut into at most `slices` time slices.
    pub(crate) fn search_in_slices(
        &self,
        filter: &EventFilter,
        limit: usize,
        cursor: Option<Cursor>,
        slices: usize,
    ) -> Result<SearchPage, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let events = txn.open_table(EVENTS).map_err(|e| self.err(e))?;
        let plan = filter.plan();
        let upper = cursor.map(|c| (c.time_us, c.key));
        let mut page = SearchPage::default();
        let read = |key: u64| -> Result<Option<StoredEvent>, StoreError> {
            Ok(events
                .get(key)
                .map_err(|e| self.err(e))?
                .and_then(|v| postcard::from_bytes::<StoredEvent>(v.value()).ok()))
        };
        // Events the indexer has not reached yet are matched here, one by one. Only the
        // `limit` newest after the cursor are kept (a min-heap), so a long indexer lag costs
        // time, not memory.
        let mut tail_matches = 0u64;
        let mut tail_on_page = 0u64;
        let mut newest: BinaryHeap<Reverse<TailHit>> = BinaryHeap::new();
        let tail_scanned = self.scan_tail(&txn, |c, s| {
            if !filter.matches(&s) {
                return;
            }
            tail_matches += 1;
            if upper.is_some_and(|u| (c.time_us, c.key) >= u) {
                return;
            }
            tail_on_page += 1;
            newest.push(Reverse(TailHit(c, s)));
            if newest.len() > limit {
                newest.pop();
            }
        })?;
        // Newest first (the heap's ascending order reversed).
        let tail_after: Vec<(Cursor, StoredEvent)> = newest
            .into_sorted_vec()
            .into_iter()
            .map(|Reverse(TailHit(c, s))| (c, s))
            .collect();
        if filter.is_empty() {
            // Every event matches: the total is the indexed part of the table's size (less
            // the hidden ones when they are left out) plus the tail's matches, and only the
            // page is read.
            let indexed = events
                .len()
                .map_err(|e| self.err(e))?
                .saturating_sub(tail_scanned);
            page.total = indexed;
            if plan.hidden != crate::query::Hidden::Include {
                let hidden = txn
                    .open_table(index::HIDDEN)
                    .map_err(|e| self.err(e))?
                    .len()
                    .map_err(|e| self.err(e))?;
                page.total = match plan.hidden {
                    crate::query::Hidden::Only => hidden,
                    _ => indexed.saturating_sub(hidden),
                };
            }
            page.total += tail_matches;
            let mut indexed_page = Vec::new();
            let mut more = false;
            for c in index::candidates(&txn, &plan, upper).map_err(|e| self.err(e))? {
                let c = c.map_err(|e| self.err(e))?;
                if indexed_page.len() == limit {
                    more = true;
                    break;
                }
                if let Some(s) = read(c.key)? {
                    indexed_page.push((cursor_of(&c), s));
                }
            }
            // The heap kept at most `limit` of the tail's events after the cursor.
            let tail_cut = tail_on_page > tail_after.len() as u64;
            let (events, left_over) = merge_pages(indexed_page, tail_after, limit);
            page.events = events;
            page.more = more || left_over || tail_cut;
            return Ok(page);
        }
        // One pass over the whole match set: every match counts, those after the cursor fill
        // the page. The time range is cut into one slice per core, scanned in parallel (a
        // `q=` over a day of a 10M-event store reads ~300k index entries); slices are
        // disjoint and ordered, so their pages concatenate newest first.
        let slices = index::time_slices(&txn, &plan, slices).map_err(|e| self.err(e))?;
        let scan = |slice: &crate::query::Plan| -> Result<SliceScan, StoreError> {
            let events = txn.open_table(EVENTS).map_err(|e| self.err(e))?;
            let read = |key: u64| -> Result<Option<StoredEvent>, StoreError> {
                Ok(events
                    .get(key)
                    .map_err(|e| self.err(e))?
                    .and_then(|v| postcard::from_bytes::<StoredEvent>(v.value()).ok()))
            };
            let mut out = SliceScan::default();
            for c in index::candidates(&txn, slice, None).map_err(|e| self.err(e))? {
                let c = c.map_err(|e| self.err(e))?;
                let on_page = upper.is_none_or(|u| (c.time, c.key) < u);
                let mut event = None;
                if slice.needs_event {
                    match read(c.key)? {
                        Some(s) if filter.matches(&s) => event = Some(s),
                        _ => continue,
                    }
                }
                out.total += 1;
                if !on_page {
                    continue;
                }
                out.on_page += 1;
                if out.events.len() == limit {
                    continue;
                }
                let event = match event {
                    Some(s) => Some(s),
                    None => read(c.key)?,
                };
                if let Some(s) = event {
                    out.events.push((cursor_of(&c), s));
                }
            }
            Ok(out)
        };
        let scans: Vec<Result<SliceScan, StoreError>> = if slices.len() == 1 {
            vec![scan(&slices[0])]
        } else {
            std::thread::scope(|sc| {
                let handles: Vec<_> = slices.iter().map(|p| sc.spawn(|| scan(p))).collect();
                handles
                    .into_iter()
                    .map(|h| h.join().expect("a search slice panicked"))
                    .collect()
            })
        };
        let mut on_page = 0;
        for r in scans {
            let r = r?;
            page.total += r.total;
            on_page += r.on_page;
            let room = limit - page.events.len();
            page.events.extend(r.events.into_iter().take(room));
        }
        page.total += tail_matches;
        on_page += tail_on_page;
        page.events = merge_pages(std::mem::take(&mut page.events), tail_after, limit).0;
        page.more = on_page > page.events.len() as u64;
        Ok(page)
    }

    /// Hands `visit` each stored event above the indexer's watermark in `txn` (not in the
    /// indexes yet) that decodes, in store order; returns how many events the tail holds.
    fn scan_tail(
        &self,
        txn: &redb::ReadTransaction,
        mut visit: impl FnMut(Cursor, StoredEvent),
    ) -> Result<u64, StoreError> {
        let meta = txn.open_table(META).map_err(|e| self.err(e))?;
        let watermark = watermark_in(&meta).map_err(|e| self.err(e))?;
        let events = txn.open_table(EVENTS).map_err(|e| self.err(e))?;
        let mut scanned = 0;
        for item in events
            .range(watermark.saturating_add(1)..)
            .map_err(|e| self.err(e))?
        {
            let (k, v) = item.map_err(|e| self.err(e))?;
            scanned += 1;
            if let Ok(s) = postcard::from_bytes::<StoredEvent>(v.value()) {
                let c = Cursor {
                    time_us: index::time_us(&s),
                    key: k.value(),
                };
                visit(c, s);
            }
        }
        Ok(scanned)
    }

    /// Stored events the search indexes do not cover yet (searches scan them one by one).
    pub fn index_lag(&self) -> u64 {
        self.index.lag()
    }

    /// The lag up to which the indexer defers to a saturated ingest (`index_max_lag_events`;
    /// see [`crate::indexer`]). 0: it never defers nor yields.
    pub fn index_max_lag(&self) -> u64 {
        self.index.max_lag()
    }

    /// Sets [`Store::index_max_lag`].
    pub fn set_index_max_lag(&self, events: u64) {
        self.index.set_max_lag(events);
    }

    /// How long ingest commits have waited for the write lock since the store opened.
    pub fn ingest_lock_waits(&self) -> crate::indexer::LockWaits {
        self.index.lock_waits()
    }

    /// Asks the indexer to index every event stored so far now, and waits until it has (at
    /// most `timeout`). Searches never need this (they scan what is not indexed); benchmarks
    /// and tests that look at the indexes themselves do.
    pub fn wait_indexed(&self, timeout: Duration) -> Result<(), StoreError> {
        let target = self.index.last_key.load(Ordering::Acquire);
        let deadline = Instant::now() + timeout;
        while self.index.indexed_through.load(Ordering::Acquire) < target {
            if self.indexer.is_none() {
                self.index_pending(crate::indexer::MAX_CHUNK)?;
                continue;
            }
            if Instant::now() >= deadline {
                return Err(self.err(redb::StorageError::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "search indexes still {} events behind after {timeout:?}",
                        self.index.lag()
                    ),
                ))));
            }
            self.index.request_flush(target);
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    }

    /// Indexes up to `max` events above the watermark in one transaction, as the indexer
    /// does; returns how many.
    pub(crate) fn index_pending(&self, max: usize) -> Result<usize, StoreError> {
        crate::indexer::index_pending(&self.db, &self.path, &self.index, max, false)
    }

    /// Counts matching events per severity in `buckets` consecutive time buckets of
    /// `bucket_us` starting at `origin_us` (the filter's time range should lie inside).
    pub fn histogram(
        &self,
        filter: &EventFilter,
        origin_us: i64,
        bucket_us: i64,
        buckets: usize,
    ) -> Result<Histogram, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let events = txn.open_table(EVENTS).map_err(|e| self.err(e))?;
        let plan = filter.plan();
        let mut out = vec![[(0u64, 0u64); 5]; buckets];
        let mut add = |time: i64, rank: u8, count: u64| {
            let Ok(b) = usize::try_from((time - origin_us).div_euclid(bucket_us)) else {
                return;
            };
            if let Some(slot) = out.get_mut(b).and_then(|b| b.get_mut(rank as usize)) {
                slot.0 += 1;
                slot.1 += count;
            }
        };
        self.scan_tail(&txn, |c, s| {
            if filter.matches(&s) {
                add(c.time_us, s.event.severity.rank(), s.event.count);
            }
        })?;
        for c in index::candidates(&txn, &plan, None).map_err(|e| self.err(e))? {
            let c = c.map_err(|e| self.err(e))?;
            let (rank, count) = if plan.needs_event {
                let Some(s) = events
                    .get(c.key)
                    .map_err(|e| self.err(e))?
                    .and_then(|v| postcard::from_bytes::<StoredEvent>(v.value()).ok())
                else {
                    continue;
                };
                if !filter.matches(&s) {
                    continue;
                }
                (s.event.severity.rank(), s.event.count)
            } else {
                (c.summary.rank, c.summary.count)
            };
            add(c.time, rank, count);
        }
        Ok(out)
    }

    /// Sets (or clears) the correlated incident of stored events, event and index in one
    /// transaction. Returns how many of `keys` were found.
    pub fn set_correlated_incident(
        &self,
        keys: &[u64],
        incident: Option<&str>,
    ) -> Result<usize, StoreError> {
        let txn = self.db.begin_write().map_err(|e| self.err(e))?;
        let mut found = 0;
        {
            let watermark = watermark(&txn).map_err(|e| self.err(e))?;
            let mut events = txn.open_table(EVENTS).map_err(|e| self.err(e))?;
            let mut idx = IndexTables::open(&txn).map_err(|e| self.err(e))?;
            for &key in keys {
                let changed = rewrite_event(&mut events, &mut idx, watermark, key, |s| {
                    s.correlated_incident = incident.map(str::to_string);
                })
                .map_err(|e| self.err(e))?;
                found += usize::from(changed);
            }
        }
        txn.commit().map_err(|e| self.err(e))?;
        Ok(found)
    }

    /// Deletes up to `max` of the oldest stored events stored before `cutoff` (retention: how
    /// long an event has been in the hot store, in store-key order, which is arrival order), with
    /// their index and `agent_seq` entries, in one transaction. `archive` sees the events first,
    /// inside the transaction: when it fails, nothing is deleted. Returns how many were deleted
    /// and whether older ones remain.
    pub fn expire(
        &self,
        cutoff: Timestamp,
        max: usize,
        archive: impl FnOnce(&[StoredEvent]) -> std::io::Result<()>,
    ) -> Result<Expired, ExpireError> {
        let txn = self.db.begin_write().map_err(|e| self.err(e))?;
        let mut out = Expired::default();
        {
            let mut events = txn.open_table(EVENTS).map_err(|e| self.err(e))?;
            let mut agent_seq = txn.open_table(AGENT_SEQ).map_err(|e| self.err(e))?;
            let mut runs = txn.open_table(AGENT_RUNS).map_err(|e| self.err(e))?;
            let agents = txn.open_table(AGENTS).map_err(|e| self.err(e))?;
            let mut idx = IndexTables::open(&txn).map_err(|e| self.err(e))?;
            // Events above the watermark have no index entries to remove.
            let watermark = watermark(&txn).map_err(|e| self.err(e))?;
            let mut aged: Vec<(u64, Option<StoredEvent>)> = Vec::new();
            for item in events.iter().map_err(|e| self.err(e))? {
                let (k, v) = item.map_err(|e| self.err(e))?;
                if aged.len() == max {
                    out.more = true;
                    break;
                }
                match postcard::from_bytes::<StoredEvent>(v.value()) {
                    Ok(s) if s.stored_at >= cutoff => break,
                    Ok(s) => aged.push((k.value(), Some(s))),
                    // Unreadable (written by an incompatible build): it ages out uncounted by
                    // time, so it cannot pin retention forever.
                    Err(_) => aged.push((k.value(), None)),
                }
            }
            let keep: Vec<StoredEvent> = aged.iter().filter_map(|(_, s)| s.clone()).collect();
            archive(&keep).map_err(ExpireError::Archive)?;
            out.archived = keep.len() as u64;
            let mut numbers: HashMap<String, Option<u32>> = HashMap::new();
            // Per agent number, the highest sequence expired here.
            let mut expired_through: HashMap<u32, u64> = HashMap::new();
            for (key, s) in &aged {
                events.remove(*key).map_err(|e| self.err(e))?;
                out.deleted += 1;
                let Some(s) = s else {
                    out.unreadable += 1;
                    continue;
                };
                if *key <= watermark {
                    index::unindex_event(&mut idx, *key, s).map_err(|e| self.err(e))?;
                }
                let identity = format!("{}/{}", s.site, s.agent);
                let number = match numbers.get(&identity) {
                    Some(n) => *n,
                    None => {
                        let n = agents
                            .get(identity.as_str())
                            .map_err(|e| self.err(e))?
                            .and_then(|v| postcard::from_bytes::<AgentRecord>(v.value()).ok())
                            .map(|r| r.number);
                        numbers.insert(identity, n);
                        n
                    }
                };
                if let Some(n) = number {
                    agent_seq.remove((n, s.seq)).map_err(|e| self.err(e))?;
                    let through = expired_through.entry(n).or_default();
                    *through = (*through).max(s.seq);
                }
            }
            // Events expire in store-key order, which is each agent's sequence order: a run
            // that ends at or below the highest sequence expired here has no event left.
            for (n, through) in expired_through {
                let mut gone = Vec::new();
                for item in runs.range((n, 0)..=(n, through)).map_err(|e| self.err(e))? {
                    let (k, v) = item.map_err(|e| self.err(e))?;
                    if v.value().0 <= through {
                        gone.push(k.value());
                    }
                }
                for k in gone {
                    runs.remove(k).map_err(|e| self.err(e))?;
                }
            }
        }
        txn.commit().map_err(|e| self.err(e))?;
        Ok(out)
    }

    /// The oldest and newest event times stored (from the time index), `None` when empty.
    pub fn time_span(&self) -> Result<Option<(Timestamp, Timestamp)>, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = txn.open_table(index::BY_TIME).map_err(|e| self.err(e))?;
        let mut first = t
            .first()
            .map_err(|e| self.err(e))?
            .map(|(k, _)| k.value().0);
        let mut last = t.last().map_err(|e| self.err(e))?.map(|(k, _)| k.value().0);
        self.scan_tail(&txn, |c, _| {
            first = Some(first.map_or(c.time_us, |f| f.min(c.time_us)));
            last = Some(last.map_or(c.time_us, |l| l.max(c.time_us)));
        })?;
        Ok(match (first, last) {
            (Some(a), Some(b)) => Timestamp::from_microsecond(a)
                .ok()
                .zip(Timestamp::from_microsecond(b).ok()),
            _ => None,
        })
    }

    /// The store key of an event by its fleet id (`None`: not a fleet id, or not stored).
    pub fn key_of(&self, id: &str) -> Result<Option<u64>, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let agents = txn.open_table(AGENTS).map_err(|e| self.err(e))?;
        let agent_seq = txn.open_table(AGENT_SEQ).map_err(|e| self.err(e))?;
        let runs = txn.open_table(AGENT_RUNS).map_err(|e| self.err(e))?;
        let events = txn.open_table(EVENTS).map_err(|e| self.err(e))?;
        let Some(key) = key_in(&agents, &runs, &agent_seq, id).map_err(|e| self.err(e))? else {
            return Ok(None);
        };
        // Its run may outlive it (expired).
        let stored = events.get(key).map_err(|e| self.err(e))?.is_some();
        Ok(stored.then_some(key))
    }

    /// Every stored event in store order (tests and exports; not for the API's hot path).
    pub fn scan(&self, mut f: impl FnMut(u64, StoredEvent)) -> Result<(), StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let events = txn.open_table(EVENTS).map_err(|e| self.err(e))?;
        for item in events.iter().map_err(|e| self.err(e))? {
            let (k, v) = item.map_err(|e| self.err(e))?;
            if let Ok(ev) = postcard::from_bytes::<StoredEvent>(v.value()) {
                f(k.value(), ev);
            }
        }
        Ok(())
    }

    /// Sets `correlated_incident` on the stored events with these fleet ids, inside `txn`;
    /// returns how many were found (`donotpersist` events, for one, are not).
    pub fn mark_correlated(
        txn: &redb::WriteTransaction,
        event_ids: &[String],
        incident: &str,
    ) -> Result<u64, redb::Error> {
        let watermark = watermark(txn)?;
        let agents = txn.open_table(AGENTS)?;
        let agent_seq = txn.open_table(AGENT_SEQ)?;
        let runs = txn.open_table(AGENT_RUNS)?;
        let mut events = txn.open_table(EVENTS)?;
        let mut idx = IndexTables::open(txn)?;
        let mut found = 0;
        for id in event_ids {
            let Some(key) = key_in(&agents, &runs, &agent_seq, id)? else {
                continue;
            };
            if rewrite_event(&mut events, &mut idx, watermark, key, |s| {
                s.correlated_incident = Some(incident.to_string());
            })? {
                found += 1;
            }
        }
        Ok(found)
    }

    /// Changes the stored event with fleet id `event_id` with `f` inside `txn`, keeping the
    /// indexes in step (correlation tags suppressed events this way). `false`: no such event.
    pub fn update_event(
        txn: &redb::WriteTransaction,
        event_id: &str,
        f: impl FnOnce(&mut StoredEvent),
    ) -> Result<bool, redb::Error> {
        let key = {
            let agents = txn.open_table(AGENTS)?;
            let agent_seq = txn.open_table(AGENT_SEQ)?;
            let runs = txn.open_table(AGENT_RUNS)?;
            key_in(&agents, &runs, &agent_seq, event_id)?
        };
        let Some(key) = key else {
            return Ok(false);
        };
        let watermark = watermark(txn)?;
        let mut events = txn.open_table(EVENTS)?;
        let mut idx = IndexTables::open(txn)?;
        rewrite_event(&mut events, &mut idx, watermark, key, f)
    }

    /// Finds an event by its fleet id `site:agent:seq`.
    pub fn get_by_id(&self, id: &str) -> Result<Option<StoredEvent>, StoreError> {
        let Some(key) = self.key_of(id)? else {
            return Ok(None);
        };
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let events = txn.open_table(EVENTS).map_err(|e| self.err(e))?;
        Ok(events
            .get(key)
            .map_err(|e| self.err(e))?
            .and_then(|v| postcard::from_bytes(v.value()).ok()))
    }
}

/// A tail event kept for a search page, ordered by its cursor alone.
struct TailHit(Cursor, StoredEvent);

impl PartialEq for TailHit {
    fn eq(&self, other: &TailHit) -> bool {
        self.0 == other.0
    }
}

impl Eq for TailHit {}

impl PartialOrd for TailHit {
    fn partial_cmp(&self, other: &TailHit) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for TailHit {
    fn cmp(&self, other: &TailHit) -> std::cmp::Ordering {
        self.0.cmp(&other.0)
    }
}

/// The first `limit` events of two pages, each in list order, in list order; and whether
/// any were left over.
fn merge_pages(
    a: Vec<(Cursor, StoredEvent)>,
    b: Vec<(Cursor, StoredEvent)>,
    limit: usize,
) -> (Vec<(Cursor, StoredEvent)>, bool) {
    if b.is_empty() && a.len() <= limit {
        return (a, false);
    }
    let total = a.len() + b.len();
    let mut out = Vec::with_capacity(total.min(limit));
    let (mut a, mut b) = (a.into_iter().peekable(), b.into_iter().peekable());
    while out.len() < limit {
        let take_a = match (a.peek(), b.peek()) {
            (Some(x), Some(y)) => x.0 > y.0,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => break,
        };
        out.extend(if take_a { a.next() } else { b.next() });
    }
    let left_over = out.len() < total;
    (out, left_over)
}

/// What one time slice of a search found: every match, those after the cursor, and the
/// first `limit` of those.
#[derive(Default)]
struct SliceScan {
    total: u64,
    on_page: u64,
    events: Vec<(Cursor, StoredEvent)>,
}

/// Largest page a search scans in parallel slices (the API's maximum `limit`).
const MAX_PARALLEL_LIMIT: usize = 1000;

/// Threads a search spreads its scan over: one per core, at most 4.
fn scan_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(4))
}

fn cursor_of(c: &index::Candidate) -> Cursor {
    Cursor {
        time_us: c.time,
        key: c.key,
    }
}

/// The store key the event with fleet id `id` was stored under (`None`: not a fleet id, or
/// never stored; it may since have expired).
fn key_in(
    agents: &impl ReadableTable<&'static str, &'static [u8]>,
    runs: &impl ReadableTable<(u32, u64), (u64, u64)>,
    agent_seq: &impl ReadableTable<(u32, u64), u64>,
    id: &str,
) -> Result<Option<u64>, redb::Error> {
    let Some((site, name, seq)) = weir_common::parse_event_id(id) else {
        return Ok(None);
    };
    let identity = format!("{site}/{name}");
    let Some(agent) = agents
        .get(identity.as_str())?
        .and_then(|v| postcard::from_bytes::<AgentRecord>(v.value()).ok())
    else {
        return Ok(None);
    };
    Ok(stored_key(runs, agent_seq, agent.number, seq)?)
}

/// The store key agent `number`'s event `seq` was stored under: from its run in
/// `agent_runs`, else from a per-event entry an older build wrote in `agent_seq`.
fn stored_key(
    runs: &impl ReadableTable<(u32, u64), (u64, u64)>,
    agent_seq: &impl ReadableTable<(u32, u64), u64>,
    number: u32,
    seq: u64,
) -> Result<Option<u64>, redb::StorageError> {
    // The run starting at or before `seq`, if it reaches it.
    if let Some(item) = runs.range((number, 0)..=(number, seq))?.next_back() {
        let (first, v) = item?;
        let (first_seq, (last_seq, first_key)) = (first.value().1, v.value());
        if seq <= last_seq {
            return Ok(Some(first_key + (seq - first_seq)));
        }
    }
    Ok(agent_seq.get((number, seq))?.map(|v| v.value()))
}

/// A run of one agent's events stored in one commit with consecutive sequences under
/// consecutive store keys: one `agent_runs` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Run {
    first_seq: u64,
    last_seq: u64,
    first_key: u64,
}

impl Run {
    fn start(seq: u64, key: u64) -> Run {
        Run {
            first_seq: seq,
            last_seq: seq,
            first_key: key,
        }
    }

    /// Adds event `seq` stored at `key` if it continues the run; `false` if it does not.
    fn extend(&mut self, seq: u64, key: u64) -> bool {
        let next = self.last_seq.checked_add(1) == Some(seq)
            && key - self.first_key == seq - self.first_seq;
        if next {
            self.last_seq = seq;
        }
        next
    }

    fn write(
        self,
        runs: &mut redb::Table<'_, (u32, u64), (u64, u64)>,
        number: u32,
    ) -> Result<(), redb::StorageError> {
        runs.insert((number, self.first_seq), (self.last_seq, self.first_key))?;
        Ok(())
    }
}

/// Changes the stored event at `key` with `f`, in the caller's transaction. An indexed event
/// (`key <= watermark`) has its index entries kept in step (unindexed before, indexed after);
/// one above the watermark has none, and the indexer indexes what it finds. `false`: no such
/// (readable) event.
fn rewrite_event(
    events: &mut redb::Table<'_, u64, &'static [u8]>,
    idx: &mut IndexTables<'_>,
    watermark: u64,
    key: u64,
    f: impl FnOnce(&mut StoredEvent),
) -> Result<bool, redb::Error> {
    let current = events.get(key)?.map(|v| v.value().to_vec());
    let Some(Ok(mut stored)) = current.map(|b| postcard::from_bytes::<StoredEvent>(&b)) else {
        return Ok(false);
    };
    let indexed = key <= watermark;
    if indexed {
        index::unindex_event(idx, key, &stored)?;
    }
    f(&mut stored);
    let bytes = postcard::to_allocvec(&stored).expect("encode StoredEvent");
    events.insert(key, bytes.as_slice())?;
    if indexed {
        index::index_event(idx, key, &stored)?;
    }
    Ok(true)
}

/// The indexer's watermark as seen by `txn`: events with a key at or below it are indexed.
pub(crate) fn watermark_in(
    meta: &impl ReadableTable<&'static str, u64>,
) -> Result<u64, redb::StorageError> {
    Ok(meta.get(INDEXED_THROUGH)?.map_or(0, |v| v.value()))
}

/// [`watermark_in`] for a write transaction that does not have `meta` open.
fn watermark(txn: &redb::WriteTransaction) -> Result<u64, redb::Error> {
    Ok(watermark_in(&txn.open_table(META)?)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_common::wire::WireRecord;
    use weir_common::{InputKind, Severity};

    fn batch(seqs: std::ops::RangeInclusive<u64>) -> Batch {
        let t = Timestamp::from_second(1_700_000_000).unwrap();
        let records: Vec<_> = seqs
            .clone()
            .map(|seq| WireRecord {
                seq,
                payload: Record::Event(Event::new(
                    InputKind::Api,
                    "t",
                    "h",
                    Severity::Info,
                    format!("m{seq}"),
                    t,
                ))
                .to_bytes(),
            })
            .collect();
        Batch {
            first_seq: *seqs.start(),
            last_seq: *seqs.end(),
            records,
        }
    }

    fn commit(store: &Store, site: &str, name: &str, b: &Batch, now: Timestamp) -> CommitOutcome {
        let records = prepare(site, name, b, now);
        store
            .commit(
                &[AgentBatch {
                    site,
                    name,
                    records: &records,
                }],
                now,
            )
            .unwrap()
    }

    fn messages(store: &Store) -> Vec<String> {
        let mut v = Vec::new();
        store.scan(|_, e| v.push(e.event.message)).unwrap();
        v
    }

    #[test]
    fn redelivery_is_stored_once_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.redb");
        let now = Timestamp::now();
        {
            let store = Store::open(&path).unwrap();
            let b1 = batch(1..=3);
            let out = commit(&store, "s", "a", &b1, now);
            assert_eq!(
                (out.stored, out.duplicates, out.committed.clone()),
                (3, 0, vec![3])
            );
            // Overlapping redelivery after a reconnect.
            let b2 = batch(2..=5);
            let out = commit(&store, "s", "a", &b2, now);
            assert_eq!((out.stored, out.duplicates, out.committed), (2, 2, vec![5]));
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(store.committed_seq("s", "a").unwrap(), 5);
        assert_eq!(store.committed_seq("s", "other").unwrap(), 0);
        assert_eq!(messages(&store), vec!["m1", "m2", "m3", "m4", "m5"]);
        // Same sequence from another agent is a different event.
        let b3 = batch(1..=1);
        commit(&store, "s", "b", &b3, now);
        assert_eq!(store.len().unwrap(), 6);
        assert_eq!(store.get_by_id("s:b:1").unwrap().unwrap().agent, "b");
        assert_eq!(
            store.get_by_id("s:a:4").unwrap().unwrap().event.message,
            "m4"
        );
        assert!(store.get_by_id("s:a:99").unwrap().is_none());
        assert!(store.get_by_id("garbage").unwrap().is_none());
        let newest = store.newest(2, None).unwrap();
        assert_eq!(newest[0].1.id(), "s:b:1");
        assert_eq!(newest[1].1.id(), "s:a:5");
        let older = store.newest(10, Some(newest[1].0)).unwrap();
        assert_eq!(older.len(), 4);
    }

    #[test]
    fn events_left_alone_are_stored_byte_for_byte_as_encoding_them_gives() {
        let now = Timestamp::from_microsecond(1_700_000_000_123_456).unwrap();
        let t = Timestamp::from_second(1_600_000_000).unwrap();
        let mut b = batch(1..=2);
        let mut e = Event::new(
            InputKind::SnmpTrap,
            "snmp",
            "sw-1",
            Severity::Error,
            "down",
            t,
        );
        e.tag = Some("SNMP_LINK_DOWN".into());
        e.event_type = Some("link".into());
        e.tags.insert("ifIndex".into(), "3".into());
        e.raw_payload = Some(vec![0, 0xff, 7]);
        e.peer = Some("192.0.2.1:162".into());
        e.count = 300;
        // Sequences of every varint length matter: the header is built around them.
        for seq in [127, 128, 1 << 40, u64::MAX] {
            b.records.push(WireRecord {
                seq,
                payload: Record::Event(e.clone()).to_bytes(),
            });
        }
        let records = || b.records.iter().map(|r| (r.seq, r.payload.as_slice()));
        let spliced = prepare_with(
            "eu:paris",
            "gw-1",
            records(),
            now,
            |_| true,
            |_| unreachable!("events left alone are not processed"),
        );
        let encoded = prepare_with("eu:paris", "gw-1", records(), now, |_| false, |_| true);
        assert_eq!(spliced, encoded);
        for (p, wr) in spliced.iter().zip(&b.records) {
            let Prepared::Event { seq, bytes } = p else {
                panic!("{p:?}")
            };
            let Ok(Record::Event(event)) = Record::from_bytes(&wr.payload) else {
                unreachable!()
            };
            let want = StoredEvent {
                site: "eu:paris".into(),
                agent: "gw-1".into(),
                seq: wr.seq,
                stored_at: now,
                correlated_incident: None,
                event,
            };
            assert_eq!(*seq, wr.seq);
            assert_eq!(*bytes, postcard::to_allocvec(&want).unwrap());
            assert_eq!(postcard::from_bytes::<StoredEvent>(bytes).unwrap(), want);
        }
    }

    #[test]
    fn events_that_do_not_decode_are_malformed_either_way() {
        let now = Timestamp::now();
        let mut b = batch(1..=1);
        let mut bad = b.records[0].payload.clone();
        let at = bad.iter().position(|&x| x == b'm').unwrap();
        bad[at] = 0xff; // invalid UTF-8 in the message
        b.records[0].payload = bad;
        let records = || b.records.iter().map(|r| (r.seq, r.payload.as_slice()));
        for as_is in [true, false] {
            let out = prepare_with("s", "a", records(), now, |_| as_is, |_| true);
            assert!(
                matches!(out[..], [Prepared::Malformed { seq: 1, .. }]),
                "{out:?}"
            );
        }
    }

    fn count(seq: u64, target_seq: u64, count: u64) -> WireRecord {
        WireRecord {
            seq,
            payload: Record::Count {
                target_seq,
                count,
                last_seen: Timestamp::from_second(1_800_000_000).unwrap(),
            }
            .to_bytes(),
        }
    }

    fn count_of(store: &Store, id: &str) -> Option<u64> {
        store.get_by_id(id).unwrap().map(|s| s.event.count)
    }

    #[test]
    fn a_count_update_finds_its_event_anywhere_in_an_old_batch() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_unindexed(&dir.path().join("e.redb"), 1 << 20).unwrap();
        let now = Timestamp::now();
        // Agent a: 1..=100 with a gap at 41..=44 (dropped by the agent) and a malformed record
        // at 60, interleaved with agent b's batches so a's store keys are not all consecutive.
        let mut b1 = batch(1..=100);
        b1.records.retain(|r| !(41..=44).contains(&r.seq));
        b1.records[55].payload = vec![0xff];
        assert_eq!(b1.records[55].seq, 60);
        commit(&store, "s", "b", &batch(1..=7), now);
        commit(&store, "s", "a", &b1, now);
        commit(&store, "s", "b", &batch(8..=9), now);
        commit(&store, "s", "a", &batch(101..=120), now);
        // One run per stretch of consecutive sequences and keys.
        let txn = store.db.begin_read().unwrap();
        let runs: Vec<_> = txn
            .open_table(AGENT_RUNS)
            .unwrap()
            .iter()
            .unwrap()
            .map(|r| r.map(|(k, v)| (k.value(), v.value())).unwrap())
            .collect();
        drop(txn);
        // b connected first: agent number 1.
        let (a, b) = (2, 1);
        assert_eq!(
            runs,
            vec![
                ((b, 1), (7, 1)),
                ((b, 8), (9, 103)),
                ((a, 1), (40, 8)),
                ((a, 45), (59, 48)),
                ((a, 61), (100, 63)),
                ((a, 101), (120, 105)),
            ]
        );
        for seq in [1, 17, 40, 45, 59, 61, 99, 100, 101, 120] {
            let id = format!("s:a:{seq}");
            let stored = store.get_by_id(&id).unwrap().unwrap();
            assert_eq!((stored.id(), stored.event.message), (id, format!("m{seq}")));
        }
        for missing in [
            "s:a:0", "s:a:41", "s:a:44", "s:a:60", "s:a:121", "s:b:10", "s:c:1",
        ] {
            assert!(store.get_by_id(missing).unwrap().is_none(), "{missing}");
            assert!(store.key_of(missing).unwrap().is_none(), "{missing}");
        }
        // Count updates for events in the middle of old batches, in a gap, and for an event
        // stored earlier in the same batch.
        let mut b3 = batch(121..=121);
        b3.records.extend([
            count(122, 50, 7),
            count(123, 42, 3),
            count(124, 121, 4),
            count(125, 9, 2),
        ]);
        b3.last_seq = 125;
        let out = commit(&store, "s", "a", &b3, now);
        assert_eq!((out.count_updates, out.orphan_updates), (3, 1));
        assert_eq!(count_of(&store, "s:a:50"), Some(7));
        assert_eq!(count_of(&store, "s:a:121"), Some(4));
        assert_eq!(count_of(&store, "s:a:9"), Some(2));
        assert_eq!(count_of(&store, "s:b:9"), Some(1));
        assert_eq!(count_of(&store, "s:a:51"), Some(1));
    }

    #[test]
    fn expiry_drops_runs_once_all_their_events_are_gone() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_unindexed(&dir.path().join("e.redb"), 1 << 20).unwrap();
        let old = Timestamp::from_second(1_700_000_000).unwrap();
        let new = Timestamp::from_second(1_700_000_100).unwrap();
        commit(&store, "s", "a", &batch(1..=10), old);
        commit(&store, "s", "a", &batch(11..=20), old);
        commit(&store, "s", "a", &batch(21..=30), new);
        let runs = |store: &Store| {
            let txn = store.db.begin_read().unwrap();
            let t = txn.open_table(AGENT_RUNS).unwrap();
            t.len().unwrap()
        };
        assert_eq!(runs(&store), 3);
        // Part of the first run: it stays, its expired events are not found, the rest are.
        let out = store.expire(new, 5, |_| Ok(())).unwrap();
        assert_eq!(out.deleted, 5);
        assert_eq!(runs(&store), 3);
        assert!(store.get_by_id("s:a:5").unwrap().is_none());
        assert!(store.key_of("s:a:5").unwrap().is_none());
        assert_eq!(count_of(&store, "s:a:6"), Some(1));
        let out = store.expire(new, 100, |_| Ok(())).unwrap();
        assert_eq!((out.deleted, out.more), (15, false));
        assert_eq!(runs(&store), 1);
        assert!(store.get_by_id("s:a:20").unwrap().is_none());
        assert_eq!(count_of(&store, "s:a:21"), Some(1));
        // A count update for an expired event is an orphan, not a panic or a wrong event.
        let mut b = batch(31..=31);
        b.records.push(count(32, 3, 9));
        b.last_seq = 32;
        let out = commit(&store, "s", "a", &b, new);
        assert_eq!((out.count_updates, out.orphan_updates), (0, 1));
    }

    #[test]
    fn per_event_entries_of_older_builds_are_still_found_and_expired() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_unindexed(&dir.path().join("e.redb"), 1 << 20).unwrap();
        let old = Timestamp::from_second(1_700_000_000).unwrap();
        commit(&store, "s", "a", &batch(1..=3), old);
        // Rewrite the map as a build before `agent_runs` left it.
        let txn = store.db.begin_write().unwrap();
        txn.delete_table(AGENT_RUNS).unwrap();
        {
            let mut legacy = txn.open_table(AGENT_SEQ).unwrap();
            for seq in 1..=3 {
                legacy.insert((1, seq), seq).unwrap();
            }
        }
        txn.commit().unwrap();
        commit(&store, "s", "a", &batch(4..=5), old);
        for seq in 1..=5 {
            let id = format!("s:a:{seq}");
            assert_eq!(
                store.get_by_id(&id).unwrap().unwrap().event.message,
                format!("m{seq}")
            );
        }
        let mut b = batch(6..=6);
        b.records.push(count(7, 2, 5));
        b.last_seq = 7;
        assert_eq!(commit(&store, "s", "a", &b, old).count_updates, 1);
        assert_eq!(count_of(&store, "s:a:2"), Some(5));
        store.expire(Timestamp::now(), 100, |_| Ok(())).unwrap();
        let txn = store.db.begin_read().unwrap();
        assert_eq!(txn.open_table(AGENT_SEQ).unwrap().len().unwrap(), 0);
        assert_eq!(txn.open_table(AGENT_RUNS).unwrap().len().unwrap(), 0);
    }

    #[test]
    fn runs_extend_only_with_consecutive_sequences_and_keys() {
        let mut r = Run::start(10, 100);
        assert!(r.extend(11, 101));
        assert!(!r.extend(13, 102), "sequence gap");
        assert!(!r.extend(12, 103), "key gap");
        assert!(!r.extend(11, 102), "repeat");
        assert_eq!(
            r,
            Run {
                first_seq: 10,
                last_seq: 11,
                first_key: 100
            }
        );
        let mut top = Run::start(u64::MAX, 5);
        assert!(!top.extend(0, 6));
    }

    #[test]
    fn count_updates_and_malformed_records() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("e.redb")).unwrap();
        let now = Timestamp::now();
        let later = Timestamp::from_second(1_800_000_000).unwrap();
        let mut b = batch(10..=10);
        b.records.push(WireRecord {
            seq: 11,
            payload: Record::Count {
                target_seq: 10,
                count: 5,
                last_seen: later,
            }
            .to_bytes(),
        });
        b.records.push(WireRecord {
            seq: 12,
            payload: vec![0xff, 0xff, 0xff],
        });
        b.records.push(WireRecord {
            seq: 13,
            payload: Record::Count {
                target_seq: 10,
                count: 3,
                last_seen: now,
            }
            .to_bytes(),
        });
        b.records.push(WireRecord {
            seq: 14,
            payload: Record::Count {
                target_seq: 999,
                count: 3,
                last_seen: now,
            }
            .to_bytes(),
        });
        b.last_seq = 14;
        let out = commit(&store, "s", "a", &b, now);
        assert_eq!(
            (
                out.stored,
                out.count_updates,
                out.malformed,
                out.orphan_updates
            ),
            (1, 2, 1, 1)
        );
        assert_eq!(out.committed, vec![14]);
        let ev = store.get_by_id("s:a:10").unwrap().unwrap();
        assert_eq!(ev.event.count, 5);
        assert_eq!(ev.event.last_seen, later);
    }
}
