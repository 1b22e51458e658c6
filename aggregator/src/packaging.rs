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
            "commented example conf/transforms.toml.",
            "commented example installed as /etc/weir/transforms.toml.",
        ),
        ("(conf/definitions.toml: ", "(/etc/weir/definitions.toml: "),
        (
            "# rules = \"rules.json\"",
            "# The installed /etc/weir/rules.toml holds commented examples of every kind of rule.\n# rules = \"rules.toml\"",
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

    /// The examples the packages install beside aggregator.toml (`/etc/weir/rules.toml`,
    /// `definitions.toml`, `transforms.toml`) load, so uncommenting their key in
    /// aggregator.toml never starts an operator off with an error.
    #[test]
    fn installed_examples_load() {
        let conf = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/conf"));
        let rules = crate::correlate::RuleSet::load(&conf.join("rules.toml")).unwrap();
        let raw = rules.raw();
        let names: Vec<&str> = raw.rules.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "Database Connectivity Failure",
                "Multiple interfaces down",
                "Authentication failure storm"
            ]
        );
        assert_eq!(raw.aggregates.len(), 1);
        let defs = crate::alarm::definition::Definitions::load(&conf.join("definitions.toml"));
        defs.unwrap();
        crate::alarm::transform::Transforms::load(&conf.join("transforms.toml")).unwrap();
        // Every rule's event name is one the definitions know, so the examples work together.
        let text = std::fs::read_to_string(conf.join("definitions.toml")).unwrap();
        for rule in &raw.rules {
            for event in &rule.events {
                assert!(
                    text.contains(&format!("tag = \"{event}\"")),
                    "rules.toml: {}: no definition for {event}",
                    rule.name
                );
            }
        }
        // The packaged aggregator.toml points at them by their installed names.
        let packaged = packaged_config();
        for file in ["rules.toml", "definitions.toml", "transforms.toml"] {
            assert!(packaged.contains(&format!("/etc/weir/{file}")), "{file}");
        }
    }
}
