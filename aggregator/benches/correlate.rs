//! Correlation engine throughput: 100 rules of mixed kinds over realistic syslog-like events,
//! one core. Also prints the memory per live group.
//!
//! Rules: 30 seed 003 tag rules (two event names each, count 3–7 in 60–180 s, grouped by
//! hostname, customer, site or not at all; a third inhibit, a fifth delayed action with
//! auto-acknowledge, five stateful with their 5 opposite rules); 40 seed 000 condition rules
//! (hostname glob, severity floor, message `contains_any`, count 2–5 in 5 min per host, half
//! suppress individual events); 10 vendor + `(?i)` interface regex rules; 15 tag rules with
//! `in`, a numeric `>=` and a NOT. Events: see [`events`]. The rule counts are low, so about one
//! event in five completes an incident: a storm, harsher than a NOC's normal day.
//!
//! `cargo bench -p weir-aggregator --bench correlate -- --measurement-time 5`
//!
//! Instruction counts (repeatable on a noisy machine): with `WEIR_CORRELATE_PROFILE=N` the
//! bench binary skips criterion and pushes N of the same events through one engine; collect
//! only inside `run` to leave out building the events:
//!
//! `WEIR_CORRELATE_PROFILE=200000 valgrind --tool=callgrind --toggle-collect='correlate::run' target/release/deps/correlate-HASH`

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group};
use jiff::Timestamp;
use weir_aggregator::correlate::{Engine, EngineConfig, EventIn, RuleSet};
use weir_common::{Event, InputKind, Severity};

// The allocator the aggregator binary ships with (see src/main.rs).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const EVENTS: usize = 200_000;
const PREFIXES: [&str; 6] = ["db", "web", "rtr", "sw", "fw", "app"];
const VENDORS: [&str; 3] = ["cisco", "juniper", "arista"];
const PHRASES: [&str; 10] = [
    "connection refused",
    "too many connections",
    "max_connections",
    "changed state to down",
    "changed state to up",
    "authentication failure",
    "disk usage above threshold",
    "BGP neighbor down",
    "fan failure",
    "temperature critical",
];

/// xorshift64*: deterministic, dependency-free.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn tag(i: usize) -> String {
    format!("EVT_{i:02}")
}

fn rules() -> RuleSet {
    let mut r = Vec::new();
    let groups = ["\"hostname\"", "\"tags.customer\"", "\"site\"", ""];
    for i in 0..30 {
        let group = groups[i % 4];
        let mut extra = String::new();
        if i % 3 == 0 {
            extra.push_str(r#", "inhibit": 30"#);
        }
        if i % 5 == 0 {
            extra.push_str(r#", "delayed_action": 60, "auto_acknowledge": true"#);
        }
        if i % 6 == 1 {
            extra.push_str(&format!(
                r#", "enrich": {{"stateful": "sick-{i}", "state": "down"}}"#
            ));
            // The opposite rule for it.
            r.push(format!(
                r#"{{"name": "happy-{i}", "events": ["{}"], "group_by": [{group}], "enrich": {{"stateful": "sick-{i}", "state": "up"}}}}"#,
                tag(50 + i % 10)
            ));
        }
        r.push(format!(
            r#"{{"name": "synth-{i}", "priority": {i}, "events": ["{}", "{}"], "window": {}, "count": {}, "group_by": [{group}]{extra}}}"#,
            tag(i),
            tag(i + 1),
            60 + 30 * (i % 5),
            3 + i % 5
        ));
    }
    while r.len() < 75 {
        let i = r.len();
        let sev = ["error", "critical", "warning"][i % 3];
        r.push(format!(
            r#"{{"name": "cond-{i}", "priority": {i}, "conditions": {{"operator": "AND", "filters": [
                {{"field": "hostname", "op": "matches", "value": "{}-*"}},
                {{"field": "severity", "op": ">=", "value": "{sev}"}},
                {{"field": "message", "op": "contains_any", "value": ["{}", "{}"]}}]}},
               "window_minutes": 5, "min_event_count": {}, "group_by": ["hostname"],
               "action": {{"incident_severity": "critical", "contact_list": "team-{i}", "suppress_individual": {}}}}}"#,
            PREFIXES[i % 6],
            PHRASES[i % 10],
            PHRASES[(i + 3) % 10],
            2 + i % 4,
            i % 2 == 0
        ));
    }
    while r.len() < 85 {
        let i = r.len();
        r.push(format!(
            r#"{{"name": "regex-{i}", "conditions": {{"operator": "AND", "filters": [
                {{"field": "tags.vendor", "op": "equals", "value": "{}"}},
                {{"field": "message", "op": "regex", "value": "(?i)interface \\S+/{} changed state to (down|up)"}}]}},
               "window": 120, "count": 3, "group_by": ["hostname"]}}"#,
            VENDORS[i % 3],
            i % 48
        ));
    }
    while r.len() < 100 {
        let i = r.len();
        r.push(format!(
            r#"{{"name": "tags-{i}", "events": ["{}"], "conditions": {{"operator": "AND", "filters": [
                {{"field": "tags.customer", "op": "in", "value": ["c{}", "c{}", "c{}"]}},
                {{"field": "fields.ifindex", "op": ">=", "value": 10}},
                {{"operator": "NOT", "filters": [{{"field": "severity", "op": "<=", "value": "info"}}]}}]}},
               "window": 300, "count": 2, "group_by": ["tags.customer"]}}"#,
            tag(30 + i % 20),
            i % 100,
            (i * 7) % 100,
            (i * 13) % 100
        ));
    }
    let text = format!("[{}]", r.join(",\n"));
    RuleSet::parse(&text, Path::new("bench.json")).expect("bench rules compile")
}

/// `n` events of 20 sites, 10k events/s of event time, in *arrival* order, each with its
/// arrival clock. Realistic rather than kind to the engine:
/// - every event carries a tag and 60 % of the tags are named by some rule (a NOC writes rules
///   for the events it cares about), so most events reach group state, not just the matcher;
/// - Cisco/Juniper/Linux-style messages of 40–90 bytes, half of them info;
/// - 12,000 hosts, 100 customers;
/// - arrival is event time plus a per-site forwarding delay (20 ms to 1.8 s, WAN links and
///   batching) plus up to 20 ms of device clock skew, so sites interleave out of order; one
///   site sits behind a slow link 8 s behind, past the 5 s allowed lateness: its events are
///   correlated late.
fn events(n: usize, start: Timestamp) -> Vec<(Arc<EventIn>, Timestamp)> {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut evs: Vec<(Arc<EventIn>, Timestamp)> = (0..n)
        .map(|i| {
            let host = format!("{}-{:04}", PREFIXES[rng.below(6)], rng.below(2000));
            let sev = match rng.below(100) {
                0..50 => Severity::Info,
                50..75 => Severity::Warning,
                75..90 => Severity::Error,
                _ => Severity::Critical,
            };
            let msg = match rng.below(3) {
                0 => format!(
                    "%LINK-3-UPDOWN: Interface Gi0/{} changed state to down",
                    rng.below(48)
                ),
                1 => format!(
                    "{}[{}]: {}: {}",
                    ["postgres", "nginx", "rpd", "kernel"][rng.below(4)],
                    rng.below(65_536),
                    host,
                    PHRASES[rng.below(10)]
                ),
                _ => format!(
                    "sshd[{}]: pam_unix(sshd:session): session {} closed for user u{}",
                    rng.below(65_536),
                    rng.below(100_000),
                    rng.below(500)
                ),
            };
            // 10k events/s of event time.
            let t = Timestamp::from_microsecond(start.as_microsecond() + i as i64 * 100).unwrap();
            let mut e = Event::new(InputKind::Syslog, "syslog", host, sev, msg, t);
            e.tag = Some(tag(rng.below(60)));
            e.tags
                .insert("customer".into(), format!("c{}", rng.below(100)));
            e.tags.insert("vendor".into(), VENDORS[rng.below(3)].into());
            e.tags.insert("ifindex".into(), rng.below(64).to_string());
            let s = rng.below(20);
            let site = format!("site-{s:02}");
            let delay_ms = if s == 19 { 8_000 } else { 20 + 100 * s as i64 };
            let skew_us = rng.below(20_000) as i64;
            let arrival =
                Timestamp::from_microsecond(t.as_microsecond() + delay_ms * 1000 + skew_us)
                    .unwrap();
            let ev = Arc::new(EventIn {
                id: format!("{site}:agent-1:{i}"),
                site,
                agent: "agent-1".into(),
                event: e,
            });
            (ev, arrival)
        })
        .collect();
    evs.sort_by_key(|(_, arrival)| *arrival);
    evs
}

fn config() -> EngineConfig {
    EngineConfig {
        allowed_lateness: Duration::from_secs(5),
        ..EngineConfig::default()
    }
}

#[inline(never)]
fn run(engine: &mut Engine, evs: &[(Arc<EventIn>, Timestamp)]) -> usize {
    let mut decisions = 0;
    for (e, arrival) in evs {
        decisions += black_box(engine.push(e.clone(), *arrival)).len();
    }
    decisions
}

/// Memory per live group: one rule grouping by hostname that never fires, one trigger each.
fn memory_per_group() {
    let r = RuleSet::parse(
        r#"[{"name": "m", "events": ["EVT_00"], "window": 3600, "count": 1000000, "group_by": ["hostname"]}]"#,
        Path::new("mem.json"),
    )
    .expect("rule");
    let n = 100_000;
    let start: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
    let cfg = EngineConfig {
        max_groups_per_rule: 1_000_000,
        ..config()
    };
    let mut e = Engine::new(r, cfg);
    for i in 0..n {
        let t = Timestamp::from_microsecond(start.as_microsecond() + i as i64 * 1000).unwrap();
        let mut ev = Event::new(
            InputKind::Syslog,
            "syslog",
            format!("host-{i:06}"),
            Severity::Error,
            "Interface Gi0/1 changed state to down",
            t,
        );
        ev.tag = Some("EVT_00".into());
        let ev = Arc::new(EventIn {
            id: format!("site-01:agent-1:{i}"),
            site: "site-01".into(),
            agent: "agent-1".into(),
            event: ev,
        });
        e.push(ev, t);
    }
    e.advance(
        Timestamp::from_microsecond(start.as_microsecond() + n as i64 * 1000 + 10_000_000).unwrap(),
    );
    let groups = e.live().0;
    let bytes = e.state_bytes();
    let snap = postcard::to_allocvec(&e.snapshot())
        .expect("snapshot encodes")
        .len();
    eprintln!(
        "memory: {groups} live groups, {} bytes/group of window state (plus the shared event), snapshot {} bytes/group",
        bytes / groups.max(1),
        snap / groups.max(1)
    );
}

fn bench(c: &mut Criterion) {
    memory_per_group();
    let rules = rules();
    assert_eq!(
        rules.rules.len(),
        100,
        "100 rules, the 5 opposite (happy) rules included"
    );
    let start: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
    let evs = events(EVENTS, start);
    {
        let mut e = Engine::new(rules.clone(), config());
        let d = run(&mut e, &evs);
        let s = e.stats();
        eprintln!(
            "mixed run: {} events, {} matched a rule, {} late, {} decisions, {} fired, live groups {}, window state {} KiB",
            s.events,
            s.matched,
            s.late,
            d,
            s.fired,
            e.live().0,
            e.state_bytes() / 1024
        );
    }
    let mut g = c.benchmark_group("correlate");
    g.throughput(Throughput::Elements(EVENTS as u64));
    g.sample_size(10);
    g.bench_function("100_rules_mixed_events", |b| {
        b.iter_batched(
            || Engine::new(rules.clone(), config()),
            |mut e| {
                run(&mut e, &evs);
                e
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

/// `WEIR_CORRELATE_PROFILE=N`: N events through one engine, no criterion, for callgrind.
fn profile(n: usize) {
    let rules = rules();
    let start: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
    let evs = events(n, start);
    let mut e = Engine::new(rules, config());
    let d = run(&mut e, &evs);
    let s = e.stats();
    eprintln!(
        "profile run: {} events, {} matched a rule, {} late, {} decisions, {} fired",
        s.events, s.matched, s.late, d, s.fired
    );
}

criterion_group!(benches, bench);

fn main() {
    if let Ok(n) = std::env::var("WEIR_CORRELATE_PROFILE") {
        profile(
            n.parse()
                .expect("WEIR_CORRELATE_PROFILE: a number of events"),
        );
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
