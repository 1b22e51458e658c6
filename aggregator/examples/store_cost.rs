//! Store-cost harness: pushes N syslog events through the aggregator's real ingest path — the
//! connection task's frame decode and [`weir_aggregator::alarm::prepare_records`] (decode,
//! processing, encode as stored) and the store writer's [`weir_aggregator::ingest::commit_group`] (one durable redb
//! transaction per group, alarm updates, replies) — into a temp redb file, then lets the
//! search indexes catch up and checks every event is stored and searchable exactly once.
//!
//! Meant for instruction counts, which are repeatable on a noisy shared machine:
//!
//! ```sh
//! cargo build --release -p weir-aggregator --example store_cost
//! for n in 20000 60000; do
//!   valgrind --tool=callgrind --callgrind-out-file=cg.$n \
//!     --toggle-collect='store_cost::measured' --toggle-collect='*run_indexer*' \
//!     ./target/release/examples/store_cost $n
//! done
//! # instructions per event = (Ir(60000) - Ir(20000)) / 40000 (setup cancels out)
//! ```
//!
//! The toggles count only the aggregator's work: [`measured`] (prepare, commit, waiting for
//! the search indexes) and the background indexer's thread; making the input and checking the
//! result are left out.
//!
//! Events are what the agent's syslog listener makes of 200-byte RFC 3164 lines (parsed by
//! [`weir_agent::syslog::parse`], raw payload kept): 20 sites with one agent each, 100 hosts
//! per site, mixed severities, every message distinct. Batches hold the agent's default
//! `batch_max_records` (2000); `--group G` commits G batches (from G agents in turn) per
//! transaction, as the writer does when that many are waiting (default 1: one agent draining
//! while the writer keeps up, the least amortised case). `--max-lag L` sets
//! `index_max_lag_events` (0: the indexer never defers to ingest nor yields to it, as before
//! it did). Not included: QUIC and TLS (the batch frames are decoded from memory, as the
//! session decodes them from its read buffer).
//!
//! Besides the times it reports how long ingest commits waited for the store's write lock
//! (held by indexer transactions meanwhile), and what a search pays per event not indexed
//! yet.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Instant;

use jiff::Timestamp;
use tokio::sync::mpsc;
use weir_aggregator::alarm::persist::Engine;
use weir_aggregator::ingest::{IngestItem, commit_group};
use weir_aggregator::query::{EventFilter, EventParams};
use weir_aggregator::store::Store;
use weir_common::Record;
use weir_common::wire::{
    AgentFrame, AgentFrameRef, Batch, HEADER_LEN, WireRecord, decode_body_ref, encode_frame,
};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SITES: u64 = 20;
const HOSTS: u64 = 100;
/// The agent's default `aggregator.batch_max_records`.
const BATCH: u64 = 2000;

/// PRI values for crit, err, warning, notice, info (facility local0), info most common.
const PRI: [u8; 8] = [130, 131, 132, 133, 134, 134, 134, 134];

fn line(site: u64, seq: u64) -> Vec<u8> {
    use std::io::Write as _;
    let host = (seq * 7 + site) % HOSTS;
    let pri = PRI[(seq % PRI.len() as u64) as usize];
    let mut buf = Vec::with_capacity(200);
    let _ = write!(
        buf,
        "<{pri}>Nov 21 12:{:02}:{:02} s{site}-host{host} app[42]: site={site} seq={seq} interface Gi0/{} changed state ",
        (seq / 60) % 60,
        seq % 60,
        seq % 48
    );
    buf.resize(200, b'x');
    buf
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut n: u64 = 100_000;
    let mut group: u64 = 1;
    let mut max_lag = None;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--group" => group = args.next().unwrap_or_default().parse()?,
            "--max-lag" => max_lag = Some(args.next().unwrap_or_default().parse()?),
            other => n = other.parse()?,
        }
    }
    anyhow::ensure!(group >= 1, "--group must be at least 1");
    let dir = tempfile::tempdir()?;
    let store = Arc::new(Store::open(&dir.path().join("events.redb"))?);
    if let Some(m) = max_lag {
        store.set_index_max_lag(m);
    }
    let alarms = Engine::new(store.clone(), Default::default())?;
    let correlation = weir_aggregator::correlation::Correlator::start(
        store.clone(),
        Arc::new(Default::default()),
        Default::default(),
    )?;
    let peer = IpAddr::V4(Ipv4Addr::LOCALHOST);

    // Batches in round-robin over the sites' agents, pre-encoded as they arrive on the wire.
    let mut next_seq = vec![1u64; SITES as usize];
    let mut batches = Vec::new();
    let mut made = 0;
    let mut site = 0;
    while made < n {
        let count = (n - made).min(BATCH);
        let first = next_seq[site as usize];
        let received_at = Timestamp::now();
        let records = (first..first + count)
            .map(|seq| WireRecord {
                seq,
                payload: Record::Event(weir_agent::syslog::parse(
                    &line(site, seq),
                    peer,
                    received_at,
                ))
                .to_bytes(),
            })
            .collect();
        let frame = AgentFrame::Batch(Batch {
            first_seq: first,
            last_seq: first + count - 1,
            records,
        });
        let mut body = Vec::new();
        encode_frame(&frame, &mut body)?;
        body.drain(..HEADER_LEN);
        batches.push((site, body));
        next_seq[site as usize] += count;
        made += count;
        site = (site + 1) % SITES;
    }

    let names: Vec<(Arc<str>, Arc<str>)> = (0..SITES)
        .map(|s| (format!("site-{s}").into(), format!("gw-{s}").into()))
        .collect();
    let started = Instant::now();
    let committed = measured(&store, &alarms, &correlation, &names, &batches, group)?;
    let waits = store.ingest_lock_waits();
    // What a search pays for the events not indexed yet: the same search now and once indexed.
    let lag = store.index_lag();
    let tail_search = timed_search(&store)?;
    store.wait_indexed(std::time::Duration::from_secs(600))?;
    let indexed = started.elapsed();
    let indexed_search = timed_search(&store)?;

    // Every event stored once, and every one found by an indexed search.
    anyhow::ensure!(store.len()? == n, "{} stored of {n}", store.len()?);
    let params = EventParams {
        severity: Some(">=debug".into()),
        hidden: Some("include".into()),
        ..Default::default()
    };
    let filter = EventFilter::parse(&params).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let page = store.search(&filter, 1, None)?;
    anyhow::ensure!(page.total == n, "{} found by search of {n}", page.total);
    for (s, (site, name)) in names.iter().enumerate() {
        let want = next_seq[s] - 1;
        let got = store.committed_seq(site, name)?;
        anyhow::ensure!(got == want, "{site}/{name}: committed {got}, sent {want}");
    }

    let hwm = weir_common::telemetry::proc_status_kb(None, "VmHWM:").unwrap_or(0);
    println!("peak RSS: {hwm} kB");
    println!(
        "ingest commits waited for the write lock: {:.1} ms in all, {:.1} ms at most, over {} commits (index_max_lag_events = {})",
        waits.total.as_secs_f64() * 1e3,
        waits.max.as_secs_f64() * 1e3,
        waits.commits,
        store.index_max_lag(),
    );
    println!(
        "a q= search over everything: {:.1} ms with {lag} events not indexed, {:.1} ms with all indexed ({:.2} µs more per unindexed event)",
        tail_search.as_secs_f64() * 1e3,
        indexed_search.as_secs_f64() * 1e3,
        (tail_search.as_secs_f64() - indexed_search.as_secs_f64()) * 1e6 / lag.max(1) as f64,
    );
    println!(
        "{n} events, {group} batch(es) of {BATCH} per transaction: committed in {:.2}s ({:.2} µs wall per event), indexed after {:.2}s ({:.2} µs per event); all stored and found exactly once",
        committed.as_secs_f64(),
        committed.as_secs_f64() * 1e6 / n as f64,
        indexed.as_secs_f64(),
        indexed.as_secs_f64() * 1e6 / n as f64,
    );
    Ok(())
}

/// How long a `q=` search that matches nothing takes (every event is looked at: through the
/// time index, or decoded when not indexed yet).
fn timed_search(store: &Store) -> anyhow::Result<std::time::Duration> {
    let params = EventParams {
        q: Some("no such text".into()),
        hidden: Some("include".into()),
        ..Default::default()
    };
    let filter = EventFilter::parse(&params).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let started = Instant::now();
    let page = store.search(&filter, 50, None)?;
    anyhow::ensure!(page.total == 0, "{} events match nothing", page.total);
    Ok(started.elapsed())
}

/// The aggregator's work, timed and (under callgrind) counted: each group of batches decoded
/// from its frame and prepared as a connection task does, then committed by the writer's own
/// function. Returns the time until the last commit.
#[inline(never)]
fn measured(
    store: &Store,
    alarms: &Engine,
    correlation: &weir_aggregator::correlation::Correlator,
    names: &[(Arc<str>, Arc<str>)],
    batches: &[(u64, Vec<u8>)],
    group: u64,
) -> anyhow::Result<std::time::Duration> {
    let started = Instant::now();
    let processor = alarms.processor();
    let (reply, mut replies) = mpsc::unbounded_channel();
    let poisoned = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut api_seqs = weir_aggregator::api_ingest::Sequencer::default();
    for chunk in batches.chunks(group as usize) {
        let items = chunk
            .iter()
            .map(|(site, body)| {
                let (s, name) = &names[*site as usize];
                let Ok(AgentFrameRef::Batch(batch)) = decode_body_ref(body) else {
                    anyhow::bail!("a batch frame does not decode");
                };
                let (records, outcomes) = weir_aggregator::alarm::prepare_records(
                    &processor,
                    s,
                    name,
                    &batch.records,
                    Timestamp::now(),
                );
                Ok(IngestItem {
                    site: s.clone(),
                    name: name.clone(),
                    records,
                    outcomes,
                    reply: reply.clone(),
                    poisoned: poisoned.clone(),
                    api: None,
                })
            })
            .collect::<anyhow::Result<_>>()?;
        commit_group(store, alarms, correlation, &mut api_seqs, items);
        for _ in chunk {
            anyhow::ensure!(
                matches!(replies.try_recv(), Ok(Ok(_))),
                "a commit failed or did not reply"
            );
        }
    }
    Ok(started.elapsed())
}
