//! The `weir-certs` binary end to end: init, issue both kinds, show, revoke, list, and the error
//! path (refusing to overwrite, exit code 1, message naming the file).

use std::path::Path;
use std::process::{Command, Output};

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_weir-certs"))
        .args(args)
        .output()
        .expect("run weir-certs")
}

fn ok(args: &[&str]) -> String {
    let out = run(args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "weir-certs {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn full_lifecycle() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    let agg = dir.path().join("agg");
    let gw = dir.path().join("gw");

    let out = ok(&["init", "--out", s(&ca), "--cn", "Test CA", "--days", "30"]);
    assert!(out.contains("ca.key") && out.contains("Next:"), "{out}");

    let out = ok(&[
        "issue",
        "aggregator",
        "--ca",
        s(&ca),
        "--dns",
        "localhost",
        "--ip",
        "127.0.0.1",
        "--out",
        s(&agg),
    ]);
    assert!(out.contains("aggregator.pem"), "{out}");

    let out = ok(&[
        "issue",
        "agent",
        "--ca",
        s(&ca),
        "--site",
        "paris",
        "--name",
        "gw-01",
        "--out",
        s(&gw),
        "--days",
        "10",
    ]);
    assert!(out.contains("agent.key"), "{out}");

    let agent_pem = gw.join("agent.pem");
    let show = ok(&["show", s(&agent_pem)]);
    assert!(show.contains("paris/gw-01"), "{show}");
    assert!(show.contains("weir://agent/paris/gw-01"), "{show}");
    let serial =
        weir_certs::cert_serial_hex(&weir_certs::tls::load_certs(&agent_pem).unwrap()[0]).unwrap();
    assert!(show.contains(&serial), "{show}");

    let show = ok(&["show", s(&agg.join("aggregator.pem"))]);
    assert!(
        show.contains("DNS SAN:    localhost") && show.contains("IP SAN:     127.0.0.1"),
        "{show}"
    );

    // Refuses to overwrite: exit 1, names the file, mentions --force.
    let out = run(&[
        "issue",
        "agent",
        "--ca",
        s(&ca),
        "--site",
        "paris",
        "--name",
        "gw-01",
        "--out",
        s(&gw),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("agent.") && err.contains("--force"), "{err}");

    // Invalid name: exit 1 with the rule.
    let out = run(&[
        "issue",
        "agent",
        "--ca",
        s(&ca),
        "--site",
        "pa ris",
        "--name",
        "x",
        "--out",
        s(&dir.path().join("bad")),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid site name"));

    let out = ok(&["revoke", "--ca", s(&ca), s(&agent_pem)]);
    assert!(out.contains(&serial), "{out}");
    assert!(out.contains("crl.pem") && out.contains("reloads"), "{out}");

    let list = ok(&["list", "--ca", s(&ca)]);
    let line = list
        .lines()
        .find(|l| l.contains(&serial))
        .expect("serial listed");
    assert!(
        line.contains("revoked") && line.contains("paris/gw-01"),
        "{list}"
    );
    assert!(
        list.contains("aggregator") && list.contains("localhost,127.0.0.1"),
        "{list}"
    );

    let help = ok(&["issue", "agent", "--help"]);
    assert!(help.contains("Example"), "{help}");
}
