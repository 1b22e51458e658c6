//! weir-aggregator: stores every agent's events exactly once and serves the NOC's REST API.

pub mod alarm;
pub mod alertmanager;
pub mod api;
pub mod api_alarms;
pub mod api_ingest;
pub mod api_rules;
pub mod archive;
pub mod auth;
pub mod config;
pub mod correlate;
pub mod correlation;
pub mod histogram;
pub mod index;
pub mod indexer;
pub mod ingest;
pub mod keys;
pub mod keys_api;
pub mod openapi;
pub mod packaging;
pub mod query;
pub mod quickstart;
pub mod registry;
pub mod reload;
pub mod retention;
pub mod sites;
pub mod store;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::AggregatorConfig;
use crate::store::Store;

/// A started aggregator: where it listens, and a handle to wait for it to stop.
#[derive(Debug)]
pub struct Running {
    pub quic_addr: SocketAddr,
    pub api_addr: SocketAddr,
    pub store: Arc<Store>,
    /// What SIGHUP reloads; subsystems add hooks with `reloader.register(...)`.
    pub reloader: Arc<weir_agent::service::Reloader>,
    /// The live correlation engine (rule reloads: [`correlation::Correlator::reload_rules`]).
    pub correlation: Arc<correlation::Correlator>,
    tracker: TaskTracker,
    writer: std::thread::JoinHandle<()>,
}

impl Running {
    /// Waits until every task has stopped (after the shutdown token is cancelled).
    pub async fn join(self) {
        self.tracker.close();
        self.tracker.wait().await;
        let correlation = self.correlation;
        let writer = self.writer;
        // The writer stops first (its last commits still reach the engine), then the engine
        // saves its state.
        let _ = tokio::task::spawn_blocking(move || {
            let _ = writer.join();
            correlation.stop();
        })
        .await;
    }
}

/// Opens the store, binds the QUIC and HTTP listeners, and starts serving. Errors here (a bad
/// certificate, a port in use) are returned before anything runs.
pub async fn start(
    config: AggregatorConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<Running> {
    let metrics = weir_common::telemetry::prometheus();
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data_dir {}", config.data_dir.display()))?;
    let store_path = config.data_dir.join("events.redb");
    let store = Arc::new(Store::open_with_cache(&store_path, config.store_cache.0)?);
    store.set_index_max_lag(config.index_max_lag_events);
    // Bootstrap keys must exist (they are checked like before); scoped keys are optional.
    weir_common::ingest::ApiKeys::load(&config.api.api_key_file).map_err(anyhow::Error::msg)?;
    let bootstrap = std::fs::read_to_string(&config.api.api_key_file)
        .with_context(|| format!("reading {}", config.api.api_key_file.display()))?;
    let keyring = keys::Keyring::new(&bootstrap, Some(keys::keys_path(&config.data_dir)));
    drop(bootstrap);
    let auth = Arc::new(auth::Auth::new(
        keyring,
        config.api.rate_limit_per_second,
        config.api.rate_limit_burst,
    ));
    let registry = Arc::new(registry::Registry::default());
    let alarms = Arc::new(alarm::persist::Engine::new(
        store.clone(),
        config.processing.clone(),
    )?);

    let correlation = correlation::Correlator::start(
        store.clone(),
        registry.clone(),
        config.correlation.clone(),
    )?;

    let server_config = ingest::server_config(&config.quic)?;
    let socket = std::net::UdpSocket::bind(config.quic.listen).with_context(|| {
        format!(
            "cannot listen for agents on udp {} (in use?)",
            config.quic.listen
        )
    })?;
    // The kernel's default (about 200 KiB) overflows when a few agents send their batch frames
    // at once; QUIC then re-sends what was dropped, at a cost to both ends.
    weir_common::net::grow_receive_buffer(
        (&socket).into(),
        config.quic.listen,
        usize::try_from(config.quic.receive_buffer.0).unwrap_or(usize::MAX),
        true,
        "QUIC socket's",
        "be re-sent by the agents",
    );
    let endpoint = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(server_config),
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .context("cannot start the QUIC endpoint for agents")?;
    let quic_addr = endpoint.local_addr()?;
    let listener = tokio::net::TcpListener::bind(config.api.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen for the API on tcp {} (in use?)",
                config.api.listen
            )
        })?;
    let api_addr = listener.local_addr()?;

    let (writer_tx, writer_rx) = tokio::sync::mpsc::channel(config.quic.ingest_queue_batches);
    let writer = {
        let store = store.clone();
        let alarms = alarms.clone();
        let correlation = correlation.clone();
        std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || ingest::run_writer(store, alarms, correlation, writer_rx))?
    };
    let tracker = TaskTracker::new();
    let api_ingest = Arc::new(
        api_ingest::ApiIngest::new(
            writer_tx.clone(),
            &config.api.site,
            config.api.dedup.clone(),
            config.api.max_body_bytes.0 as usize,
        )
        .with_processing(alarms.clone()),
    );
    let ingest = Arc::new(ingest::Ingest {
        store: store.clone(),
        registry: registry.clone(),
        writer: writer_tx,
        alarms: alarms.clone(),
        api_site: config.api.site.as_str().into(),
    });
    tracker.spawn(alarm::persist::run_expiry(
        alarms.clone(),
        shutdown.child_token(),
    ));
    tracker.spawn(ingest::run_listener(
        endpoint.clone(),
        ingest,
        config.quic.max_connections,
        tracker.clone(),
        shutdown.child_token(),
    ));
    if let Some(crl) = config.quic.crl.clone() {
        tracker.spawn(ingest::run_crl_watch(
            endpoint.clone(),
            config.quic.clone(),
            crl,
            registry.clone(),
            shutdown.child_token(),
        ));
    }
    tracker.spawn(retention::run(
        store.clone(),
        config.retention.clone(),
        shutdown.child_token(),
    ));
    let reloader = reload::reloader(endpoint.clone(), config.quic.clone());
    {
        // Transformation rules and event definitions: a file that fails validation changes
        // nothing (the hook reports the error; the old rules stay in force).
        let alarms = alarms.clone();
        reloader.register("transforms and definitions", move || {
            let (t, d) = alarms.reload()?;
            Ok(format!("{t} transformation rules, {d} event definitions"))
        });
    }
    {
        // Correlation rules: unchanged rules keep their windows; a bad file changes nothing.
        let correlation = correlation.clone();
        reloader.register("correlation rules", move || {
            let r = correlation.reload_rules()?;
            Ok(format!(
                "correlation rules ({} kept, {} reset, {} removed)",
                r.kept.len(),
                r.reset.len(),
                r.removed.len()
            ))
        });
    }
    tracker.spawn(weir_agent::service::watch_cert_expiry(
        "weir_aggregator_certificate_expiry_seconds",
        config.quic.cert.clone(),
        reload::cert_not_after,
        shutdown.child_token(),
    ));
    let app = api::router(api::ApiState {
        store: store.clone(),
        registry,
        auth,
        ingest: api_ingest,
        alarms: alarms.clone(),
        correlation: correlation.clone(),
        metrics,
    })
    .layer(tower_http::limit::RequestBodyLimitLayer::new(
        config.api.max_body_bytes.0 as usize,
    ))
    // The limit layer answers plain text; clients get a problem document like every error.
    .layer(axum::middleware::from_fn(auth::problem_for_413))
    .layer(tower_http::timeout::TimeoutLayer::with_status_code(
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
        config.api.request_timeout.0,
    ));
    let api_shutdown = shutdown.child_token();
    tracker.spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { api_shutdown.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "API server failed");
        }
    });
    let ep = endpoint.clone();
    let quic_shutdown = shutdown.child_token();
    tracker.spawn(async move {
        quic_shutdown.cancelled().await;
        let _ = tokio::time::timeout(std::time::Duration::from_secs(3), ep.wait_idle()).await;
    });
    tracing::info!(quic = %quic_addr, api = %api_addr, store = %store_path.display(), "aggregator started");
    Ok(Running {
        quic_addr,
        api_addr,
        store,
        reloader,
        correlation,
        tracker,
        writer,
    })
}

/// Runs until `shutdown` is cancelled.
pub async fn run(config: AggregatorConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let running = start(config, shutdown).await?;
    running.join().await;
    Ok(())
}
