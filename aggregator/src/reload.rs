//! What the aggregator reloads on SIGHUP (`systemctl reload weir-aggregator`): the hooks of
//! its [`Reloader`]. Stored events, sessions and the writer are never touched by a reload.
//!
//! Reloadable now: the QUIC server certificate, key, CA and CRL (a new server config for new
//! handshakes, as the CRL watcher in [`crate::ingest::run_crl_watch`] does on a CRL change;
//! connected agents keep their sessions). Everything else needs a restart; later subsystems
//! (rules, definitions) add their own hooks with [`Reloader::register`].

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use weir_agent::service::Reloader;

use crate::config::QuicConfig;

/// What a reload does not apply (logged with every reload).
pub const NEEDS_RESTART: &str =
    "all other config keys (listen addresses, data_dir, api): systemctl restart weir-aggregator";

/// The aggregator's reloader with its built-in hooks.
pub fn reloader(endpoint: quinn::Endpoint, quic: QuicConfig) -> Arc<Reloader> {
    let r = Reloader::new("weir_aggregator", NEEDS_RESTART);
    r.register("QUIC server certificate, CA and CRL", move || {
        let sc = crate::ingest::server_config(&quic)
            .context("agents keep being served with the previous certificate")?;
        endpoint.set_server_config(Some(sc));
        let certs = weir_certs::tls::load_certs(&quic.cert)?;
        let serial = weir_certs::cert_serial_hex(&certs[0])?;
        let left = weir_agent::service::check_cert_expiry(
            "weir_aggregator_certificate_expiry_seconds",
            &quic.cert,
            &cert_not_after,
            jiff::Timestamp::now(),
        );
        Ok(format!(
            "{}: serial {serial}, {} days left; used for new connections",
            quic.cert.display(),
            left.unwrap_or(0) / 86_400
        ))
    });
    r
}

/// End of validity of the first certificate in a PEM file.
pub fn cert_not_after(path: &Path) -> anyhow::Result<jiff::Timestamp> {
    let certs = weir_certs::tls::load_certs(path)?;
    let first = certs
        .first()
        .with_context(|| format!("{} holds no certificate", path.display()))?;
    Ok(weir_certs::cert_not_after(first)?)
}
