//! Trap-cost harness: pushes N prebuilt SNMP traps through the agent's real per-datagram path —
//! [`weir_agent::snmp::take_datagram`], as the trap listener calls it for each datagram:
//! BER decode, community check or USM authentication and decryption, mapping to an event,
//! the `discardtraps` policy check and encoding for the queue — then through the sink, the
//! writer (dedup off, as `weir-loadgen bench-trap` runs) and group commits into a redb queue in
//! a temp dir, and reads every record back, checking each trap came out exactly once with its
//! own `seq=N` varbind.
//!
//! Meant for instruction counts, which are repeatable on a noisy shared machine:
//!
//! ```sh
//! cargo build --release -p weir-agent --example trap_cost
//! for n in 10000 30000; do   # v2c; add `v3` after N for authPriv SHA/AES
//!   valgrind --tool=callgrind --callgrind-out-file=cg.$n \
//!     --toggle-collect='trap_cost::take_batch' ./target/release/examples/trap_cost $n
//! done
//! # instructions per trap = (Ir(30000) - Ir(10000)) / 20000 (setup cancels out)
//! ```
//!
//! With `--toggle-collect` only the per-datagram path is counted (everything before the
//! sink: what the trap input itself costs); without it, the whole run, queue included.
//!
//! The traps are those `weir-trapgen` sends: v2c community `public`, or v3 user `weir`
//! SHA/AES from engine `80001f8804776569722d6c6f616467656e`, trap OID
//! 1.3.6.1.4.1.8072.2.3.0.1 and one varbind `seq=N`. Not included: the receive syscalls.

mod common;

use std::net::SocketAddr;
use std::time::Instant;

use jiff::Timestamp;
use weir_agent::dedup::DedupConfig;
use weir_agent::pipeline::Sink;
use weir_agent::snmp::lib_adapter::{LocalEngine, Processor, encode};
use weir_agent::snmp::{self, Auth, Batch, Priv, UserSpec};
use weir_common::Record;
use weir_common::trap_policy::CompiledPolicy;

/// Datagrams per hand-over: about what one listener wakeup takes at 100k traps/s.
const BATCH: usize = 64;
const TRAP_OID: &str = "1.3.6.1.4.1.8072.2.3.0.1";
const SEQ_OID: &str = "1.3.6.1.4.1.8072.2.3.2.1";
const SENDER_ENGINE: &str = "80001f8804776569722d6c6f616467656e";

fn user() -> UserSpec {
    UserSpec {
        name: "weir".into(),
        auth: Auth::Sha,
        auth_password: "weir-auth-pass".into(),
        privacy: Priv::Aes,
        priv_password: "weir-priv-pass".into(),
        engine_ids: vec![],
    }
}

fn traps(n: u64, v3: bool) -> anyhow::Result<Vec<Vec<u8>>> {
    let engine =
        weir_agent::snmp::config::parse_engine_id(SENDER_ENGINE).map_err(anyhow::Error::msg)?;
    let sender = encode::V3Sender::new(&engine, &user()).map_err(anyhow::Error::msg)?;
    (0..n)
        .map(|i| {
            let seq = format!("seq={i}");
            let vbs = [(SEQ_OID, seq.as_str())];
            if v3 {
                // A new boots every 1,000 traps: a run longer than USM's 150 s time window
                // (under callgrind) would otherwise be refused as replays.
                sender.trap(i as i32, 1 + (i / 1000) as u32, 100, TRAP_OID, &vbs)
            } else {
                encode::v2c_trap("public", i as i32, i as u32, TRAP_OID, &vbs)
            }
            .map_err(anyhow::Error::msg)
        })
        .collect()
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let n: u64 = args
        .next()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(100_000);
    let v3 = match args.next().as_deref() {
        None | Some("v2c") => false,
        Some("v3") => true,
        Some(other) => anyhow::bail!("unknown version {other:?}: v2c or v3"),
    };
    let datagrams = traps(n, v3)?;
    let engine = LocalEngine {
        engine_id: weir_agent::snmp::config::parse_engine_id("8000000001020304")
            .map_err(anyhow::Error::msg)?,
        boots: 1,
    };
    let processor = Processor::new(&["public".into()], &[user()], engine)?;
    let dir = tempfile::tempdir()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let started = Instant::now();
    let (read, drops) = rt.block_on(run(&datagrams, processor, dir.path()))?;
    let elapsed = started.elapsed();
    anyhow::ensure!(drops.is_empty(), "traps were dropped: {drops:?}");
    anyhow::ensure!(
        read == n,
        "the forwarder read {read} records for {n} traps: lost or duplicated"
    );
    println!(
        "{n} {} traps in {:.2}s: {:.2} µs wall per trap (all {n} read back exactly once)",
        if v3 { "v3 authPriv SHA/AES" } else { "v2c" },
        elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1e6 / n as f64
    );
    Ok(())
}

/// The measured part: what the listener does for one wakeup's datagrams.
#[inline(never)]
fn take_batch(
    processor: &mut Processor,
    policy: &CompiledPolicy,
    sink: &Sink,
    chunk: &[Vec<u8>],
    peer: SocketAddr,
    batch: &mut Batch,
) {
    let received_at = Timestamp::now();
    for d in chunk {
        let report = snmp::take_datagram(processor, policy, sink, d, peer, received_at, batch);
        assert!(report.is_none(), "a trap got a Report");
    }
}

async fn run(
    datagrams: &[Vec<u8>],
    mut processor: Processor,
    dir: &std::path::Path,
) -> anyhow::Result<(u64, std::collections::BTreeMap<String, u64>)> {
    let mut dedup = DedupConfig::default();
    dedup.snmp_trap.window = weir_common::config::HumanDuration::secs(0);
    // Each record must be the next trap's event (seq order is kept from datagram to queue).
    let mut p = common::start(dir, &dedup, |read, w| {
        let Record::Event(ev) = postcard::from_bytes::<Record>(&w.payload)? else {
            anyhow::bail!("record {} is not an event", w.seq);
        };
        let want = format!("string:seq={read}");
        anyhow::ensure!(
            ev.tags.get(&format!("vb.{SEQ_OID}")) == Some(&want)
                && ev.tag.as_deref() == Some("SNMP_TRAP_1.3.6.1.4.1.8072.2.3.0.1"),
            "record {} is not trap {read}: {ev:?}",
            w.seq
        );
        Ok(true)
    })?;
    let policy = CompiledPolicy::default();
    let peer: SocketAddr = "127.0.0.1:40000".parse()?;
    let mut batch = Batch::default();
    for chunk in datagrams.chunks(BATCH) {
        p.pace(chunk.len()).await?;
        take_batch(&mut processor, &policy, &p.sink, chunk, peer, &mut batch);
        p.sink
            .send_encoded(std::mem::take(&mut batch.records))
            .await?;
    }
    p.finish().await
}
