use std::time::Duration;

use weir_common::{Event, InputKind};

use super::*;
use crate::store::{AgentBatch, Prepared};

pub(crate) const SEED_000_RULE: &str = r#"{
"name": "Database Connectivity Failure",
"priority": 10,
"enabled": true,
"conditions": {
"operator": "AND",
"filters": [
{ "field": "hostname", "op": "matches", "value": "db-*" },
{ "field": "severity", "op": ">=", "value": "critical" },
{ "field": "message", "op": "contains_any",
"value": ["connection refused", "max_connections", "too many connections"] }
]
},
"window_minutes": 5,
"min_event_count": 2,
"action": {
"create_incident": true,
"incident_severity": "CRITICAL",
"contact_list": "DBA On-Call",
"suppress_individual": true
}
}"#;

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
