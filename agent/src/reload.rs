//! What the agent reloads on SIGHUP (`systemctl reload weir-agent`): the hooks of its
//! [`Reloader`]. Queued events are never touched by a reload.
//!
//! Reloadable now: the aggregator-link TLS files (CA, certificate, key). The forwarder reads
//! them afresh for every connection, so the reload checks them (a bad file is reported; the
//! current connection keeps the certificate it was made with) and refreshes the expiry
//! gauge; the next connection uses them. The syslog TLS listeners' certificate, key and
//! client CA reload the same way (registered in `start`). Everything else in the config
//! (listeners, queue, dedup, scripts, SNMP) needs a restart; later subsystems add their own
//! hooks with [`Reloader::register`].

use std::path::Path;
use std::sync::Arc;

use crate::service::Reloader;
use anyhow::Context;

use crate::config::AgentConfig;

/// What a reload does not apply (logged with every reload).
pub const NEEDS_RESTART: &str = "all other config keys (listeners, queue, dedup, scripts, snmp, http): systemctl restart weir-agent";

/// The agent's reloader with its built-in hooks.
pub fn reloader(config: &AgentConfig) -> Arc<Reloader> {
    let r = Reloader::new("weir_agent", NEEDS_RESTART);
    let link = config.aggregator.clone();
    r.register("aggregator TLS certificates", move || {
        weir_certs::tls::client_config(
            &link.ca,
            &link.cert,
            &link.key,
            &[weir_common::wire::ALPN],
        )
        .context("the current connection keeps its certificate, and reconnects will fail until the files are fixed")?;
        let certs = weir_certs::tls::load_certs(&link.cert)?;
        let serial = weir_certs::cert_serial_hex(&certs[0])?;
        let left = crate::service::check_cert_expiry(
            "weir_agent_certificate_expiry_seconds",
            &link.cert,
            &cert_not_after,
            jiff::Timestamp::now(),
        );
        Ok(format!(
            "{}: serial {serial}, {} days left; used from the next connection",
            link.cert.display(),
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
