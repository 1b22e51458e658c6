//! `weir-agent enroll BUNDLE`: installs the credentials from a `weir-certs issue agent
//! --bundle` file and points the config at them, keeping every comment and other setting.
//!
//! Steps, each checked before the next: read the bundle (its certificate must carry the
//! identity it names); edit the config in memory and make sure the result still loads; check
//! that the bundle's files make a working TLS client config (in a scratch directory beside
//! the TLS directory, so credentials that work are never replaced by ones that do not); write
//! the CA, certificate and key into the TLS directory (0750; key 0600; owned by the service
//! user when run as root); then write the config. The agent's site and name come from the certificate, so the config
//! records them only in a comment.

use std::path::{Path, PathBuf};

use anyhow::Context;
use weir_certs::bundle::Bundle;

/// Marker of the comment line `enroll` writes (and replaces on re-enrolment).
const ENROLLED: &str = "# Enrolled:";

/// Installs `bundle` into `tls_dir` and updates `config`. When running as root and `owner`
/// names an existing user, the directory becomes `root:<owner's group>` 0750 and the key
/// `<owner>:<group>` 0600, so the service (running as that user) can read them.
/// Returns a summary for the operator.
pub fn enroll(
    bundle: &Path,
    config: &Path,
    tls_dir: &Path,
    owner: Option<&str>,
) -> anyhow::Result<String> {
    let b = Bundle::read(bundle)?;
    let tls_dir = absolute(tls_dir)?;
    let original = std::fs::read_to_string(config)
        .with_context(|| format!("reading the agent config {}", config.display()))?;
    let paths = weir_certs::bundle::Installed {
        ca: tls_dir.join("ca.pem"),
        cert: tls_dir.join("agent.pem"),
        key: tls_dir.join("agent.key"),
    };
    let edited = edit_config(&original, &paths, &b)
        .with_context(|| format!("updating {}", config.display()))?;
    // The edited config must load (same directory, so relative paths resolve the same way).
    let dir = config.parent().unwrap_or(Path::new("."));
    let probe = tempfile_in(dir, &edited)?;
    let loaded = crate::config::load(&probe);
    let _ = std::fs::remove_file(&probe);
    loaded.with_context(|| {
        format!(
            "{} would not load after enrolment; it was not changed",
            config.display()
        )
    })?;

    // Try the bundle's files before they replace anything: a bad bundle must not break an
    // agent that is enrolled and working.
    let scratch = tls_dir.with_file_name(format!(
        ".{}.enroll-{}",
        tls_dir
            .file_name()
            .map_or("tls".into(), |n| n.to_string_lossy()),
        std::process::id()
    ));
    let probed = b
        .install(&scratch)
        .context("writing the bundle's files to a scratch directory")
        .and_then(|p| {
            weir_certs::tls::client_config(&p.ca, &p.cert, &p.key, &[weir_common::wire::ALPN])
                .context("the bundle's certificate, key and CA do not form a usable TLS config; nothing was changed")
        });
    let _ = std::fs::remove_dir_all(&scratch);
    probed?;

    let installed = b
        .install(&tls_dir)
        .with_context(|| format!("installing the credentials into {}", tls_dir.display()))?;
    debug_assert_eq!(installed, paths);
    if let Some(owner) = owner {
        chown_for_service(&installed, &tls_dir, owner)?;
    }
    std::fs::write(config, edited).with_context(|| format!("writing {}", config.display()))?;
    Ok(format!(
        "Enrolled agent {}/{} (certificate serial {}, valid until {}).\n\
         Wrote {}, {} and {} (mode 0600).\n\
         Updated {} (aggregator.ca, .cert, .key); check the aggregator address in it.\n\
         Next: weir-agent check-config {} && systemctl start weir-agent \
         (already running: systemctl reload weir-agent). Delete {} now.",
        b.site,
        b.name,
        b.serial,
        b.not_after,
        installed.ca.display(),
        installed.cert.display(),
        installed.key.display(),
        config.display(),
        config.display(),
        bundle.display()
    ))
}

/// Sets `aggregator.ca`, `.cert` and `.key`, and the enrolment comment, keeping the rest of
/// the document (comments, order, formatting) as it was.
fn edit_config(
    text: &str,
    paths: &weir_certs::bundle::Installed,
    b: &Bundle,
) -> anyhow::Result<String> {
    let mut doc: toml_edit::DocumentMut = text.parse().context("not valid TOML")?;
    let agg = doc
        .get_mut("aggregator")
        .and_then(|i| i.as_table_mut())
        .context("no [aggregator] table (start from `weir-agent example-config`)")?;
    for (k, p) in [
        ("ca", &paths.ca),
        ("cert", &paths.cert),
        ("key", &paths.key),
    ] {
        let s = p
            .to_str()
            .with_context(|| format!("{} is not UTF-8", p.display()))?;
        agg[k] = toml_edit::value(s);
    }
    let note = format!(
        "{ENROLLED} agent {}/{}, certificate serial {}, valid until {} (weir-agent enroll).\n",
        b.site, b.name, b.serial, b.not_after
    );
    if let Some(mut key) = agg.key_mut("ca") {
        let decor = key.leaf_decor_mut();
        let old = decor
            .prefix()
            .and_then(|p| p.as_str())
            .unwrap_or("")
            .to_owned();
        let kept: String = old
            .split_inclusive('\n')
            .filter(|l| !l.trim_start().starts_with(ENROLLED))
            .collect();
        decor.set_prefix(format!("{kept}{note}"));
    }
    Ok(doc.to_string())
}

fn tempfile_in(dir: &Path, text: &str) -> anyhow::Result<PathBuf> {
    let p = dir.join(format!(".agent.toml.enroll-{:016x}", rand::random::<u64>()));
    std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
    Ok(p)
}

fn absolute(p: &Path) -> anyhow::Result<PathBuf> {
    std::path::absolute(p).with_context(|| format!("resolving {}", p.display()))
}

/// Gives the service user read access: directory root:GROUP 0750, key USER:GROUP 0600,
/// certificates root:GROUP 0644. Only as root; a missing user is warned about (the files stay
/// root's, and the service will not be able to read the key).
fn chown_for_service(
    files: &weir_certs::bundle::Installed,
    dir: &Path,
    owner: &str,
) -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(());
    }
    let Some(user) = nix::unistd::User::from_name(owner).ok().flatten() else {
        tracing::warn!(
            user = owner,
            dir = %dir.display(),
            "no such user: the TLS files stay readable by root only, so a service running as \
             another user cannot read the key. Pass --user with the service's user, or chown them"
        );
        return Ok(());
    };
    let (uid, gid) = (user.uid.as_raw(), user.gid.as_raw());
    let chown = |p: &Path, u: Option<u32>| {
        std::os::unix::fs::chown(p, u, Some(gid))
            .with_context(|| format!("giving {} to {owner}", p.display()))
    };
    chown(dir, Some(0))?;
    chown(&files.key, Some(uid))?;
    chown(&files.cert, Some(0))?;
    chown(&files.ca, Some(0))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bundle whose files do not make a TLS config must not replace working credentials.
    #[test]
    fn a_bad_bundle_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca");
        weir_certs::init_ca(&ca, &Default::default()).unwrap();
        let issued = dir.path().join("issued");
        weir_certs::issue_agent(&ca, "paris", "gw-01", &issued, &Default::default()).unwrap();
        let good = Bundle::from_dir(&issued).unwrap();
        let good_path = dir.path().join("good.bundle");
        good.write(&good_path, false).unwrap();
        let tls = dir.path().join("tls");
        let config = dir.path().join("agent.toml");
        let text = crate::config::example("data", "127.0.0.1:4433", "tls", 0, 0);
        std::fs::write(&config, text).unwrap();
        enroll(&good_path, &config, &tls, None).unwrap();
        let before = (
            std::fs::read(tls.join("agent.pem")).unwrap(),
            std::fs::read(tls.join("ca.pem")).unwrap(),
            std::fs::read(&config).unwrap(),
        );

        let mut bad = good.clone();
        bad.ca =
            "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n".into();
        let bad_path = dir.path().join("bad.bundle");
        bad.write(&bad_path, false).unwrap();
        let e = enroll(&bad_path, &config, &tls, None).unwrap_err();
        assert!(format!("{e:#}").contains("nothing was changed"), "{e:#}");
        let after = (
            std::fs::read(tls.join("agent.pem")).unwrap(),
            std::fs::read(tls.join("ca.pem")).unwrap(),
            std::fs::read(&config).unwrap(),
        );
        assert!(
            before == after,
            "a refused bundle left the enrolled files untouched"
        );
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains("enroll-"))
            .collect();
        assert!(leftovers.is_empty(), "the scratch directory is removed");
    }
}
