//! What the packages install that the code generates: the commented `/etc/weir/agent.toml`.
//! The committed copy (`packaging/etc/agent.toml`) is checked against [`packaged_config`] by a
//! test, so the packaged file never drifts from the code; regenerate it with
//! `WEIR_BLESS=1 cargo test -p weir-agent packaged_config`.

/// The config file the packages install as `/etc/weir/agent.toml` (a conffile): the commented
/// example with the package's paths, listening on the standard ports on every interface.
pub fn packaged_config() -> String {
    let mut text = crate::config::example_with_traps(
        "/var/lib/weir-agent",
        "aggregator.example.net:4433",
        "/etc/weir/tls",
        514,
        162,
        8084,
    );
    // The example binds loopback (safe for a quickstart); a gateway receives from the network.
    for (from, to) in [
        ("udp = [\"127.0.0.1:514\"]", "udp = [\"0.0.0.0:514\"]"),
        ("tcp = [\"127.0.0.1:514\"]", "tcp = [\"0.0.0.0:514\"]"),
        ("listen = [\"127.0.0.1:162\"]", "listen = [\"0.0.0.0:162\"]"),
        (
            "# weir-agent configuration. Relative paths are relative to this file.\n",
            "# weir-agent configuration, installed by the weir-agent package (your changes are kept on\n# upgrade). Enrol the agent with `weir-agent enroll BUNDLE`, then `systemctl start weir-agent`.\n# Relative paths are relative to this file.\n",
        ),
    ] {
        assert!(
            text.contains(from),
            "the example config no longer contains {from:?}"
        );
        text = text.replacen(from, to, 1);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    const COMMITTED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../packaging/etc/agent.toml");

    #[test]
    fn packaged_config_matches_the_committed_file_and_loads() {
        let want = packaged_config();
        if std::env::var_os("WEIR_BLESS").is_some() {
            std::fs::write(COMMITTED, &want).unwrap();
        }
        let have = std::fs::read_to_string(COMMITTED).unwrap();
        assert!(
            have == want,
            "{COMMITTED} differs from packaging::packaged_config(); regenerate it with \
             WEIR_BLESS=1 cargo test -p weir-agent packaged_config"
        );
        // It must parse and pass the checks (TLS files are checked at start, not at load).
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("agent.toml");
        std::fs::write(&p, &want).unwrap();
        let c = crate::config::load(&p).unwrap();
        assert_eq!(c.syslog.udp[0].to_string(), "0.0.0.0:514");
        assert_eq!(c.snmp.listen[0].to_string(), "0.0.0.0:162");
        assert_eq!(c.aggregator.cert.to_str(), Some("/etc/weir/tls/agent.pem"));
    }
}
