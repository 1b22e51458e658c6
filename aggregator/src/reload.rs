//! What the aggregator reloads on SIGHUP (`systemctl reload weir-aggregator`): the hooks of
//! its [`Reloader`]. Stored events, sessions and the writer are never touched by a reload.
//!
//! Reloadable now: the QUIC server certificate, key, CA and CRL (a new server config for new
//! handshakes, as the CRL watcher in [`crate::ingest::run_crl_watch`] does on a CRL change;
//! connected agents keep their sessions). Everything else needs a restart; later subsystems
//! (rules, definitions) add their own hooks with [`Reloader::register`].

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
        weir_agent::service::describe_reloaded_cert(
            &quic.cert,
            Some("weir_aggregator_certificate_expiry_seconds"),
            "used for new connections",
        )
    });
    r
}

pub use weir_agent::service::cert_not_after;

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reload_installs_a_renewed_certificate_and_keeps_the_old_one_on_errors() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca");
        weir_certs::init_ca(&ca, &Default::default()).unwrap();
        let tls = dir.path().join("tls");
        let ip = ["127.0.0.1".parse().unwrap()];
        weir_certs::issue_aggregator(&ca, &[], &ip, &tls, &Default::default()).unwrap();
        let text = crate::config::example("data", "tls", "ca/crl.pem", 0, 0);
        let cfg_path = dir.path().join("aggregator.toml");
        std::fs::write(&cfg_path, text).unwrap();
        let cfg = crate::config::load(&cfg_path).unwrap();
        let endpoint = quinn::Endpoint::server(
            crate::ingest::server_config(&cfg.quic).unwrap(),
            "127.0.0.1:0".parse().unwrap(),
        )
        .unwrap();
        let r = reloader(endpoint.clone(), cfg.quic.clone());

        let renewed = weir_certs::issue_aggregator(
            &ca,
            &[],
            &ip,
            &tls,
            &weir_certs::IssueOptions {
                force: true,
                ..Default::default()
            },
        )
        .unwrap();
        let out = r.reload();
        assert!(out.failed.is_empty(), "{out:?}");
        assert!(out.ok[0].contains(&renewed.serial_hex), "{out:?}");

        std::fs::write(tls.join("aggregator.pem"), "garbage").unwrap();
        let out = r.reload();
        assert!(out.ok.is_empty() && out.failed.len() == 1, "{out:?}");
        assert!(out.failed[0].contains("previous certificate"), "{out:?}");
        endpoint.close(0u32.into(), b"");
    }
}
