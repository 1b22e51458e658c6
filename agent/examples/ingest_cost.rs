//! Ingest-cost harness: pushes N syslog lines through the agent's real hot path — parse,
//! dedup tagging and encoding ([`weir_agent::syslog::encode`], as the UDP listener does per
//! datagram), the sink, the writer's dedup and group commits into a redb queue in a temp dir,
//! and the forwarder's reads and acks — and checks every line came out exactly once.
//!
//! Meant for instruction counts, which are repeatable on a noisy shared machine:
//!
//! ```sh
//! cargo build --release -p weir-agent --example ingest_cost
//! for n in 20000 60000; do
//!   valgrind --tool=callgrind --callgrind-out-file=cg.$n ./target/release/examples/ingest_cost $n
//! done
//! # instructions per message = (Ir(60000) - Ir(20000)) / 40000 (setup cancels out)
//! ```
//!
//! Lines are 200 bytes, RFC 3164, each with a unique `seq=N` (like `weir-loadgen bench-udp`),
//! so dedup keeps every one. Not included: the `recvmmsg` call itself and the QUIC send.
//!
//! The input is paced to the forwarder (at most [`AHEAD`] lines not yet read back), as in a
//! sustained run where the link keeps up; unpaced, the writer would commit the whole input in
//! a handful of giant groups and the forwarder would read a backlog, which is the drain
//! benchmark's case, not this one.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use tokio_util::sync::CancellationToken;
use weir_agent::dedup::{DedupConfig, DedupRules};
use weir_agent::pipeline::{self, WriterOptions};
use weir_agent::queue::{Limits, Queue};
use weir_agent::syslog::{self, Parser};

/// Datagrams per submission: the UDP listener's `recvmmsg` batch.
const BATCH: usize = 64;

/// Most lines submitted but not yet read back by the forwarder.
const AHEAD: u64 = 4096;

fn line(seq: u64) -> Vec<u8> {
    use std::io::Write as _;
    let mut buf = Vec::with_capacity(200);
    let _ = write!(buf, "<134>Nov 21 12:00:00 loadgen-host app[42]: seq={seq} ");
    buf.resize(200, b'x');
    buf
}

fn main() -> anyhow::Result<()> {
    let n: u64 = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(100_000);
    let lines: Vec<Vec<u8>> = (0..n).map(line).collect();
    let dir = tempfile::tempdir()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let started = Instant::now();
    let read = rt.block_on(run(&lines, dir.path()))?;
    let elapsed = started.elapsed();
    anyhow::ensure!(
        read == n,
        "the forwarder read {read} records for {n} lines: lost or duplicated"
    );
    let hwm = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .map(str::to_string)
        })
        .unwrap_or_default();
    // Includes the pre-generated input (about 250 bytes a line).
    println!("peak RSS: {}", hwm.trim_start_matches("VmHWM:").trim());
    println!(
        "{n} lines in {:.2}s: {:.2} µs wall per line (all {n} read back exactly once)",
        elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1e6 / n as f64
    );
    Ok(())
}

async fn run(lines: &[Vec<u8>], dir: &std::path::Path) -> anyhow::Result<u64> {
    let queue = Arc::new(Queue::open(
        &dir.join("queue.redb"),
        Limits {
            max_records: 20_000_000,
            max_bytes: 8 << 30,
        },
    )?);
    let (sink, rx) = pipeline::channel(16_384, DedupRules::new(&DedupConfig::default()));
    let (committed_tx, mut committed_rx) = tokio::sync::watch::channel(0u64);
    let (read_tx, mut read_rx) = tokio::sync::watch::channel(0u64);
    let shutdown = CancellationToken::new();
    let writer = tokio::spawn(pipeline::run_writer(
        queue.clone(),
        rx,
        committed_tx,
        WriterOptions {
            drop_report_interval: Duration::from_secs(3600),
            dedup_flush_interval: Duration::from_millis(500),
            dedup_max_keys: 65_536,
        },
        shutdown.clone(),
    ));
    // The forwarder's side: read batches as commits land (2000 records, 4 MiB, its defaults)
    // and acknowledge them, as an aggregator that stores everything at once would.
    let q = queue.clone();
    let forwarder = tokio::spawn(async move {
        let mut cursor = 0u64;
        let mut read = 0u64;
        loop {
            let ended = committed_rx.changed().await.is_err();
            loop {
                let q2 = q.clone();
                let batch =
                    tokio::task::spawn_blocking(move || q2.read_from(cursor, 2000, 4 << 20))
                        .await??;
                let Some(last) = batch.last() else { break };
                cursor = last.seq + 1;
                // Not decoded (the aggregator does that): postcard's first byte is the
                // `Record` variant, 0 for an event.
                read += batch
                    .iter()
                    .filter(|w| w.payload.first() == Some(&0))
                    .count() as u64;
                read_tx.send_replace(read);
                let q2 = q.clone();
                let upto = cursor - 1;
                tokio::task::spawn_blocking(move || q2.ack(upto)).await??;
            }
            if ended {
                return anyhow::Ok(read);
            }
        }
    });
    let parser = Parser::utc();
    let peer = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let mut sent = 0u64;
    for chunk in lines.chunks(BATCH) {
        read_rx
            .wait_for(|read| sent <= read + AHEAD)
            .await
            .map_err(|_| anyhow::anyhow!("the forwarder stopped"))?;
        sent += chunk.len() as u64;
        let received_at = Timestamp::now();
        let batch = chunk
            .iter()
            .map(|l| syslog::encode(&parser, &sink, l, false, peer, "syslog_udp", received_at))
            .collect();
        sink.send_encoded(batch).await?;
    }
    drop(sink);
    shutdown.cancel();
    writer.await?;
    forwarder.await?
}
