//! `init_ca` / `issue_*` / `revoke` against real directories: which files appear, their modes,
//! refusing to overwrite, the ledger, the CRL contents, and identities read back.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use weir_certs::{CaOptions, CertError, CertKind, IssueOptions, tls};

fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn ca(dir: &Path) -> std::path::PathBuf {
    let ca = dir.join("ca");
    weir_certs::init_ca(&ca, &CaOptions::default()).unwrap();
    ca
}

fn first_cert(path: &Path) -> Vec<u8> {
    tls::load_certs(path).unwrap()[0].to_vec()
}

/// (CRL number, revoked serials as hex, seconds until nextUpdate).
fn read_crl(path: &Path) -> (u64, Vec<String>, i64) {
    let der = tls::load_crls(path).unwrap().remove(0);
    let (_, crl) = x509_parser::parse_x509_crl(der.as_ref()).unwrap();
    let number = crl.crl_number().unwrap().try_into().unwrap();
    let serials = crl
        .iter_revoked_certificates()
        .map(|r| {
            r.raw_serial()
                .iter()
                .skip_while(|b| **b == 0)
                .map(|b| format!("{b:02x}"))
                .collect()
        })
        .collect();
    let next = crl.next_update().unwrap().timestamp() - jiff::Timestamp::now().as_second();
    (number, serials, next)
}

#[test]
fn init_writes_ca_files_with_modes() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca(dir.path());
    assert_eq!(mode(&ca), 0o700);
    assert_eq!(mode(&ca.join("ca.key")), 0o600);
    for f in ["ca.pem", "crl.pem", "issued.json"] {
        assert!(ca.join(f).is_file(), "{f}");
    }
    let summary = weir_certs::summarize(&first_cert(&ca.join("ca.pem"))).unwrap();
    assert!(summary.is_ca);
    assert!(
        summary.subject.contains("Weir fleet CA"),
        "{}",
        summary.subject
    );

    let (number, revoked, next) = read_crl(&ca.join("crl.pem"));
    assert_eq!(number, 1);
    assert!(revoked.is_empty());
    assert!(
        next > 9 * 365 * 86400,
        "CRL nextUpdate should be ~10 years ahead"
    );
    let ledger = weir_certs::read_ledger(&ca).unwrap();
    assert!(ledger.certs.is_empty());
}

#[test]
fn init_refuses_to_overwrite_without_force() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca(dir.path());
    let before = fs::read(ca.join("ca.pem")).unwrap();
    let err = weir_certs::init_ca(&ca, &CaOptions::default()).unwrap_err();
    assert!(matches!(err, CertError::Exists { .. }), "{err}");
    assert!(err.to_string().contains("--force"), "{err}");
    assert!(err.to_string().contains(&ca.display().to_string()), "{err}");
    assert_eq!(fs::read(ca.join("ca.pem")).unwrap(), before);

    let force = CaOptions {
        force: true,
        ..CaOptions::default()
    };
    weir_certs::init_ca(&ca, &force).unwrap();
    assert_ne!(fs::read(ca.join("ca.pem")).unwrap(), before);
    assert_eq!(mode(&ca.join("ca.key")), 0o600);
}

#[test]
fn issue_agent_layout_identity_and_ledger() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca(dir.path());
    let out = dir.path().join("gw");
    let issued =
        weir_certs::issue_agent(&ca, "paris", "gw-01", &out, &IssueOptions::default()).unwrap();
    assert_eq!(issued.cert_path, out.join("agent.pem"));
    assert_eq!(issued.key_path, out.join("agent.key"));
    assert_eq!(mode(&issued.key_path), 0o600);
    assert_eq!(
        fs::read(out.join("ca.pem")).unwrap(),
        fs::read(ca.join("ca.pem")).unwrap()
    );

    let der = first_cert(&issued.cert_path);
    let id = weir_certs::agent_identity(&der).unwrap();
    assert_eq!((id.site.as_str(), id.name.as_str()), ("paris", "gw-01"));
    assert_eq!(
        weir_certs::cert_serial_hex(&der).unwrap(),
        issued.serial_hex
    );
    assert_eq!(issued.serial_hex.len(), 32);
    assert_eq!(weir_certs::cert_not_after(&der).unwrap(), issued.not_after);
    let days = issued
        .not_after
        .duration_since(jiff::Timestamp::now())
        .as_hours()
        / 24;
    assert!((824..=825).contains(&days), "{days}");

    let s = weir_certs::summarize(&der).unwrap();
    assert_eq!(s.uris, vec!["weir://agent/paris/gw-01".to_owned()]);
    assert_eq!(s.extended_key_usage, vec!["clientAuth".to_owned()]);
    assert!(
        s.subject.contains("CN=gw-01") && s.subject.contains("OU=paris"),
        "{}",
        s.subject
    );
    assert!(!s.is_ca);

    let ledger = weir_certs::read_ledger(&ca).unwrap();
    assert_eq!(ledger.certs.len(), 1);
    let entry = &ledger.certs[0];
    assert_eq!(entry.serial, issued.serial_hex);
    assert_eq!(entry.kind, CertKind::Agent);
    assert_eq!(entry.subject, "paris/gw-01");
    assert!(!entry.revoked);
}

#[test]
fn issue_aggregator_has_sans_and_is_not_an_agent() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca(dir.path());
    let out = dir.path().join("agg");
    let issued = weir_certs::issue_aggregator(
        &ca,
        &["agg.example.net".to_owned(), "localhost".to_owned()],
        &["10.0.0.5".parse().unwrap(), "::1".parse().unwrap()],
        &out,
        &IssueOptions::default(),
    )
    .unwrap();
    assert_eq!(issued.cert_path, out.join("aggregator.pem"));
    assert_eq!(mode(&out.join("aggregator.key")), 0o600);
    assert!(out.join("ca.pem").is_file());
    let der = first_cert(&issued.cert_path);
    let s = weir_certs::summarize(&der).unwrap();
    assert_eq!(s.dns_names, vec!["agg.example.net", "localhost"]);
    assert_eq!(
        s.ip_addresses,
        vec![
            "10.0.0.5".parse::<std::net::IpAddr>().unwrap(),
            "::1".parse().unwrap()
        ]
    );
    assert_eq!(s.extended_key_usage, vec!["serverAuth".to_owned()]);
    assert!(matches!(
        weir_certs::agent_identity(&der),
        Err(CertError::NotAgent(_))
    ));

    let err =
        weir_certs::issue_aggregator(&ca, &[], &[], &out, &IssueOptions::default()).unwrap_err();
    assert!(err.to_string().contains("--dns"), "{err}");
}

#[test]
fn issue_checks_every_file_before_writing() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca(dir.path());
    let out = dir.path().join("gw");
    fs::create_dir(&out).unwrap();
    fs::write(out.join("agent.pem"), "someone else's").unwrap();
    let err =
        weir_certs::issue_agent(&ca, "paris", "gw-01", &out, &IssueOptions::default()).unwrap_err();
    match &err {
        CertError::Exists { path } => assert_eq!(path, &out.join("agent.pem")),
        other => panic!("{other}"),
    }
    assert!(
        !out.join("agent.key").exists(),
        "key written despite refusal"
    );
    assert!(!out.join("ca.pem").exists());
    assert!(weir_certs::read_ledger(&ca).unwrap().certs.is_empty());

    let force = IssueOptions {
        force: true,
        ..IssueOptions::default()
    };
    weir_certs::issue_agent(&ca, "paris", "gw-01", &out, &force).unwrap();
    assert_eq!(mode(&out.join("agent.key")), 0o600);
    weir_certs::agent_identity(&first_cert(&out.join("agent.pem"))).unwrap();

    // A second forced issue replaces the key and keeps it private.
    let before = fs::read(out.join("agent.key")).unwrap();
    weir_certs::issue_agent(&ca, "paris", "gw-01", &out, &force).unwrap();
    assert_ne!(fs::read(out.join("agent.key")).unwrap(), before);
    assert_eq!(mode(&out.join("agent.key")), 0o600);
    assert_eq!(weir_certs::read_ledger(&ca).unwrap().certs.len(), 2);
}

#[test]
fn invalid_names_are_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca(dir.path());
    let out = dir.path().join("gw");
    for (site, name, kind) in [
        ("pa/ris", "gw", "site"),
        ("paris", "-gw", "agent"),
        ("", "gw", "site"),
    ] {
        let err =
            weir_certs::issue_agent(&ca, site, name, &out, &IssueOptions::default()).unwrap_err();
        match &err {
            CertError::InvalidName { kind: k, .. } => assert_eq!(k, kind),
            other => panic!("{other}"),
        }
        assert!(err.to_string().contains("1 to 63"), "{err}");
    }
    assert!(!out.exists());
}

#[test]
fn issue_without_a_ca_says_how_to_create_one() {
    let dir = tempfile::tempdir().unwrap();
    let err = weir_certs::issue_agent(
        &dir.path().join("nope"),
        "paris",
        "gw",
        &dir.path().join("gw"),
        &IssueOptions::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("weir-certs init"), "{err}");
}

#[test]
fn revoke_updates_ledger_and_crl_and_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca(dir.path());
    let a = weir_certs::issue_agent(
        &ca,
        "paris",
        "a",
        &dir.path().join("a"),
        &IssueOptions::default(),
    )
    .unwrap();
    let b = weir_certs::issue_agent(
        &ca,
        "paris",
        "b",
        &dir.path().join("b"),
        &IssueOptions::default(),
    )
    .unwrap();

    let r = weir_certs::revoke(&ca, &a.cert_path).unwrap();
    assert_eq!(r.serial_hex, a.serial_hex);
    assert_eq!(r.crl_path, ca.join("crl.pem"));
    let (number, revoked, next) = read_crl(&r.crl_path);
    assert_eq!((number, revoked.clone()), (2, vec![a.serial_hex.clone()]));
    assert!(next > 9 * 365 * 86400);

    // Idempotent: same answer, CRL untouched.
    let crl_before = fs::read(&r.crl_path).unwrap();
    assert_eq!(weir_certs::revoke(&ca, &a.cert_path).unwrap(), r);
    assert_eq!(fs::read(&r.crl_path).unwrap(), crl_before);

    weir_certs::revoke(&ca, &b.cert_path).unwrap();
    let (number, mut revoked, _) = read_crl(&r.crl_path);
    revoked.sort();
    let mut want = vec![a.serial_hex.clone(), b.serial_hex.clone()];
    want.sort();
    assert_eq!((number, revoked), (3, want));

    let ledger = weir_certs::read_ledger(&ca).unwrap();
    assert_eq!(ledger.crl_number, 3);
    assert!(
        ledger
            .certs
            .iter()
            .all(|e| e.revoked && e.revoked_at.is_some())
    );
}

#[test]
fn revoke_refuses_certificates_from_another_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ours = ca(dir.path());
    let theirs = dir.path().join("other-ca");
    weir_certs::init_ca(&theirs, &CaOptions::default()).unwrap();
    let foreign = weir_certs::issue_agent(
        &theirs,
        "x",
        "y",
        &dir.path().join("f"),
        &IssueOptions::default(),
    )
    .unwrap();
    let err = weir_certs::revoke(&ours, &foreign.cert_path).unwrap_err();
    assert!(matches!(err, CertError::NotIssuedByCa { .. }), "{err}");
    assert!(err.to_string().contains(&foreign.serial_hex), "{err}");
}

#[test]
fn mismatched_ca_key_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let ca1 = ca(dir.path());
    let ca2 = dir.path().join("ca2");
    weir_certs::init_ca(&ca2, &CaOptions::default()).unwrap();
    fs::copy(ca2.join("ca.key"), ca1.join("ca.key")).unwrap();
    let err = weir_certs::issue_agent(
        &ca1,
        "p",
        "n",
        &dir.path().join("n"),
        &IssueOptions::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("does not belong"), "{err}");
}
