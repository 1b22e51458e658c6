//! Bulk `POST /api/v1/events` load: `weir-loadgen api-ingest` (against a running aggregator)
//! and `weir-loadgen bench-api` (starts one). Bodies are built before the clock starts, so the
//! figure measures the aggregator, not JSON generation on the same cores.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// What a run did.
#[derive(Debug)]
pub struct Outcome {
    pub events: u64,
    pub requests: u64,
    pub elapsed: Duration,
    /// Slowest request (a durable group commit included).
    pub max_latency: Duration,
}

impl Outcome {
    pub fn rate(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64()
    }
}

/// One bulk body of `n` distinct events (every message carries a unique `seq=N` token, so
/// dedup keeps them all).
pub fn body(first: u64, n: u64) -> Vec<u8> {
    let events: Vec<serde_json::Value> = (first..first + n)
        .map(|seq| {
            let severity = ["info", "warning", "error", "critical"][(seq % 4) as usize];
            serde_json::json!({
                "source": "loadgen",
                "hostname": format!("host-{}", seq % 64),
                "severity": severity,
                "message": format!("bulk ingest benchmark event seq={seq} payment latency over threshold"),
                "tags": {"bench": "api-ingest"}
            })
        })
        .collect();
    serde_json::to_vec(&events).expect("encode")
}

/// Posts `events` events in bodies of `batch` over `conns` concurrent connections.
pub async fn run(
    url: &str,
    key: &str,
    events: u64,
    batch: u64,
    conns: usize,
) -> anyhow::Result<Outcome> {
    if batch == 0 || conns == 0 {
        bail!("--batch and --conns must be at least 1");
    }
    let bodies: Arc<Vec<Body>> = Arc::new(
        (0..events.div_ceil(batch))
            .map(|i| {
                let first = i * batch;
                let n = batch.min(events - first);
                Body {
                    bytes: body(first, n),
                    events: n,
                }
            })
            .collect(),
    );
    let endpoint = format!("{}/api/v1/events", url.trim_end_matches('/'));
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..conns {
        let (bodies, next, endpoint, key) = (
            bodies.clone(),
            next.clone(),
            endpoint.clone(),
            key.to_string(),
        );
        tasks.spawn(async move {
            // One client per task: one keep-alive connection each.
            let client = reqwest::Client::builder()
                .pool_max_idle_per_host(1)
                .build()?;
            let (mut sent, mut requests, mut max) = (0u64, 0u64, Duration::ZERO);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(b) = bodies.get(i) else { break };
                let t = Instant::now();
                let resp = client
                    .post(&endpoint)
                    .header("x-api-key", &key)
                    .header("content-type", "application/json")
                    .body(b.bytes.clone())
                    .send()
                    .await
                    .context("POST /api/v1/events")?;
                let status = resp.status();
                if status.as_u16() != 202 {
                    let text = resp.text().await.unwrap_or_default();
                    bail!("POST answered {status}: {text}");
                }
                resp.bytes().await?;
                max = max.max(t.elapsed());
                sent += b.events;
                requests += 1;
            }
            anyhow::Ok((sent, requests, max))
        });
    }
    let mut out = Outcome {
        events: 0,
        requests: 0,
        elapsed: Duration::ZERO,
        max_latency: Duration::ZERO,
    };
    while let Some(r) = tasks.join_next().await {
        let (sent, requests, max) = r.context("load task")??;
        out.events += sent;
        out.requests += requests;
        out.max_latency = out.max_latency.max(max);
    }
    out.elapsed = start.elapsed();
    Ok(out)
}

/// A prebuilt request body.
struct Body {
    bytes: Vec<u8>,
    events: u64,
}

#[cfg(test)]
mod tests {
    #[test]
    fn bodies_parse_as_distinct_events() {
        let b = super::body(10, 3);
        let evs = weir_common::ingest::parse_events(&b).unwrap();
        assert_eq!(evs.len(), 3);
        assert!(evs[2].message.contains("seq=12"));
    }
}
