//! weir-agent: receives events at a site, commits each to a durable queue, and forwards the
//! queue to the aggregator over mutual-TLS QUIC.

pub mod config;
pub mod dedup;
pub mod enroll;
pub mod forwarder;
pub mod http;
pub mod packaging;
pub mod pipeline;
pub mod queue;
pub mod reload;
pub mod script;
pub mod service;
pub mod snmp;
pub mod syslog;
pub mod trap_policy;
mod udp_batch;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::AgentConfig;
use crate::forwarder::{Forwarder, LinkState};
use crate::queue::{Limits, Queue};

/// A started agent: where it listens, its queue and link state, and a handle to wait for it.
#[derive(Debug)]
pub struct Running {
    pub udp_addrs: Vec<SocketAddr>,
    pub tcp_addrs: Vec<SocketAddr>,
    pub tls_addrs: Vec<SocketAddr>,
    /// Where SNMP traps are received (empty when `[snmp] listen` is).
    pub trap_addrs: Vec<SocketAddr>,
    pub http_addr: Option<SocketAddr>,
    pub queue: Arc<Queue>,
    pub link: Arc<LinkState>,
    /// What SIGHUP reloads; subsystems add hooks with `reloader.register(...)`.
    pub reloader: Arc<crate::service::Reloader>,
    tracker: TaskTracker,
}

impl Running {
    /// Waits until every task has stopped (after the shutdown token is cancelled).
    pub async fn join(self) {
        self.tracker.close();
        self.tracker.wait().await;
    }
}

/// Opens the queue, binds every input, and starts the writer and the forwarder. Errors here
/// (a locked queue, a port in use, unreadable certificates) are returned before anything runs.
///
/// Shutdown order, under the forwarder's drain deadline: inputs stop, the writer commits what
/// they handed over, the forwarder waits for in-flight acks and closes the QUIC connection.
pub async fn start(config: AgentConfig, shutdown: CancellationToken) -> anyhow::Result<Running> {
    let metrics = weir_common::telemetry::prometheus();
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data_dir {}", config.data_dir.display()))?;
    // Fail now, not on every reconnect, if the TLS files are unusable.
    weir_certs::tls::client_config(
        &config.aggregator.ca,
        &config.aggregator.cert,
        &config.aggregator.key,
        &[weir_common::wire::ALPN],
    )
    .context("loading the agent's TLS files")?;
    let queue_path: PathBuf = config.data_dir.join("queue.redb");
    let limits = Limits {
        max_records: config.queue.max_records,
        max_bytes: config.queue.max_bytes.0,
    };
    let queue =
        Arc::new(tokio::task::spawn_blocking(move || Queue::open(&queue_path, limits)).await??);
    let stats = queue.stats()?;
    tracing::info!(records = stats.records, bytes = stats.bytes, queue = %queue.path().display(), "queue opened");

    let (sink, rx) = pipeline::channel_with_bytes(
        config.queue.channel_capacity,
        usize::try_from(config.queue.channel_max_bytes.0).unwrap_or(usize::MAX),
        dedup::DedupRules::new(&config.dedup),
    );
    let (committed_tx, committed_rx) = tokio::sync::watch::channel(0);
    let tracker = TaskTracker::new();
    let inputs_shutdown = shutdown.child_token();

    let listeners = syslog::Listeners::bind(&config.syslog).await?;
    let (udp_addrs, tcp_addrs) = (listeners.udp_addrs(), listeners.tcp_addrs());
    let tls_addrs = listeners.tls_addrs();
    let syslog_tls_reload = listeners.tls_reload(&config.syslog);
    listeners.spawn(
        &config.syslog,
        sink.clone(),
        &tracker,
        inputs_shutdown.clone(),
    );

    script::spawn(
        &config.script,
        &config.data_dir,
        sink.clone(),
        &tracker,
        inputs_shutdown.clone(),
    );
    let traps = snmp::Listeners::bind(&config.snmp, &config.data_dir).await?;
    let trap_addrs = traps.addrs();
    let trap_policy = trap_policy::TrapPolicyState::load(&config.data_dir);
    traps.spawn(
        sink.clone(),
        trap_policy.clone(),
        &tracker,
        inputs_shutdown.clone(),
    );

    let link = Arc::new(LinkState::default());
    let mut http_addr = None;
    if let Some(addr) = config.http.listen {
        let keys = match &config.http.api_key_file {
            Some(p) => weir_common::ingest::ApiKeys::load(p).map_err(anyhow::Error::msg)?,
            None => weir_common::ingest::ApiKeys::default(),
        };
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen for HTTP on tcp {addr} (in use?)"))?;
        http_addr = Some(listener.local_addr()?);
        let app = http::router(http::HttpState {
            sink: sink.clone(),
            keys: Arc::new(keys),
            metrics,
            link: link.clone(),
        })
        .layer(tower_http::limit::RequestBodyLimitLayer::new(
            config.http.max_body_bytes.0 as usize,
        ));
        let stop = inputs_shutdown.clone();
        tracker.spawn(async move {
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await
            {
                tracing::error!(error = %e, "HTTP server failed");
            }
        });
    }
    let input_drops = sink.drops.clone();
    // The writer ends when every sink is dropped: inputs hold clones, this is the last.
    drop(sink);
    tracker.spawn(pipeline::run_writer(
        queue.clone(),
        rx,
        committed_tx,
        pipeline::WriterOptions {
            drop_report_interval: config.queue.drop_report_interval.0,
            dedup_flush_interval: config.dedup.flush_interval.0,
            dedup_max_keys: config.dedup.max_keys,
            min_commit_interval: pipeline::MIN_COMMIT_INTERVAL,
        },
        shutdown.child_token(),
    ));
    tracker.spawn(publish_queue_gauges(queue.clone(), shutdown.child_token()));
    let forwarder = Forwarder::new(
        config.aggregator.clone(),
        queue.clone(),
        committed_rx,
        input_drops,
        link.clone(),
        trap_policy,
    );
    tracker.spawn(forwarder.run(shutdown.child_token()));
    let reloader = reload::reloader(&config);
    if let Some(hook) = syslog_tls_reload {
        reloader.register("syslog TLS certificate", hook);
    }
    tracker.spawn(crate::service::watch_cert_expiry(
        "weir_agent_certificate_expiry_seconds",
        config.aggregator.cert.clone(),
        reload::cert_not_after,
        shutdown.child_token(),
    ));
    tracing::info!(
        ?udp_addrs,
        ?tcp_addrs,
        ?tls_addrs,
        ?trap_addrs,
        ?http_addr,
        "agent started"
    );
    Ok(Running {
        udp_addrs,
        tcp_addrs,
        tls_addrs,
        trap_addrs,
        http_addr,
        queue,
        link,
        reloader,
        tracker,
    })
}

/// Publishes the queue's size, the age of its oldest record, and the kernel's UDP
/// receive-buffer drop count as Prometheus gauges.
async fn publish_queue_gauges(queue: Arc<Queue>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(2));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        let q = queue.clone();
        let Ok(Ok(stats)) = tokio::task::spawn_blocking(move || q.stats()).await else {
            continue;
        };
        metrics::gauge!("weir_agent_queue_records").set(stats.records as f64);
        metrics::gauge!("weir_agent_queue_bytes").set(stats.bytes as f64);
        let age = if stats.oldest_us == 0 {
            0.0
        } else {
            ((jiff::Timestamp::now().as_microsecond() - stats.oldest_us) as f64 / 1e6).max(0.0)
        };
        metrics::gauge!("weir_agent_queue_oldest_age_seconds").set(age);
        // UDP loss happens in the kernel, before the agent sees a datagram: make it visible.
        if let Some(n) = weir_common::telemetry::udp_rcvbuf_errors() {
            metrics::gauge!("weir_agent_kernel_udp_rcvbuf_errors").set(n as f64);
        }
    }
}

/// Runs until `shutdown` is cancelled.
pub async fn run(config: AgentConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    start(config, shutdown).await?.join().await;
    Ok(())
}
