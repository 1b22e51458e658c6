use std::time::Duration;

use weir_common::{Event, InputKind};

use super::*;
use crate::store::{AgentBatch, Prepared};

use crate::correlate::SEED_000_RULE;

fn config(dir: &Path) -> CorrelationConfig {
    let rules = dir.join("rules.json");
    std::fs::write(&rules, SEED_000_RULE).unwrap();
    CorrelationConfig {
        rules: Some(rules),
        allowed_lateness: weir_common::config::HumanDuration::secs(0),
        ..CorrelationConfig::default()
    }
}

/// Commits one event as agent site-a/agent-1 and returns its stored bytes.
fn commit(store: &Store, seq: u64, msg: &str, at: Timestamp) -> Vec<u8> {
    let stored = StoredEvent {
        site: "site-a".into(),
        agent: "agent-1".into(),
        seq,
        stored_at: at,
        correlated_incident: None,
        event: Event::new(
            InputKind::Syslog,
            "syslog",
            "db-01",
            Severity::Critical,
            msg,
            at,
        ),
    };
    let records = [Prepared::event(&stored)];
    store
        .commit(
            &[AgentBatch {
                site: "site-a",
                name: "agent-1",
                records: &records,
            }],
            at,
        )
        .unwrap();
    postcard::to_allocvec(&stored).unwrap()
}

fn incidents(store: &Store) -> Vec<incident::Incident> {
    persist::incidents(store.database(), 100, None, |_| true)
        .unwrap()
        .0
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_window_opened_before_a_restart_completes_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.redb");
    let cfg = config(dir.path());
    // Event times in the recent past: the window closes when the clock passes them.
    let t0 = Timestamp::from_second(Timestamp::now().as_second() - 60).unwrap();
    {
        let store = Arc::new(Store::open(&path).unwrap());
        persist::init(store.database()).unwrap();
        let c = Correlator::start(store.clone(), Default::default(), cfg.clone()).unwrap();
        c.feed(vec![commit(&store, 1, "connection refused", t0)], t0);
        c.stop();
        assert!(incidents(&store).is_empty(), "one event opens nothing");
        // The suppressed event was tagged in the store.
        let e = store.get_by_id("site-a:agent-1:1").unwrap().unwrap();
        assert_eq!(
            e.event.tags.get(SUPPRESSED_TAG).map(String::as_str),
            Some("Database Connectivity Failure")
        );
    }
    // A real reopen of the redb file: the window must come back from the snapshot.
    let store = Arc::new(Store::open(&path).unwrap());
    persist::init(store.database()).unwrap();
    let c = Correlator::start(store.clone(), Default::default(), cfg).unwrap();
    let t1 = t0 + jiff::SignedDuration::from_secs(30);
    c.feed(vec![commit(&store, 2, "too many connections", t1)], t1);
    wait_for("the incident", || !incidents(&store).is_empty());
    c.stop();
    let inc = incidents(&store);
    assert_eq!(inc.len(), 1, "{inc:#?}");
    let i = &inc[0];
    assert_eq!(i.rule, "Database Connectivity Failure");
    assert_eq!(i.severity, Severity::Critical);
    assert_eq!(i.contact_list.as_deref(), Some("DBA On-Call"));
    assert_eq!(
        i.explanation.event_ids,
        ["site-a:agent-1:1", "site-a:agent-1:2"]
    );
    assert_eq!(i.explanation.window_start, Some(t0));
    assert!(!i.explanation.conditions.is_empty());
    // The worker's clock starts at wall time and these events are from the past, beyond the
    // allowed lateness: the incident is decided late, and says so.
    assert!(
        i.notes.iter().any(|n| n.text.contains("late: true")),
        "{:?}",
        i.notes
    );
    for id in ["site-a:agent-1:1", "site-a:agent-1:2"] {
        let e = store.get_by_id(id).unwrap().unwrap();
        assert_eq!(
            e.correlated_incident.as_deref(),
            Some(i.id.as_str()),
            "{id}"
        );
    }
}

#[test]
fn without_a_restart_snapshot_the_window_is_forgotten() {
    // The control for the test above: with the snapshot table emptied, the same two events
    // across a restart open nothing (so the restore is what made the incident).
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.redb");
    let cfg = config(dir.path());
    let t0 = Timestamp::from_second(Timestamp::now().as_second() - 60).unwrap();
    {
        let store = Arc::new(Store::open(&path).unwrap());
        persist::init(store.database()).unwrap();
        let c = Correlator::start(store.clone(), Default::default(), cfg.clone()).unwrap();
        c.feed(vec![commit(&store, 1, "connection refused", t0)], t0);
        c.stop();
        let txn = store.database().begin_write().unwrap();
        txn.open_table(STATE).unwrap().remove(SNAPSHOT_KEY).unwrap();
        txn.commit().unwrap();
    }
    let store = Arc::new(Store::open(&path).unwrap());
    persist::init(store.database()).unwrap();
    let c = Correlator::start(store.clone(), Default::default(), cfg).unwrap();
    let t1 = t0 + jiff::SignedDuration::from_secs(30);
    c.feed(vec![commit(&store, 2, "too many connections", t1)], t1);
    std::thread::sleep(Duration::from_millis(1500));
    c.stop();
    assert!(incidents(&store).is_empty());
}

#[test]
fn reload_refuses_a_bad_file_and_keeps_the_rules() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(&dir.path().join("events.redb")).unwrap());
    let cfg = config(dir.path());
    let c = Correlator::start(store, Default::default(), cfg.clone()).unwrap();
    std::fs::write(
        cfg.rules.as_ref().unwrap(),
        SEED_000_RULE.replace("\"window_minutes\": 5", "\"window_minutes\": -5"),
    )
    .unwrap();
    let e = c.reload_rules().unwrap_err().to_string();
    assert!(e.contains("rules.json"), "{e}");
    assert_eq!(c.rules().rules.len(), 1);
    std::fs::write(cfg.rules.as_ref().unwrap(), SEED_000_RULE).unwrap();
    let r = c.reload_rules().unwrap();
    assert_eq!(r.kept, ["Database Connectivity Failure"]);
    c.stop();
}

// ---- trigger handling, donotpersist and bounds, through the real store writer ----------------

mod live {
    use std::sync::atomic::AtomicBool;

    use tokio::sync::mpsc as tmpsc;
    use weir_common::Record;
    use weir_common::wire::{Batch, WireRecord};

    use super::*;
    use crate::alarm::ProcessingConfig;
    use crate::alarm::incident::IncidentStatus;
    use crate::alarm::state::AlarmStatus;
    use crate::ingest::{IngestItem, run_writer};

    const DEFINITIONS: &str = r#"
[[definition]]
tag = "LINK_DOWN"
[definition.alarm]
type = "problem"
reduction_key = "%tag%:%hostname%"

[[definition]]
tag = "VOLATILE"
dest = "donotpersist"
[definition.alarm]
type = "problem"
reduction_key = "%tag%:%hostname%"
"#;

    /// A store, the alarm engine, a correlator with `rules` and the real writer thread.
    pub(super) struct Live {
        pub store: Arc<Store>,
        pub alarms: Arc<persist::Engine>,
        pub corr: Arc<Correlator>,
        tx: Option<tmpsc::Sender<IngestItem>>,
        writer: Option<std::thread::JoinHandle<()>>,
        next: std::cell::Cell<u64>,
    }

    impl Live {
        pub fn start(dir: &Path, rules: &str) -> Live {
            let defs = dir.join("definitions.toml");
            std::fs::write(&defs, DEFINITIONS).unwrap();
            let rules_path = dir.join("rules.json");
            std::fs::write(&rules_path, rules).unwrap();
            let store = Arc::new(Store::open(&dir.join("events.redb")).unwrap());
            let alarms = Arc::new(
                persist::Engine::new(
                    store.clone(),
                    ProcessingConfig {
                        definitions: Some(defs),
                        ..ProcessingConfig::default()
                    },
                )
                .unwrap(),
            );
            let corr = Correlator::start(
                store.clone(),
                Default::default(),
                CorrelationConfig {
                    rules: Some(rules_path),
                    allowed_lateness: weir_common::config::HumanDuration::secs(0),
                    ..CorrelationConfig::default()
                },
            )
            .unwrap();
            let (tx, rx) = tmpsc::channel(8);
            let (s, a, c) = (store.clone(), alarms.clone(), corr.clone());
            let writer = std::thread::spawn(move || run_writer(s, a, c, rx));
            Live {
                store,
                alarms,
                corr,
                tx: Some(tx),
                writer: Some(writer),
                next: std::cell::Cell::new(1),
            }
        }

        /// Sends events as agent site-a/agent-1 through processing and the writer; returns
        /// their fleet ids.
        pub fn send(&self, events: Vec<Event>) -> Vec<String> {
            let first = self.next.get();
            self.next.set(first + events.len() as u64);
            let records: Vec<WireRecord> = events
                .into_iter()
                .enumerate()
                .map(|(i, e)| WireRecord {
                    seq: first + i as u64,
                    payload: Record::Event(e).to_bytes(),
                })
                .collect();
            let n = records.len() as u64;
            let batch = Batch {
                first_seq: first,
                last_seq: first + n - 1,
                records,
            };
            let (records, outcomes) = crate::alarm::prepare_batch(
                &self.alarms.processor(),
                "site-a",
                "agent-1",
                &batch,
                Timestamp::now(),
            );
            let (reply, mut rx) = tmpsc::unbounded_channel();
            self.tx
                .as_ref()
                .unwrap()
                .blocking_send(IngestItem {
                    site: "site-a".into(),
                    name: "agent-1".into(),
                    records,
                    outcomes,
                    reply,
                    poisoned: Arc::new(AtomicBool::new(false)),
                    api: None,
                })
                .unwrap();
            rx.blocking_recv().unwrap().unwrap();
            (first..first + n)
                .map(|s| format!("site-a:agent-1:{s}"))
                .collect()
        }

        pub fn event(&self, id: &str) -> StoredEvent {
            self.store.get_by_id(id).unwrap().unwrap()
        }

        pub fn incidents(&self) -> Vec<incident::Incident> {
            super::incidents(&self.store)
        }

        pub fn by_rule(&self, rule: &str) -> Vec<incident::Incident> {
            self.incidents()
                .into_iter()
                .filter(|i| i.rule == rule)
                .collect()
        }

        pub fn alarm(&self, key: &str) -> crate::alarm::state::Alarm {
            persist::alarm_by_key(self.store.database(), key)
                .unwrap()
                .unwrap_or_else(|| panic!("no alarm {key}"))
        }
    }

    impl Drop for Live {
        fn drop(&mut self) {
            self.tx.take();
            if let Some(w) = self.writer.take() {
                let _ = w.join();
            }
            self.corr.stop();
        }
    }

    /// `tag` on `host` `ago` seconds before now.
    pub(super) fn tagged(tag: &str, host: &str, ago: i64) -> Event {
        let t = Timestamp::now() - jiff::SignedDuration::from_secs(ago);
        let mut e = Event::new(
            InputKind::Syslog,
            "syslog",
            host,
            Severity::Error,
            format!("{tag} on {host}"),
            t,
        );
        e.tag = Some(tag.into());
        e
    }

    #[test]
    fn auto_acknowledge_combination_takes_over_its_triggers_live() {
        let dir = tempfile::tempdir().unwrap();
        // A plain per-host rule opens an incident for every link down; the combination rule
        // supersedes and acknowledges them (seed 003 "combination" events).
        let live = Live::start(
            dir.path(),
            r#"[{"name": "Per Host", "priority": 1, "events": ["LINK_DOWN"], "window": 60, "count": 1,
                 "group_by": ["hostname"]},
                {"name": "Link Storm", "priority": 2, "events": ["LINK_DOWN"], "window": 60, "count": 3,
                 "delayed_action": 60, "auto_acknowledge": true, "inhibit": 30}]"#,
        );
        let ids = live.send(vec![
            tagged("LINK_DOWN", "sw1", 50),
            tagged("LINK_DOWN", "sw2", 49),
            tagged("LINK_DOWN", "sw3", 48),
        ]);
        wait_for("the combination incident", || {
            live.by_rule("Link Storm").len() == 1
                && live.alarm("LINK_DOWN:sw3").status == AlarmStatus::Acknowledged
        });
        // A fourth trigger within the inhibit period: acknowledged and attached too.
        let late = live.send(vec![tagged("LINK_DOWN", "sw4", 45)]);
        wait_for("the inhibited trigger acknowledged", || {
            live.alarm("LINK_DOWN:sw4").status == AlarmStatus::Acknowledged
                && live.by_rule("Per Host").len() == 4
                && live
                    .by_rule("Per Host")
                    .iter()
                    .all(|i| i.status == IncidentStatus::Acknowledged)
        });
        live.corr.stop();

        let storm = live.by_rule("Link Storm");
        assert_eq!(storm.len(), 1, "{storm:#?}");
        let storm = &storm[0];
        assert_eq!(
            storm.status,
            IncidentStatus::Open,
            "the combination stays open"
        );
        let mut all = ids.clone();
        all.extend(late.clone());
        assert_eq!(storm.events, all, "triggers and the inhibited trigger");
        let mut alarms = storm.alarms.clone();
        alarms.sort();
        assert_eq!(
            alarms,
            [
                "LINK_DOWN:sw1",
                "LINK_DOWN:sw2",
                "LINK_DOWN:sw3",
                "LINK_DOWN:sw4"
            ]
        );
        for host in ["sw1", "sw2", "sw3", "sw4"] {
            let a = live.alarm(&format!("LINK_DOWN:{host}"));
            assert_eq!(a.status, AlarmStatus::Acknowledged, "{a:#?}");
            assert_eq!(a.acked_by.as_deref(), Some("rule:Link Storm"));
        }
        for inc in live.by_rule("Per Host") {
            let last = inc.audit.last().unwrap();
            assert_eq!(last.by, "rule:Link Storm", "{:#?}", inc.audit);
            assert!(last.what.contains("open -> acknowledged"), "{last:?}");
        }
        for id in &all {
            let e = live.event(id);
            assert_eq!(
                e.event.tags.get(SUPPRESSED_TAG).map(String::as_str),
                Some("Link Storm"),
                "{id} hidden"
            );
            assert!(!e.event.tags.contains_key(HELD_TAG), "{id} no longer held");
            assert_eq!(e.correlated_incident.as_deref(), Some(storm.id.as_str()));
        }
    }

    #[test]
    fn delayed_action_holds_releases_lone_triggers_and_supersedes_combined_ones() {
        let dir = tempfile::tempdir().unwrap();
        let live = Live::start(
            dir.path(),
            r#"[{"name": "Link Storm", "events": ["LINK_DOWN"], "window": 60, "count": 3,
                 "group_by": ["hostname"], "delayed_action": 60}]"#,
        );
        // A lone trigger whose 60 s delay ends ~4 s from now: held, then released.
        let lone = live.send(vec![tagged("LINK_DOWN", "solo", 56)]).remove(0);
        wait_for("the hold", || {
            live.event(&lone)
                .event
                .tags
                .get(HELD_TAG)
                .map(String::as_str)
                == Some("Link Storm")
        });
        assert!(live.event(&lone).event.tags.contains_key(HELD_UNTIL_TAG));
        wait_for("the release", || {
            !live.event(&lone).event.tags.contains_key(HELD_TAG)
        });
        let e = live.event(&lone);
        assert!(!e.hidden(), "a released event is an ordinary event again");
        assert!(!e.event.tags.contains_key(HELD_UNTIL_TAG));
        assert_eq!(live.alarm("LINK_DOWN:solo").status, AlarmStatus::Open);

        // Three triggers on one host: combined, superseded (hidden), their alarm attached to
        // the incident but not acknowledged (no auto_acknowledge).
        let ids = live.send(vec![
            tagged("LINK_DOWN", "sw1", 30),
            tagged("LINK_DOWN", "sw1", 29),
            tagged("LINK_DOWN", "sw1", 28),
        ]);
        wait_for("the combination", || {
            live.by_rule("Link Storm")
                .first()
                .is_some_and(|i| !i.alarms.is_empty())
        });
        live.corr.stop();
        let inc = &live.by_rule("Link Storm")[0];
        assert_eq!(inc.events, ids);
        assert_eq!(inc.alarms, ["LINK_DOWN:sw1"]);
        assert_eq!(live.alarm("LINK_DOWN:sw1").status, AlarmStatus::Open);
        for id in &ids {
            let e = live.event(id);
            assert!(e.hidden(), "{id}: superseded triggers are hidden");
            assert!(!e.event.tags.contains_key(HELD_TAG), "{id}");
        }
        assert_eq!(live.incidents().len(), 1, "the lone trigger opened nothing");
    }

    #[test]
    fn donotpersist_events_are_correlated_but_not_stored() {
        let dir = tempfile::tempdir().unwrap();
        let live = Live::start(
            dir.path(),
            r#"[{"name": "Volatile Pair", "events": ["VOLATILE"], "window": 300, "count": 4}]"#,
        );
        // 3 (deduplicated at the agent) + 1 = 4 events.
        let mut e1 = tagged("VOLATILE", "h1", 40);
        e1.count = 3;
        // (Events travel with microsecond times.)
        let first = Timestamp::from_microsecond(e1.event_time.as_microsecond()).unwrap();
        let ids = live.send(vec![e1, tagged("VOLATILE", "h2", 39)]);
        wait_for("the incident", || !live.incidents().is_empty());
        live.corr.stop();
        let mut stored = 0;
        live.store.scan(|_, _| stored += 1).unwrap();
        assert_eq!(stored, 0, "donotpersist events are not stored");
        let inc = &live.incidents()[0];
        assert_eq!(inc.rule, "Volatile Pair");
        assert_eq!(inc.events, ids, "listed by id");
        // Their site, time and dedup count were remembered for the incident.
        assert_eq!(inc.count, 4);
        assert_eq!(inc.sites.iter().collect::<Vec<_>>(), ["site-a"]);
        assert_eq!(inc.first_seen, Some(first), "{inc:#?}");
        // Alarms still saw them.
        assert_eq!(live.alarm("VOLATILE:h1").count, 3);
    }
}

#[test]
fn bounded_maps_evict_the_oldest_and_count() {
    let mut b = triggers::Bounded::new(2, "test_evicted");
    b.insert("a", 1);
    b.insert("b", 2);
    b.insert("a", 10);
    b.insert("c", 3);
    assert_eq!(b.len(), 2);
    assert_eq!(b.get("a"), None, "the oldest insertion went");
    assert_eq!(b.get("b"), Some(&2));
    assert_eq!(b.get("c"), Some(&3));
    for i in 0..100 {
        b.insert(if i % 2 == 0 { "x" } else { "y" }, i);
    }
    assert_eq!(b.len(), 2);
}
