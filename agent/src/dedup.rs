//! First-stage deduplication (seed 000): repeats of an event within its input kind's window are
//! not queued again; the first occurrence is queued at once and its count and `last_seen` are
//! raised by count updates ([`Record::Count`]) that travel through the durable queue like events.
//!
//! Where it runs: inputs compute each event's [`DedupTag`] (a 64-bit xxh3 of the configured
//! key fields) when they encode it, off the writer's path; the queue writer owns a [`Deduper`]
//! and consults it for every group commit.
//!
//! Durability: a repeat is merged into its first occurrence in the group commit that would have
//! stored it, and the count update for an event already in the queue is appended **in that same
//! transaction**. Only repeats of an event first seen in the same group wait one more commit
//! (the next group, or the writer's flush tick). So a crash loses no more counts than it loses
//! events: those still between the inputs and the queue.
//!
//! Memory: at most `max_keys` keys (about 140 bytes each with the hash table's spare room and
//! the eviction order: 16,384 keys take ~2.3 MB). When full, each new key makes room by
//! forgetting the key whose window ends soonest: an expired one while there is any, so a table
//! with room for its load never forgets a live key; otherwise the live key closest to its end
//! (its pending count is flushed first, so no count is lost; a later repeat simply starts a new
//! event). The keys are kept in window-end order beside the table ([`EndQueue`]), so this costs
//! one look-up, not a pass over the table. Evictions are counted in
//! `weir_agent_dedup_evictions_total`.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::str::FromStr;

use jiff::Timestamp;
use serde::Deserialize;
use weir_common::config::HumanDuration;
use weir_common::{Event, InputKind, Record};
use xxhash_rust::xxh3::Xxh3;

use crate::queue::Encoded;

/// The dedup identity of one event: its key hash and how long repeats are merged into it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DedupTag {
    pub key: u64,
    pub window_us: i64,
}

/// One field of an event that goes into a dedup key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyField {
    Source,
    Hostname,
    Severity,
    Message,
    EventType,
    /// The short machine tag (for SNMP traps: the trap, by OID).
    Tag,
    /// The address the event came from.
    Peer,
    /// Any entry of the event's tags, e.g. `tags.facility` or `tags.resource`.
    TagsEntry(String),
}

impl FromStr for KeyField {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "source" => KeyField::Source,
            "hostname" => KeyField::Hostname,
            "severity" => KeyField::Severity,
            "message" => KeyField::Message,
            "event_type" => KeyField::EventType,
            "tag" => KeyField::Tag,
            "peer" => KeyField::Peer,
            // Syslog's facility lives in the tags; accept the short name.
            "facility" => KeyField::TagsEntry("facility".into()),
            other => match other.strip_prefix("tags.") {
                Some(name) if !name.is_empty() => KeyField::TagsEntry(name.into()),
                _ => {
                    return Err(format!(
                        "unknown dedup key field {s:?}: expected source, hostname, severity, message, event_type, tag, peer, facility or tags.<name>"
                    ));
                }
            },
        })
    }
}

impl fmt::Display for KeyField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyField::Source => f.write_str("source"),
            KeyField::Hostname => f.write_str("hostname"),
            KeyField::Severity => f.write_str("severity"),
            KeyField::Message => f.write_str("message"),
            KeyField::EventType => f.write_str("event_type"),
            KeyField::Tag => f.write_str("tag"),
            KeyField::Peer => f.write_str("peer"),
            KeyField::TagsEntry(n) => write!(f, "tags.{n}"),
        }
    }
}

impl<'de> Deserialize<'de> for KeyField {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Dedup for one input kind.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Repeats within this long of the first occurrence are merged into it; "0s" turns dedup
    /// off for this input.
    pub window: HumanDuration,
    /// The fields that make two events "the same".
    pub key: Vec<KeyField>,
    /// Hashed as well when an event has no value for one of the `key` fields, so that, say,
    /// API events without an `event_type` merge only when they are otherwise identical.
    #[serde(default)]
    pub when_missing: Vec<KeyField>,
}

/// The `[dedup]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DedupConfig {
    /// Most keys remembered at once (about 140 bytes each, with the hash table's spare room and
    /// the eviction order).
    #[serde(default = "d_max_keys")]
    pub max_keys: usize,
    /// Longest a count for an event first seen in the same commit waits when no other input
    /// arrives to carry it.
    #[serde(default = "d_flush")]
    pub flush_interval: HumanDuration,
    #[serde(default = "d_syslog")]
    pub syslog: RuleConfig,
    #[serde(default = "d_snmp")]
    pub snmp_trap: RuleConfig,
    #[serde(default = "d_app")]
    pub api: RuleConfig,
    #[serde(default = "d_app")]
    pub script: RuleConfig,
}

fn d_max_keys() -> usize {
    16_384
}
fn d_flush() -> HumanDuration {
    HumanDuration::millis(500)
}
fn d_syslog() -> RuleConfig {
    RuleConfig {
        window: HumanDuration::secs(120),
        key: vec![
            KeyField::Hostname,
            KeyField::TagsEntry("facility".into()),
            KeyField::Severity,
            KeyField::Message,
        ],
        when_missing: Vec::new(),
    }
}
fn d_snmp() -> RuleConfig {
    RuleConfig {
        window: HumanDuration::secs(300),
        key: vec![KeyField::Hostname, KeyField::Tag],
        when_missing: Vec::new(),
    }
}
fn d_app() -> RuleConfig {
    RuleConfig {
        window: HumanDuration::secs(120),
        key: vec![
            KeyField::Source,
            KeyField::EventType,
            KeyField::TagsEntry("resource".into()),
        ],
        when_missing: vec![KeyField::Hostname, KeyField::Severity, KeyField::Message],
    }
}

impl Default for DedupConfig {
    fn default() -> Self {
        DedupConfig {
            max_keys: d_max_keys(),
            flush_interval: d_flush(),
            syslog: d_syslog(),
            snmp_trap: d_snmp(),
            api: d_app(),
            script: d_app(),
        }
    }
}

impl DedupConfig {
    /// Checks the section; the error names the field.
    pub fn check(&self) -> Result<(), (String, String)> {
        if self.max_keys == 0 {
            return Err(("dedup.max_keys".into(), "must be at least 1".into()));
        }
        if self.flush_interval.0.is_zero() {
            return Err((
                "dedup.flush_interval".into(),
                "must be longer than zero".into(),
            ));
        }
        for (name, rule) in [
            ("syslog", &self.syslog),
            ("snmp_trap", &self.snmp_trap),
            ("api", &self.api),
            ("script", &self.script),
        ] {
            if !rule.window.0.is_zero() && rule.key.is_empty() {
                return Err((
                    format!("dedup.{name}.key"),
                    "list at least one field, or set window = \"0s\" to turn dedup off".into(),
                ));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone)]
struct Compiled {
    key: Vec<KeyField>,
    when_missing: Vec<KeyField>,
    window_us: i64,
}

fn field<'a>(ev: &'a Event, f: &KeyField) -> Option<&'a [u8]> {
    Some(match f {
        KeyField::Source => ev.source.as_bytes(),
        KeyField::Hostname => ev.hostname.as_bytes(),
        KeyField::Severity => ev.severity.as_str().as_bytes(),
        KeyField::Message => ev.message.as_bytes(),
        KeyField::EventType => ev.event_type.as_deref()?.as_bytes(),
        KeyField::Tag => ev.tag.as_deref()?.as_bytes(),
        KeyField::Peer => ev.peer.as_deref()?.as_bytes(),
        KeyField::TagsEntry(n) => ev.tags.get(n)?.as_bytes(),
    })
}

/// The compiled rules inputs use to tag events.
#[derive(Debug, Clone, Default)]
pub struct DedupRules {
    /// Indexed by [`InputKind`] position; `None` = no dedup.
    rules: [Option<Compiled>; 5],
    /// Random per process, so key hashes are not predictable from the lines alone: crafting
    /// lines whose keys collide (merging a distinct event into another, or degrading the key
    /// map) needs the seed. A seeded xxh3 is not a keyed PRF, so this is a hurdle, not a proof.
    /// Keys live only in memory, so a new seed at each start loses nothing.
    seed: u64,
}

/// The key map's hasher: keys are already seeded xxh3 hashes, so SipHash over them again only
/// cost time (~500 instructions per line). Passes the `u64` through.
#[derive(Debug, Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `u64` keys are hashed; fold anything else so the hasher stays correct.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

type KeyMap = HashMap<u64, Entry, BuildHasherDefault<KeyHasher>>;

fn kind_index(kind: InputKind) -> usize {
    match kind {
        InputKind::Syslog => 0,
        InputKind::SnmpTrap => 1,
        InputKind::Api => 2,
        InputKind::Script => 3,
        InputKind::Internal => 4,
    }
}

impl DedupRules {
    pub fn new(cfg: &DedupConfig) -> DedupRules {
        let compile = |r: &RuleConfig| {
            let us = i64::try_from(r.window.0.as_micros()).unwrap_or(i64::MAX);
            (us > 0 && !r.key.is_empty()).then(|| Compiled {
                key: r.key.clone(),
                when_missing: r.when_missing.clone(),
                window_us: us,
            })
        };
        DedupRules {
            rules: [
                compile(&cfg.syslog),
                compile(&cfg.snmp_trap),
                compile(&cfg.api),
                compile(&cfg.script),
                // Weir's own events (drop reports) are never merged.
                None,
            ],
            seed: rand::random(),
        }
    }

    /// The event's dedup tag, or `None` when its input kind is not deduplicated.
    pub fn tag(&self, ev: &Event) -> Option<DedupTag> {
        self.tag_by(ev.input, |f| field(ev, f))
    }

    /// [`DedupRules::tag`] of an event of kind `input` given by how to read its key fields
    /// (for inputs that encode events they never build, see `syslog::draft`).
    pub(crate) fn tag_by<'a>(
        &self,
        input: InputKind,
        field: impl Fn(&KeyField) -> Option<&'a [u8]>,
    ) -> Option<DedupTag> {
        let rule = self.rules[kind_index(input)].as_ref()?;
        let mut h = Xxh3::with_seed(self.seed);
        h.update(&[kind_index(input) as u8]);
        let mut missing = false;
        // Length-prefix every part (absent = u64::MAX) so ("ab","c") and ("a","bc") differ.
        let mut add = |part: Option<&[u8]>| match part {
            Some(p) => {
                h.update(&(p.len() as u64).to_le_bytes());
                h.update(p);
                false
            }
            None => {
                h.update(&u64::MAX.to_le_bytes());
                true
            }
        };
        for f in &rule.key {
            missing |= add(field(f));
        }
        if missing {
            for f in &rule.when_missing {
                add(field(f));
            }
        }
        Some(DedupTag {
            key: h.digest(),
            window_us: rule.window_us,
        })
    }

    /// Encodes a record for the queue, tagged for dedup when it is an event of a deduplicated
    /// input kind.
    pub fn encode(&self, record: &Record, received_at_us: i64) -> Encoded {
        let mut enc = Encoded::new(record, received_at_us);
        if let Record::Event(ev) = record {
            enc.dedup = self.tag(ev);
        }
        enc
    }
}

#[derive(Debug, Clone)]
struct Entry {
    /// Queue sequence of the first occurrence; 0 while it is being appended.
    seq: u64,
    count: u64,
    last_seen_us: i64,
    window_end_us: i64,
    /// The count has grown since the last count update was queued.
    dirty: bool,
}

/// The keys of one window length (one input kind's rule) in the order they were opened, which
/// is the order their windows end: receive times only grow (inputs on different threads can
/// interleave by microseconds, and a clock stepped back reorders a little; eviction may then
/// take a key that ends later than one behind it, never a wrong count). Entries whose key has
/// since been forgotten or reopened are skipped when they reach the front, or dropped by
/// [`Deduper::compact_order`].
#[derive(Debug)]
struct EndQueue {
    window_us: i64,
    /// (window end, key), oldest first.
    keys: VecDeque<(i64, u64)>,
}

/// The writer's dedup state. Not thread-safe by design: one writer owns it.
#[derive(Debug)]
pub struct Deduper {
    map: KeyMap,
    max_keys: usize,
    /// Every key's (window end, key) in window-end order, one queue per window length, for
    /// eviction without a pass over `map`. May also hold entries of keys since forgotten or
    /// reopened (stale), at most about as many as `map` has keys.
    order: Vec<EndQueue>,
    /// Count updates of entries that were evicted or replaced, to go out with the next commit.
    orphans: Vec<Encoded>,
    /// Keys whose entries turned dirty since the last flush, so a flush visits only those and
    /// not every remembered key (it runs on every group commit). May hold keys since evicted
    /// or cleaned; [`Deduper::take_counts`] skips them.
    dirty: Vec<u64>,
    /// Repeats merged since the process started (also the metric `weir_agent_dedup_merged_total`).
    pub merged_total: u64,
    pub evicted_total: u64,
}

/// What [`Deduper::filter`] did to a group: which kept records opened new keys.
#[derive(Debug, Default)]
pub struct Filtered {
    /// (index in the kept records, key) of each first occurrence.
    pub opened: Vec<(usize, u64)>,
    pub merged: u64,
}

fn count_record(seq: u64, e: &Entry) -> Encoded {
    let last_seen = Timestamp::from_microsecond(e.last_seen_us).unwrap_or(Timestamp::UNIX_EPOCH);
    Encoded::new(
        &Record::Count {
            target_seq: seq,
            count: e.count,
            last_seen,
        },
        e.last_seen_us,
    )
}

impl Deduper {
    pub fn new(max_keys: usize) -> Deduper {
        Deduper {
            map: KeyMap::default(),
            max_keys: max_keys.max(1),
            order: Vec::new(),
            orphans: Vec::new(),
            dirty: Vec::new(),
            merged_total: 0,
            evicted_total: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Removes the repeats from `records` (merging them into their first occurrence) and
    /// remembers the first occurrences it keeps, to be told their sequence numbers by
    /// [`Deduper::assign`] once appended.
    pub fn filter(&mut self, records: &mut Vec<Encoded>) -> Filtered {
        let mut out = Filtered::default();
        let mut evicted = 0u64;
        let mut kept = Vec::with_capacity(records.len());
        for rec in records.drain(..) {
            let Some(tag) = rec.dedup else {
                kept.push(rec);
                continue;
            };
            let at = rec.received_at_us();
            match self.map.get_mut(&tag.key) {
                Some(e) if at < e.window_end_us => {
                    e.count += 1;
                    e.last_seen_us = e.last_seen_us.max(at);
                    if !e.dirty {
                        e.dirty = true;
                        self.dirty.push(tag.key);
                    }
                    out.merged += 1;
                }
                _ => {
                    if let Some(old) = self.map.remove(&tag.key) {
                        // Expired: its last count goes out before the new event replaces it.
                        if old.dirty && old.seq != 0 {
                            self.orphans.push(count_record(old.seq, &old));
                        }
                    } else {
                        while self.map.len() >= self.max_keys && self.evict_soonest() {
                            evicted += 1;
                        }
                    }
                    let end = at.saturating_add(tag.window_us);
                    self.map.insert(
                        tag.key,
                        Entry {
                            seq: 0,
                            count: 1,
                            last_seen_us: at,
                            window_end_us: end,
                            dirty: false,
                        },
                    );
                    self.remember(tag.window_us, end, tag.key);
                    out.opened.push((kept.len(), tag.key));
                    kept.push(rec);
                }
            }
        }
        *records = kept;
        self.merged_total += out.merged;
        metrics::counter!("weir_agent_dedup_merged_total").increment(out.merged);
        if evicted > 0 {
            self.evicted_total += evicted;
            metrics::counter!("weir_agent_dedup_evictions_total").increment(evicted);
            metrics::gauge!("weir_agent_dedup_keys").set(self.map.len() as f64);
        }
        out
    }

    /// Puts a newly opened key at the back of its window length's queue.
    fn remember(&mut self, window_us: i64, end: i64, key: u64) {
        let i = match self.order.iter().position(|q| q.window_us == window_us) {
            Some(i) => i,
            None => {
                self.order.push(EndQueue {
                    window_us,
                    keys: VecDeque::new(),
                });
                self.order.len() - 1
            }
        };
        self.order[i].keys.push_back((end, key));
        // Stale entries (keys forgotten or reopened) are only dropped as they reach the front;
        // keys that expire and reopen while the table has room never get there.
        if self.ordered() > 2 * self.map.len() + 1024 {
            self.compact_order();
        }
    }

    /// Entries in all of `order`'s queues (one per window length: a handful).
    fn ordered(&self) -> usize {
        self.order.iter().map(|q| q.keys.len()).sum()
    }

    /// Drops the stale entries from every queue (one pass, when they outnumber the keys).
    fn compact_order(&mut self) {
        let map = &self.map;
        for q in &mut self.order {
            q.keys
                .retain(|&(end, key)| map.get(&key).is_some_and(|e| e.window_end_us == end));
        }
        self.order.retain(|q| !q.keys.is_empty());
    }

    /// Forgets the key whose window ends soonest (an expired one first, if any), queuing its
    /// pending count. False when no key can go: every key left is still being appended (no
    /// sequence number yet), and the table then grows by up to one group.
    fn evict_soonest(&mut self) -> bool {
        let mut soonest: Option<(i64, usize)> = None;
        for (i, q) in self.order.iter_mut().enumerate() {
            // Stale entries at the front go; then the front is a key with that window end.
            while let Some(&(end, key)) = q.keys.front() {
                match self.map.get(&key) {
                    Some(e) if e.window_end_us == end => {
                        // Keys behind one being appended were opened after it: being appended
                        // too. Nothing in this queue can go.
                        if e.seq != 0 && soonest.is_none_or(|(s, _)| end < s) {
                            soonest = Some((end, i));
                        }
                        break;
                    }
                    _ => {
                        q.keys.pop_front();
                    }
                }
            }
        }
        let Some((_, i)) = soonest else {
            return false;
        };
        let Some((_, key)) = self.order[i].keys.pop_front() else {
            return false;
        };
        if let Some(e) = self.map.remove(&key)
            && e.dirty
        {
            self.orphans.push(count_record(e.seq, &e));
        }
        true
    }

    /// Count updates for every entry whose count grew and whose event is in the queue, plus
    /// those of evicted entries. Marks them clean.
    pub fn take_counts(&mut self) -> Vec<Encoded> {
        let mut out = std::mem::take(&mut self.orphans);
        let map = &mut self.map;
        self.dirty.retain(|key| match map.get_mut(key) {
            Some(e) if e.dirty && e.seq != 0 => {
                out.push(count_record(e.seq, e));
                e.dirty = false;
                false
            }
            // Still being appended: its count goes out once it has a sequence number.
            Some(e) if e.dirty => true,
            // Evicted, replaced or already flushed.
            _ => false,
        });
        out
    }

    /// Whether a flush would queue anything.
    pub fn has_pending(&self) -> bool {
        !self.orphans.is_empty()
            || self
                .dirty
                .iter()
                .any(|k| self.map.get(k).is_some_and(|e| e.dirty && e.seq != 0))
    }

    /// Tells the deduper which sequence numbers the first occurrences got (`seqs[i]` for kept
    /// record `i`; 0 when the queue did not keep it, in which case its repeats are lost with
    /// it and returned as a count for the drop accounting).
    pub fn assign(&mut self, opened: &[(usize, u64)], seqs: &[u64]) -> u64 {
        let mut lost = 0;
        for &(i, key) in opened {
            let seq = seqs.get(i).copied().unwrap_or(0);
            if seq == 0 {
                if let Some(e) = self.map.remove(&key) {
                    lost += e.count - 1;
                }
            } else if let Some(e) = self.map.get_mut(&key) {
                e.seq = seq;
            }
        }
        lost
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_common::Severity;

    fn ev(host: &str, msg: &str, at_s: i64) -> (Record, i64) {
        let t = Timestamp::from_second(1_700_000_000 + at_s).unwrap();
        let mut e = Event::new(InputKind::Syslog, "syslog", host, Severity::Error, msg, t);
        e.tags.insert("facility".into(), "local7".into());
        (Record::Event(e), t.as_microsecond())
    }

    fn rules() -> DedupRules {
        DedupRules::new(&DedupConfig::default())
    }

    fn decode_count(e: &Encoded) -> (u64, u64) {
        match Record::from_bytes(&e.bytes_for_test()[9..]).unwrap() {
            Record::Count {
                target_seq, count, ..
            } => (target_seq, count),
            other => panic!("not a count: {other:?}"),
        }
    }

    /// The tag's key as its definition says: one XXH3 with the rules' seed over the input kind
    /// and each key field length-prefixed, computed here in one call, in any order of events
    /// and of rules with different seeds, on any thread (a guard for attempts to reuse hasher
    /// state between keys).
    #[test]
    fn tags_are_one_seeded_xxh3_of_the_key_whatever_came_before() {
        let expected = |r: &DedupRules, e: &Event| {
            let mut key = vec![0u8]; // syslog
            for part in [
                e.hostname.as_str(),
                &e.tags["facility"],
                e.severity.as_str(),
                &e.message,
            ] {
                key.extend_from_slice(&(part.len() as u64).to_le_bytes());
                key.extend_from_slice(part.as_bytes());
            }
            xxhash_rust::xxh3::xxh3_64_with_seed(&key, r.seed)
        };
        let (r1, r2) = (rules(), rules());
        assert_ne!(r1.seed, r2.seed);
        let long = "x".repeat(300); // past the 240 bytes XXH3 hashes in one step
        let event = |host: &str, msg: &str| match ev(host, msg, 0).0 {
            Record::Event(e) => e,
            other => panic!("not an event: {other:?}"),
        };
        let events = [event("h1", "link down"), event("h2", &long), event("", "")];
        for round in 0..3 {
            for (i, e) in events.iter().enumerate() {
                let r = if (i + round) % 2 == 0 { &r1 } else { &r2 };
                let got = r.tag(e).unwrap().key;
                assert_eq!(got, expected(r, e), "event {i}, round {round}");
            }
        }
        // And from another thread, whose hasher starts empty.
        let (r, e) = (&r1, &events[0]);
        let got = std::thread::scope(|s| s.spawn(|| r.tag(e).unwrap().key).join().unwrap());
        assert_eq!(got, expected(r, e));
    }

    #[test]
    fn key_fields_parse_and_reject_unknown() {
        assert_eq!(
            "tags.resource".parse::<KeyField>().unwrap().to_string(),
            "tags.resource"
        );
        assert_eq!(
            "facility".parse::<KeyField>().unwrap(),
            KeyField::TagsEntry("facility".into())
        );
        let e = "colour".parse::<KeyField>().unwrap_err();
        assert!(e.contains("hostname"), "{e}");
        assert!("tags.".parse::<KeyField>().is_err());
    }

    #[test]
    fn tags_differ_by_every_key_field_and_not_by_others() {
        let r = rules();
        let (a, _) = ev("h1", "link down", 0);
        let (b, _) = ev("h2", "link down", 0);
        let (c, _) = ev("h1", "link up", 0);
        let (d, _) = ev("h1", "link down", 50);
        let tag = |r2: &Record| match r2 {
            Record::Event(e) => r.tag(e).unwrap().key,
            _ => unreachable!(),
        };
        assert_ne!(tag(&a), tag(&b));
        assert_ne!(tag(&a), tag(&c));
        // Receive time is not part of the key.
        assert_eq!(tag(&a), tag(&d));
        let Record::Event(mut e) = a.clone() else {
            unreachable!()
        };
        e.tags.insert("facility".into(), "local6".into());
        assert_ne!(tag(&Record::Event(e)), tag(&a));
        // Internal events are never tagged.
        let Record::Event(mut e) = a else {
            unreachable!()
        };
        e.input = InputKind::Internal;
        assert!(r.tag(&e).is_none());
    }

    #[test]
    fn keys_are_seeded_so_senders_cannot_predict_them() {
        let (rec, _) = ev("h", "link down", 0);
        let Record::Event(e) = rec else {
            unreachable!()
        };
        let (a, b) = (rules(), rules());
        assert_eq!(a.tag(&e).unwrap().key, a.tag(&e).unwrap().key);
        assert_ne!(a.tag(&e).unwrap().key, b.tag(&e).unwrap().key);
    }

    #[test]
    fn repeats_merge_within_the_window_and_counts_are_exact() {
        let r = rules();
        let mut d = Deduper::new(100);
        // Group 1: first occurrence plus two repeats in the same commit.
        let mut g: Vec<Encoded> = (0..3)
            .map(|i| {
                let (rec, us) = ev("h", "same", i);
                r.encode(&rec, us)
            })
            .collect();
        let f = d.filter(&mut g);
        assert_eq!(g.len(), 1);
        assert_eq!(f.merged, 2);
        // Not yet appended: nothing to flush.
        assert!(d.take_counts().is_empty());
        assert_eq!(d.assign(&f.opened, &[41]), 0);
        let counts = d.take_counts();
        assert_eq!(counts.len(), 1);
        assert_eq!(decode_count(&counts[0]), (41, 3));
        // Group 2: one more repeat, 100 s later (still inside 2 min).
        let (rec, us) = ev("h", "same", 100);
        let mut g = vec![r.encode(&rec, us)];
        d.filter(&mut g);
        assert!(g.is_empty());
        let counts = d.take_counts();
        assert_eq!(decode_count(&counts[0]), (41, 4));
        assert!(d.take_counts().is_empty(), "flushed counts are clean");
        // After the window: a new event.
        let (rec, us) = ev("h", "same", 121);
        let mut g = vec![r.encode(&rec, us)];
        let f = d.filter(&mut g);
        assert_eq!(g.len(), 1);
        assert_eq!(f.opened.len(), 1);
    }

    #[test]
    fn dropped_first_occurrence_reports_its_repeats_lost() {
        let r = rules();
        let mut d = Deduper::new(100);
        let mut g: Vec<Encoded> = (0..5)
            .map(|i| {
                let (rec, us) = ev("h", "x", i);
                r.encode(&rec, us)
            })
            .collect();
        let f = d.filter(&mut g);
        assert_eq!(d.assign(&f.opened, &[0]), 4);
        assert!(d.is_empty());
    }

    #[test]
    fn memory_is_bounded_and_evicted_counts_are_not_lost() {
        let r = rules();
        let mut d = Deduper::new(64);
        let mut seq = 1;
        // A key with a pending count, then a flood of unique keys that forces evictions.
        let (rec, us) = ev("h", "hot", 0);
        let mut g = vec![r.encode(&rec, us), r.encode(&rec, us + 1)];
        let f = d.filter(&mut g);
        d.assign(&f.opened, &[seq]);
        seq += 1;
        let mut orphan_counts = Vec::new();
        for i in 0..1000 {
            let (rec, us) = ev("h", &format!("unique {i}"), 1);
            let mut g = vec![r.encode(&rec, us)];
            let f = d.filter(&mut g);
            d.assign(&f.opened, &[seq]);
            seq += 1;
            assert!(d.len() <= 64, "len {}", d.len());
            orphan_counts.extend(d.take_counts());
        }
        assert!(d.evicted_total > 0);
        let hot: Vec<_> = orphan_counts
            .iter()
            .map(decode_count)
            .filter(|c| c.0 == 1)
            .collect();
        assert_eq!(
            hot,
            vec![(1, 2)],
            "the hot key's count went out exactly once"
        );
    }

    /// A record with dedup key `i`, received at `at_s`, with a window of `window_s`.
    fn keyed(i: u64, at_s: i64, window_s: i64) -> Encoded {
        let us = (1_700_000_000 + at_s) * 1_000_000;
        let mut enc = Encoded::new(&ev("h", &format!("k{i}"), at_s).0, us);
        enc.dedup = Some(DedupTag {
            key: i,
            window_us: window_s * 1_000_000,
        });
        enc
    }

    /// Opens key `i` at `at_s`, with a window of `window_s`, and gives it sequence `i + 1`.
    fn open(d: &mut Deduper, i: u64, at_s: i64, window_s: i64) {
        let mut g = vec![keyed(i, at_s, window_s)];
        let f = d.filter(&mut g);
        d.assign(&f.opened, &[i + 1]);
    }

    #[test]
    fn a_full_table_forgets_the_keys_ending_soonest_one_per_new_key() {
        let mut d = Deduper::new(4096);
        // Distinct window ends spread over 4096 s, in an order unrelated to the keys'.
        let window = |i: u64| 1 + (i * 2_654_435_761 % 4096) as i64;
        for i in 0..4096u64 {
            open(&mut d, i, 0, window(i));
        }
        assert_eq!(d.len(), 4096);
        // 100 new keys, within every window: each forgets one key, the one ending soonest.
        for j in 0..100 {
            open(&mut d, 10_000 + j, 0, 10_000);
        }
        assert_eq!(d.evicted_total, 100);
        assert_eq!(d.len(), 4096);
        let mut by_end: Vec<u64> = (0..4096).collect();
        by_end.sort_by_key(|&i| window(i));
        let gone: Vec<u64> = (0..4096).filter(|i| !d.map.contains_key(i)).collect();
        let mut soonest = by_end[..100].to_vec();
        soonest.sort_unstable();
        assert_eq!(gone, soonest);
    }

    #[test]
    fn expired_keys_go_before_live_ones_and_keys_being_appended_stay() {
        let mut d = Deduper::new(1000);
        // 600 keys that expire between 1 and 9 s, 400 that live long.
        for i in 0..1000u64 {
            let window = if i < 600 { 1 + (i % 9) as i64 } else { 1000 };
            open(&mut d, i, 0, window);
        }
        // At 20 s, 600 new keys: exactly the expired keys make room, no live one.
        for j in 0..600 {
            open(&mut d, 5000 + j, 20, 1000);
        }
        assert_eq!(d.evicted_total, 600);
        assert!((600..1000u64).all(|i| d.map.contains_key(&i)));
        // Then a live key goes: of the same window length, the one opened first (it ends
        // soonest), not one of the new keys.
        open(&mut d, 9000, 20, 1000);
        assert_eq!(d.evicted_total, 601);
        assert!(!d.map.contains_key(&600));
        assert!(
            (601..1000u64)
                .chain(5000..5600)
                .all(|i| d.map.contains_key(&i))
        );
        // A table full of keys being appended (no sequence number yet) frees nothing.
        let mut d = Deduper::new(4);
        let r = rules();
        let mut g: Vec<Encoded> = (0..8)
            .map(|i| {
                let (rec, us) = ev("h", &format!("m{i}"), 0);
                r.encode(&rec, us)
            })
            .collect();
        let f = d.filter(&mut g);
        assert_eq!(f.opened.len(), 8);
        assert_eq!(d.evicted_total, 0);
    }

    /// What production looks like: one window length (the input kind's), keys opened as time
    /// goes on. They go in the order they were opened; a key still being appended at the
    /// front holds its whole queue (the keys behind it are being appended too); and a clock
    /// stepped back only changes the order a little (a key opened after the step waits behind
    /// keys that end later), never a count.
    #[test]
    fn one_window_length_forgets_in_opening_order() {
        let mut d = Deduper::new(4);
        for i in 0..4u64 {
            open(&mut d, i, i as i64, 100);
        }
        // One group of three new keys: they push out keys 0, 1, 2 in that order.
        let mut g: Vec<Encoded> = (10..13).map(|i| keyed(i, 10, 100)).collect();
        let f = d.filter(&mut g);
        assert_eq!(d.evicted_total, 3);
        assert!(d.map.contains_key(&3) && (0..3u64).all(|i| !d.map.contains_key(&i)));
        // Another new key in the same group pushes out key 3; one more finds only keys being
        // appended (10, 11, 12, 13) at the front of the queue: nothing goes, the table grows.
        let mut g2 = vec![keyed(13, 10, 100), keyed(14, 10, 100)];
        let f2 = d.filter(&mut g2);
        assert_eq!(d.evicted_total, 4);
        assert_eq!(d.len(), 5);
        d.assign(&f.opened, &[11, 12, 13]);
        d.assign(&f2.opened, &[14, 15]);
        // The clock steps back: key 20, opened at 5 s, ends before keys 10 to 14 (opened at
        // 10 s) but sits behind them. Making room for it takes the front (10, 11); the next
        // new keys take 12, 13, 14, then key 20, whose repeat's count is flushed first.
        let mut g = vec![keyed(20, 5, 100), keyed(20, 6, 100)];
        let f = d.filter(&mut g);
        d.assign(&f.opened, &[21]);
        for j in 0..6u64 {
            open(&mut d, 30 + j, 11, 100);
        }
        assert!(!d.map.contains_key(&20));
        let counts: Vec<_> = d.take_counts().iter().map(decode_count).collect();
        assert!(counts.contains(&(21, 2)), "{counts:?}");
    }

    /// Keys that expire and reopen while the table has room leave stale entries in the
    /// eviction order that never reach its front: they are dropped before they outnumber the
    /// keys, and eviction then still picks the right key.
    #[test]
    fn the_eviction_order_stays_bounded_when_keys_reopen() {
        let mut d = Deduper::new(2000);
        for round in 0..40i64 {
            for i in 0..100u64 {
                open(&mut d, i, round * 200, 100);
            }
            assert!(
                d.ordered() <= 2 * d.len() + 1024 + 1,
                "{} entries",
                d.ordered()
            );
        }
        assert_eq!(d.len(), 100);
        assert_eq!(d.evicted_total, 0);
        // Fill the table: the 100 reopened keys (the oldest, ending at 7,900 s) go first.
        for j in 0..2000u64 {
            open(&mut d, 10_000 + j, 7_850, 100);
        }
        assert_eq!(d.evicted_total, 100);
        assert!((0..100u64).all(|i| !d.map.contains_key(&i)));
        assert_eq!(d.ordered(), d.len());
    }

    #[test]
    fn keys_being_appended_are_not_evicted_nor_counted_without_a_sequence() {
        let mut d = Deduper::new(64);
        for i in 0..64u64 {
            open(&mut d, i, 0, 1000 + i as i64);
        }
        // One group: key 100 (ending soonest of all) and a repeat of it, then 16 new keys.
        let mut g = vec![keyed(100, 0, 1), keyed(100, 0, 1)];
        g.extend((200..216).map(|i| keyed(i, 0, 5000)));
        let f = d.filter(&mut g);
        // One eviction per new key; key 100 ends soonest of all but is being appended.
        assert_eq!(d.evicted_total, 17);
        let e = &d.map[&100];
        assert!(e.seq == 0 && e.dirty && e.count == 2, "{e:?}");
        assert!(
            d.take_counts().iter().all(|c| decode_count(c).0 != 0),
            "no count for sequence 0"
        );
        let seqs: Vec<u64> = (0..g.len() as u64).map(|i| 1000 + i).collect();
        d.assign(&f.opened, &seqs);
        let counts: Vec<_> = d.take_counts().iter().map(decode_count).collect();
        assert!(counts.contains(&(1000, 2)), "{counts:?}");
    }

    #[test]
    fn disabled_rule_and_config_checks() {
        let mut cfg = DedupConfig::default();
        cfg.syslog.window = HumanDuration::secs(0);
        let r = DedupRules::new(&cfg);
        let (rec, _) = ev("h", "x", 0);
        let Record::Event(e) = rec else {
            unreachable!()
        };
        assert!(r.tag(&e).is_none());
        cfg.api.key.clear();
        assert_eq!(cfg.check().unwrap_err().0, "dedup.api.key");
        cfg.api.window = HumanDuration::secs(0);
        cfg.check().unwrap();
    }

    #[test]
    fn api_events_without_event_type_merge_only_when_identical() {
        let r = rules();
        let t = Timestamp::from_second(1_700_000_000).unwrap();
        let api = |ty: Option<&str>, res: Option<&str>, msg: &str| {
            let mut e = Event::new(InputKind::Api, "app", "h", Severity::Warning, msg, t);
            e.event_type = ty.map(Into::into);
            if let Some(res) = res {
                e.tags.insert("resource".into(), res.into());
            }
            r.tag(&e).unwrap().key
        };
        // Structured: the message may change (e.g. a percentage) and still merge.
        assert_eq!(
            api(Some("disk_full"), Some("/var"), "93% used"),
            api(Some("disk_full"), Some("/var"), "94% used")
        );
        assert_ne!(
            api(Some("disk_full"), Some("/var"), "93%"),
            api(Some("disk_full"), Some("/srv"), "93%")
        );
        // Unstructured: only identical events merge.
        assert_ne!(api(None, None, "token 1"), api(None, None, "token 2"));
        assert_eq!(api(None, None, "token 1"), api(None, None, "token 1"));
    }
}
