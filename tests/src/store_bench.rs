//! Issue 4's search benchmark on a large event store, without the network:
//!
//! - [`fill`] writes realistic events (sites, hosts, a syslog-like mix of messages and
//!   severities, event times spread over a period ending now) straight through
//!   `Store::commit`, in agent batches like the QUIC writer's.
//! - [`bench`] runs the two queries the way `GET /api/v1/events` does (parse the
//!   parameters, `Store::search`, render the JSON page) and reports p50/p99/max:
//!   (a) `severity=>=warning`, one hour, one site, `limit=100`; (b) `q=` over one day.
//!
//! The HTTP layer adds microseconds on loopback; what the targets measure is the store.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use jiff::{SignedDuration, Timestamp};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use weir_aggregator::api::{EventView, EventsPage};
use weir_aggregator::query::{EventFilter, EventParams};
use weir_aggregator::store::{AgentBatch, Prepared, Store, StoredEvent};
use weir_common::{Event, InputKind, Severity};

/// Message templates: (tag, text with `{}` for a varying part, severity weights index).
const TEMPLATES: &[(&str, &str)] = &[
    (
        "LINK-3-UPDOWN",
        "Interface GigabitEthernet1/0/{} changed state to down",
    ),
    (
        "LINK-3-UPDOWN",
        "Interface GigabitEthernet1/0/{} changed state to up",
    ),
    (
        "LINEPROTO-5-UPDOWN",
        "Line protocol on Interface Vlan{} changed state to up",
    ),
    (
        "BGP-5-ADJCHANGE",
        "neighbor 10.20.{}.1 Down BGP Notification sent",
    ),
    (
        "OSPF-5-ADJCHG",
        "Process 1, Nbr 10.0.{}.2 on Vlan10 from FULL to DOWN",
    ),
    (
        "SEC_LOGIN-4-LOGIN_FAILED",
        "Login failed [user: admin] [Source: 192.0.2.{}] [Reason: Login Authentication Failed]",
    ),
    (
        "SYS-5-CONFIG_I",
        "Configured from console by netops on vty{} (198.51.100.7)",
    ),
    (
        "ENVMON-4-FAN_LOW_RPM",
        "Fan {} had a rotation error reported",
    ),
    ("PLATFORM-2-PS_FAIL", "Power supply {} failed or shutdown"),
    (
        "DHCPD-4-PING_CONFLICT",
        "DHCP address conflict: server pinged 10.1.{}.40",
    ),
    (
        "CRON",
        "pam_unix(cron:session): session opened for user root uid={}",
    ),
    (
        "SSHD",
        "Accepted publickey for deploy from 203.0.113.{} port 52211 ssh2",
    ),
];

/// debug 5%, info 60%, warning 20%, error 12%, critical 3%.
fn severity(rng: &mut StdRng) -> Severity {
    match rng.random_range(0..100) {
        0..5 => Severity::Debug,
        5..65 => Severity::Info,
        65..85 => Severity::Warning,
        85..97 => Severity::Error,
        _ => Severity::Critical,
    }
}

/// What [`fill`] wrote.
#[derive(Debug, Clone, Copy)]
pub struct Filled {
    pub events: u64,
    pub elapsed: Duration,
    pub first: Timestamp,
    pub last: Timestamp,
}

/// Appends `events` events to the store at `db` (created when missing), event times spread
/// evenly (± 30 s) over `days` ending now, `sites` sites of 2 agents each, `hosts` hosts.
pub fn fill(db: &Path, events: u64, sites: u32, hosts: u32, days: u32) -> anyhow::Result<Filled> {
    let store = Store::open(db)?;
    let mut rng = StdRng::seed_from_u64(42);
    let now = Timestamp::now();
    let first = now - SignedDuration::from_hours(i64::from(days) * 24);
    let step_us = (i64::from(days) * 86_400_000_000) / events.max(1) as i64;
    let agents: Vec<(String, String)> = (0..sites)
        .flat_map(|s| (1..=2).map(move |a| (format!("site-{s:02}"), format!("gw-{a}"))))
        .collect();
    let mut seqs: Vec<u64> = agents
        .iter()
        .map(|(s, a)| store.committed_seq(s, a))
        .collect::<Result<_, _>>()?;
    let hosts_per_site = (hosts / sites).max(1);
    const CHUNK: u64 = 20_000;
    let started = Instant::now();
    let mut done = 0u64;
    while done < events {
        let n = CHUNK.min(events - done);
        let mut per_agent: Vec<Vec<Prepared>> = vec![Vec::new(); agents.len()];
        for i in done..done + n {
            let a = rng.random_range(0..agents.len());
            let (site, agent) = &agents[a];
            let jitter = rng.random_range(-30_000_000..30_000_000);
            let t =
                Timestamp::from_microsecond(first.as_microsecond() + i as i64 * step_us + jitter)?;
            let (tag, text) = TEMPLATES[rng.random_range(0..TEMPLATES.len())];
            let message = text.replace("{}", &rng.random_range(1..255).to_string());
            let host = format!("{site}-sw-{:04}", rng.random_range(0..hosts_per_site));
            let mut e = Event::new(
                InputKind::Syslog,
                "syslog",
                &host,
                severity(&mut rng),
                "",
                t,
            );
            e.raw_payload = Some(format!("<189>{t} {host} %{tag}: {message}").into_bytes());
            e.message = format!("%{tag}: {message}");
            e.tag = Some(tag.to_string());
            e.peer = Some(format!("10.{}.0.{}:514", a, rng.random_range(1..255)));
            seqs[a] += 1;
            let stored = StoredEvent {
                site: site.clone(),
                agent: agent.clone(),
                seq: seqs[a],
                stored_at: t + SignedDuration::from_millis(300),
                correlated_incident: None,
                event: e,
            };
            per_agent[a].push(Prepared::event(&stored));
        }
        let batches: Vec<AgentBatch<'_>> = agents
            .iter()
            .zip(&per_agent)
            .filter(|(_, r)| !r.is_empty())
            .map(|((site, name), records)| AgentBatch {
                site,
                name,
                records,
            })
            .collect();
        let at = Timestamp::from_microsecond(first.as_microsecond() + (done + n) as i64 * step_us)?;
        store.commit(&batches, at)?;
        done += n;
        if done % 1_000_000 < CHUNK {
            eprintln!(
                "store-fill: {done} events, {:.0}/s",
                done as f64 / started.elapsed().as_secs_f64()
            );
        }
    }
    Ok(Filled {
        events,
        elapsed: started.elapsed(),
        first,
        last: now,
    })
}

/// Latencies of one query shape.
#[derive(Debug, Clone)]
pub struct Latency {
    pub name: &'static str,
    pub runs: usize,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
    /// Mean `total` the query reported (how much it had to count).
    pub mean_total: f64,
}

fn page_json(store: &Store, p: &EventParams) -> anyhow::Result<(u64, usize)> {
    let filter =
        EventFilter::parse(p).map_err(|e| anyhow::anyhow!("{}: {}", e.param, e.message))?;
    let page = store.search(&filter, 100, None)?;
    let body = EventsPage {
        total: page.total,
        next_cursor: None,
        events: page
            .events
            .into_iter()
            .map(|(_, e)| EventView::from(e))
            .collect(),
    };
    Ok((body.total, serde_json::to_vec(&body)?.len()))
}

fn stats(name: &'static str, mut d: Vec<Duration>, totals: u64) -> Latency {
    d.sort();
    let at = |q: f64| d[((d.len() as f64 * q).ceil() as usize).clamp(1, d.len()) - 1];
    Latency {
        name,
        runs: d.len(),
        p50: at(0.50),
        p99: at(0.99),
        max: *d.last().unwrap_or(&Duration::ZERO),
        mean_total: totals as f64 / d.len().max(1) as f64,
    }
}

/// Runs each of the two queries `runs` times over random sites, hours and days of the
/// store's span (read from its oldest and newest event times).
pub fn bench(db: &Path, runs: usize, sites: u32, cache_bytes: u64) -> anyhow::Result<Vec<Latency>> {
    let store = Store::open_with_cache(db, cache_bytes)?;
    // Measure the indexed steady state: a fill that just ended leaves up to a few tens of
    // thousands of events for the background indexer, which searches would scan one by one.
    store.wait_indexed(Duration::from_secs(3600))?;
    let (first, last) = store
        .time_span()?
        .context("the store is empty: run store-fill first")?;
    let span_h = (last.duration_since(first).as_hours()).max(25);
    let mut rng = StdRng::seed_from_u64(7);
    let mut out = Vec::new();

    let (mut d, mut totals) = (Vec::with_capacity(runs), 0);
    for _ in 0..runs {
        let from = first + SignedDuration::from_hours(rng.random_range(0..span_h - 1));
        let p = EventParams {
            severity: Some(">=warning".into()),
            from: Some(from.to_string()),
            to: Some((from + SignedDuration::from_hours(1)).to_string()),
            site: Some(format!("site-{:02}", rng.random_range(0..sites))),
            ..Default::default()
        };
        let t = Instant::now();
        let (total, _) = page_json(&store, &p)?;
        d.push(t.elapsed());
        totals += total;
    }
    out.push(stats(
        "severity>=warning, 1 site, 1 hour, limit 100",
        d,
        totals,
    ));

    let words = ["bgp", "fan", "admin", "vlan1", "gigabitethernet1/0/7 "];
    let (mut d, mut totals) = (Vec::with_capacity(runs), 0);
    for i in 0..runs {
        let from = first + SignedDuration::from_hours(rng.random_range(0..span_h - 24));
        let p = EventParams {
            q: Some(words[i % words.len()].into()),
            from: Some(from.to_string()),
            to: Some((from + SignedDuration::from_hours(24)).to_string()),
            ..Default::default()
        };
        let t = Instant::now();
        let (total, _) = page_json(&store, &p)?;
        d.push(t.elapsed());
        totals += total;
    }
    out.push(stats("q= full text, 1 day, limit 100", d, totals));
    Ok(out)
}
