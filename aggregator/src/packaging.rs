//! What the packages install that the code generates: the commented
//! `/etc/weir/aggregator.toml`. The committed copy (`packaging/etc/aggregator.toml`) is checked
//! against [`packaged_config`] by a test so it never drifts; regenerate it with
//! `WEIR_BLESS=1 cargo test -p weir-aggregator packaged_config`.

/// The config file the packages install as `/etc/weir/aggregator.toml` (a conffile): the
/// commented example with the package's paths, agents accepted on every interface, the REST
/// API on loopback until the operator opens it.
pub fn packaged_config() -> String {
    let mut text = crate::config::example(
        "/var/lib/weir-aggregator",
        "/etc/weir/tls",
        "/etc/weir/tls/crl.pem",
        4433,
        8083,
    );
    for (from, to) in [
        ("listen = \"127.0.0.1:4433\"", "listen = \"0.0.0.0:4433\""),
        (
            "# REST API address.",
            "# REST API address. Loopback only as installed: set 0.0.0.0:8083 (or put a TLS\n# reverse proxy in front) for the NOC's tools to reach it.",
        ),
        (
            "# weir-aggregator configuration. Relative paths are relative to this file.\n",
            "# weir-aggregator configuration, installed by the weir-aggregator package (your changes\n# are kept on upgrade). See README \"Install the aggregator\" for the certificates it needs.\n# Relative paths are relative to this file.\n",
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

    const COMMITTED: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../packaging/etc/aggregator.toml"
    );

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
             WEIR_BLESS=1 cargo test -p weir-aggregator packaged_config"
        );
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("aggregator.toml");
        std::fs::write(&p, &want).unwrap();
        let c = crate::config::load(&p).unwrap();
        assert_eq!(c.quic.listen.to_string(), "0.0.0.0:4433");
        assert_eq!(c.api.api_key_file, dir.path().join("api-key"));
        assert_eq!(c.data_dir.to_str(), Some("/var/lib/weir-aggregator"));
    }
}
