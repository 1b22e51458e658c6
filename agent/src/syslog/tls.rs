//! Syslog over TLS (RFC 5425, port 6514): rustls with the aws-lc-rs provider, the server
//! certificate and key from `[syslog] tls_cert` / `tls_key`, and, when `tls_client_ca` is set,
//! a required client certificate signed by that CA.
//!
//! Frames are octet-counted as RFC 5425 says; newline framing is accepted too (the framing is
//! detected per connection, see [`super::framing`]). A connection counts against the same
//! limit as TCP ones; the handshake must finish within [`HANDSHAKE_TIMEOUT`]. Failed handshakes
//! are counted (`weir_agent_dropped_total{reason="tls_handshake"}`) and logged rate-limited,
//! since anyone who can reach the port can cause them.
//!
//! SIGHUP reloads the certificate, key and client CA ([`ConfigSlot::reload`]): every new
//! connection takes the current config, so a renewed certificate is served from the next
//! handshake while open connections carry on with the one they were made with.

use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use super::stream::{StreamSettings, run_connection};
use crate::pipeline::Sink;

/// Longest a client may take to finish the TLS handshake; it holds a connection permit.
pub(super) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The rustls server config for syslog over TLS: TLS 1.2 and 1.3 (network devices often only
/// speak 1.2), `cert` (a PEM chain) and `key`, and client certificates required and checked
/// against `client_ca` when it is given.
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> anyhow::Result<ServerConfig> {
    let provider = weir_certs::tls::provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("the TLS provider supports no protocol version")?;
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in weir_certs::tls::load_certs(ca)
                .with_context(|| format!("[syslog] tls_client_ca {}", ca.display()))?
            {
                roots.add(c).with_context(|| {
                    format!(
                        "[syslog] tls_client_ca {}: not a usable CA certificate",
                        ca.display()
                    )
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .with_context(|| format!("[syslog] tls_client_ca {}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let chain = weir_certs::tls::load_certs(cert)
        .with_context(|| format!("[syslog] tls_cert {}", cert.display()))?;
    let key_der = weir_certs::tls::load_key(key)
        .with_context(|| format!("[syslog] tls_key {}", key.display()))?;
    builder.with_single_cert(chain, key_der).with_context(|| {
        format!(
            "[syslog] tls_cert {} and tls_key {} do not form a usable pair (does the key \
             belong to the certificate?)",
            cert.display(),
            key.display()
        )
    })
}

/// The server config in use, shared by every TLS listener and replaced on reload.
#[derive(Debug, Clone)]
pub struct ConfigSlot(Arc<RwLock<Arc<ServerConfig>>>);

impl ConfigSlot {
    pub fn new(config: ServerConfig) -> ConfigSlot {
        ConfigSlot(Arc::new(RwLock::new(Arc::new(config))))
    }

    /// An acceptor with the current config, for one connection.
    fn acceptor(&self) -> TlsAcceptor {
        let config = self.0.read().unwrap_or_else(|p| p.into_inner()).clone();
        TlsAcceptor::from(config)
    }

    /// Loads the files again and, if they form a usable config, puts it in use for new
    /// connections. Returns what it loaded (serial and days left) for the reload log line.
    pub fn reload(
        &self,
        cert: &Path,
        key: &Path,
        client_ca: Option<&Path>,
    ) -> anyhow::Result<String> {
        let config = server_config(cert, key, client_ca)
            .context("the TLS listeners keep serving the previous certificate")?;
        let what =
            crate::service::describe_reloaded_cert(cert, None, "used from the next connection")?;
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(config);
        Ok(what)
    }
}

/// Accepts TLS connections until `shutdown`; each handshake and connection gets a task on
/// `tracker`, with the config current when it was accepted.
pub(super) async fn run(
    listener: TcpListener,
    config: ConfigSlot,
    settings: StreamSettings,
    sink: Sink,
    tracker: TaskTracker,
    shutdown: CancellationToken,
) {
    while let Some((tcp, peer, permit)) =
        super::stream::accept(&listener, &settings, &shutdown, "syslog_tls").await
    {
        let span = tracing::debug_span!("syslog_tls_connection", %peer);
        let (acceptor, settings, sink, shutdown) = (
            config.acceptor(),
            settings.clone(),
            sink.clone(),
            shutdown.clone(),
        );
        tracker.spawn(
            async move {
                let handshake = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    r = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)) => r,
                };
                let stream = match handshake {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(e)) => return handshake_failed(&sink, peer, &e.to_string()),
                    Err(_) => return handshake_failed(&sink, peer, "timed out"),
                };
                run_connection(stream, peer, "syslog_tls", settings, sink, shutdown, permit).await
            }
            .instrument(span),
        );
    }
    tracing::debug!("syslog TLS listener stopped");
}

fn handshake_failed(sink: &Sink, peer: std::net::SocketAddr, error: &str) {
    sink.drops.count("tls_handshake");
    weir_common::warn_limited!(
        "syslog_tls_handshake", %peer, error,
        "a syslog TLS handshake failed and the connection was closed: check that the sender \
         trusts the agent's tls_cert and, if tls_client_ca is set, presents a certificate \
         signed by it"
    );
}
