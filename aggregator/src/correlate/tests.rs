//! Every seed example with the outcome its seed describes, plus ordering, lateness, reload,
//! snapshot, bounds and validation. No sleeps: time is an argument.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use weir_common::{Event, InputKind, Severity};

use super::*;

fn t0() -> Timestamp {
    "2026-02-24T14:00:00Z".parse().unwrap()
}

fn at(secs: f64) -> Timestamp {
    Timestamp::from_microsecond(t0().as_microsecond() + (secs * 1e6) as i64).unwrap()
}

struct Ev<'a> {
    id: &'a str,
    site: &'a str,
    host: &'a str,
    tag: Option<&'a str>,
    sev: Severity,
    msg: &'a str,
    secs: f64,
    tags: &'a [(&'a str, &'a str)],
}

fn ev(e: Ev<'_>) -> Arc<EventIn> {
    let mut event = Event::new(
        InputKind::Syslog,
        "syslog",
        e.host,
        e.sev,
        e.msg,
        at(e.secs),
    );
    event.tag = e.tag.map(String::from);
    event.tags = e
        .tags
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Arc::new(EventIn {
        id: e.id.into(),
        site: e.site.to_string(),
        agent: "agent-1".into(),
        event,
    })
}

/// A tagged event on `host` at `secs`, with tags.
fn tagged(id: &str, tag: &str, host: &str, secs: f64, tags: &[(&str, &str)]) -> Arc<EventIn> {
    ev(Ev {
        id,
        site: "site-a",
        host,
        tag: Some(tag),
        sev: Severity::Error,
        msg: tag,
        secs,
        tags,
    })
}

fn rules(text: &str) -> RuleSet {
    RuleSet::parse(text, Path::new("rules.json")).unwrap_or_else(|e| panic!("{e}"))
}

fn no_lateness() -> EngineConfig {
    EngineConfig {
        allowed_lateness: Duration::ZERO,
        ..EngineConfig::default()
    }
}

/// Pushes each event at its own event time (no lateness), then finishes.
fn run(engine: &mut Engine, events: &[Arc<EventIn>]) -> Vec<Decision> {
    let mut out = Vec::new();
    let mut last = t0();
    for e in events {
        last = last.max(e.event.event_time);
        out.extend(engine.push(e.clone(), e.event.event_time));
    }
    out.extend(engine.finish(last));
    out
}

fn incidents(d: &[Decision]) -> Vec<&IncidentDecision> {
    d.iter()
        .filter_map(|d| match d {
            Decision::OpenIncident(i) => Some(&**i),
            _ => None,
        })
        .collect()
}

use crate::correlate::SEED_000_RULE;

fn db_event(id: &str, host: &str, sev: Severity, msg: &str, secs: f64) -> Arc<EventIn> {
    ev(Ev {
        id,
        site: "site-a",
        host,
        tag: None,
        sev,
        msg,
        secs,
        tags: &[],
    })
}

#[test]
fn seed_000_database_connectivity_failure() {
    let mut e = Engine::new(rules(SEED_000_RULE), no_lateness());
    let out = run(
        &mut e,
        &[
            db_event(
                "e1",
                "db-prod-01",
                Severity::Critical,
                "Connection refused by peer",
                0.0,
            ),
            // Not matching: wrong host, too mild, unrelated message.
            db_event(
                "x1",
                "web-01",
                Severity::Critical,
                "connection refused",
                10.0,
            ),
            db_event(
                "x2",
                "db-prod-01",
                Severity::Warning,
                "too many connections",
                20.0,
            ),
            db_event("x3", "db-prod-02", Severity::Critical, "disk full", 30.0),
            db_event(
                "e2",
                "db-prod-02",
                Severity::Critical,
                "FATAL: too many connections",
                240.0,
            ),
            // Alone in its window: no second incident.
            db_event(
                "e3",
                "db-prod-03",
                Severity::Critical,
                "max_connections reached",
                900.0,
            ),
        ],
    );
    let inc = incidents(&out);
    assert_eq!(inc.len(), 1, "{out:#?}");
    let i = inc[0];
    assert_eq!(&*i.rule, "Database Connectivity Failure");
    assert_eq!(i.severity, Severity::Critical);
    assert_eq!(i.contact_list.as_deref(), Some("DBA On-Call"));
    assert_eq!(i.event_ids, ["e1", "e2"]);
    assert!(i.suppress_individual);
    assert_eq!(i.window, (at(0.0), at(240.0)));
    assert!(
        i.explanation.to_string().contains("2 matching event(s)"),
        "{}",
        i.explanation
    );
    let suppressed: Vec<&str> = out
        .iter()
        .filter_map(|d| match d {
            Decision::SuppressEvent { event_id, .. } => Some(&**event_id),
            _ => None,
        })
        .collect();
    assert_eq!(suppressed, ["e1", "e2", "e3"]);
}

#[test]
fn seed_003_customer_outage_counts_per_customer() {
    let r = rules(
        r#"[{"name": "Customer Outage", "events": ["Node Down", "SNMP Down"], "window": "60",
             "count": 5, "groupby": ["node.customer"], "enrich": {"priority": 3, "answer": 42}}]"#,
    );
    let mut e = Engine::new(r, no_lateness());
    let mut evs = Vec::new();
    for i in 0..5 {
        let tag = if i % 2 == 0 { "Node Down" } else { "SNMP Down" };
        evs.push(tagged(
            &format!("a{i}"),
            tag,
            &format!("r{i}"),
            f64::from(i) * 10.0,
            &[("customer", "acme")],
        ));
    }
    for i in 0..4 {
        evs.push(tagged(
            &format!("g{i}"),
            "Node Down",
            &format!("g{i}"),
            1.0 + f64::from(i),
            &[("customer", "globex")],
        ));
    }
    // An unrelated event name does not count.
    evs.push(tagged(
        "u1",
        "Interface Down",
        "r9",
        5.0,
        &[("customer", "globex")],
    ));
    evs.sort_by_key(|e| e.event.event_time);
    let out = run(&mut e, &evs);
    let inc = incidents(&out);
    assert_eq!(inc.len(), 1, "{out:#?}");
    assert_eq!(inc[0].group_key, "tags.customer=acme");
    assert_eq!(inc[0].event_ids, ["a0", "a1", "a2", "a3", "a4"]);
    assert_eq!(inc[0].properties["priority"], "3");
    assert_eq!(inc[0].properties["answer"], "42");
    // Without copy directives: copy_last of everything, node from the default node.
    assert_eq!(inc[0].properties["hostname"], "r4");
    assert_eq!(inc[0].node, "global");
    // Five outages spread over more than 60 s do not fire.
    let mut e = Engine::new(
        rules(
            r#"[{"name": "Customer Outage", "events": ["Node Down"], "window": 60, "count": 5, "groupby": ["node.customer"]}]"#,
        ),
        no_lateness(),
    );
    let spread: Vec<_> = (0..5)
        .map(|i| {
            tagged(
                &format!("s{i}"),
                "Node Down",
                "r",
                f64::from(i) * 20.0,
                &[("customer", "acme")],
            )
        })
        .collect();
    assert!(incidents(&run(&mut e, &spread)).is_empty());
}

const VERY_SICK_NODE: &str = r#"[{
   "name": "Very Sick Node",
   "events": [ "Node Down", "SNMP Down", "Interface Down", "Service Down",
               "Service Degraded", "Interface Flap", "Node Flap", "WMI Down" ],
   "window": 120,
   "count": 3,
   "groupby": [ "node.name" ],
   "enrich": { "stateful": "Very Sick Node", "priority": 5, "state": "down", "element": null },
   "copy_last": [ "/.*/", "node" ],
   "copy_groupby": [ "node" ]
}]"#;

#[test]
fn seed_003_very_sick_node_is_stateful_per_node() {
    let mut e = Engine::new(rules(VERY_SICK_NODE), no_lateness());
    let evs = [
        tagged("1", "Node Down", "r1", 0.0, &[]),
        tagged("2", "Interface Down", "r2", 5.0, &[]),
        tagged("3", "SNMP Down", "r1", 10.0, &[]),
        tagged("4", "Service Down", "r1", 100.0, &[]),
        // Three more for r1: the same stateful thing, already down → deduplicated.
        tagged("5", "WMI Down", "r1", 130.0, &[]),
        tagged("6", "Node Flap", "r1", 140.0, &[]),
        tagged("7", "Interface Flap", "r1", 150.0, &[]),
    ];
    let out = run(&mut e, &evs);
    let inc = incidents(&out);
    assert_eq!(inc.len(), 1, "{out:#?}");
    let i = inc[0];
    assert_eq!(i.event_ids, ["1", "3", "4"]);
    assert_eq!(i.node, "r1");
    assert_eq!(i.properties["priority"], "5");
    let (key, state) = i.stateful.clone().unwrap();
    assert_eq!(
        key,
        StatefulKey {
            node: "r1".into(),
            stateful: "Very Sick Node".into(),
            element: String::new()
        }
    );
    assert_eq!(state, "down");
    assert!(out.iter().any(
        |d| matches!(d, Decision::Deduplicated { event_ids, .. } if event_ids == &["5", "6", "7"])
    ));
}

const SICK_HAPPY: &str = r#"[
  { "name": "sick group", "events": ["Service Down", "SNMP Down", "Node Down"], "count": 3,
    "window": 300, "groupby": ["node.group"], "enrich": { "stateful": "sick group", "state": "down" },
    "copy_last": ["/.*/"] },
  { "name": "happy group", "events": ["Service Up", "some nice event"], "groupby": ["node.group"],
    "enrich": { "stateful": "sick group", "state": "up" }, "copy_last": ["/.*/"] }
]"#;

#[test]
fn seed_003_sick_group_cleared_by_happy_group() {
    let mut e = Engine::new(rules(SICK_HAPPY), no_lateness());
    let g = |id: &str, tag: &str, group: &str, s: f64| {
        tagged(id, tag, &format!("h-{id}"), s, &[("group", group)])
    };
    let out = run(
        &mut e,
        &[
            g("1", "Service Down", "core", 0.0),
            g("2", "SNMP Down", "core", 1.0),
            g("3", "Node Down", "edge", 2.0),
            g("4", "Node Down", "core", 3.0),
            // A positive event for a group that is not sick: nothing to clear.
            g("5", "Service Up", "edge", 4.0),
            g("6", "Service Up", "core", 5.0),
        ],
    );
    let inc = incidents(&out);
    assert_eq!(inc.len(), 1, "{out:#?}");
    let (key, state) = inc[0].stateful.clone().unwrap();
    assert_eq!(
        key,
        StatefulKey {
            node: "global".into(),
            stateful: "sick group".into(),
            element: "core".into()
        }
    );
    assert_eq!(state, "down");
    let clears: Vec<&ClearDecision> = out
        .iter()
        .filter_map(|d| match d {
            Decision::ClearIncident(c) => Some(&**c),
            _ => None,
        })
        .collect();
    assert_eq!(clears.len(), 1, "{out:#?}");
    assert_eq!(clears[0].key, key);
    assert_eq!(clears[0].opened_by, "sick group");
    assert_eq!(clears[0].event_ids, ["6"]);
    // Sick again after the clear: a new incident, not a duplicate.
    let out = run(
        &mut e,
        &[
            g("7", "Node Down", "core", 10.0),
            g("8", "Node Down", "core", 11.0),
            g("9", "Node Down", "core", 12.0),
        ],
    );
    assert_eq!(incidents(&out).len(), 1);
}

fn outage_rule(inhibit: Option<u64>) -> RuleSet {
    let inhibit = inhibit
        .map(|s| format!(r#", "inhibit": {s}"#))
        .unwrap_or_default();
    rules(&format!(
        r#"[{{"name": "Group Outage", "events": ["Node Down"], "window": 60, "count": 20,
              "group_by": ["tags.group"]{inhibit}}}]"#
    ))
}

fn storm() -> Vec<Arc<EventIn>> {
    let mut evs = Vec::new();
    for i in 0..100 {
        evs.push(tagged(
            &format!("a{i:03}"),
            "Node Down",
            "h",
            f64::from(i) / 100.0,
            &[("group", "A")],
        ));
    }
    for i in 0..25 {
        evs.push(tagged(
            &format!("b{i:03}"),
            "Node Down",
            "h",
            f64::from(i) / 25.0,
            &[("group", "B")],
        ));
    }
    evs.sort_by_key(|e| e.event.event_time);
    evs
}

fn per_group(d: &[Decision]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for i in incidents(d) {
        *m.entry(i.group_key.clone()).or_default() += 1;
    }
    m
}

#[test]
fn seed_003_inhibit_scenario() {
    // Without inhibit: one synthetic event per 20 triggers: 5 for A, 1 for B.
    let mut e = Engine::new(outage_rule(None), no_lateness());
    let out = run(&mut e, &storm());
    assert_eq!(
        per_group(&out),
        BTreeMap::from([("tags.group=A".into(), 5), ("tags.group=B".into(), 1)])
    );
    // Windows never overlap: every trigger is in at most one incident.
    let ids: Vec<&String> = incidents(&out).iter().flat_map(|i| &i.event_ids).collect();
    let distinct: std::collections::BTreeSet<_> = ids.iter().collect();
    assert_eq!(ids.len(), distinct.len());
    assert_eq!(ids.len(), 120);

    // With inhibit 40 s: one each; the other 80 A triggers are inhibited.
    let mut e = Engine::new(outage_rule(Some(40)), no_lateness());
    let out = run(&mut e, &storm());
    assert_eq!(
        per_group(&out),
        BTreeMap::from([("tags.group=A".into(), 1), ("tags.group=B".into(), 1)])
    );
    // The other 80 A triggers and the 5 B triggers after B's firing are inhibited.
    let inhibited = out
        .iter()
        .filter(|d| matches!(d, Decision::Inhibited { .. }))
        .count();
    assert_eq!(inhibited, 85);
    // After the 40 s, group A correlates again from scratch.
    let later: Vec<_> = (0..20)
        .map(|i| {
            tagged(
                &format!("c{i:03}"),
                "Node Down",
                "h",
                45.0 + f64::from(i) / 10.0,
                &[("group", "A")],
            )
        })
        .collect();
    let out = run(&mut e, &later);
    assert_eq!(
        per_group(&out),
        BTreeMap::from([("tags.group=A".into(), 1)])
    );
}

#[test]
fn seed_003_autoacknowledge_with_delayedaction_combines_triggers() {
    let r = rules(
        r#"[{"name": "Link Storm", "events": ["Link Down"], "window": 60, "count": 3,
             "delayedaction": 60, "autoacknowledge": true, "inhibit": 30}]"#,
    );
    let mut e = Engine::new(r, no_lateness());
    let mut out = Vec::new();
    for (i, s) in [0.0, 10.0, 20.0].into_iter().enumerate() {
        let d = e.push(tagged(&format!("t{i}"), "Link Down", "sw1", s, &[]), at(s));
        assert!(
            d.iter()
                .any(|d| matches!(d, Decision::HoldEvent { until, .. } if *until == at(s + 60.0))),
            "{d:#?}"
        );
        out.extend(d);
    }
    let inc = incidents(&out);
    assert_eq!(inc.len(), 1);
    assert_eq!(inc[0].triggers, TriggerHandling::Acknowledged);
    assert_eq!(inc[0].event_ids, ["t0", "t1", "t2"]);
    // A trigger during the inhibit period is acknowledged too (seed 003, 2.2.1).
    let d = e.push(tagged("t3", "Link Down", "sw1", 25.0, &[]), at(25.0));
    assert!(
        d.iter().any(
            |d| matches!(d, Decision::AcknowledgeEvent { event_id, .. } if &**event_id == "t3")
        ),
        "{d:#?}"
    );
    // A lone trigger after the inhibit: held, then released when nothing combined it.
    e.push(tagged("t4", "Link Down", "sw1", 200.0, &[]), at(200.0));
    assert!(e.advance(at(259.0)).is_empty());
    let d = e.advance(at(260.0));
    assert_eq!(
        d,
        [Decision::ReleaseEvent {
            event_id: "t4".into(),
            rule: "Link Storm".into()
        }]
    );
    // None of the combined or acknowledged triggers is ever released.
    assert!(e.finish(at(1000.0)).is_empty());

    // delayedaction without autoacknowledge: triggers superseded, not acknowledged.
    let r = rules(
        r#"[{"name": "S", "events": ["Link Down"], "window": 60, "count": 2, "delayed_action": 60}]"#,
    );
    let mut e = Engine::new(r, no_lateness());
    let out = run(
        &mut e,
        &[
            tagged("a", "Link Down", "x", 0.0, &[]),
            tagged("b", "Link Down", "x", 1.0, &[]),
        ],
    );
    assert_eq!(incidents(&out)[0].triggers, TriggerHandling::Superseded);
    assert!(
        !out.iter()
            .any(|d| matches!(d, Decision::ReleaseEvent { .. }))
    );
}

#[test]
fn seed_003_copy_directives_in_order() {
    let r = rules(
        r#"[{"name": "C", "events": ["X"], "window": 60, "count": 3, "groupby": ["tags.grp"],
             "copy_present": ["tags.alpha"], "copy_first": ["message"], "copy_last": ["/^tags\\./"],
             "copy_highest": ["hostname", "severity"], "copy_groupby": ["grp_target"],
             "enrich": {"tags.beta": "static", "stateful": "C", "node": "n1"}}]"#,
    );
    let mut e = Engine::new(r, no_lateness());
    let mk = |id: &str, sev: Severity, s: f64, tags: &[(&str, &str)]| {
        ev(Ev {
            id,
            site: "s",
            host: &format!("host-{id}"),
            tag: Some("X"),
            sev,
            msg: &format!("msg-{id}"),
            secs: s,
            tags,
        })
    };
    let out = run(
        &mut e,
        &[
            mk(
                "1",
                Severity::Warning,
                0.0,
                &[("grp", "g"), ("beta", "one")],
            ),
            mk(
                "2",
                Severity::Critical,
                1.0,
                &[("grp", "g"), ("alpha", "from-2")],
            ),
            mk(
                "3",
                Severity::Error,
                2.0,
                &[("grp", "g"), ("alpha", "from-3"), ("beta", "three")],
            ),
        ],
    );
    let p = &incidents(&out)[0].properties;
    assert_eq!(
        p["tags.alpha"], "from-3",
        "copy_last overwrites copy_present"
    );
    assert_eq!(p["message"], "msg-1");
    assert_eq!(p["hostname"], "host-2");
    assert_eq!(p["severity"], "critical");
    assert_eq!(p["grp_target"], "g");
    assert_eq!(p["tags.beta"], "static", "enrich comes last");
    assert_eq!(p["node"], "n1");
    assert_eq!(p["element"], "g", "element from the groupby values");
    assert_eq!(incidents(&out)[0].severity, Severity::Critical);
}

#[test]
fn seed_004_alert_a_b_c_with_15_minute_throttle() {
    let r = rules(
        r#"{"aggregates": [{"name": "sssd", "fields": ["host", "message"], "throttle": 900}]}"#,
    );
    let mut e = Engine::new(r, no_lateness());
    let alert = |id: &str, process: &str, time: &str| Notification {
        id: id.into(),
        time: time.parse().unwrap(),
        fields: BTreeMap::from([
            ("host".into(), "prod-syslog01.example.com".into()),
            ("process".into(), process.into()),
            ("message".into(), "Preauthentication failed".into()),
        ]),
        reopened: false,
    };
    let a = e.notify(&alert("A", "sssd[2564]", "2021-01-01T10:00:00Z"));
    assert!(
        matches!(
            a,
            NotifyDecision::Notify {
                reason: NotifyReason::First,
                aggregated_count: 1,
                ..
            }
        ),
        "{a:?}"
    );
    let b = e.notify(&alert("B", "sssd[2566]", "2021-01-01T10:10:00Z"));
    assert!(
        matches!(&b, NotifyDecision::Throttled { aggregated_count: 2, until: Some(u), .. } if *u == "2021-01-01T10:15:00Z".parse::<Timestamp>().unwrap()),
        "{b:?}"
    );
    let c = e.notify(&alert("C", "sssd[2569]", "2021-01-01T10:20:00Z"));
    assert!(
        matches!(
            c,
            NotifyDecision::Notify {
                reason: NotifyReason::ThrottleExpired,
                aggregated_count: 3,
                ..
            }
        ),
        "{c:?}"
    );
    // The period restarted from C.
    let d = e.notify(&alert("D", "sssd[2570]", "2021-01-01T10:30:00Z"));
    assert!(matches!(d, NotifyDecision::Throttled { .. }), "{d:?}");
}

#[test]
fn seed_004_watch_on_severity_bypasses_throttle_and_flapping_is_capped() {
    let r = rules(
        r#"{"aggregates": [{"name": "w", "fields": "host", "watch": "severity", "throttle": 900},
                           {"name": "forever", "condition": {"field": "host", "op": "equals", "value": "f"}, "fields": ["host"], "throttle": -1, "priority": 1}]}"#,
    );
    let mut e = Engine::new(r, no_lateness());
    let n = |sev: &str, time: &str, reopened: bool| Notification {
        id: "x".into(),
        time: time.parse().unwrap(),
        fields: BTreeMap::from([
            ("host".into(), "prod-syslog01.example.com".into()),
            ("severity".into(), sev.into()),
        ]),
        reopened,
    };
    assert!(matches!(
        e.notify(&n("critical", "2021-01-01T10:00:00Z", false)),
        NotifyDecision::Notify { .. }
    ));
    let b = e.notify(&n("emergency", "2021-01-01T10:10:00Z", false));
    assert!(
        matches!(&b, NotifyDecision::Notify { reason: NotifyReason::WatchChanged { field, from, to }, .. }
        if field == "severity" && from == "critical" && to == "emergency"),
        "{b:?}"
    );
    // Re-opens within the period: three are notified (default flapping 3), the fourth not.
    for i in 1..=3 {
        let r = e.notify(&n("emergency", &format!("2021-01-01T10:1{i}:00Z"), true));
        assert!(
            matches!(r, NotifyDecision::Notify { reason: NotifyReason::Reopened { flaps }, .. } if flaps == i),
            "{r:?}"
        );
    }
    assert!(matches!(
        e.notify(&n("emergency", "2021-01-01T10:15:00Z", true)),
        NotifyDecision::Throttled { .. }
    ));
    // -1: never notified again.
    let f = |time: &str| Notification {
        id: "f".into(),
        time: time.parse().unwrap(),
        fields: BTreeMap::from([("host".into(), "f".into())]),
        reopened: false,
    };
    assert!(matches!(
        e.notify(&f("2021-01-01T10:00:00Z")),
        NotifyDecision::Notify { .. }
    ));
    assert!(matches!(
        e.notify(&f("2031-01-01T10:00:00Z")),
        NotifyDecision::Throttled {
            until: None,
            aggregated_count: 2,
            ..
        }
    ));
}

fn pair_rule(window: u64) -> RuleSet {
    rules(&format!(
        r#"[{{"name": "Pair", "events": ["Down"], "window": {window}, "count": 2}}]"#
    ))
}

#[test]
fn out_of_order_events_within_lateness_correlate_in_event_time_order() {
    let cfg = EngineConfig {
        allowed_lateness: Duration::from_secs(30),
        ..EngineConfig::default()
    };
    let mut e = Engine::new(pair_rule(60), cfg);
    // Event times 0, 50, 100 arrive as 100, 50, 0 (all within 30 s... of the clock at 100+).
    let evs = [
        tagged("c", "Down", "h", 100.0, &[]),
        tagged("b", "Down", "h", 50.0, &[]),
        tagged("a", "Down", "h", 0.0, &[]),
    ];
    let mut out = Vec::new();
    // The device clocks say 0/50/100, the agent delivers all at clock 100 with lateness 30:
    // 0 and 50 are late, so use a lateness that covers them.
    let cfg = EngineConfig {
        allowed_lateness: Duration::from_secs(120),
        ..EngineConfig::default()
    };
    let mut e2 = Engine::new(pair_rule(60), cfg);
    for x in &evs {
        out.extend(e2.push(x.clone(), at(100.0)));
    }
    assert!(
        incidents(&out).is_empty(),
        "nothing decided before the lateness runs out"
    );
    out.extend(e2.advance(at(300.0)));
    let inc = incidents(&out);
    assert_eq!(inc.len(), 1, "{out:#?}");
    assert_eq!(
        inc[0].event_ids,
        ["a", "b"],
        "in event-time order, 0 and 50 pair first"
    );
    assert!(!inc[0].late);
    // Same answer as in order.
    let in_order = run(&mut e, &[evs[2].clone(), evs[1].clone(), evs[0].clone()]);
    assert_eq!(incidents(&in_order)[0].event_ids, ["a", "b"]);
}

#[test]
fn late_event_joins_its_window_and_says_so() {
    let cfg = EngineConfig {
        allowed_lateness: Duration::from_secs(10),
        ..EngineConfig::default()
    };
    let mut e = Engine::new(pair_rule(300), cfg);
    assert!(
        e.push(tagged("a", "Down", "h", 0.0, &[]), at(0.0))
            .is_empty()
    );
    assert!(e.advance(at(100.0)).is_empty());
    // Buffered by the agent through a WAN outage: event time 20, arrives at 100.
    let out = e.push(tagged("b", "Down", "h", 20.0, &[]), at(100.0));
    let inc = incidents(&out);
    assert_eq!(inc.len(), 1, "{out:#?}");
    assert!(inc[0].late);
    assert_eq!(inc[0].window, (at(0.0), at(20.0)));
    assert_eq!(inc[0].delay_secs, 80);
    assert!(inc[0].explanation.to_string().contains("created late"));
    assert_eq!(e.stats().late, 1);
}

#[test]
fn future_event_time_is_clamped_to_arrival() {
    let mut e = Engine::new(pair_rule(60), no_lateness());
    // A device clock a day ahead must not hold the event back.
    let out: Vec<_> = [
        tagged("a", "Down", "h", 86_400.0, &[]),
        tagged("b", "Down", "h", 1.0, &[]),
    ]
    .into_iter()
    .flat_map(|x| e.push(x, at(1.0)))
    .collect();
    assert_eq!(incidents(&out).len(), 1);
}

#[test]
fn reload_keeps_state_of_unchanged_rules() {
    let text = |b_window: u64| {
        format!(
            r#"[{{"name": "A", "events": ["Down"], "window": 60, "count": 2}},
               {{"name": "B", "events": ["Down"], "window": {b_window}, "count": 2}}]"#
        )
    };
    let mut e = Engine::new(rules(&text(60)), no_lateness());
    assert!(
        e.push(tagged("1", "Down", "h", 0.0, &[]), at(0.0))
            .is_empty()
    );
    let (report, _) = e.reload(rules(&text(90)));
    assert_eq!(report.kept, ["A"]);
    assert_eq!(report.reset, ["B"]);
    let out = e.push(tagged("2", "Down", "h", 10.0, &[]), at(10.0));
    let inc = incidents(&out);
    assert_eq!(inc.len(), 1, "{out:#?}");
    assert_eq!(&*inc[0].rule, "A");
    assert_eq!(inc[0].event_ids, ["1", "2"]);
    // Same definition, written differently (TOML, other key order): same version.
    let toml = RuleSet::parse(
        "[[rules]]\ncount = 2\nname = \"A\"\nwindow = 60\nevents = [\"Down\"]\n",
        Path::new("rules.toml"),
    )
    .unwrap();
    let (report, _) = e.reload(toml);
    assert_eq!(report.kept, ["A"]);
    assert_eq!(report.removed, ["B"]);
}

#[test]
fn snapshot_restore_keeps_open_windows() {
    let r = || {
        rules(&format!(
            "{{\"rules\": [{}], \"aggregates\": [{{\"name\": \"t\", \"fields\": [\"host\"], \"throttle\": 900}}]}}",
            r#"{"name": "A", "events": ["Down"], "window": 60, "count": 3, "inhibit": 5}"#
        ))
    };
    let cfg = EngineConfig {
        allowed_lateness: Duration::from_secs(5),
        ..EngineConfig::default()
    };
    let mut e = Engine::new(r(), cfg.clone());
    e.push(tagged("1", "Down", "h", 0.0, &[]), at(0.0));
    e.push(tagged("2", "Down", "h", 10.0, &[]), at(10.0));
    // 2 and 3 are still in the reorder buffer at the snapshot.
    e.push(tagged("3", "Down", "h", 11.0, &[]), at(12.0));
    let n = Notification {
        id: "n".into(),
        time: at(0.0),
        fields: BTreeMap::from([("host".into(), "h".into())]),
        reopened: false,
    };
    e.notify(&n);
    let snap = e.snapshot();
    let bytes = postcard::to_allocvec(&snap).unwrap();
    let snap: Snapshot = postcard::from_bytes(&bytes).unwrap();
    let json: Snapshot = serde_json::from_str(&serde_json::to_string(&snap).unwrap()).unwrap();
    assert_eq!(json, snap);
    let mut restored = Engine::restore(r(), cfg, snap);
    assert_eq!(restored.live(), (1, 2));
    let out = restored.advance(at(20.0));
    let inc = incidents(&out);
    assert_eq!(inc.len(), 1, "{out:#?}");
    assert_eq!(inc[0].event_ids, ["1", "2", "3"]);
    assert!(matches!(
        restored.notify(&n),
        NotifyDecision::Throttled {
            aggregated_count: 2,
            ..
        }
    ));
}

#[test]
fn cross_site_counts_across_sites_and_site_outage_inhibits() {
    let r = rules(
        r#"[{"name": "Core", "events": ["BGP Down"], "window": 60, "count": 2},
                      {"name": "PerSite", "events": ["BGP Down"], "window": 60, "count": 2, "group_by": ["site"]}]"#,
    );
    let mut e = Engine::new(r, no_lateness());
    let bgp = |id: &str, site: &str, s: f64| {
        ev(Ev {
            id,
            site,
            host: "rtr",
            tag: Some("BGP Down"),
            sev: Severity::Error,
            msg: "bgp",
            secs: s,
            tags: &[],
        })
    };
    let out = run(&mut e, &[bgp("1", "paris", 0.0), bgp("2", "tokyo", 1.0)]);
    let inc = incidents(&out);
    assert_eq!(inc.len(), 1, "only the global rule sees two: {out:#?}");
    assert_eq!(&*inc[0].rule, "Core");
    assert_eq!(inc[0].sites, ["paris", "tokyo"]);

    e.site_down("paris", at(100.0));
    let out = run(
        &mut e,
        &[bgp("3", "paris", 110.0), bgp("4", "paris", 111.0)],
    );
    assert!(incidents(&out).is_empty(), "{out:#?}");
    assert_eq!(
        out.iter()
            .filter(|d| matches!(d, Decision::SiteInhibited { sites, .. } if sites == &["paris"]))
            .count(),
        2
    );
    e.site_up("paris", at(200.0));
    let out = run(
        &mut e,
        &[bgp("5", "paris", 210.0), bgp("6", "paris", 211.0)],
    );
    assert_eq!(incidents(&out).len(), 2);
}

#[test]
fn live_groups_are_capped_and_evictions_counted() {
    let cfg = EngineConfig {
        max_groups_per_rule: 10,
        ..no_lateness()
    };
    let r = rules(
        r#"[{"name": "G", "events": ["Down"], "window": 600, "count": 5, "group_by": ["hostname"]}]"#,
    );
    let mut e = Engine::new(r, cfg);
    for i in 0..25 {
        e.push(
            tagged(&i.to_string(), "Down", &format!("h{i}"), f64::from(i), &[]),
            at(f64::from(i)),
        );
    }
    assert!(e.live().0 <= 10);
    assert_eq!(e.stats().groups_evicted, 15);
}

#[test]
fn reorder_buffer_is_bounded() {
    let cfg = EngineConfig {
        max_pending: 3,
        allowed_lateness: Duration::from_secs(3600),
        ..EngineConfig::default()
    };
    let mut e = Engine::new(pair_rule(60), cfg);
    let mut out = Vec::new();
    for i in 0..6 {
        out.extend(e.push(
            tagged(&i.to_string(), "Down", "h", f64::from(i), &[]),
            at(f64::from(i)),
        ));
    }
    assert_eq!(e.live().1, 3);
    assert_eq!(e.stats().reorder_overflow, 3);
    assert_eq!(
        incidents(&out).len(),
        1,
        "the overflowed events are correlated, not lost"
    );
}

#[test]
fn conditions_nest_and_understand_severity_and_tags() {
    let r = rules(
        r#"[{"name": "N", "conditions": {"operator": "OR", "filters": [
              {"operator": "AND", "filters": [
                 {"field": "severity", "op": "<", "value": "error"},
                 {"field": "tags.vendor", "op": "in", "value": ["cisco", "juniper"]},
                 {"field": "fields.ifindex", "op": ">=", "value": 10},
                 {"operator": "NOT", "filters": [{"field": "hostname", "op": "regex", "value": "^lab-"}]}]},
              {"operator": "AND", "filters": [
                 {"field": "message", "op": "contains_all", "value": ["link", "DOWN"]},
                 {"field": "peer", "op": "exists", "value": false},
                 {"field": "severity", "op": "equals", "value": "crit"}]}]}}]"#,
    );
    let cond = &r.rules[0].cond;
    let mk = |host: &str, sev: Severity, msg: &str, tags: &[(&str, &str)]| {
        ev(Ev {
            id: "x",
            site: "s",
            host,
            tag: None,
            sev,
            msg,
            secs: 0.0,
            tags,
        })
    };
    assert!(cond.eval(&*mk(
        "r1",
        Severity::Warning,
        "m",
        &[("vendor", "cisco"), ("ifindex", "12")]
    )));
    assert!(!cond.eval(&*mk(
        "r1",
        Severity::Error,
        "m",
        &[("vendor", "cisco"), ("ifindex", "12")]
    )));
    assert!(!cond.eval(&*mk(
        "r1",
        Severity::Warning,
        "m",
        &[("vendor", "cisco"), ("ifindex", "9")]
    )));
    assert!(!cond.eval(&*mk(
        "lab-1",
        Severity::Warning,
        "m",
        &[("vendor", "cisco"), ("ifindex", "12")]
    )));
    assert!(!cond.eval(&*mk(
        "r1",
        Severity::Warning,
        "m",
        &[("vendor", "arista"), ("ifindex", "12")]
    )));
    assert!(cond.eval(&*mk("r1", Severity::Critical, "Link is down", &[])));
    assert!(!cond.eval(&*mk("r1", Severity::Critical, "Link is up", &[])));
}

#[test]
fn validation_errors_name_file_rule_and_field() {
    let err = |text: &str| {
        RuleSet::parse(text, Path::new("rules.json"))
            .unwrap_err()
            .to_string()
    };
    let e = err(
        r#"[{"name": "R", "conditions": {"operator": "AND", "filters": [{"field": "hostname", "op": "matches", "value": "a"}, {"field": "severity", "op": "like", "value": "x"}]}}]"#,
    );
    assert!(
        e.starts_with(r#"rules.json: rule "R": conditions.filters[1].op: unknown op "like""#),
        "{e}"
    );
    let e = err(r#"[{"name": "R", "events": ["x"], "action": {"incident_severity": "dire"}}]"#);
    assert!(
        e.contains(r#"rule "R": action.incident_severity: unknown severity "dire""#),
        "{e}"
    );
    let e =
        err(r#"[{"name": "R", "conditions": {"field": "colour", "op": "equals", "value": "x"}}]"#);
    assert!(
        e.contains("conditions.field: unknown field \"colour\""),
        "{e}"
    );
    let e = err(r#"[{"name": "R", "events": ["x"], "group_by": ["tags."]}]"#);
    assert!(e.contains("group_by[0]"), "{e}");
    let e = err(r#"[{"name": "R", "events": ["x"], "window": 60, "window_minutes": 1}]"#);
    assert!(e.contains("rule \"R\": window:"), "{e}");
    let e = err(r#"[{"name": "R", "events": ["x"], "regex_typo": 1}]"#);
    assert!(e.starts_with("rules.json:1:"), "{e}");
    let e =
        err(r#"[{"name": "R", "conditions": {"field": "message", "op": "regex", "value": "("}}]"#);
    assert!(e.contains("conditions.value: bad regex"), "{e}");
    let e = err(r#"[{"name": "R"}]"#);
    assert!(e.contains("conditions"), "{e}");
    let e = err(r#"{"aggregates": [{"name": "A", "fields": ["host"], "throttle": -5}]}"#);
    assert!(e.contains(r#"rule "A": throttle"#), "{e}");
}

#[test]
fn rules_run_in_priority_order_and_disabled_rules_never() {
    let r = rules(
        r#"[{"name": "late", "priority": 50, "events": ["X"], "action": {"suppress_individual": true}},
            {"name": "early", "priority": 5, "events": ["X"], "action": {"suppress_individual": true}},
            {"name": "off", "enabled": false, "events": ["X"], "action": {"suppress_individual": true}}]"#,
    );
    assert_eq!(r.raw().rules.len(), 3);
    let mut e = Engine::new(r, no_lateness());
    let out = e.push(tagged("1", "X", "h", 0.0, &[]), at(0.0));
    let order: Vec<&str> = out
        .iter()
        .filter_map(|d| match d {
            Decision::SuppressEvent { rule, .. } => Some(&**rule),
            Decision::OpenIncident(i) => Some(&*i.rule),
            _ => None,
        })
        .collect();
    assert_eq!(order, ["early", "late", "early", "late"]);
}

#[test]
fn dry_run_matches_live_processing() {
    let cfg = EngineConfig {
        allowed_lateness: Duration::from_secs(5),
        ..EngineConfig::default()
    };
    let evs = storm();
    let arrivals: Vec<(Arc<EventIn>, Timestamp)> = evs
        .iter()
        .map(|e| {
            (
                e.clone(),
                at(e.event.event_time.as_second() as f64 - t0().as_second() as f64 + 1.0),
            )
        })
        .collect();
    let mut live = Engine::new(outage_rule(Some(40)), cfg.clone());
    let mut out = Vec::new();
    for (e, now) in &arrivals {
        out.extend(live.push(e.clone(), *now));
    }
    out.extend(live.finish(at(100.0)));
    let dry = dry_run(
        outage_rule(Some(40)),
        cfg,
        arrivals.iter().map(|(e, n)| (&**e, *n)),
    );
    let strip = |d: &[Decision]| -> Vec<(String, Vec<String>)> {
        incidents(d)
            .iter()
            .map(|i| (i.rule.to_string(), i.event_ids.clone()))
            .collect()
    };
    assert_eq!(strip(&dry), strip(&out));
    assert_eq!(dry.len(), out.len());
}

mod prop {
    use proptest::prelude::*;

    use super::*;

    fn key(d: &[Decision]) -> Vec<String> {
        let mut v: Vec<String> = d
            .iter()
            .filter_map(|d| match d {
                Decision::OpenIncident(i) => Some(format!(
                    "open {} {} {:?} {:?} {:?}",
                    i.rule, i.group_key, i.event_ids, i.window, i.stateful
                )),
                Decision::ClearIncident(c) => {
                    Some(format!("clear {} {:?} {:?}", c.rule, c.key, c.event_ids))
                }
                Decision::Deduplicated {
                    rule,
                    key,
                    event_ids,
                    ..
                } => Some(format!("dup {rule} {key:?} {event_ids:?}")),
                Decision::Inhibited { event_id, rule, .. } => {
                    Some(format!("inh {rule} {event_id}"))
                }
                Decision::AcknowledgeEvent { event_id, rule, .. } => {
                    Some(format!("ack {rule} {event_id}"))
                }
                Decision::ReleaseEvent { event_id, rule } => Some(format!("rel {rule} {event_id}")),
                _ => None,
            })
            .collect();
        v.sort();
        v
    }

    fn mixed_rules() -> RuleSet {
        rules(
            r#"[{"name": "pair", "events": ["Down"], "window": 30, "count": 2, "group_by": ["hostname"]},
                {"name": "storm", "events": ["Down", "Flap"], "window": 60, "count": 4, "inhibit": 20, "group_by": ["tags.group"]},
                {"name": "combo", "events": ["Flap"], "window": 40, "count": 3, "delayed_action": 40, "auto_acknowledge": true},
                {"name": "sick", "events": ["Down"], "window": 60, "count": 3, "group_by": ["tags.group"], "enrich": {"stateful": "sick", "state": "down"}},
                {"name": "happy", "events": ["Up"], "group_by": ["tags.group"], "enrich": {"stateful": "sick", "state": "up"}}]"#,
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        /// Any arrival order within the allowed lateness gives the same incidents.
        #[test]
        fn arrival_order_within_lateness_does_not_matter(
            raw in proptest::collection::vec((0u32..200, 0usize..3, 0usize..3, 0usize..2, 0u32..30), 1..60),
        ) {
            let tags = ["Down", "Flap", "Up"];
            let lateness = 30u32;
            let evs: Vec<(Arc<EventIn>, u32)> = raw
                .iter()
                .enumerate()
                .map(|(i, &(t, tag, host, group, jitter))| {
                    let e = tagged(&format!("e{i:02}"), tags[tag], &format!("h{host}"), f64::from(t), &[("group", ["g0", "g1"][group])]);
                    (e, t + jitter.min(lateness - 1))
                })
                .collect();
            let play = |jittered: bool| {
                let cfg = EngineConfig { allowed_lateness: Duration::from_secs(u64::from(lateness)), ..EngineConfig::default() };
                let mut e = Engine::new(mixed_rules(), cfg);
                let mut order: Vec<&(Arc<EventIn>, u32)> = evs.iter().collect();
                let arrival = |x: &(Arc<EventIn>, u32)| if jittered { x.1 } else { x.0.event.event_time.as_second() as u32 - t0().as_second() as u32 };
                order.sort_by_key(|x| (arrival(x), x.0.id.clone()));
                let mut out = Vec::new();
                for x in order {
                    out.extend(e.push(x.0.clone(), at(f64::from(arrival(x)))));
                    prop_assert_eq!(e.stats().late, 0);
                }
                out.extend(e.finish(at(1000.0)));
                Ok(key(&out))
            };
            prop_assert_eq!(play(false)?, play(true)?);
        }
    }
}

#[test]
fn from_stored_uses_the_store_id_and_drops_the_raw_payload() {
    let mut event = Event::new(InputKind::Syslog, "syslog", "h", Severity::Info, "m", t0());
    event.raw_payload = Some(vec![b'x'; 1000]);
    let stored = crate::store::StoredEvent {
        site: "paris".into(),
        agent: "a1".into(),
        seq: 7,
        stored_at: t0(),
        correlated_incident: None,
        event,
    };
    let e = EventIn::from_stored(&stored);
    assert_eq!(*e.id, *stored.id());
    assert_eq!((e.site.as_str(), e.agent.as_str()), ("paris", "a1"));
    assert_eq!(e.event.raw_payload, None);
}

#[test]
fn globs_fast_paths_agree_with_globset() {
    for (pattern, yes, no) in [
        (
            "db-*",
            ["db-prod-01", "DB-1", "db-"],
            ["xdb-1", "d", "web-db-1"],
        ),
        (
            "*.example.com",
            ["a.example.com", "A.EXAMPLE.COM", ".example.com"],
            ["example.com", "a.example.org", "x"],
        ),
        (
            "core-1",
            ["core-1", "CORE-1", "Core-1"],
            ["core-10", "core", "acore-1"],
        ),
        (
            "rtr-?[0-9]*",
            ["rtr-a1", "rtr-b9x", "RTR-c0"],
            ["rtr-1", "sw-a1", "rtr-"],
        ),
    ] {
        let r = rules(&format!(
            r#"[{{"name": "g", "conditions": {{"field": "hostname", "op": "matches", "value": "{pattern}"}}}}]"#
        ));
        let host = |h: &str| {
            ev(Ev {
                id: "x",
                site: "s",
                host: h,
                tag: None,
                sev: Severity::Info,
                msg: "m",
                secs: 0.0,
                tags: &[],
            })
        };
        for h in yes {
            assert!(
                r.rules[0].cond.eval(&*host(h)),
                "{pattern} should match {h}"
            );
        }
        for h in no {
            assert!(
                !r.rules[0].cond.eval(&*host(h)),
                "{pattern} should not match {h}"
            );
        }
    }
}

#[test]
fn severity_floor_is_taken_from_top_level_and_only() {
    let r = rules(SEED_000_RULE);
    assert_eq!(r.rules[0].min_severity, Some(Severity::Critical));
    let r = rules(
        r#"[{"name": "o", "conditions": {"operator": "OR", "filters": [{"field": "severity", "op": ">=", "value": "critical"}, {"field": "message", "op": "contains", "value": "x"}]}}]"#,
    );
    assert_eq!(r.rules[0].min_severity, None, "an OR sets no floor");
}

/// An event deduplicated at the agent into one record of `count`.
fn counted(id: &str, tag: &str, secs: f64, count: u64) -> Arc<EventIn> {
    let mut e = (*tagged(id, tag, "sw1", secs, &[])).clone();
    e.event.count = count;
    Arc::new(e)
}

#[test]
fn windows_count_first_stage_dedup_counts_not_records() {
    let r = || rules(r#"[{"name": "Flappy", "events": ["Link Flap"], "window": 60, "count": 5}]"#);
    // One record standing for 5 flaps fires a count-5 rule by itself.
    let mut e = Engine::new(r(), no_lateness());
    let out = run(&mut e, &[counted("x", "Link Flap", 0.0, 5)]);
    let inc = incidents(&out);
    assert_eq!(inc.len(), 1, "{out:#?}");
    assert_eq!(inc[0].event_ids, ["x"]);
    assert!(
        inc[0]
            .explanation
            .to_string()
            .contains("5 matching event(s) (1 deduplicated records)"),
        "{}",
        inc[0].explanation
    );
    // Records of 2 + 2 are 4 events: not enough; a third record of 1 makes 5, and the
    // firing consumes all three (windows never overlap).
    let mut e = Engine::new(r(), no_lateness());
    let out = run(
        &mut e,
        &[
            counted("a", "Link Flap", 0.0, 2),
            counted("b", "Link Flap", 10.0, 2),
        ],
    );
    assert!(incidents(&out).is_empty(), "{out:#?}");
    let mut e = Engine::new(r(), no_lateness());
    let out = run(
        &mut e,
        &[
            counted("a", "Link Flap", 0.0, 2),
            counted("b", "Link Flap", 10.0, 2),
            counted("c", "Link Flap", 20.0, 1),
            counted("d", "Link Flap", 30.0, 4),
        ],
    );
    let inc = incidents(&out);
    assert_eq!(inc.len(), 1, "{out:#?}");
    assert_eq!(inc[0].event_ids, ["a", "b", "c"]);
    // Counts outside the window do not add up: 3 at 0 s and 3 at 61 s.
    let mut e = Engine::new(r(), no_lateness());
    let out = run(
        &mut e,
        &[
            counted("p", "Link Flap", 0.0, 3),
            counted("q", "Link Flap", 61.0, 3),
        ],
    );
    assert!(incidents(&out).is_empty(), "{out:#?}");
    // A count of 0 (never sent, but not trusted) weighs 1.
    let mut e = Engine::new(r(), no_lateness());
    let zeros: Vec<_> = (0..5)
        .map(|i| counted(&format!("z{i}"), "Link Flap", f64::from(i), 0))
        .collect();
    assert_eq!(incidents(&run(&mut e, &zeros)).len(), 1);
}

#[test]
fn dry_run_of_a_jsonl_file_weighs_dedup_counts_like_live() {
    let line = |id: &str, secs: u32, count: u64| {
        format!(
            r#"{{"id": "{id}", "hostname": "sw1", "severity": "error", "message": "flap", "tag": "Link Flap", "timestamp": "2026-02-24T14:00:{secs:02}Z", "count": {count}}}"#
        )
    };
    let text = [line("a", 0, 3), line("b", 5, 2), line("c", 10, 1)].join("\n");
    let evs = replay::parse_jsonl(&text).unwrap();
    assert_eq!(evs[0].0.event.count, 3);
    let r = rules(r#"[{"name": "Flappy", "events": ["Link Flap"], "window": 60, "count": 5}]"#);
    let dry = dry_run(r.clone(), no_lateness(), evs.iter().map(|(e, t)| (e, *t)));
    let mut live = Engine::new(r, no_lateness());
    let mut out = Vec::new();
    for (e, t) in &evs {
        out.extend(live.push(Arc::new(e.clone()), *t));
    }
    out.extend(live.finish(evs[2].1));
    let ids = |d: &[Decision]| -> Vec<Vec<String>> {
        incidents(d).iter().map(|i| i.event_ids.clone()).collect()
    };
    assert_eq!(ids(&dry), [vec!["a".to_string(), "b".to_string()]]);
    assert_eq!(ids(&dry), ids(&out));
}

#[test]
fn delayed_action_holds_are_bounded_and_released_early_when_full() {
    let r = rules(
        r#"[{"name": "Hold", "events": ["Link Down"], "window": 60, "count": 100, "delayed_action": 600}]"#,
    );
    let cfg = EngineConfig {
        max_pending: 3,
        ..no_lateness()
    };
    let mut e = Engine::new(r, cfg);
    let mut released = Vec::new();
    for i in 0..5 {
        let s = f64::from(i);
        for d in e.push(tagged(&format!("h{i}"), "Link Down", "sw1", s, &[]), at(s)) {
            if let Decision::ReleaseEvent { event_id, .. } = d {
                released.push(event_id.to_string());
            }
        }
    }
    // Five holds, room for three: the two ending soonest were released, and counted.
    assert_eq!(released, ["h0", "h1"]);
    assert_eq!(e.stats().holds_released_early, 2);
    // The others end at their time, once each.
    let rest: Vec<_> = e
        .finish(at(1000.0))
        .into_iter()
        .filter_map(|d| match d {
            Decision::ReleaseEvent { event_id, .. } => Some(event_id.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(rest, ["h2", "h3", "h4"]);
}

/// Group keys join `name=value` pairs with `,`: values holding `,` and `name=` once made two
/// distinct groups share one key (`tags.a=x,tags.b=y,tags.b=z` both ways below) and count
/// toward one window. Now they are two groups, and each key reads back one way.
#[test]
fn distinct_group_values_never_share_a_group() {
    let r = rules(
        r#"[{"name": "pair", "events": ["X"], "count": 2, "window": 60,
             "group_by": ["tags.a", "tags.b"]}]"#,
    );
    let mut e = Engine::new(r, no_lateness());
    let one = [("a", "x,tags.b=y"), ("b", "z")];
    let two = [("a", "x"), ("b", "y,tags.b=z")];
    let mut out = e.push(tagged("1", "X", "h", 0.0, &one), at(0.0));
    out.extend(e.push(tagged("2", "X", "h", 1.0, &two), at(1.0)));
    assert!(incidents(&out).is_empty(), "{out:#?}");
    assert_eq!(e.live().0, 2, "two groups");
    // A second event of the first group completes that group only, with its own values.
    let out = e.push(tagged("3", "X", "h", 2.0, &one), at(2.0));
    let inc = incidents(&out);
    assert_eq!(inc.len(), 1, "{out:#?}");
    assert_eq!(inc[0].event_ids, ["1", "3"]);
    assert_eq!(inc[0].group_key, r"tags.a=x\,tags.b=y,tags.b=z");
    assert_eq!(
        inc[0].group,
        [
            ("tags.a".to_string(), "x,tags.b=y".to_string()),
            ("tags.b".to_string(), "z".to_string())
        ]
    );
    // Backslashes are escaped too: with only commas escaped, both of these would read
    // `tags.a=x\\,tags.b=p\\,tags.b=q`.
    let mut e = Engine::new(
        rules(
            r#"[{"name": "pair", "events": ["X"], "count": 2, "group_by": ["tags.a", "tags.b"]}]"#,
        ),
        no_lateness(),
    );
    let out = run(
        &mut e,
        &[
            tagged("1", "X", "h", 0.0, &[("a", r"x\"), ("b", "p,tags.b=q")]),
            tagged("2", "X", "h", 1.0, &[("a", r"x,tags.b=p\"), ("b", "q")]),
        ],
    );
    assert!(incidents(&out).is_empty(), "{out:#?}");
    // Plain values read as before.
    let out = run(
        &mut e,
        &[
            tagged("3", "X", "h", 2.0, &[("a", "p"), ("b", "q")]),
            tagged("4", "X", "h", 3.0, &[("a", "p"), ("b", "q")]),
        ],
    );
    assert_eq!(incidents(&out)[0].group_key, "tags.a=p,tags.b=q");
}

/// The explanation is built when read: its text, displayed or serialised, is the one the
/// engine wrote eagerly before, word for word.
#[test]
fn explanation_reads_as_before() {
    let mut e = Engine::new(rules(SEED_000_RULE), no_lateness());
    let out = run(
        &mut e,
        &[
            db_event("e1", "db-1", Severity::Critical, "connection refused", 0.0),
            db_event("e2", "db-1", Severity::Critical, "connection refused", 30.0),
        ],
    );
    let inc = incidents(&out);
    let want = format!(
        "rule \"Database Connectivity Failure\" (priority 10, version {}) fired across all sites and hosts: \
         2 matching event(s) between {} and {} (window 300 s, count 2) matching {}",
        inc[0].rule_version,
        at(0.0),
        at(30.0),
        e.rules().rules[0].describe
    );
    assert_eq!(inc[0].explanation.to_string(), want);
    let json = serde_json::to_value(&out).expect("decisions serialise");
    let open = json
        .as_array()
        .and_then(|d| d.iter().find(|d| d["decision"] == "open_incident"))
        .expect("an open_incident decision");
    assert_eq!(open["explanation"], want.as_str());
    assert_eq!(open["rule"], "Database Connectivity Failure");
    // Read back (dry-run output, JSON lines), it is the same text.
    let back: Decision = serde_json::from_value(open.clone()).expect("decision reads back");
    assert_eq!(back.kind(), "open_incident");
    match back {
        Decision::OpenIncident(i) => assert_eq!(i.explanation.to_string(), want),
        other => panic!("{other:?}"),
    }
}

/// `properties()` comes in name order, which the incident's property map relies on for
/// speed (a sorted list builds in one pass); the copy itself does not depend on it.
#[test]
fn properties_come_in_name_order() {
    let mut e = (*tagged(
        "1",
        "X",
        "h",
        0.0,
        &[("zz", "1"), ("a", "2"), ("node", "3")],
    ))
    .clone();
    e.event.event_type = Some("linkDown".into());
    e.event.peer = Some("192.0.2.1:514".into());
    let names: Vec<String> = e.properties().map(|(k, _)| k.into_owned()).collect();
    let mut sorted = names.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(names, sorted);
    assert!(names.len() >= 15, "{names:?}");
}

/// A snapshot from before group keys were escaped holds the group under its old key; restored,
/// the group is found again by the key its events give now, and completes.
#[test]
fn a_snapshot_with_old_group_keys_keeps_its_windows() {
    let r = || {
        rules(
            r#"[{"name": "pair", "events": ["X"], "count": 2, "window": 60,
                 "group_by": ["tags.a"]}]"#,
        )
    };
    let mut e = Engine::new(r(), no_lateness());
    let tags = [("a", "x,y")];
    assert!(incidents(&e.push(tagged("1", "X", "h", 0.0, &tags), at(0.0))).is_empty());
    let mut json = serde_json::to_value(e.snapshot()).unwrap();
    let key = &mut json["rules"][0]["groups"][0]["key"];
    assert_eq!(key, r"tags.a=x\,y");
    *key = "tags.a=x,y".into();
    let snap: Snapshot = serde_json::from_value(json).unwrap();
    let mut restored = Engine::restore(r(), no_lateness(), snap);
    let out = restored.push(tagged("2", "X", "h", 1.0, &tags), at(1.0));
    let inc = incidents(&out);
    assert_eq!(inc.len(), 1, "{out:#?}");
    assert_eq!(inc[0].event_ids, ["1", "2"]);
}
