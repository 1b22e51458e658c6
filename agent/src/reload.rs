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
        crate::service::describe_reloaded_cert(
            &link.cert,
            Some("weir_agent_certificate_expiry_seconds"),
            "used from the next connection",
        )
    });
    r
}

pub use crate::service::cert_not_after;
