//! Secondary indexes of the event store and the scans the query planner runs over them.
//!
//! Every index is a redb table whose key ends in `(event time µs, store key)`, so one range scan
//! walks one index value's events in event-time order (we read it backwards: newest first, ties
//! by store key). They cover exactly the stored events up to the `indexed_through` watermark:
//! the background indexer ([`crate::indexer`]) writes new events' entries in bulk ([`Bulk`])
//! and moves the watermark in the same transaction; count updates and incident changes rewrite
//! ([`index_event`], [`unindex_event`]) only entries of events at or below it; retention
//! removes them with the event. So an index never points to a missing event, and a search adds
//! the events above the watermark by scanning them (`Store::search`).
//!
//! # Tables (key → value)
//! - `idx_time`: `(time, key)` → [`Summary`] + the lowercased message and tag, so that a
//!   full-text (`q=`) search over a time range reads one table sequentially and touches the
//!   events table only for the page it returns. This duplicates the message text (about a third
//!   more disk per event): the price of a `q=` over a day of a 10M-event store in well under
//!   200 ms.
//! - `idx_severity`: `(severity rank, time, key)` → [`Summary`].
//! - `idx_host`: `(hostname, time, key)` → [`Summary`].
//! - `idx_site`: `(site, time, key)` → [`Summary`].
//! - `idx_incident`: `(correlated incident, time, key)` → [`Summary`] (only events that have one).
//! - `idx_hidden`: `(time, key)` → [`Summary`], only events hidden from default views (see
//!   [`StoredEvent::hidden`]), so the default list's total is the store's size minus its length.
//!
//! A [`Summary`] is 9 bytes: the severity rank (bit 7 set when the event is hidden) and the
//! first-stage dedup count (little-endian u64), so severity filters, hidden events, totals and
//! histograms need no event reads. Count updates rewrite
//! the summaries ([`index_event`] overwrites).
//!
//! The indexer reads what it needs of each new event straight from its stored bytes
//! ([`Bulk::add_encoded`]: strings borrowed, raw payload and later fields skipped) rather than
//! decoding a whole [`StoredEvent`].

use memchr::memmem;
use redb::{ReadTransaction, StorageError, Table, TableDefinition, WriteTransaction};

use crate::query::Plan;
use crate::store::StoredEvent;

pub(crate) const BY_TIME: TableDefinition<(i64, u64), &[u8]> = TableDefinition::new("idx_time");
pub(crate) const BY_SEVERITY: TableDefinition<(u8, i64, u64), &[u8]> =
    TableDefinition::new("idx_severity");
pub(crate) const BY_HOST: TableDefinition<(&str, i64, u64), &[u8]> =
    TableDefinition::new("idx_host");
pub(crate) const BY_SITE: TableDefinition<(&str, i64, u64), &[u8]> =
    TableDefinition::new("idx_site");
pub(crate) const BY_INCIDENT: TableDefinition<(&str, i64, u64), &[u8]> =
    TableDefinition::new("idx_incident");
pub(crate) const HIDDEN: TableDefinition<(i64, u64), &[u8]> = TableDefinition::new("idx_hidden");

/// Bumped when the index layout changes; `Store::open` rebuilds older ones. Version 3: the
/// indexes cover the events up to the `indexed_through` watermark ([`crate::indexer`]). An
/// older build opening such a store rebuilds them whole; if that rebuild is interrupted and
/// this build opens the store again, events above the old watermark are counted twice by
/// searches until the indexer passes them (downgrade, then upgrade mid-rebuild: not supported).
pub(crate) const INDEX_VERSION: u64 = 3;
/// The layout version 3 keeps, written by builds that indexed every event in its ingest
/// transaction: a store at this version is fully indexed.
pub(crate) const SYNC_INDEX_VERSION: u64 = 2;

type StrIndex<'t> = Table<'t, (&'static str, i64, u64), &'static [u8]>;

/// The index tables open in one write transaction.
pub(crate) struct IndexTables<'t> {
    time: Table<'t, (i64, u64), &'static [u8]>,
    severity: Table<'t, (u8, i64, u64), &'static [u8]>,
    host: StrIndex<'t>,
    site: StrIndex<'t>,
    incident: StrIndex<'t>,
    hidden: Table<'t, (i64, u64), &'static [u8]>,
}

impl<'t> IndexTables<'t> {
    pub(crate) fn open(txn: &'t WriteTransaction) -> Result<IndexTables<'t>, redb::Error> {
        Ok(IndexTables {
            time: txn.open_table(BY_TIME)?,
            severity: txn.open_table(BY_SEVERITY)?,
            host: txn.open_table(BY_HOST)?,
            site: txn.open_table(BY_SITE)?,
            incident: txn.open_table(BY_INCIDENT)?,
            hidden: txn.open_table(HIDDEN)?,
        })
    }
}

/// What an index entry says about its event without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Summary {
    pub rank: u8,
    pub count: u64,
    /// Hidden from default views (`logonly` events, events a rule suppressed).
    pub hidden: bool,
}

impl Summary {
    fn encode(rank: u8, hidden: bool, count: u64) -> [u8; 9] {
        let mut b = [0u8; 9];
        b[0] = rank | if hidden { 0x80 } else { 0 };
        b[1..].copy_from_slice(&count.to_le_bytes());
        b
    }

    pub(crate) fn decode(v: &[u8]) -> Summary {
        let first = v.first().copied().unwrap_or(0);
        let (rank, hidden) = (first & 0x7f, first & 0x80 != 0);
        let count = v
            .get(1..9)
            .and_then(|c| c.try_into().ok())
            .map_or(1, u64::from_le_bytes);
        Summary {
            rank,
            count,
            hidden,
        }
    }
}

/// What the indexes need of a stored event, decoded from its stored bytes without copying its
/// strings or its raw payload: the fields of [`StoredEvent`] and [`weir_common::Event`] in
/// their order, up to `count` (postcard reads fields in order and ignores what follows). A
/// test checks it reads what the full decode reads.
#[derive(serde::Deserialize)]
struct StoredView<'a> {
    site: &'a str,
    _agent: &'a str,
    _seq: u64,
    _stored_at: i64,
    #[serde(borrow)]
    correlated_incident: Option<&'a str>,
    #[serde(borrow)]
    event: EventView<'a>,
}

#[derive(serde::Deserialize)]
struct EventView<'a> {
    _source: &'a str,
    hostname: &'a str,
    severity: weir_common::Severity,
    message: &'a str,
    #[serde(borrow)]
    _event_type: Option<&'a str>,
    #[serde(borrow)]
    tag: Option<&'a str>,
    _input: weir_common::InputKind,
    event_time: i64,
    _received_at: i64,
    #[serde(borrow)]
    tags: Vec<(&'a str, &'a str)>,
    #[serde(borrow)]
    _raw_payload: Option<&'a [u8]>,
    #[serde(borrow)]
    _peer: Option<&'a str>,
    count: u64,
}

/// One event's index fields, borrowed from a [`StoredEvent`] or its stored bytes.
#[derive(Debug, PartialEq)]
struct Fields<'a> {
    time: i64,
    rank: u8,
    hidden: bool,
    count: u64,
    message: &'a str,
    tag: Option<&'a str>,
    host: &'a str,
    site: &'a str,
    incident: Option<&'a str>,
}

impl<'a> Fields<'a> {
    fn of(s: &'a StoredEvent) -> Fields<'a> {
        Fields {
            time: time_us(s),
            rank: s.event.severity.rank(),
            hidden: s.hidden(),
            count: s.event.count,
            message: &s.event.message,
            tag: s.event.tag.as_deref(),
            host: &s.event.hostname,
            site: &s.site,
            incident: s.correlated_incident.as_deref(),
        }
    }

    /// `None`: the bytes are not a stored event (an incompatible build's).
    fn decode(bytes: &'a [u8]) -> Option<Fields<'a>> {
        let v: StoredView<'a> = postcard::from_bytes(bytes).ok()?;
        // As [`StoredEvent::hidden`] says.
        let hidden = v.event.tags.iter().any(|&(k, val)| {
            (k == crate::alarm::DEST_TAG && val == "logonly") || k == crate::store::SUPPRESSED_TAG
        });
        Some(Fields {
            time: v.event.event_time,
            rank: v.event.severity.rank(),
            hidden,
            count: v.event.count,
            message: v.event.message,
            tag: v.event.tag,
            host: v.event.hostname,
            site: v.site,
            incident: v.correlated_incident,
        })
    }

    fn summary(&self) -> [u8; 9] {
        Summary::encode(self.rank, self.hidden, self.count)
    }

    /// The `idx_time` value: summary, message length (u32 LE), lowercased message, lowercased
    /// tag.
    fn time_value(&self) -> Vec<u8> {
        let tag = self.tag.unwrap_or("");
        let mut v = Vec::with_capacity(13 + self.message.len() + tag.len());
        v.extend_from_slice(&self.summary());
        v.extend_from_slice(&[0; 4]);
        push_lowercase(&mut v, self.message);
        let len = (v.len() - 13) as u32;
        v[9..13].copy_from_slice(&len.to_le_bytes());
        push_lowercase(&mut v, tag);
        v
    }
}

/// Appends `s` lowercased as [`str::to_lowercase`] does, without its allocation when `s` is
/// ASCII (most messages).
fn push_lowercase(v: &mut Vec<u8>, s: &str) {
    if s.is_ascii() {
        v.extend(s.bytes().map(|b| b.to_ascii_lowercase()));
    } else {
        v.extend_from_slice(s.to_lowercase().as_bytes());
    }
}

/// Whether `q` (lowercased) is in the message or in the tag of an `idx_time` value, searched
/// separately so a match never spans the two.
fn text_matches(v: &[u8], q: &memmem::Finder<'_>) -> bool {
    let Some(len) = v.get(9..13).and_then(|b| b.try_into().ok()) else {
        return false;
    };
    let len = u32::from_le_bytes(len) as usize;
    let rest = &v[13..];
    let (msg, tag) = rest.split_at(len.min(rest.len()));
    q.find(msg).is_some() || q.find(tag).is_some()
}

pub(crate) fn time_us(s: &StoredEvent) -> i64 {
    s.event.event_time.as_microsecond()
}

/// Writes (or overwrites, after a count or incident change) every index entry of an indexed
/// event: the entries [`Bulk::add`] derives, and no hidden entry for an event no longer hidden.
/// (New events go through [`Bulk`] in the indexer.)
pub(crate) fn index_event(
    t: &mut IndexTables<'_>,
    key: u64,
    s: &StoredEvent,
) -> Result<(), StorageError> {
    if !s.hidden() {
        t.hidden.remove((time_us(s), key))?;
    }
    let mut one = Bulk::default();
    one.add(key, s);
    one.write(t)
}

/// The index entries of many events not indexed before, collected and written table by
/// table in key order ([`Bulk::write`]): consecutive inserts then land in the same leaf
/// pages, which stay in cache and are copied once, instead of each event's six inserts
/// jumping between five trees.
#[derive(Default)]
pub(crate) struct Bulk {
    time: Vec<((i64, u64), Vec<u8>)>,
    severity: Vec<(u8, i64, u64, [u8; 9])>,
    host: Vec<(String, i64, u64, [u8; 9])>,
    site: Vec<(String, i64, u64, [u8; 9])>,
    incident: Vec<(String, i64, u64, [u8; 9])>,
    hidden: Vec<(i64, u64, [u8; 9])>,
}

impl Bulk {
    /// Adds the entries of an event (all but the removal of a stale hidden entry, which only
    /// [`index_event`]'s rewrites need).
    pub(crate) fn add(&mut self, key: u64, s: &StoredEvent) {
        self.add_fields(key, &Fields::of(s));
    }

    /// [`Bulk::add`] from the event's stored bytes, decoding only what the indexes need.
    /// Returns `false` (and adds nothing) when they do not decode.
    pub(crate) fn add_encoded(&mut self, key: u64, bytes: &[u8]) -> bool {
        match Fields::decode(bytes) {
            Some(f) => {
                self.add_fields(key, &f);
                true
            }
            None => false,
        }
    }

    fn add_fields(&mut self, key: u64, f: &Fields<'_>) {
        let (ts, sum) = (f.time, f.summary());
        self.time.push(((ts, key), f.time_value()));
        self.severity.push((f.rank, ts, key, sum));
        if f.hidden {
            self.hidden.push((ts, key, sum));
        }
        if let Some(inc) = f.incident {
            self.incident.push((inc.to_owned(), ts, key, sum));
        }
        self.host.push((f.host.to_owned(), ts, key, sum));
        self.site.push((f.site.to_owned(), ts, key, sum));
    }

    pub(crate) fn write(mut self, t: &mut IndexTables<'_>) -> Result<(), StorageError> {
        self.time.sort_unstable_by_key(|e| e.0);
        for (k, v) in &self.time {
            t.time.insert(*k, v.as_slice())?;
        }
        self.severity.sort_unstable();
        for (r, ts, key, sum) in &self.severity {
            t.severity.insert((*r, *ts, *key), sum.as_slice())?;
        }
        for (v, table) in [
            (&mut self.host, &mut t.host),
            (&mut self.site, &mut t.site),
            (&mut self.incident, &mut t.incident),
        ] {
            v.sort_unstable();
            for (name, ts, key, sum) in v.iter() {
                table.insert((name.as_str(), *ts, *key), sum.as_slice())?;
            }
        }
        self.hidden.sort_unstable();
        for (ts, key, sum) in &self.hidden {
            t.hidden.insert((*ts, *key), sum.as_slice())?;
        }
        Ok(())
    }
}

/// Removes every index entry of an event (before it is deleted, or its incident changes).
pub(crate) fn unindex_event(
    t: &mut IndexTables<'_>,
    key: u64,
    s: &StoredEvent,
) -> Result<(), StorageError> {
    let ts = time_us(s);
    t.time.remove((ts, key))?;
    t.severity.remove((s.event.severity.rank(), ts, key))?;
    t.host.remove((s.event.hostname.as_str(), ts, key))?;
    t.site.remove((s.site.as_str(), ts, key))?;
    if let Some(inc) = &s.correlated_incident {
        t.incident.remove((inc.as_str(), ts, key))?;
    }
    t.hidden.remove((ts, key))?;
    Ok(())
}

/// Where an index access starts reading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// `idx_time`: every event in the time range.
    Time,
    /// `idx_severity`, one range per rank, merged newest first.
    Severity(Vec<u8>),
    Site(String),
    Host(String),
    Incident(String),
}

/// An event an index scan proposes: its position and summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Candidate {
    pub time: i64,
    pub key: u64,
    pub summary: Summary,
}

pub(crate) type Candidates = Box<dyn Iterator<Item = Result<Candidate, StorageError>>>;

/// Candidates for `plan`, newest first, strictly older than `upper` when given. Each has passed
/// the checks the index can answer (time range, severity, and `q` on `idx_time`); the caller
/// applies the full filter to the event when `plan.needs_event`.
pub(crate) fn candidates(
    txn: &ReadTransaction,
    plan: &Plan,
    upper: Option<(i64, u64)>,
) -> Result<Candidates, redb::Error> {
    let lo = (plan.from_us.unwrap_or(i64::MIN), 0u64);
    let mut hi = plan.to_us.map_or((i64::MAX, u64::MAX), |t| (t, 0));
    if let Some(u) = upper {
        hi = hi.min(u);
    }
    if lo >= hi {
        return Ok(Box::new(std::iter::empty()));
    }
    let ranks = plan.ranks;
    let hidden = plan.hidden;
    let keep = move |s: &Summary| ranks[s.rank as usize % 5] && hidden.admits(s.hidden);
    let str_index = |def, value: &str| -> Result<Candidates, redb::Error> {
        let table = txn.open_table(def)?;
        let r = table.range((value, lo.0, lo.1)..(value, hi.0, hi.1))?;
        Ok(Box::new(r.rev().filter_map(move |item| match item {
            Err(e) => Some(Err(e)),
            Ok((k, v)) => {
                let (_, time, key) = k.value();
                let summary = Summary::decode(v.value());
                keep(&summary).then_some(Ok(Candidate { time, key, summary }))
            }
        })))
    };
    Ok(match &plan.access {
        Access::Site(s) => str_index(BY_SITE, s)?,
        Access::Host(h) => str_index(BY_HOST, h)?,
        Access::Incident(i) => str_index(BY_INCIDENT, i)?,
        Access::Time => {
            let table = txn.open_table(BY_TIME)?;
            let r = table.range(lo..hi)?;
            let q = plan
                .q_in_index
                .as_ref()
                .map(|q| memmem::Finder::new(q.as_bytes()).into_owned());
            Box::new(r.rev().filter_map(move |item| match item {
                Err(e) => Some(Err(e)),
                Ok((k, v)) => {
                    let (time, key) = k.value();
                    let v = v.value();
                    let summary = Summary::decode(v);
                    let ok = keep(&summary) && q.as_ref().is_none_or(|q| text_matches(v, q));
                    ok.then_some(Ok(Candidate { time, key, summary }))
                }
            }))
        }
        Access::Severity(ranks) => {
            let table = txn.open_table(BY_SEVERITY)?;
            let mut sources = Vec::with_capacity(ranks.len());
            for &rank in ranks {
                let r = table.range((rank, lo.0, lo.1)..(rank, hi.0, hi.1))?;
                let it: Candidates = Box::new(r.rev().filter_map(move |item| match item {
                    Err(e) => Some(Err(e)),
                    Ok((k, v)) => {
                        let (_, time, key) = k.value();
                        let summary = Summary::decode(v.value());
                        hidden.admits(summary.hidden).then_some(Ok(Candidate {
                            time,
                            key,
                            summary,
                        }))
                    }
                }));
                sources.push((None, it));
            }
            Box::new(Merge { sources })
        }
    })
}

/// `plan` cut into at most `n` plans over disjoint time slices, newest first, that together
/// cover what `plan` covers. The slices split the stored events' actual time span within the
/// plan's range evenly by time; with one slice (or nothing stored) the plan is returned whole.
pub(crate) fn time_slices(
    txn: &ReadTransaction,
    plan: &Plan,
    n: usize,
) -> Result<Vec<Plan>, redb::Error> {
    if n < 2 {
        return Ok(vec![plan.clone()]);
    }
    let table = txn.open_table(BY_TIME)?;
    let lo = plan.from_us.unwrap_or(i64::MIN);
    let hi = plan.to_us.unwrap_or(i64::MAX);
    if lo >= hi {
        return Ok(vec![plan.clone()]);
    }
    let mut range = table.range((lo, 0u64)..(hi, 0u64))?;
    let (Some(first), Some(last)) = (range.next(), range.next_back()) else {
        return Ok(vec![plan.clone()]);
    };
    let (first, last) = (first?.0.value().0, last?.0.value().0);
    // [first, last] as i128 so that extreme event times cannot overflow.
    let (a, b) = (i128::from(first), i128::from(last) + 1);
    let step = ((b - a) / n as i128).max(1);
    let mut out = Vec::with_capacity(n);
    let mut top = hi;
    for i in (1..n).rev() {
        let cut = (a + step * i as i128) as i64;
        if cut <= lo || cut >= top {
            continue;
        }
        let mut p = plan.clone();
        p.from_us = Some(cut);
        p.to_us = if top == hi { plan.to_us } else { Some(top) };
        out.push(p);
        top = cut;
    }
    let mut p = plan.clone();
    p.to_us = if top == hi { plan.to_us } else { Some(top) };
    out.push(p);
    Ok(out)
}

/// Merges newest-first candidate streams into one newest-first stream.
struct Merge {
    sources: Vec<(Option<Candidate>, Candidates)>,
}

impl Iterator for Merge {
    type Item = Result<Candidate, StorageError>;

    fn next(&mut self) -> Option<Self::Item> {
        for (head, it) in &mut self.sources {
            if head.is_none() {
                match it.next() {
                    Some(Ok(c)) => *head = Some(c),
                    Some(Err(e)) => return Some(Err(e)),
                    None => {}
                }
            }
        }
        let best = self
            .sources
            .iter()
            .enumerate()
            .filter_map(|(i, (h, _))| h.map(|c| (c.time, c.key, i)))
            .max()?;
        self.sources[best.2].0.take().map(Ok)
    }
}

#[cfg(test)]
mod tests {
    use jiff::Timestamp;
    use rand::{Rng, SeedableRng};
    use redb::{ReadableDatabase, ReadableTable, TableHandle};
    use weir_common::wire::{Batch, WireRecord};
    use weir_common::{Event, InputKind, Record, Severity};

    use super::*;
    use crate::query::{Cursor, EventFilter, EventParams};
    use crate::store::{AgentBatch, SUPPRESSED_TAG, Store, prepare};

    const T0: i64 = 1_700_000_000;

    /// 600 events over 3 sites, 2 agents each, 6 hosts, random severities, messages and event
    /// times (many equal, some out of arrival order), with dedup count updates.
    /// Prepares and commits one agent batch, as the writer does.
    fn commit(
        store: &Store,
        site: &str,
        agent: &str,
        batch: &Batch,
        now: Timestamp,
    ) -> crate::store::CommitOutcome {
        let prepared = prepare(site, agent, batch, now);
        let batches = [AgentBatch {
            site,
            name: agent,
            records: &prepared,
        }];
        store.commit(&batches, now).unwrap()
    }

    fn fill(store: &Store) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let words = [
            "Link DOWN",
            "link up",
            "fan failure",
            "BGP peer reset",
            "disk full",
        ];
        for site in ["paris", "lyon", "nice"] {
            for agent in ["gw-1", "gw-2"] {
                let mut records = Vec::new();
                for seq in 1..=100u64 {
                    let t =
                        Timestamp::from_second(T0 + rng.random_range(0..3600) / 60 * 60).unwrap();
                    let mut e = Event::new(
                        InputKind::Syslog,
                        if seq % 4 == 0 { "app" } else { "syslog" },
                        format!("core-{}", rng.random_range(0..6)),
                        Severity::ALL[rng.random_range(0..5)],
                        format!("{} on port {seq}", words[rng.random_range(0..5)]),
                        t,
                    );
                    if seq % 3 == 0 {
                        e.tag = Some("LINK_UPDOWN".into());
                    }
                    if seq % 7 == 0 {
                        // Hidden from default views (a `logonly` definition).
                        e.tags
                            .insert(crate::alarm::DEST_TAG.into(), "logonly".into());
                    }
                    records.push(WireRecord {
                        seq,
                        payload: Record::Event(e).to_bytes(),
                    });
                }
                // Seq 101: event 5 was seen 7 times.
                records.push(WireRecord {
                    seq: 101,
                    payload: Record::Count {
                        target_seq: 5,
                        count: 7,
                        last_seen: Timestamp::from_second(T0 + 4000).unwrap(),
                    }
                    .to_bytes(),
                });
                let batch = Batch {
                    first_seq: 1,
                    last_seq: 101,
                    records,
                };
                let now = Timestamp::from_second(T0 + 5000).unwrap();
                commit(store, site, agent, &batch, now);
            }
        }
    }

    /// The reference answer: every event, filtered, newest event time first, ties by key.
    fn brute(store: &Store, f: &EventFilter) -> Vec<(Cursor, String)> {
        let mut all = Vec::new();
        store
            .scan(|key, s| {
                if f.matches(&s) {
                    all.push((
                        Cursor {
                            time_us: time_us(&s),
                            key,
                        },
                        s.id(),
                    ));
                }
            })
            .unwrap();
        all.sort_by_key(|b| std::cmp::Reverse(b.0));
        all
    }

    /// Pages through `search`, its scan cut into 1 to 5 time slices, and checks each against
    /// [`brute`].
    fn check(store: &Store, p: &EventParams) {
        let f = EventFilter::parse(p).unwrap();
        let want = brute(store, &f);
        for slices in 1..=5 {
            let mut got = Vec::new();
            let mut cursor = None;
            loop {
                let page = store.search_in_slices(&f, 7, cursor, slices).unwrap();
                assert_eq!(
                    page.total,
                    want.len() as u64,
                    "{p:?} plan {:?}, {slices} slices",
                    f.plan()
                );
                got.extend(page.events.iter().map(|(c, s)| (*c, s.id())));
                assert!(got.len() <= want.len(), "pages repeat: {p:?}");
                if !page.more {
                    break;
                }
                cursor = page.events.last().map(|(c, _)| *c);
            }
            assert_eq!(got, want, "{p:?} plan {:?}, {slices} slices", f.plan());
        }
    }

    fn params(pairs: &[(&str, &str)]) -> EventParams {
        let mut p = EventParams::default();
        for (k, v) in pairs {
            let v = Some(v.to_string());
            match *k {
                "severity" => p.severity = v,
                "from" => p.from = v,
                "to" => p.to = v,
                "hostname" => p.hostname = v,
                "source" => p.source = v,
                "site" => p.site = v,
                "agent" => p.agent = v,
                "tag" => p.tag = v,
                "correlated_incident" => p.correlated_incident = v,
                "q" => p.q = v,
                "hidden" => p.hidden = v,
                other => panic!("{other}"),
            }
        }
        p
    }

    const FROM: &str = "2023-11-14T22:23:20Z";
    const TO: &str = "2023-11-14T22:43:20Z";

    /// Filters covering every access path and every filter kind.
    fn cases() -> Vec<Vec<(&'static str, &'static str)>> {
        let (from, to) = (FROM, TO);
        vec![
            vec![],
            vec![("from", from), ("to", to)],
            vec![("severity", ">=warning")],
            vec![("severity", "info"), ("to", to)],
            vec![
                ("severity", ">=warning"),
                ("site", "paris"),
                ("from", from),
                ("to", to),
            ],
            vec![("site", "lyon"), ("agent", "gw-2")],
            vec![("hostname", "core-3")],
            vec![("hostname", "core-[12]"), ("severity", ">=error")],
            vec![("hostname", "core-3"), ("site", "nice"), ("q", "LINK")],
            vec![("q", "link"), ("from", from), ("to", to)],
            vec![("q", "link_up")],
            vec![("q", "fan"), ("severity", ">=error")],
            vec![("q", "port 1"), ("site", "paris")],
            vec![("source", "app"), ("from", from)],
            vec![("tag", "LINK_UPDOWN"), ("severity", "critical")],
            vec![("correlated_incident", "INC-1")],
            vec![("correlated_incident", "INC-2"), ("site", "paris")],
            vec![("correlated_incident", "INC-3")],
            vec![("site", "nowhere")],
            vec![("hidden", "include")],
            vec![("hidden", "only")],
            vec![("hidden", "only"), ("severity", ">=error")],
            vec![("hidden", "include"), ("site", "lyon"), ("q", "disk")],
        ]
    }

    #[test]
    fn the_borrowed_decode_reads_what_the_full_decode_reads() {
        let t = Timestamp::from_second(T0).unwrap();
        let mut variants = Vec::new();
        for i in 0..6u64 {
            let mut e = Event::new(
                InputKind::SnmpTrap,
                "snmp",
                format!("Core-{i}"),
                Severity::ALL[i as usize % 5],
                if i % 2 == 0 {
                    format!("Link DOWN on Gi0/{i}")
                } else {
                    format!("Ünïcode İ ΣΑΣ {i}")
                },
                t,
            );
            e.event_time = Timestamp::from_second(T0 - i as i64 * 3600).unwrap();
            e.count = 1 + i * 1000;
            e.event_type = (i % 3 == 0).then(|| "link".into());
            e.tag = (i % 2 == 1).then(|| "LINK_Down".into());
            e.raw_payload = (i > 2).then(|| vec![0xff; 300]);
            e.peer = (i % 2 == 0).then(|| "10.0.0.1:514".into());
            match i {
                1 => {
                    e.tags
                        .insert(crate::alarm::DEST_TAG.into(), "logonly".into());
                }
                2 => {
                    e.tags.insert(crate::alarm::DEST_TAG.into(), "alarm".into());
                    e.tags.insert("zz".into(), "y".into());
                }
                3 => {
                    e.tags.insert(SUPPRESSED_TAG.into(), "rule".into());
                }
                _ => {}
            }
            variants.push(StoredEvent {
                site: format!("site-{i}"),
                agent: "gw".into(),
                seq: i,
                stored_at: t,
                correlated_incident: (i % 2 == 0).then(|| format!("INC-{i}")),
                event: e,
            });
        }
        for s in &variants {
            let bytes = postcard::to_allocvec(s).unwrap();
            let f = Fields::decode(&bytes).expect("decodes");
            assert_eq!(f, Fields::of(s));
            assert_eq!(f.hidden, s.hidden());
            // The time value holds the message and tag as `to_lowercase` makes them.
            let v = f.time_value();
            let msg = s.event.message.to_lowercase();
            assert_eq!(&v[13..13 + msg.len()], msg.as_bytes());
            let q = |q: &str| text_matches(&v, &memmem::Finder::new(q.as_bytes()));
            assert!(q(&msg));
            assert_eq!(q("link_down"), s.event.tag.is_some());
        }
        assert!(variants.iter().filter(|s| s.hidden()).count() == 2);
        assert_eq!(Fields::decode(b"\x05ab"), None, "garbage is passed over");
    }

    #[test]
    fn time_slices_cover_the_range_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("e.redb")).unwrap();
        fill(&store);
        // The slices split what the time index holds.
        store
            .wait_indexed(std::time::Duration::from_secs(30))
            .unwrap();
        let txn = store.database().begin_read().unwrap();
        for p in [params(&[]), params(&[("from", "2023-11-14T22:20:00Z")])] {
            let plan = EventFilter::parse(&p).unwrap().plan();
            for n in 2..=5 {
                let slices = time_slices(&txn, &plan, n).unwrap();
                assert_eq!(
                    slices.len(),
                    n,
                    "{p:?}: the span is wide enough for {n} slices"
                );
                assert_eq!(
                    slices[0].to_us, plan.to_us,
                    "newest slice keeps the upper bound"
                );
                assert_eq!(
                    slices[n - 1].from_us,
                    plan.from_us,
                    "oldest keeps the lower bound"
                );
                for w in slices.windows(2) {
                    assert_eq!(w[1].to_us, w[0].from_us, "contiguous, newest first");
                    assert!(w[1].to_us.unwrap() > w[1].from_us.unwrap_or(i64::MIN));
                }
            }
        }
    }

    #[test]
    fn every_plan_agrees_with_a_full_scan() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("e.redb")).unwrap();
        fill(&store);
        // Put some events in incidents (and move one between incidents).
        let keys: Vec<u64> = ["paris:gw-1:3", "lyon:gw-2:9", "nice:gw-1:50"]
            .iter()
            .map(|id| store.key_of(id).unwrap().unwrap())
            .collect();
        assert_eq!(
            store.set_correlated_incident(&keys, Some("INC-1")).unwrap(),
            3
        );
        assert_eq!(
            store
                .set_correlated_incident(&keys[..1], Some("INC-2"))
                .unwrap(),
            1
        );
        assert_eq!(
            store
                .set_correlated_incident(&[999_999], Some("INC-3"))
                .unwrap(),
            0
        );
        // Every event indexed (the tail's part: `searches_see_every_event_at_any_watermark`).
        store
            .wait_indexed(std::time::Duration::from_secs(30))
            .unwrap();
        let from = FROM;
        for c in &cases() {
            check(&store, &params(c));
        }
        // The planner uses the indexes it should.
        let plan = |c: &[(&str, &str)]| EventFilter::parse(&params(c)).unwrap().plan();
        let p = plan(&[("severity", ">=warning"), ("site", "paris"), ("from", from)]);
        assert_eq!(
            (p.access, p.needs_event),
            (Access::Site("paris".into()), false)
        );
        let p = plan(&[("q", "link"), ("from", from)]);
        assert_eq!((p.access, p.needs_event), (Access::Time, false));
        let p = plan(&[("severity", ">=error")]);
        assert_eq!(p.access, Access::Severity(vec![4, 3]));
        let p = plan(&[("hostname", "core-*")]);
        assert_eq!((p.access, p.needs_event), (Access::Time, true));
        // Count updates reach the summaries (histograms count occurrences from them).
        let sums = |pairs: &[(&str, &str)]| {
            let f = EventFilter::parse(&params(pairs)).unwrap();
            let h = store
                .histogram(&f, T0 * 1_000_000, 3_600_000_000, 1)
                .unwrap();
            h[0].iter()
                .fold((0, 0), |(e, o), (be, bo)| (e + be, o + bo))
        };
        let all = sums(&[("site", "paris"), ("hidden", "include")]);
        assert_eq!(all, (200, 200 + 2 * 6));
        // Default views leave out the 2 × 14 hidden events (every 7th sequence).
        assert_eq!(sums(&[("site", "paris")]), (200 - 28, 200 - 28 + 2 * 6));
    }

    #[test]
    fn a_store_without_indexes_is_indexed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.redb");
        {
            let store = Store::open(&path).unwrap();
            fill(&store);
        }
        // Make it look like a store from before the indexes.
        {
            let db = redb::Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            for t in [BY_TIME.name(), BY_SEVERITY.name()] {
                assert!(txn.list_tables().unwrap().any(|h| h.name() == t));
            }
            txn.delete_table(BY_TIME).unwrap();
            txn.delete_table(BY_SEVERITY).unwrap();
            txn.delete_table(BY_HOST).unwrap();
            txn.delete_table(BY_SITE).unwrap();
            txn.delete_table(BY_INCIDENT).unwrap();
            let meta: redb::TableDefinition<&str, u64> = redb::TableDefinition::new("meta");
            txn.open_table(meta)
                .unwrap()
                .remove("index_version")
                .unwrap();
            txn.commit().unwrap();
        }
        let store = Store::open(&path).unwrap();
        check(
            &store,
            &params(&[("severity", ">=warning"), ("site", "lyon")]),
        );
        check(&store, &params(&[("q", "disk")]));
        let db_len = {
            drop(store);
            let db = redb::Database::create(&path).unwrap();
            let txn = db.begin_read().unwrap();
            txn.open_table(BY_TIME).unwrap().iter().unwrap().count()
        };
        assert_eq!(db_len, 600);
    }

    /// Index entries per table, to check nothing is indexed twice or missed.
    fn entries(store: &Store) -> [u64; 4] {
        use redb::ReadableTableMetadata;
        let txn = store.database().begin_read().unwrap();
        [
            txn.open_table(BY_TIME).unwrap().len().unwrap(),
            txn.open_table(BY_SEVERITY).unwrap().len().unwrap(),
            txn.open_table(BY_HOST).unwrap().len().unwrap(),
            txn.open_table(BY_SITE).unwrap().len().unwrap(),
        ]
    }

    /// Occurrences (sum of dedup counts) of `site`'s events, hidden ones included, from the
    /// histogram (which reads the index summaries, and the tail).
    fn occurrences(store: &Store, site: &str) -> u64 {
        let f = EventFilter::parse(&params(&[("site", site), ("hidden", "include")])).unwrap();
        let h = store
            .histogram(&f, T0 * 1_000_000, 3_600_000_000, 1)
            .unwrap();
        h[0].iter().map(|(_, o)| o).sum()
    }

    /// A first-stage dedup count update from `site/agent`: its event `target` was seen
    /// `count` times.
    fn count_update(store: &Store, site: &str, agent: &str, seq: u64, target: u64, count: u64) {
        let batch = Batch {
            first_seq: seq,
            last_seq: seq,
            records: vec![WireRecord {
                seq,
                payload: Record::Count {
                    target_seq: target,
                    count,
                    last_seen: Timestamp::from_second(T0 + 4500).unwrap(),
                }
                .to_bytes(),
            }],
        };
        let now = Timestamp::from_second(T0 + 5000).unwrap();
        let out = commit(store, site, agent, &batch, now);
        assert_eq!(out.count_updates, 1);
    }

    #[test]
    fn searches_see_every_event_at_any_watermark_and_indexing_resumes_after_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.redb");
        let cache = crate::store::DEFAULT_CACHE_BYTES;
        {
            let store = Store::open_unindexed(&path, cache).unwrap();
            fill(&store);
            // Nothing is indexed: every search is answered from the tail alone.
            assert_eq!(store.index_lag(), 600);
            assert_eq!(entries(&store), [0; 4]);
            let keys: Vec<u64> = ["paris:gw-1:3", "lyon:gw-2:9", "nice:gw-1:50"]
                .iter()
                .map(|id| store.key_of(id).unwrap().unwrap())
                .collect();
            store.set_correlated_incident(&keys, Some("INC-1")).unwrap();
            for c in &cases() {
                check(&store, &params(c));
            }
            // Event 5 of each agent was seen 7 times (`fill`): the tail carries the count.
            assert_eq!(occurrences(&store, "paris"), 200 + 2 * 6);
            // Half-way: paris's and part of lyon's events are indexed, the rest is the tail.
            assert_eq!(store.index_pending(250).unwrap(), 250);
            assert_eq!(store.index_lag(), 350);
            assert_eq!(entries(&store), [250; 4]);
            // An incident change on either side of the watermark.
            store
                .set_correlated_incident(&keys[..1], Some("INC-2"))
                .unwrap();
            store
                .set_correlated_incident(&keys[2..], Some("INC-2"))
                .unwrap();
            for c in &cases() {
                check(&store, &params(c));
            }
            // A count update of an indexed event rewrites its summary (paris gw-1's event 6).
            count_update(&store, "paris", "gw-1", 102, 6, 4);
            assert_eq!(occurrences(&store, "paris"), 200 + 2 * 6 + 3);
            // ...and of an event in the tail (nice gw-2's event 8).
            count_update(&store, "nice", "gw-2", 102, 8, 5);
            assert_eq!(occurrences(&store, "nice"), 200 + 2 * 6 + 4);
            // Dropped here with 350 events unindexed: what a crash between two indexer
            // transactions leaves (a crash inside one leaves the same, redb rolls it back).
        }
        {
            let store = Store::open_unindexed(&path, cache).unwrap();
            assert_eq!(
                store.index_lag(),
                350,
                "resumes from the persisted watermark"
            );
            for c in &cases() {
                check(&store, &params(c));
            }
            assert_eq!(store.index_pending(usize::MAX).unwrap(), 350);
            assert_eq!(store.index_pending(usize::MAX).unwrap(), 0);
            assert_eq!(store.index_lag(), 0);
            // Every event indexed once: no entry missing, none doubled.
            assert_eq!(entries(&store), [600; 4]);
            for c in &cases() {
                check(&store, &params(c));
            }
            assert_eq!(occurrences(&store, "paris"), 200 + 2 * 6 + 3);
            assert_eq!(occurrences(&store, "nice"), 200 + 2 * 6 + 4);
        }
        // The background indexer picks up what arrives later, without being asked.
        let store = Store::open(&path).unwrap();
        count_update(&store, "lyon", "gw-1", 102, 6, 2);
        let b = batch_for(103..=110);
        let now = Timestamp::from_second(T0 + 5000).unwrap();
        commit(&store, "lyon", "gw-1", &b, now);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while store.index_lag() > 0 {
            assert!(std::time::Instant::now() < deadline, "indexer never ran");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(entries(&store), [608; 4]);
        check(&store, &params(&[("site", "lyon")]));
    }

    /// Info events at T0 + seq seconds.
    fn batch_for(seqs: std::ops::RangeInclusive<u64>) -> Batch {
        let records = seqs
            .clone()
            .map(|seq| WireRecord {
                seq,
                payload: Record::Event(Event::new(
                    InputKind::Syslog,
                    "syslog",
                    "core-1",
                    Severity::Info,
                    format!("late {seq}"),
                    Timestamp::from_second(T0 + seq as i64).unwrap(),
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

    #[test]
    fn a_store_indexed_at_ingest_opens_fully_indexed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.redb");
        {
            let store = Store::open(&path).unwrap();
            fill(&store);
            store
                .wait_indexed(std::time::Duration::from_secs(30))
                .unwrap();
        }
        // What a build that indexed in the ingest transaction leaves: version 2, no watermark.
        {
            let db = redb::Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let meta: redb::TableDefinition<&str, u64> = redb::TableDefinition::new("meta");
                let mut meta = txn.open_table(meta).unwrap();
                meta.insert("index_version", SYNC_INDEX_VERSION).unwrap();
                meta.remove("indexed_through").unwrap();
                // A marker: one severity entry gone. Taken as indexed, the store keeps its
                // entries as they are; a rebuild would bring this one back.
                let mut sev = txn.open_table(BY_SEVERITY).unwrap();
                let first = sev.first().unwrap().map(|(k, _)| k.value()).unwrap();
                sev.remove(first).unwrap();
            }
            txn.commit().unwrap();
        }
        let store = Store::open_unindexed(&path, crate::store::DEFAULT_CACHE_BYTES).unwrap();
        assert_eq!(store.index_lag(), 0);
        assert_eq!(store.index_pending(usize::MAX).unwrap(), 0);
        assert_eq!(
            entries(&store),
            [600, 599, 600, 600],
            "opened without a rebuild"
        );
        check(&store, &params(&[("site", "lyon")]));
    }
}
