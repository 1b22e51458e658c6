//! What the cost harnesses (`ingest_cost`, `trap_cost`) share: a queue in a temp dir, the real
//! sink and writer, and a stand-in for the forwarder that reads batches as commits land (2000
//! records, 4 MiB: its defaults), checks every record, and acknowledges them, as an aggregator
//! that stores everything at once would.
//!
//! Input is paced to that reader (at most [`AHEAD`] records not yet read back), as in a
//! sustained run where the link keeps up; unpaced, the writer would commit the whole input in a
//! handful of giant groups and the reader would drain a backlog, which is the drain benchmark's
//! case, not this one.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use weir_agent::dedup::{DedupConfig, DedupRules};
use weir_agent::pipeline::{self, Sink, WriterOptions};
use weir_agent::queue::{Limits, Queue};
use weir_common::wire::WireRecord;

/// Most records submitted but not yet read back.
pub const AHEAD: u64 = 4096;

pub struct Pipeline {
    pub sink: Sink,
    read_rx: watch::Receiver<u64>,
    sent: u64,
    shutdown: CancellationToken,
    writer: JoinHandle<()>,
    reader: JoinHandle<anyhow::Result<u64>>,
}

/// Starts the writer and the reader. `check(read_so_far, record)` says whether a record read
/// back counts (and fails the run on a wrong one).
pub fn start(
    dir: &Path,
    dedup: &DedupConfig,
    mut check: impl FnMut(u64, &WireRecord) -> anyhow::Result<bool> + Send + 'static,
) -> anyhow::Result<Pipeline> {
    let queue = Arc::new(Queue::open(
        &dir.join("queue.redb"),
        Limits {
            max_records: 20_000_000,
            max_bytes: 8 << 30,
        },
    )?);
    let (sink, rx) = pipeline::channel(16_384, DedupRules::new(dedup));
    let (committed_tx, mut committed_rx) = watch::channel(0u64);
    let (read_tx, read_rx) = watch::channel(0u64);
    let shutdown = CancellationToken::new();
    let writer = tokio::spawn(pipeline::run_writer(
        queue.clone(),
        rx,
        committed_tx,
        WriterOptions {
            drop_report_interval: Duration::from_secs(3600),
            dedup_flush_interval: Duration::from_millis(500),
            dedup_max_keys: dedup.max_keys,
            min_commit_interval: pipeline::MIN_COMMIT_INTERVAL,
        },
        shutdown.clone(),
    ));
    let reader = tokio::spawn(async move {
        let mut cursor = 0u64;
        let mut read = 0u64;
        loop {
            let ended = committed_rx.changed().await.is_err();
            loop {
                let q = queue.clone();
                let batch = tokio::task::spawn_blocking(move || q.read_from(cursor, 2000, 4 << 20))
                    .await??;
                let Some(last) = batch.last() else { break };
                cursor = last.seq + 1;
                for w in &batch {
                    if check(read, w)? {
                        read += 1;
                    }
                }
                read_tx.send_replace(read);
                let q = queue.clone();
                let upto = cursor - 1;
                tokio::task::spawn_blocking(move || q.ack(upto)).await??;
            }
            if ended {
                return anyhow::Ok(read);
            }
        }
    });
    Ok(Pipeline {
        sink,
        read_rx,
        sent: 0,
        shutdown,
        writer,
        reader,
    })
}

impl Pipeline {
    /// Waits until the reader is within [`AHEAD`] records, then counts `n` more as submitted.
    pub async fn pace(&mut self, n: usize) -> anyhow::Result<()> {
        let sent = self.sent;
        self.read_rx
            .wait_for(|read| sent <= read + AHEAD)
            .await
            .map_err(|_| anyhow::anyhow!("the reader stopped"))?;
        self.sent += n as u64;
        Ok(())
    }

    /// Stops the writer once everything submitted is committed; returns how many records the
    /// reader counted and the inputs' drop counts.
    pub async fn finish(self) -> anyhow::Result<(u64, BTreeMap<String, u64>)> {
        let drops = self.sink.drops.snapshot();
        drop(self.sink);
        self.shutdown.cancel();
        self.writer.await?;
        Ok((self.reader.await??, drops))
    }
}
