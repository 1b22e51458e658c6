//! Correlation engine throughput: 100 rules of mixed kinds over realistic syslog-like events,
//! one core, in two mixes. Also prints the memory per live group.
//!
//! Rules: 30 seed 003 tag rules (two event names each, count 3–7 in 60–180 s, grouped by
//! hostname, customer, site or not at all; a third inhibit, a fifth delayed action with
//! auto-acknowledge, five stateful with their 5 opposite rules of count 1); 40 seed 000
//! condition rules (hostname glob, severity floor, message `contains_any`, count 2–5 in 5 min
//! per host, half suppress individual events); 10 vendor + `(?i)` interface regex rules; 15 tag
//! rules with `in`, a numeric `>=` and a NOT. Events: 10k/s of event time from 20 sites, see
//! [`events`].
//!
//! - `100_rules_normal_day` (the default, [`NORMAL`]): what a NOC sees on an ordinary day.
//!   400 event names of which the rules name 51, so about one event in six matches a rule;
//!   60,000 hosts; 15 % link up/down lines, 15 % application error phrases, 70 % routine sshd
//!   lines; rules grouping by customer, site or nothing need twice the count of per-host
//!   ones (a wider group needs a higher threshold). About 2 % of events complete a window
//!   (most of them an opposite rule with nothing to clear) and 0.8 % open an incident: the
//!   engine's time goes to matching and counting, as in production.
//! - `100_rules_storm` ([`STORM`], the first round's mix): 60 names, 51 of them named by rules, 12,000
//!   hosts, a third each of link, error and sshd lines, the same counts for every group. One
//!   event in five completes a window and one in eight opens an incident: an outage storm,
//!   where incident creation dominates.
//!
//! Each mix is timed four ways (criterion ids `MIX/with_decode`, `MIX/decode_only`,
//! `MIX/fresh`, `MIX/cold`):
//!
//! - `with_decode`: what the aggregator's correlation thread does per event, one event at a
//!   time: decode its stored bytes (`postcard` into a `StoredEvent`, [`EventIn::from_owned`])
//!   and [`Engine::push`] it. This is the one-core figure. (Not included: applying the
//!   decisions to the store, which the thread does after each batch.)
//! - `decode_only`: the decoding alone (each event decoded and freed): `with_decode` less this
//!   is the engine's share of the thread's time.
//! - `fresh`: the engine alone, on events decoded (untimed) 64 at a time just before they are
//!   pushed, so they are in cache as on the live path. It leaves out how decoding between
//!   pushes evicts the engine's own code and data, so it is the optimistic split of the above.
//! - `cold`: the engine alone on all 200,000 events built up front (their strings and tag maps,
//!   far more than the caches hold) and pushed by `Arc` clone, the method of the earlier
//!   rounds: much of its time is cache misses on the bench's own event array, which the live
//!   path does not have.
//!
//! The 200,000 events span 20 s of event time, less than the rules' windows, so no window
//! expires within a run: in `with_decode` and `fresh` the engine owns its events and is dropped
//! inside the timing, so freeing every event and group (which on the live path happens as
//! windows expire) is timed too.
//!
//! `cargo bench -p weir-aggregator --bench correlate -- --measurement-time 5`
//!
//! Instruction counts (repeatable on a noisy machine): with `WEIR_CORRELATE_PROFILE=N` the
//! bench binary skips criterion and pushes N events of the normal mix (`WEIR_CORRELATE_MIX=storm`
//! for the storm) through one engine; collect only inside `run` to leave out building the
//! events:
//!
//! `WEIR_CORRELATE_PROFILE=200000 valgrind --tool=callgrind --toggle-collect='*correlate::run*' target/release/deps/correlate-HASH`

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, Throughput, criterion_group};
use jiff::Timestamp;
use weir_aggregator::correlate::{Engine, EngineConfig, EventIn, RuleSet};
use weir_aggregator::store::StoredEvent;
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

/// What the events and rule thresholds look like. See the module docs.
#[derive(Clone, Copy)]
struct Mix {
    name: &'static str,
    /// Distinct event names (tags); rules name 51 of `EVT_00`..`EVT_59`, the rest are unnamed.
    names: usize,
    /// Hostname suffixes per prefix (hosts = 6 × this).
    hosts: usize,
    /// Percent of messages that are `%LINK-3-UPDOWN` lines and application error phrases;
    /// the rest are routine sshd session lines.
    link_pct: usize,
    phrase_pct: usize,
    /// Multiplier on the `count` of rules that group by customer, site or nothing: a
    /// coarse group needs a coarse threshold.
    coarse_count: u32,
}

/// The bench's default: a NOC's normal day (see the module docs).
const NORMAL: Mix = Mix {
    name: "100_rules_normal_day",
    names: 400,
    hosts: 10_000,
    link_pct: 15,
    phrase_pct: 15,
    coarse_count: 2,
};

/// The first round's mix: few names and hosts, loose thresholds, one event in five fires.
/// (The message kinds are drawn per percent now, so the stream differs slightly from round 1.)
const STORM: Mix = Mix {
    name: "100_rules_storm",
    names: 60,
    hosts: 2_000,
    link_pct: 34,
    phrase_pct: 33,
    coarse_count: 1,
};

fn tag(i: usize) -> String {
    format!("EVT_{i:02}")
}

fn rules(mix: Mix) -> RuleSet {
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
            if i % 4 == 0 {
                3 + i as u32 % 5
            } else {
                (3 + i as u32 % 5) * mix.coarse_count
            }
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
/// - every event carries a tag, and part of the tags are named by some rule (a NOC writes rules
///   for the events it cares about): most of them in the storm mix, about one in six on a
///   normal day;
/// - Cisco/Juniper/Linux-style messages of 40–90 bytes, half of them info;
/// - the mix's hosts (12,000 in the storm, 60,000 on a normal day), 100 customers;
/// - arrival is event time plus a per-site forwarding delay (20 ms to 1.8 s, WAN links and
///   batching) plus up to 20 ms of device clock skew, so sites interleave out of order; one
///   site sits behind a slow link 8 s behind, past the 5 s allowed lateness: its events are
///   correlated late.
fn events(n: usize, start: Timestamp, mix: Mix) -> Vec<(Arc<EventIn>, Timestamp)> {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut evs: Vec<(Arc<EventIn>, Timestamp)> = (0..n)
        .map(|i| {
            let host = format!("{}-{:04}", PREFIXES[rng.below(6)], rng.below(mix.hosts));
            let sev = match rng.below(100) {
                0..50 => Severity::Info,
                50..75 => Severity::Warning,
                75..90 => Severity::Error,
                _ => Severity::Critical,
            };
            let kind = rng.below(100);
            let msg = match kind {
                k if k < mix.link_pct => format!(
                    "%LINK-3-UPDOWN: Interface Gi0/{} changed state to down",
                    rng.below(48)
                ),
                k if k < mix.link_pct + mix.phrase_pct => format!(
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
            e.tag = Some(tag(rng.below(mix.names)));
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
                id: format!("{site}:agent-1:{i}").into(),
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
            id: format!("site-01:agent-1:{i}").into(),
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
    let start: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
    let mut g = c.benchmark_group("correlate");
    g.throughput(Throughput::Elements(EVENTS as u64));
    g.sample_size(10);
    for mix in [NORMAL, STORM] {
        let rules = rules(mix);
        assert_eq!(
            rules.rules.len(),
            100,
            "100 rules, the 5 opposite (happy) rules included"
        );
        let evs = events(EVENTS, start, mix);
        report(mix, &rules, &evs);
        let stored = encoded(&evs);
        g.bench_function(format!("{}/with_decode", mix.name), |b| {
            b.iter_custom(|iters| {
                each_run(iters, || {
                    let mut e = Engine::new(rules.clone(), config());
                    let t = Instant::now();
                    run_decoding(&mut e, &stored);
                    drop(e);
                    t.elapsed()
                })
            })
        });
        g.bench_function(format!("{}/decode_only", mix.name), |b| {
            b.iter_custom(|iters| {
                each_run(iters, || {
                    let t = Instant::now();
                    for (bytes, _) in &stored {
                        drop(black_box(decode(bytes)));
                    }
                    t.elapsed()
                })
            })
        });
        g.bench_function(format!("{}/fresh", mix.name), |b| {
            b.iter_custom(|iters| {
                each_run(iters, || {
                    let mut e = Engine::new(rules.clone(), config());
                    let pushing = run_fresh(&mut e, &stored);
                    let t = Instant::now();
                    drop(e);
                    pushing + t.elapsed()
                })
            })
        });
        g.bench_function(format!("{}/cold", mix.name), |b| {
            b.iter_batched(
                || Engine::new(rules.clone(), config()),
                |mut e| {
                    run(&mut e, &evs);
                    e
                },
                BatchSize::LargeInput,
            )
        });
    }
    g.finish();
}

/// The time of `iters` runs, each timing its own part (for `iter_custom`).
fn each_run(iters: u64, mut run: impl FnMut() -> Duration) -> Duration {
    (0..iters).map(|_| run()).sum()
}

/// Events decoded at a time for `fresh`, so they are in cache when pushed.
const CHUNK: usize = 64;

/// Each event as the store hands it to the correlation thread: a `StoredEvent`'s postcard
/// bytes (the id `site:agent-1:i` is the stored event's own id).
fn encoded(evs: &[(Arc<EventIn>, Timestamp)]) -> Vec<(Vec<u8>, Timestamp)> {
    evs.iter()
        .map(|(ev, arrival)| {
            let (_, _, seq) =
                weir_common::parse_event_id(&ev.id).expect("bench ids are fleet event ids");
            let s = StoredEvent {
                site: ev.site.clone(),
                agent: ev.agent.clone(),
                seq,
                stored_at: *arrival,
                correlated_incident: None,
                event: ev.event.clone(),
            };
            assert_eq!(s.id(), &*ev.id, "the stored event has the bench event's id");
            let bytes = postcard::to_allocvec(&s).expect("bench event encodes");
            (bytes, *arrival)
        })
        .collect()
}

/// What the correlation thread does with a stored event's bytes before pushing it.
fn decode(bytes: &[u8]) -> Arc<EventIn> {
    let s: StoredEvent = postcard::from_bytes(bytes).expect("bench event decodes");
    Arc::new(EventIn::from_owned(s))
}

/// `fresh`: the time `engine` spends on `stored`, each chunk decoded (untimed) just before
/// it is pushed. The engine owns each event, as on the live path: freeing the events no rule
/// keeps is timed here, the others when the caller drops the engine.
fn run_fresh(engine: &mut Engine, stored: &[(Vec<u8>, Timestamp)]) -> Duration {
    let mut total = Duration::ZERO;
    let mut chunk: Vec<(Arc<EventIn>, Timestamp)> = Vec::with_capacity(CHUNK);
    for part in stored.chunks(CHUNK) {
        chunk.extend(part.iter().map(|(b, arrival)| (decode(b), *arrival)));
        let t = Instant::now();
        for (ev, arrival) in chunk.drain(..) {
            black_box(engine.push(ev, arrival));
        }
        total += t.elapsed();
    }
    total
}

/// `with_decode`: decode and push, one event at a time, as the correlation thread does.
#[inline(never)]
fn run_decoding(engine: &mut Engine, stored: &[(Vec<u8>, Timestamp)]) -> usize {
    let mut decisions = 0;
    for (bytes, arrival) in stored {
        decisions += black_box(engine.push(decode(bytes), *arrival)).len();
    }
    decisions
}

/// One untimed run of `evs`, printing what the mix does to the engine: how many events
/// matched, how many windows completed (`fired`, including clearing rules with nothing to
/// clear) and how many incidents opened.
fn report(mix: Mix, rules: &RuleSet, evs: &[(Arc<EventIn>, Timestamp)]) {
    let mut e = Engine::new(rules.clone(), config());
    let mut kinds = std::collections::BTreeMap::<&str, usize>::new();
    for (ev, arrival) in evs {
        for d in e.push(ev.clone(), *arrival) {
            *kinds.entry(d.kind()).or_default() += 1;
        }
    }
    let s = e.stats();
    let pct = |n: u64| n as f64 * 100.0 / s.events.max(1) as f64;
    let opened = kinds.get("open_incident").copied().unwrap_or(0) as u64;
    eprintln!(
        "{}: {} events, {} matched a rule, {} late, {} fired ({:.2} %), {opened} incidents opened ({:.2} %), live groups {}, window state {} KiB; decisions {kinds:?}",
        mix.name,
        s.events,
        s.matched,
        s.late,
        s.fired,
        pct(s.fired),
        pct(opened),
        e.live().0,
        e.state_bytes() / 1024
    );
}

/// `WEIR_CORRELATE_PROFILE=N`: N events through one engine, no criterion, for callgrind;
/// `WEIR_CORRELATE_MIX=storm` for the storm mix.
fn profile(n: usize) {
    let mix = match std::env::var("WEIR_CORRELATE_MIX").as_deref() {
        Ok("storm") => STORM,
        _ => NORMAL,
    };
    let start: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
    let rules = rules(mix);
    let evs = events(n, start, mix);
    let mut e = Engine::new(rules.clone(), config());
    let d = run(&mut e, &evs);
    eprintln!("profile run: {} events, {d} decisions", evs.len());
    report(mix, &rules, &evs);
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
