//! Real rustls handshakes, in memory: a `ClientConnection` built from `client_config` and a
//! `ServerConnection` built from `server_config`, with bytes pumped between them until the
//! handshake completes or one side fails. Certificates are real files in temp dirs.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConnection, ServerConnection};
use weir_certs::{CaOptions, CertError, IssueOptions, tls};

const ALPN: &[u8] = b"weir/1";

/// A CA with an aggregator certificate for "localhost".
struct Pki {
    _dir: tempfile::TempDir,
    ca: PathBuf,
    agg: PathBuf,
    root: PathBuf,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca");
        weir_certs::init_ca(&ca, &CaOptions::default()).unwrap();
        let agg = dir.path().join("agg");
        weir_certs::issue_aggregator(
            &ca,
            &["localhost".to_owned()],
            &["127.0.0.1".parse().unwrap()],
            &agg,
            &IssueOptions::default(),
        )
        .unwrap();
        Pki {
            root: dir.path().to_owned(),
            _dir: dir,
            ca,
            agg,
        }
    }

    fn agent(&self, name: &str, opts: &IssueOptions) -> PathBuf {
        let out = self.root.join(name);
        weir_certs::issue_agent(&self.ca, "paris", name, &out, opts).unwrap();
        out
    }

    fn server(&self, crl: Option<&Path>) -> rustls::ServerConfig {
        tls::server_config(
            &self.ca.join("ca.pem"),
            &self.agg.join("aggregator.pem"),
            &self.agg.join("aggregator.key"),
            crl,
            &[ALPN],
        )
        .unwrap()
    }

    fn server_with_crl(&self) -> rustls::ServerConfig {
        self.server(Some(&self.ca.join("crl.pem")))
    }

    /// Client config for an agent directory; trusts the `ca.pem` copied into it.
    fn client(&self, agent_dir: &Path) -> rustls::ClientConfig {
        tls::client_config(
            &agent_dir.join("ca.pem"),
            &agent_dir.join("agent.pem"),
            &agent_dir.join("agent.key"),
            &[ALPN],
        )
        .unwrap()
    }
}

/// Runs a handshake; on success returns the client certificate chain the server saw and the
/// negotiated ALPN. Errors are the first one either side reports.
fn handshake(
    client: rustls::ClientConfig,
    server: rustls::ServerConfig,
) -> Result<(Vec<CertificateDer<'static>>, Option<Vec<u8>>), rustls::Error> {
    let name = ServerName::try_from("localhost").unwrap();
    let mut client = ClientConnection::new(Arc::new(client), name)?;
    let mut server = ServerConnection::new(Arc::new(server))?;
    for _ in 0..20 {
        let mut buf = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut buf).unwrap();
        }
        if !buf.is_empty() {
            server.read_tls(&mut buf.as_slice()).unwrap();
            server.process_new_packets()?;
        }
        let mut buf = Vec::new();
        while server.wants_write() {
            server.write_tls(&mut buf).unwrap();
        }
        if !buf.is_empty() {
            client.read_tls(&mut buf.as_slice()).unwrap();
            client.process_new_packets()?;
        }
        if !client.is_handshaking() && !server.is_handshaking() {
            let certs = server
                .peer_certificates()
                .expect("handshake completed without a client certificate")
                .to_vec();
            return Ok((certs, server.alpn_protocol().map(<[u8]>::to_vec)));
        }
    }
    panic!("handshake did not complete in 20 rounds");
}

fn assert_refused(
    result: Result<impl std::fmt::Debug, rustls::Error>,
    what: &str,
) -> rustls::Error {
    match result {
        Ok(v) => panic!("{what}: handshake unexpectedly succeeded: {v:?}"),
        Err(e) => e,
    }
}

#[test]
fn good_agent_is_accepted_and_identified() {
    let pki = Pki::new();
    let agent = pki.agent("gw-1", &IssueOptions::default());
    let (certs, alpn) = handshake(pki.client(&agent), pki.server_with_crl()).unwrap();
    let id = weir_certs::agent_identity(&certs[0]).unwrap();
    assert_eq!(id.to_string(), "paris/gw-1");
    assert_eq!(alpn.as_deref(), Some(ALPN));
    // Without a CRL configured as well.
    handshake(pki.client(&agent), pki.server(None)).unwrap();
}

#[test]
fn agent_from_another_ca_is_refused() {
    let pki = Pki::new();
    let other = Pki::new();
    let stranger = other.agent("gw-1", &IssueOptions::default());
    // The stranger trusts our aggregator (so only the server-side check is exercised).
    let client = tls::client_config(
        &pki.ca.join("ca.pem"),
        &stranger.join("agent.pem"),
        &stranger.join("agent.key"),
        &[ALPN],
    )
    .unwrap();
    let err = assert_refused(handshake(client, pki.server_with_crl()), "foreign agent");
    assert!(
        matches!(err, rustls::Error::InvalidCertificate(_)),
        "{err:?}"
    );
}

#[test]
fn agent_refuses_aggregator_from_another_ca() {
    let pki = Pki::new();
    let other = Pki::new();
    let agent = pki.agent("gw-1", &IssueOptions::default());
    let err = assert_refused(
        handshake(pki.client(&agent), other.server(None)),
        "foreign aggregator",
    );
    assert!(
        matches!(err, rustls::Error::InvalidCertificate(_)),
        "{err:?}"
    );
}

#[test]
fn revoked_agent_is_refused_after_reload_and_others_still_accepted() {
    let pki = Pki::new();
    let bad = pki.agent("gw-bad", &IssueOptions::default());
    let good = pki.agent("gw-good", &IssueOptions::default());
    let stale = pki.server_with_crl();
    handshake(pki.client(&bad), pki.server_with_crl()).unwrap();

    let revoked = weir_certs::revoke(&pki.ca, &bad.join("agent.pem")).unwrap();
    assert_eq!(revoked.crl_path, pki.ca.join("crl.pem"));
    handshake(pki.client(&bad), stale).expect("configs read the CRL once, when built");

    // A config built before the revocation still holds the old CRL; a reloaded one refuses.
    let err = assert_refused(
        handshake(pki.client(&bad), pki.server_with_crl()),
        "revoked agent",
    );
    assert_eq!(
        err,
        rustls::Error::InvalidCertificate(rustls::CertificateError::Revoked)
    );
    // The CRL lists another serial: this one is "not revoked", not "unknown".
    handshake(pki.client(&good), pki.server_with_crl()).unwrap();
}

#[test]
fn expired_agent_is_refused() {
    let pki = Pki::new();
    let now = jiff::Timestamp::now();
    let opts = IssueOptions {
        not_before: Some(now - jiff::SignedDuration::from_hours(48)),
        not_after: Some(now - jiff::SignedDuration::from_hours(24)),
        ..IssueOptions::default()
    };
    let agent = pki.agent("gw-old", &opts);
    let err = assert_refused(
        handshake(pki.client(&agent), pki.server_with_crl()),
        "expired agent",
    );
    assert!(
        matches!(
            err,
            rustls::Error::InvalidCertificate(rustls::CertificateError::ExpiredContext { .. })
                | rustls::Error::InvalidCertificate(rustls::CertificateError::Expired)
        ),
        "{err:?}"
    );
}

#[test]
fn client_without_certificate_is_refused() {
    let pki = Pki::new();
    let mut roots = rustls::RootCertStore::empty();
    for c in tls::load_certs(&pki.ca.join("ca.pem")).unwrap() {
        roots.add(c).unwrap();
    }
    let mut client = rustls::ClientConfig::builder_with_provider(tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    client.alpn_protocols = vec![ALPN.to_vec()];
    let err = assert_refused(handshake(client, pki.server_with_crl()), "anonymous client");
    assert!(
        matches!(
            err,
            rustls::Error::NoCertificatesPresented | rustls::Error::PeerMisbehaved(_)
        ),
        "{err:?}"
    );
}

#[test]
fn aggregator_certificate_cannot_be_used_as_client_certificate() {
    let pki = Pki::new();
    let client = tls::client_config(
        &pki.ca.join("ca.pem"),
        &pki.agg.join("aggregator.pem"),
        &pki.agg.join("aggregator.key"),
        &[ALPN],
    )
    .unwrap();
    let err = assert_refused(
        handshake(client, pki.server_with_crl()),
        "server cert as client",
    );
    assert!(
        matches!(err, rustls::Error::InvalidCertificate(_)),
        "{err:?}"
    );
}

#[test]
fn crl_from_another_ca_is_rejected_when_building_the_config() {
    let pki = Pki::new();
    let other = Pki::new();
    let err = tls::server_config(
        &pki.ca.join("ca.pem"),
        &pki.agg.join("aggregator.pem"),
        &pki.agg.join("aggregator.key"),
        Some(&other.ca.join("crl.pem")),
        &[ALPN],
    )
    .unwrap_err();
    assert!(matches!(err, CertError::CrlMismatch { .. }), "{err}");
    assert!(err.to_string().contains("crl.pem"), "{err}");
}

#[test]
fn configs_are_tls13_only() {
    let pki = Pki::new();
    let agent = pki.agent("gw-1", &IssueOptions::default());
    let name = ServerName::try_from("localhost").unwrap();
    let mut client = ClientConnection::new(Arc::new(pki.client(&agent)), name).unwrap();
    let mut server = ServerConnection::new(Arc::new(pki.server(None))).unwrap();
    let mut buf = Vec::new();
    client.write_tls(&mut buf).unwrap();
    server.read_tls(&mut buf.as_slice()).unwrap();
    server.process_new_packets().unwrap();
    assert_eq!(
        server.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
}

#[test]
fn loaders_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    for err in [
        tls::load_certs(&empty).unwrap_err(),
        tls::load_key(&empty).unwrap_err(),
        tls::load_crls(&empty).unwrap_err(),
        tls::load_certs(&dir.path().join("missing.pem")).unwrap_err(),
    ] {
        assert!(err.to_string().contains(".pem"), "{err}");
    }
}
