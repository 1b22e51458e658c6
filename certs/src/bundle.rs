//! The agent enrolment bundle: one file holding an agent's certificate, private key and the
//! fleet CA, so enrolment is "copy one file, run one command" (`weir-certs issue agent
//! --bundle FILE`, then `weir-agent enroll FILE` on the gateway).
//!
//! The format is TOML with a comment header (a human opening it sees what it is), the PEM
//! texts as strings, and `format = "weir-agent-bundle-1"`. It holds a private key, so it is
//! written with mode 0600.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{AgentIdentity, CertError, files, tls};

/// The `format` value of this version of the bundle.
pub const FORMAT: &str = "weir-agent-bundle-1";

/// An agent's credentials in one file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bundle {
    /// Always [`FORMAT`].
    pub format: String,
    /// The agent's site, as in its certificate.
    pub site: String,
    /// The agent's name, as in its certificate.
    pub name: String,
    /// The certificate's serial (hex), for the operator's records.
    pub serial: String,
    /// The certificate's end of validity.
    pub not_after: String,
    /// The fleet CA certificate (PEM).
    pub ca: String,
    /// The agent's certificate (PEM).
    pub cert: String,
    /// The agent's private key (PEM).
    pub key: String,
}

impl Bundle {
    /// Reads the files `issue agent` wrote into `dir` (agent.pem, agent.key, ca.pem).
    pub fn from_dir(dir: &Path) -> Result<Bundle, CertError> {
        let cert = files::read_to_string(&dir.join("agent.pem"))?;
        let key = files::read_to_string(&dir.join("agent.key"))?;
        let ca = files::read_to_string(&dir.join("ca.pem"))?;
        let der = tls::load_certs(&dir.join("agent.pem"))?;
        let id = crate::agent_identity(&der[0])?;
        Ok(Bundle {
            format: FORMAT.to_owned(),
            site: id.site,
            name: id.name,
            serial: crate::cert_serial_hex(&der[0])?,
            not_after: crate::cert_not_after(&der[0])?.to_string(),
            ca,
            cert,
            key,
        })
    }

    /// Writes the bundle to `path` with mode 0600; refuses to replace a file unless `force`.
    pub fn write(&self, path: &Path, force: bool) -> Result<(), CertError> {
        let body = toml::to_string(self)
            .map_err(|e| CertError::InvalidArgument(format!("cannot encode the bundle: {e}")))?;
        let text = format!(
            "# Weir agent enrolment bundle for {}/{} (serial {}, valid until {}).\n\
             # It contains the agent's PRIVATE KEY: copy it to the gateway over a secure channel,\n\
             # install it with `weir-agent enroll {}`, then delete it.\n{body}",
            self.site,
            self.name,
            self.serial,
            self.not_after,
            path.file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default()
        );
        files::write_all(
            &[files::Output::new(path.to_path_buf(), text, files::PRIVATE)],
            force,
        )
    }

    /// Reads and checks a bundle: the format, and that the certificate carries the identity
    /// the bundle names.
    pub fn read(path: &Path) -> Result<Bundle, CertError> {
        let text = files::read_to_string(path)?;
        let b: Bundle = toml::from_str(&text).map_err(|e| {
            CertError::InvalidArgument(format!(
                "{} is not a Weir agent bundle: {e}",
                path.display()
            ))
        })?;
        if b.format != FORMAT {
            return Err(CertError::InvalidArgument(format!(
                "{}: bundle format {:?} is not {FORMAT:?} (made by a newer weir-certs?)",
                path.display(),
                b.format
            )));
        }
        let id = b.identity()?;
        if id.site != b.site || id.name != b.name {
            return Err(CertError::InvalidArgument(format!(
                "{}: the bundle says {}/{} but its certificate is for {id}",
                path.display(),
                b.site,
                b.name
            )));
        }
        Ok(b)
    }

    /// The identity in the bundle's certificate.
    pub fn identity(&self) -> Result<AgentIdentity, CertError> {
        use rustls_pki_types::CertificateDer;
        use rustls_pki_types::pem::PemObject;
        let first = CertificateDer::pem_slice_iter(self.cert.as_bytes())
            .next()
            .ok_or_else(|| CertError::InvalidCert("the bundle holds no certificate".into()))?
            .map_err(|e| CertError::InvalidCert(format!("the bundle's certificate: {e}")))?;
        crate::agent_identity(&first)
    }

    /// Installs the bundle into `tls_dir` (created with mode 0750): `ca.pem` and `agent.pem`
    /// (0644) and `agent.key` (0600), each replaced atomically. Returns their paths.
    pub fn install(&self, tls_dir: &Path) -> Result<Installed, CertError> {
        files::create_dir(tls_dir, 0o750)?;
        let out = Installed {
            ca: tls_dir.join("ca.pem"),
            cert: tls_dir.join("agent.pem"),
            key: tls_dir.join("agent.key"),
        };
        files::replace(&out.key, self.key.as_bytes(), files::PRIVATE)?;
        files::replace(&out.cert, self.cert.as_bytes(), files::PUBLIC)?;
        files::replace(&out.ca, self.ca.as_bytes(), files::PUBLIC)?;
        Ok(out)
    }
}

/// Where [`Bundle::install`] put the files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    pub ca: std::path::PathBuf,
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        crate::init_ca(&dir.path().join("ca"), &Default::default()).unwrap();
        crate::issue_agent(
            &dir.path().join("ca"),
            "paris",
            "gw-01",
            &dir.path().join("gw-01"),
            &Default::default(),
        )
        .unwrap();
        dir
    }

    #[test]
    fn round_trip_install_and_refusals() {
        let dir = ca();
        let b = Bundle::from_dir(&dir.path().join("gw-01")).unwrap();
        assert_eq!((b.site.as_str(), b.name.as_str()), ("paris", "gw-01"));
        let file = dir.path().join("gw-01.bundle");
        b.write(&file, false).unwrap();
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(
            text.starts_with("# Weir agent enrolment bundle for paris/gw-01"),
            "{text}"
        );
        // Same bytes again is no conflict; different bytes need `force`.
        b.write(&file, false).unwrap();
        std::fs::write(&file, "older bundle").unwrap();
        assert!(matches!(
            b.write(&file, false),
            Err(CertError::Exists { .. })
        ));
        b.write(&file, true).unwrap();
        assert_eq!(Bundle::read(&file).unwrap(), b);

        let tls = dir.path().join("installed/tls");
        let got = b.install(&tls).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&tls), 0o750);
        assert_eq!(mode(&got.key), 0o600);
        assert_eq!(mode(&got.cert), 0o644);
        crate::tls::client_config(&got.ca, &got.cert, &got.key, &[b"x"]).unwrap();

        // A bundle claiming another identity than its certificate's is refused.
        std::fs::write(&file, text.replace("site = \"paris\"", "site = \"lyon\"")).unwrap();
        let e = Bundle::read(&file).unwrap_err().to_string();
        assert!(e.contains("certificate is for paris/gw-01"), "{e}");
        // Not a bundle at all.
        std::fs::write(&file, "hello").unwrap();
        assert!(
            Bundle::read(&file)
                .unwrap_err()
                .to_string()
                .contains("not a Weir agent bundle")
        );
    }
}
