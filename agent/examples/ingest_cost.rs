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
//! With `tcp` after the count (`ingest_cost 60000 tcp`), the lines go newline-framed through an
//! in-memory pipe into the TCP listener's per-connection reader
//! ([`weir_agent::syslog::read_stream`]: framing, batching, backpressure), like
//! `weir-loadgen bench-tcp`; the socket reads themselves are not included.
//!
//! Input is paced to the forwarder's reads (see `common`).

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use jiff::Timestamp;
use weir_agent::dedup::DedupConfig;
use weir_agent::syslog::{self, Parser};

/// Datagrams per submission: the UDP listener's `recvmmsg` batch.
const BATCH: usize = 64;

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
    let tcp = match std::env::args().nth(2).as_deref() {
        None | Some("udp") => false,
        Some("tcp") => true,
        Some(other) => anyhow::bail!("unknown input {other:?}: udp or tcp"),
    };
    let lines: Vec<Vec<u8>> = (0..n).map(line).collect();
    let dir = tempfile::tempdir()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let started = Instant::now();
    let read = if tcp {
        rt.block_on(run_tcp(lines, dir.path()))?
    } else {
        rt.block_on(run(&lines, dir.path()))?
    };
    let elapsed = started.elapsed();
    anyhow::ensure!(
        read == n,
        "the forwarder read {read} records for {n} lines: lost or duplicated"
    );
    // Includes the pre-generated input (about 250 bytes a line).
    let hwm = weir_common::telemetry::proc_status_kb(None, "VmHWM:").unwrap_or(0);
    println!("peak RSS: {hwm} kB");
    println!(
        "{n} lines in {:.2}s: {:.2} µs wall per line (all {n} read back exactly once)",
        elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1e6 / n as f64
    );
    Ok(())
}

async fn run(lines: &[Vec<u8>], dir: &std::path::Path) -> anyhow::Result<u64> {
    // Not decoded (the aggregator does that): postcard's first byte is the `Record` variant,
    // 0 for an event.
    let mut p = common::start(dir, &DedupConfig::default(), |_, w| {
        Ok(w.payload.first() == Some(&0))
    })?;
    let parser = Parser::utc();
    let peer = IpAddr::V4(Ipv4Addr::LOCALHOST);
    for chunk in lines.chunks(BATCH) {
        p.pace(chunk.len()).await?;
        let received_at = Timestamp::now();
        let batch = chunk
            .iter()
            .map(|l| syslog::encode(&parser, &p.sink, l, false, peer, "syslog_udp", received_at))
            .collect();
        p.sink.send_encoded(batch).await?;
    }
    Ok(p.finish().await?.0)
}

/// The TCP variant: lines written newline-framed into a pipe (64 at a time, paced like the UDP
/// variant) whose other end the real per-connection reader reads.
async fn run_tcp(lines: Vec<Vec<u8>>, dir: &std::path::Path) -> anyhow::Result<u64> {
    use tokio::io::AsyncWriteExt as _;
    let mut p = common::start(dir, &DedupConfig::default(), |_, w| {
        Ok(w.payload.first() == Some(&0))
    })?;
    let parser = std::sync::Arc::new(Parser::utc());
    let peer = std::net::SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 40000);
    // A socket's worth of buffering between the sender and the reader.
    let (mut tx, rx) = tokio::io::duplex(256 << 10);
    let reader = tokio::spawn(syslog::read_stream(
        rx,
        peer,
        parser,
        p.sink.clone(),
        64 << 10,
    ));
    let mut buf = Vec::with_capacity(BATCH * 201);
    for chunk in lines.chunks(BATCH) {
        p.pace(chunk.len()).await?;
        buf.clear();
        for l in chunk {
            buf.extend_from_slice(l);
            buf.push(b'\n');
        }
        tx.write_all(&buf).await?;
    }
    drop(tx);
    reader.await?;
    Ok(p.finish().await?.0)
}
