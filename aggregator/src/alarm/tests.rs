//! The whole per-event pipeline on a real redb file, through the real store writer
//! ([`crate::ingest::run_writer`]): transform → definition → store unless `dest` says
//! otherwise → alarms, in one transaction.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use jiff::Timestamp;
use tokio::sync::mpsc;
use weir_common::wire::{Batch, WireRecord};
use weir_common::{Event, InputKind, Record, Severity};

use super::incident::{EventRef, Explanation, IncidentSpec, IncidentStatus};
use super::persist::{self, Engine};
use super::state::AlarmStatus;
use super::*;
use crate::ingest::{IngestItem, run_writer};
use crate::store::Store;

pub(crate) fn t(s: i64) -> Timestamp {
    Timestamp::from_second(1_700_000_000 + s).unwrap()
}

pub(crate) fn ev(tag: &str, host: &str, at: i64) -> Event {
    let mut e = Event::new(
        InputKind::Api,
        "monitor",
        host,
        Severity::Critical,
        format!("{tag} on {host}"),
        t(at),
    );
    e.tag = Some(tag.into());
    e
}

/// A store, its engine, and a running writer thread.
pub(crate) struct Rig {
    pub store: Arc<Store>,
    pub engine: Arc<Engine>,
    tx: Option<mpsc::Sender<IngestItem>>,
    writer: Option<std::thread::JoinHandle<()>>,
}

impl Rig {
    pub fn open(path: &Path, cfg: ProcessingConfig) -> Rig {
        let store = Arc::new(Store::open(path).unwrap());
        let engine = Arc::new(Engine::new(store.clone(), cfg).unwrap());
        let (tx, rx) = mpsc::channel(8);
        let (s, e) = (store.clone(), engine.clone());
        let c = crate::correlation::Correlator::start(
            store.clone(),
            Default::default(),
            Default::default(),
        )
        .unwrap();
        let writer = std::thread::spawn(move || run_writer(s, e, c, rx));
        Rig {
            store,
            engine,
            tx: Some(tx),
            writer: Some(writer),
        }
    }

    /// Sends events as agent `site/name` with sequences `first..`, as a connection task
    /// would, and waits for the commit; returns the committed sequence.
    pub fn send(&self, site: &str, name: &str, first: u64, events: Vec<Event>) -> u64 {
        self.send_records(
            site,
            name,
            first,
            events.into_iter().map(Record::Event).collect(),
        )
    }

    /// [`Rig::send`] with any records (events and first-stage dedup count updates).
    pub fn send_records(&self, site: &str, name: &str, first: u64, records: Vec<Record>) -> u64 {
        let records: Vec<WireRecord> = records
            .into_iter()
            .enumerate()
            .map(|(i, r)| WireRecord {
                seq: first + i as u64,
                payload: r.to_bytes(),
            })
            .collect();
        let batch = Batch {
            first_seq: first,
            last_seq: first + records.len() as u64 - 1,
            records,
        };
        let (records, outcomes) = prepare_batch(&self.engine.processor(), site, name, &batch, t(0));
        let (reply, mut rx) = mpsc::unbounded_channel();
        self.tx
            .as_ref()
            .unwrap()
            .blocking_send(IngestItem {
                site: site.into(),
                name: name.into(),
                records,
                outcomes,
                reply,
                poisoned: Arc::new(AtomicBool::new(false)),
                api: None,
            })
            .unwrap();
        rx.blocking_recv().unwrap().unwrap()
    }

    pub fn alarm(&self, key: &str) -> Option<state::Alarm> {
        persist::alarm_by_key(self.store.database(), key).unwrap()
    }

    pub fn messages(&self) -> Vec<String> {
        let mut v = Vec::new();
        self.store.scan(|_, e| v.push(e.event.message)).unwrap();
        v
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// Seed 002: PING_DOWN (critical) raised when a device goes unreachable, PING_UP clears it.
#[test]
fn seed_002_ping_down_is_cleared_by_ping_up() {
    let dir = tempfile::tempdir().unwrap();
    let rig = Rig::open(&dir.path().join("e.redb"), ProcessingConfig::default());
    rig.send("paris", "gw", 1, vec![ev("PING_DOWN", "sw1", 10)]);
    let a = rig.alarm("PING_DOWN:paris:sw1").unwrap();
    assert_eq!((a.status, a.count), (AlarmStatus::Open, 1));
    assert_eq!(a.last_event_id, "paris:gw:1");
    // Another device's PING_UP clears nothing of sw1's.
    rig.send("paris", "gw", 2, vec![ev("PING_UP", "sw2", 11)]);
    assert_eq!(
        rig.alarm("PING_DOWN:paris:sw1").unwrap().status,
        AlarmStatus::Open
    );
    rig.send(
        "paris",
        "gw",
        3,
        vec![ev("PING_DOWN", "sw1", 12), ev("PING_UP", "sw1", 20)],
    );
    let a = rig.alarm("PING_DOWN:paris:sw1").unwrap();
    assert_eq!((a.status, a.count), (AlarmStatus::Cleared, 2));
    assert_eq!(a.clear_event_id.as_deref(), Some("paris:gw:4"));
    // Every event is stored (logndisplay).
    assert_eq!(rig.messages().len(), 4);
    // A redelivery (same sequences after a reconnect) changes nothing.
    rig.send("paris", "gw", 3, vec![ev("PING_DOWN", "sw1", 12)]);
    assert_eq!(rig.alarm("PING_DOWN:paris:sw1").unwrap().count, 2);
    assert_eq!(rig.messages().len(), 4);
}

#[test]
fn snmp_link_down_and_up_by_host_and_ifindex() {
    let dir = tempfile::tempdir().unwrap();
    let rig = Rig::open(&dir.path().join("e.redb"), ProcessingConfig::default());
    let trap = |tag: &str, ifindex: u32, at| {
        let mut e = ev(tag, "sw1", at);
        e.input = InputKind::SnmpTrap;
        e.tags.insert(
            format!("vb.1.3.6.1.2.1.2.2.1.1.{ifindex}"),
            format!("integer:{ifindex}"),
        );
        e
    };
    rig.send(
        "p",
        "a",
        1,
        vec![
            trap("SNMP_LINK_DOWN", 3, 1),
            trap("SNMP_LINK_DOWN", 4, 1),
            trap("SNMP_LINK_UP", 3, 2),
        ],
    );
    assert_eq!(
        rig.alarm("SNMP_LINK:p:sw1:3").unwrap().status,
        AlarmStatus::Cleared
    );
    assert_eq!(
        rig.alarm("SNMP_LINK:p:sw1:4").unwrap().status,
        AlarmStatus::Open
    );
}

const DESTS: &str = r#"
[[definition]]
tag = "SHOW"
dest = "logndisplay"
[definition.alarm]
type = "problem"
reduction_key = "%tag%:%hostname%"

[[definition]]
tag = "HIDE"
dest = "logonly"
[definition.alarm]
type = "problem"
reduction_key = "%tag%:%hostname%"

[[definition]]
tag = "NONE"
dest = "suppress"
[definition.alarm]
type = "problem"
reduction_key = "%tag%:%hostname%"

[[definition]]
tag = "VOLATILE"
dest = "donotpersist"
severity = "warning"
[definition.alarm]
type = "problem"
reduction_key = "%tag%:%hostname%"

[[definition]]
tag = "TRAPNOISE"
dest = "discardtraps"
[definition.alarm]
type = "problem"
reduction_key = "%tag%:%hostname%"
"#;

/// Seed 001: each `dest` value.
#[test]
fn seed_001_each_dest_value() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = ProcessingConfig {
        definitions: Some(write(dir.path(), "d.toml", DESTS)),
        ..ProcessingConfig::default()
    };
    let rig = Rig::open(&dir.path().join("e.redb"), cfg);
    let mut trap = ev("TRAPNOISE", "h", 1);
    trap.input = InputKind::SnmpTrap;
    trap.message = "trap".into();
    let mut syslog_noise = ev("TRAPNOISE", "h", 1);
    syslog_noise.message = "not a trap".into();
    let committed = rig.send(
        "s",
        "a",
        1,
        vec![
            ev("SHOW", "h", 1),
            ev("HIDE", "h", 1),
            ev("NONE", "h", 1),
            ev("VOLATILE", "h", 1),
            trap,
            syslog_noise,
        ],
    );
    // Every record is committed (the agent may forget them), whatever was stored.
    assert_eq!(committed, 6);
    assert_eq!(
        rig.messages(),
        vec!["SHOW on h", "HIDE on h"],
        "only logndisplay and logonly are stored"
    );
    let hidden = rig.store.get_by_id("s:a:2").unwrap().unwrap();
    assert_eq!(hidden.event.tags[DEST_TAG], "logonly");
    assert!(rig.alarm("SHOW:h").is_some());
    assert!(rig.alarm("HIDE:h").is_some());
    assert!(rig.alarm("NONE:h").is_none(), "suppress: no alarm");
    assert!(rig.alarm("TRAPNOISE:h").is_none(), "discardtraps: no alarm");
    // donotpersist: not stored, but alarms see it (with the definition's severity).
    let a = rig.alarm("VOLATILE:h").unwrap();
    assert_eq!(a.severity, Severity::Warning);
    assert!(rig.store.get_by_id("s:a:4").unwrap().is_none());
}

/// Seed 002: rules in order; the first matching suppress drops the event, counted per rule.
#[test]
fn seed_002_transform_order_and_first_match_suppress() {
    let dir = tempfile::tempdir().unwrap();
    let transforms = r#"
[[transform]]
name = "retag-unreachable"
message = "unreachable"
set_tag = "PING_DOWN"

[[transform]]
name = "drop-lab"
hostname = "lab-*"
suppress = true

[[transform]]
name = "drop-all-pings"
tag = "PING_*"
suppress = true
enabled = false

[[transform]]
name = "close-on-maintenance"
message = "maintenance start"
close_existing = "PING_DOWN:%site%:%hostname%"
suppress = true
"#;
    let cfg = ProcessingConfig {
        transforms: Some(write(dir.path(), "t.toml", transforms)),
        ..ProcessingConfig::default()
    };
    let rig = Rig::open(&dir.path().join("e.redb"), cfg);
    let mut a = ev("ICMP", "core-1", 1);
    a.message = "host unreachable".into();
    let mut b = ev("ICMP", "lab-1", 1);
    b.message = "host unreachable".into();
    let mut c = ev("X", "core-1", 5);
    c.message = "maintenance start".into();
    rig.send("s", "a", 1, vec![a, b]);
    // The retag happened before the definitions: PING_DOWN raised an alarm.
    assert_eq!(
        rig.alarm("PING_DOWN:s:core-1").unwrap().status,
        AlarmStatus::Open
    );
    // lab-1 was suppressed by the first matching suppress rule: not stored, no alarm.
    assert!(rig.alarm("PING_DOWN:s:lab-1").is_none());
    assert_eq!(rig.messages(), vec!["host unreachable"]);
    rig.send("s", "a", 3, vec![c]);
    assert_eq!(
        rig.alarm("PING_DOWN:s:core-1").unwrap().status,
        AlarmStatus::Cleared,
        "close_existing cleared it"
    );
    let db = rig.store.database();
    assert_eq!(persist::counter(db, "suppressed:drop-lab").unwrap(), 1);
    assert_eq!(
        persist::counter(db, "suppressed:close-on-maintenance").unwrap(),
        1
    );
    assert_eq!(
        persist::counter(db, "suppressed:drop-all-pings").unwrap(),
        0
    );
}

fn spec(events: Vec<EventRef>, alarms: Vec<String>) -> IncidentSpec {
    IncidentSpec {
        title: "core down".into(),
        severity: Severity::Critical,
        contact_list: Some("NOC".into()),
        explanation: Explanation {
            rule: "ping-storm".into(),
            rule_version: "1".into(),
            conditions: vec!["tag = PING_DOWN".into()],
            event_ids: events.iter().map(|e| e.id.clone()).collect(),
            window_start: Some(t(0)),
            window_end: Some(t(300)),
            group_key: "site=s".into(),
        },
        events,
        alarms,
        auto_resolve: true,
        actor: "rule:ping-storm".into(),
    }
}

pub(crate) fn create(store: &Store, spec: IncidentSpec) -> incident::Incident {
    let txn = store.database().begin_write().unwrap();
    let inc = persist::create_incident(&txn, spec, t(0)).unwrap();
    txn.commit().unwrap();
    inc
}

#[test]
fn incident_auto_resolves_when_its_alarms_clear_and_everything_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("e.redb");
    let cfg = ProcessingConfig::default();
    {
        let rig = Rig::open(&path, cfg.clone());
        rig.send(
            "s",
            "a",
            1,
            vec![ev("PING_DOWN", "h1", 1), ev("PING_DOWN", "h2", 1)],
        );
        let refs = vec![
            EventRef {
                id: "s:a:1".into(),
                site: "s".into(),
                event_time: t(1),
                count: 1,
            },
            EventRef {
                id: "s:a:2".into(),
                site: "s".into(),
                event_time: t(1),
                count: 1,
            },
        ];
        let inc = create(
            &rig.store,
            spec(refs, vec!["PING_DOWN:s:h1".into(), "PING_DOWN:s:h2".into()]),
        );
        assert_eq!(inc.id, "INC-0001");
        // Every held event points at the incident.
        assert_eq!(
            rig.store
                .get_by_id("s:a:1")
                .unwrap()
                .unwrap()
                .correlated_incident
                .as_deref(),
            Some("INC-0001")
        );
        rig.send("s", "a", 3, vec![ev("PING_UP", "h1", 2)]);
        let inc = persist::incident(rig.store.database(), 1).unwrap().unwrap();
        assert_eq!(inc.status, IncidentStatus::Open, "h2 is still down");
    }
    // Restart: alarms, incidents and counters are where they were.
    let rig = Rig::open(&path, cfg);
    assert_eq!(
        rig.alarm("PING_DOWN:s:h1").unwrap().status,
        AlarmStatus::Cleared
    );
    assert_eq!(
        rig.alarm("PING_DOWN:s:h2").unwrap().status,
        AlarmStatus::Open
    );
    rig.send("s", "a", 4, vec![ev("PING_UP", "h2", 3)]);
    let inc = persist::incident(rig.store.database(), 1).unwrap().unwrap();
    assert_eq!(inc.status, IncidentStatus::Resolved);
    let last = inc.audit.last().unwrap();
    assert!(last.what.contains("auto-resolved"), "{last:?}");
    // Numbering continues after a restart.
    let inc2 = create(&rig.store, spec(vec![], vec![]));
    assert_eq!(inc2.id, "INC-0002");
    rig.send("s", "a", 5, vec![ev("PING_DOWN", "h3", 5)]);
    assert_eq!(rig.alarm("PING_DOWN:s:h3").unwrap().id, 3);
}

#[test]
fn clear_before_problem_through_the_writer_and_expiry_keeps_the_clear() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = ProcessingConfig {
        cleared_alarm_retention: weir_common::config::HumanDuration::secs(60),
        ..ProcessingConfig::default()
    };
    let rig = Rig::open(&dir.path().join("e.redb"), cfg);
    // NMS-10473: the agent at site b delivers the UP first, the older DOWN later.
    rig.send("s", "b", 1, vec![ev("PING_UP", "h", 20)]);
    assert!(rig.alarm("PING_DOWN:s:h").is_none());
    rig.send("s", "b", 2, vec![ev("PING_DOWN", "h", 10)]);
    let a = rig.alarm("PING_DOWN:s:h").unwrap();
    assert_eq!(a.status, AlarmStatus::Cleared, "no stale open alarm");
    // Retention removes it; a still-later delivery of an even older DOWN stays cleared.
    let now = Timestamp::now();
    assert_eq!(
        rig.engine
            .expire(
                now.checked_add(jiff::SignedDuration::from_secs(61))
                    .unwrap()
            )
            .unwrap(),
        persist::Expired {
            removed: 1,
            ..Default::default()
        }
    );
    assert!(rig.alarm("PING_DOWN:s:h").is_none());
    rig.send("s", "b", 3, vec![ev("PING_DOWN", "h", 5)]);
    assert_eq!(
        rig.alarm("PING_DOWN:s:h").unwrap().status,
        AlarmStatus::Cleared
    );
}

#[test]
fn reload_swaps_rules_keeps_alarms_and_a_bad_file_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let defs = write(
        dir.path(),
        "d.toml",
        "[[definition]]\ntag = \"A\"\n[definition.alarm]\ntype = \"problem\"\nreduction_key = \"a:%hostname%\"\n",
    );
    let cfg = ProcessingConfig {
        definitions: Some(defs.clone()),
        ..ProcessingConfig::default()
    };
    let rig = Rig::open(&dir.path().join("e.redb"), cfg);
    rig.send("s", "a", 1, vec![ev("A", "h", 1)]);
    assert!(rig.alarm("a:h").is_some());
    std::fs::write(&defs, "[[definition]]\ntag = \"A\"\ndest = \"bogus\"\n").unwrap();
    let e = rig.engine.reload().unwrap_err().to_string();
    assert!(e.contains("d.toml:3"), "{e}");
    rig.send("s", "a", 2, vec![ev("A", "h2", 1)]);
    assert!(rig.alarm("a:h2").is_some(), "old rules still in force");
    std::fs::write(
        &defs,
        "[[definition]]\ntag = \"A\"\n[definition.alarm]\ntype = \"problem\"\nreduction_key = \"new:%hostname%\"\n",
    )
    .unwrap();
    assert_eq!(rig.engine.reload().unwrap(), (0, 1));
    rig.send("s", "a", 3, vec![ev("A", "h", 1)]);
    assert!(rig.alarm("new:h").is_some());
    assert_eq!(rig.alarm("a:h").unwrap().count, 1, "existing alarms kept");
}

#[test]
fn alarm_limit_refuses_new_alarms_but_stores_events() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = ProcessingConfig {
        max_alarms: 2,
        ..ProcessingConfig::default()
    };
    let rig = Rig::open(&dir.path().join("e.redb"), cfg);
    rig.send(
        "s",
        "a",
        1,
        vec![
            ev("PING_DOWN", "h1", 1),
            ev("PING_DOWN", "h2", 1),
            ev("PING_DOWN", "h3", 1),
            ev("PING_DOWN", "h1", 2),
        ],
    );
    assert!(rig.alarm("PING_DOWN:s:h3").is_none());
    assert_eq!(rig.alarm("PING_DOWN:s:h1").unwrap().count, 2);
    assert_eq!(rig.messages().len(), 4);
}

fn count(target_seq: u64, count: u64, last_seen: i64) -> Record {
    Record::Count {
        target_seq,
        count,
        last_seen: t(last_seen),
    }
}

/// First-stage dedup count updates raise the alarm their event raised, by the delta (counts
/// are absolute: a replay or a lower count adds nothing), in the same commit.
#[test]
fn count_updates_raise_the_alarm_their_event_raised() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("e.redb");
    let rig = Rig::open(&path, ProcessingConfig::default());
    rig.send(
        "s",
        "a",
        1,
        vec![ev("PING_DOWN", "h", 10), ev("NOISE", "h", 10)],
    );
    let stored = rig.store.get_by_id("s:a:1").unwrap().unwrap();
    assert_eq!(
        stored.event.tags.get(ALARM_TAG).map(String::as_str),
        Some("PING_DOWN:s:h"),
        "the event names its alarm"
    );
    rig.send_records("s", "a", 3, vec![count(1, 5, 40)]);
    let a = rig.alarm("PING_DOWN:s:h").unwrap();
    assert_eq!((a.count, a.last_seen), (5, t(40)));
    // Absolute counts: a replay of the same count, and a lower one, add nothing.
    rig.send_records("s", "a", 4, vec![count(1, 5, 40), count(1, 3, 30)]);
    assert_eq!(rig.alarm("PING_DOWN:s:h").unwrap().count, 5);
    // An event that raised no alarm: its count update changes no alarm.
    rig.send_records("s", "a", 6, vec![count(2, 9, 50)]);
    assert_eq!(rig.alarm("PING_DOWN:s:h").unwrap().count, 5);
    assert_eq!(
        rig.store.get_by_id("s:a:2").unwrap().unwrap().event.count,
        9
    );
    // An event and its count update in one commit (a queue drained after an outage): the
    // alarm is raised first, then counted up.
    rig.send_records(
        "s",
        "a",
        7,
        vec![Record::Event(ev("PING_DOWN", "h2", 10)), count(7, 4, 20)],
    );
    assert_eq!(rig.alarm("PING_DOWN:s:h2").unwrap().count, 4);
    // A repeat newer than the clear re-opens the alarm, like any newer problem; a
    // redelivered (already committed) update changes nothing.
    rig.send("s", "a", 9, vec![ev("PING_UP", "h", 50)]);
    assert_eq!(
        rig.alarm("PING_DOWN:s:h").unwrap().status,
        AlarmStatus::Cleared
    );
    rig.send_records("s", "a", 10, vec![count(1, 6, 45)]);
    let a = rig.alarm("PING_DOWN:s:h").unwrap();
    assert_eq!(
        (a.status, a.count),
        (AlarmStatus::Cleared, 6),
        "older than the clear"
    );
    rig.send_records("s", "a", 11, vec![count(1, 7, 60)]);
    let a = rig.alarm("PING_DOWN:s:h").unwrap();
    assert_eq!(
        (a.status, a.count, a.last_seen),
        (AlarmStatus::Open, 7, t(60))
    );
    rig.send_records("s", "a", 11, vec![count(1, 8, 70)]);
    assert_eq!(rig.alarm("PING_DOWN:s:h").unwrap().count, 7, "redelivery");
    // Repeats are stamped with the agent's receive time; the alarm orders by the device's
    // clock: a device an hour behind repeats its DOWN for 4 minutes, then sends UP. The
    // repeats end before the UP on the device's clock, so they do not re-open the alarm.
    let h = 3600;
    let mut down = ev("PING_DOWN", "late", 1000);
    down.received_at = t(1000 + h);
    down.first_seen = t(1000 + h);
    down.last_seen = t(1000 + h);
    rig.send("s", "a", 12, vec![down, ev("PING_UP", "late", 1300)]);
    rig.send_records("s", "a", 14, vec![count(12, 5, 1240 + h)]);
    let a = rig.alarm("PING_DOWN:s:late").unwrap();
    assert_eq!(
        (a.status, a.count, a.last_seen),
        (AlarmStatus::Cleared, 5, t(1240))
    );
    drop(rig);
    // Durable: the counts are in the file.
    let rig = Rig::open(&path, ProcessingConfig::default());
    assert_eq!(rig.alarm("PING_DOWN:s:h").unwrap().count, 7);
}

/// Clears without their problem are capped: the oldest are evicted first, counted, and the
/// ones kept still do their job.
#[test]
fn clear_marks_are_capped_oldest_first() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = ProcessingConfig {
        max_clear_marks: 3,
        ..ProcessingConfig::default()
    };
    let rig = Rig::open(&dir.path().join("e.redb"), cfg.clone());
    let db = rig.store.database();
    let key = |host: &str| format!("PING_DOWN:x:{host}");
    let clear = |host: &str, at: i64| Outcome {
        clears: vec![state::Clear {
            key: key(host),
            event_id: format!("x:up:{host}{at}"),
            event_time: t(at),
        }],
        ..Outcome::default()
    };
    let apply = |outcomes: Vec<Outcome>, now: i64| {
        let txn = db.begin_write().unwrap();
        let a = persist::apply(&txn, &outcomes, &cfg, t(now)).unwrap();
        txn.commit().unwrap();
        a
    };
    let a = apply(vec![clear("k1", 100), clear("k2", 100)], 1);
    assert_eq!((a.clears_remembered, a.marks_evicted), (2, 0));
    // Re-remembering a key replaces its mark (now recorded at 2) and evicts nothing.
    let a = apply(vec![clear("k1", 200), clear("k3", 100)], 2);
    assert_eq!(a.marks_evicted, 0);
    // Two more: k2 (recorded at 1) goes, then one of those recorded at 2 (k1, by key).
    let a = apply(vec![clear("k4", 100), clear("k5", 100)], 3);
    assert_eq!((a.clears_remembered, a.marks_evicted), (2, 2));
    let problem = |host: &str| ev("PING_DOWN", host, 10);
    // Older problems: where the clear is still remembered they open a cleared alarm; where
    // it was evicted, an open one (the price of the cap).
    rig.send(
        "x",
        "y",
        1,
        ["k1", "k2", "k3", "k4", "k5"].map(problem).to_vec(),
    );
    let status = |host: &str| rig.alarm(&key(host)).unwrap().status;
    assert_eq!(status("k1"), AlarmStatus::Open);
    assert_eq!(status("k2"), AlarmStatus::Open);
    for host in ["k3", "k4", "k5"] {
        assert_eq!(status(host), AlarmStatus::Cleared, "{host}");
    }

    // Expiry evicts too: the marks removed alarms leave behind count against the cap.
    let cfg = ProcessingConfig {
        cleared_alarm_retention: weir_common::config::HumanDuration::secs(60),
        max_clear_marks: 2,
        ..ProcessingConfig::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let rig = Rig::open(&dir.path().join("e.redb"), cfg.clone());
    for (i, host) in ["a", "b", "c"].into_iter().enumerate() {
        let seq = 1 + 2 * i as u64;
        rig.send("x", "y", seq, vec![problem(host), ev("PING_UP", host, 20)]);
    }
    let later = Timestamp::now()
        .checked_add(jiff::SignedDuration::from_secs(61))
        .unwrap();
    let x = rig.engine.expire(later).unwrap();
    assert_eq!((x.removed, x.evicted), (3, 1));
    // Marks older than clear_memory are forgotten through the age index.
    let much_later = later
        .checked_add(jiff::SignedDuration::from_secs(86_400))
        .unwrap();
    let x = rig.engine.expire(much_later).unwrap();
    assert_eq!(x.forgotten, 2);
    rig.send("x", "y", 7, ["a", "b", "c"].map(problem).to_vec());
    for host in ["a", "b", "c"] {
        assert_eq!(rig.alarm(&key(host)).unwrap().status, AlarmStatus::Open);
    }
}

#[test]
fn only_events_no_rule_or_definition_touches_are_left_alone() {
    let view = |tag: Option<&str>| {
        let mut e = Event::new(InputKind::Syslog, "s", "h", Severity::Info, "m", t(0));
        e.tag = tag.map(str::to_string);
        Record::Event(e).to_bytes()
    };
    let defaults = Processor {
        transforms: Transforms::default(),
        definitions: Definitions::defaults(),
    };
    let defined = defaults.definitions.exact().next().unwrap().tag.clone();
    for (tag, alone) in [
        (None, true),
        (Some("NO_SUCH_TAG"), true),
        (Some(&*defined), false),
    ] {
        let bytes = view(tag);
        let (v, _) = weir_common::event::EventView::from_record(&bytes).unwrap();
        assert_eq!(defaults.leaves_alone(&v), alone, "{tag:?}");
    }
    // Any transformation rule may match any event: none is left alone.
    let transforms = Transforms::parse(
        Path::new("t.toml"),
        "[[transform]]\nname = \"r\"\nhostname = \"nomatch-*\"\nset_severity = \"error\"\n",
    )
    .unwrap();
    let with_rule = Processor {
        transforms,
        definitions: Definitions::defaults(),
    };
    let bytes = view(None);
    let (v, _) = weir_common::event::EventView::from_record(&bytes).unwrap();
    assert!(!with_rule.leaves_alone(&v));
}
