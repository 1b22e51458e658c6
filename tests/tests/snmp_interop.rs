//! SNMP interop with net-snmp's own senders: `snmptrap` v1, v2c and v3 (authNoPriv and authPriv
//! with MD5, SHA, SHA-256 x DES, AES) and `snmpinform` v2c and v3 (which exits 0 only when the
//! Inform is acknowledged), through a real agent to a real aggregator; then the stored events
//! are checked. Wrong communities and passwords are dropped and counted.
//!
//! Needs net-snmp's `snmptrap` and `snmpinform` (Debian: `apt-get install snmp`); skipped with
//! a message when missing, unless `CI=true`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use weir_aggregator::store::StoredEvent;
use weir_common::Severity;
use weir_tests::netsnmp::{run, tools_present};
use weir_tests::{Agent, Aggregator, Env, agent_metric};

/// The sender engine ID used by the v3 traps (hex).
const SENDER_ENGINE: &str = "0x80001f8804776569722d74657374";
/// Varbind carrying each case's name, so each stored event can be matched to its command.
const CASE_OID: &str = "1.3.6.1.2.1.1.5.0";

/// (user name, auth, priv) for net-snmp flags and the agent config.
const V3_USERS: &[(&str, &str, &str)] = &[
    ("md5-none", "MD5", ""),
    ("sha-none", "SHA", ""),
    ("sha256-none", "SHA-256", ""),
    ("md5-des", "MD5", "DES"),
    ("md5-aes", "MD5", "AES"),
    ("sha-des", "SHA", "DES"),
    ("sha-aes", "SHA", "AES"),
    ("sha256-des", "SHA-256", "DES"),
    ("sha256-aes", "SHA-256", "AES"),
    ("sha512-aes256", "SHA-512", "AES-256"),
];

fn toml_proto(p: &str) -> &'static str {
    match p {
        "MD5" => "md5",
        "SHA" => "sha",
        "SHA-256" => "sha256",
        "SHA-512" => "sha512",
        "DES" => "des",
        "AES" => "aes",
        "AES-256" => "aes256",
        _ => "none",
    }
}

fn users_toml() -> String {
    let mut s = String::new();
    for (name, a, p) in V3_USERS {
        s.push_str(&format!(
            "\n[[snmp.users]]\nname = \"{name}\"\nauth = \"{}\"\nauth_password = \"auth-pass-{name}\"\n",
            toml_proto(a)
        ));
        if !p.is_empty() {
            s.push_str(&format!(
                "privacy = \"{}\"\nprivacy_password = \"priv-pass-{name}\"\n",
                toml_proto(p)
            ));
        }
    }
    s
}

fn v3_args(user: &str, auth: &str, privacy: &str, engine: Option<&str>) -> Vec<String> {
    let mut a: Vec<String> = vec!["-v".into(), "3".into(), "-u".into(), user.into()];
    if let Some(e) = engine {
        a.extend(["-e".into(), e.into()]);
    }
    if privacy.is_empty() {
        a.extend(["-l".into(), "authNoPriv".into()]);
    } else {
        a.extend(["-l".into(), "authPriv".into()]);
        a.extend([
            "-x".into(),
            privacy.into(),
            "-X".into(),
            format!("priv-pass-{user}"),
        ]);
    }
    a.extend([
        "-a".into(),
        auth.into(),
        "-A".into(),
        format!("auth-pass-{user}"),
    ]);
    a
}

/// `TARGET '' TRAPOID CASE_OID s CASE` (v2c/v3 trap and Inform arguments).
fn notification(target: SocketAddr, trap_oid: &str, case: &str) -> Vec<String> {
    vec![
        target.to_string(),
        String::new(),
        trap_oid.into(),
        "1.3.6.1.2.1.2.2.1.1.3".into(),
        "i".into(),
        "3".into(),
        CASE_OID.into(),
        "s".into(),
        case.into(),
    ]
}

fn by_case(events: &[StoredEvent]) -> HashMap<String, StoredEvent> {
    events
        .iter()
        .filter_map(|e| {
            let v = e.event.tags.get(&format!("vb.{CASE_OID}"))?;
            Some((v.strip_prefix("string:")?.to_string(), e.clone()))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn net_snmp_traps_and_informs_reach_the_aggregator() {
    if !tools_present() {
        return;
    }
    let env = Env::new();
    let agg = Aggregator::start(&env.aggregator_config("agg", 0, 0)).await;
    let tls = env.issue_agent("site-a", "agent-1");
    // Dedup off: every trap must be stored as itself here (dedup is tested in dedup.rs).
    let text = weir_tests::without_dedup(&env.agent_config_text(
        "agent",
        &agg.quic_addr.to_string(),
        &tls,
        0,
    )) + &users_toml();
    let agent = Agent::start(&env.write("agent.toml", &text)).await;
    let target = agent.running().trap_addrs[0];
    let persist = tempfile::tempdir().unwrap();
    let p = persist.path();

    let mut expected: Vec<(String, &str, Severity)> = Vec::new();
    // v1: linkDown from agent-addr 192.0.2.9.
    let mut args: Vec<String> = ["-v", "1", "-c", "public"].map(String::from).to_vec();
    args.extend(
        [
            &target.to_string(),
            "1.3.6.1.4.1.8072.3.2.10",
            "192.0.2.9",
            "2",
            "0",
            "",
            CASE_OID,
            "s",
            "v1-linkdown",
        ]
        .map(String::from),
    );
    assert!(run("snmptrap", &args, p));
    expected.push(("v1-linkdown".into(), "SNMP_LINK_DOWN", Severity::Critical));
    // v2c trap and Inform.
    let mut args: Vec<String> = ["-v", "2c", "-c", "public"].map(String::from).to_vec();
    args.extend(notification(target, "1.3.6.1.6.3.1.1.5.4", "v2c-linkup"));
    assert!(run("snmptrap", &args, p));
    expected.push(("v2c-linkup".into(), "SNMP_LINK_UP", Severity::Info));
    let mut args: Vec<String> = ["-v", "2c", "-c", "public", "-t", "3", "-r", "1"]
        .map(String::from)
        .to_vec();
    args.extend(notification(
        target,
        "1.3.6.1.4.1.8072.2.3.0.1",
        "v2c-inform",
    ));
    assert!(run("snmpinform", &args, p), "v2c Inform not acknowledged");
    expected.push((
        "v2c-inform".into(),
        "SNMP_TRAP_1.3.6.1.4.1.8072.2.3.0.1",
        Severity::Warning,
    ));
    // v3 traps for every user, and an Inform for two of them.
    for (user, auth, privacy) in V3_USERS {
        let case = format!("v3-trap-{user}");
        let mut args = v3_args(user, auth, privacy, Some(SENDER_ENGINE));
        args.extend(notification(target, "1.3.6.1.6.3.1.1.5.1", &case));
        assert!(run("snmptrap", &args, p), "{case}");
        expected.push((case, "SNMP_COLD_START", Severity::Error));
    }
    for (user, auth, privacy) in [V3_USERS[6], V3_USERS[3], V3_USERS[1]] {
        let case = format!("v3-inform-{user}");
        let mut args = v3_args(user, auth, privacy, None);
        args.extend(["-t".into(), "3".into(), "-r".into(), "1".into()]);
        args.extend(notification(target, "1.3.6.1.6.3.1.1.5.5", &case));
        assert!(run("snmpinform", &args, p), "{case} not acknowledged");
        expected.push((case, "SNMP_AUTH_FAIL", Severity::Error));
    }

    // Refused: wrong community, wrong auth password, wrong privacy password, unknown user.
    let before_community = agent_metric(
        &agent,
        "weir_agent_snmp_dropped_total{reason=\"community_not_allowed\"}",
    )
    .await;
    let before_auth =
        agent_metric(&agent, "weir_agent_snmp_dropped_total{reason=\"bad_auth\"}").await;
    let before_priv = agent_metric(
        &agent,
        "weir_agent_snmp_dropped_total{reason=\"decrypt_failed\"}",
    )
    .await;
    let mut args: Vec<String> = ["-v", "2c", "-c", "wrong"].map(String::from).to_vec();
    args.extend(notification(
        target,
        "1.3.6.1.6.3.1.1.5.4",
        "refused-community",
    ));
    assert!(run("snmptrap", &args, p));
    let mut args = v3_args("sha-aes", "SHA", "AES", Some(SENDER_ENGINE));
    let i = args.iter().position(|a| a == "-A").unwrap();
    args[i + 1] = "not-the-password".into();
    args.extend(notification(target, "1.3.6.1.6.3.1.1.5.4", "refused-auth"));
    assert!(run("snmptrap", &args, p));
    let mut args = v3_args("sha-aes", "SHA", "AES", Some(SENDER_ENGINE));
    let i = args.iter().position(|a| a == "-X").unwrap();
    args[i + 1] = "not-the-password".into();
    args.extend(notification(target, "1.3.6.1.6.3.1.1.5.4", "refused-priv"));
    assert!(run("snmptrap", &args, p));

    weir_tests::eventually(
        Duration::from_secs(30),
        "every accepted trap stored",
        || {
            let got = by_case(&agg.events());
            expected.iter().all(|(c, _, _)| got.contains_key(c))
        },
    )
    .await;
    let mut dropped = false;
    for _ in 0..50 {
        dropped = agent_metric(
            &agent,
            "weir_agent_snmp_dropped_total{reason=\"community_not_allowed\"}",
        )
        .await
            > before_community
            && agent_metric(&agent, "weir_agent_snmp_dropped_total{reason=\"bad_auth\"}").await
                > before_auth
            && agent_metric(
                &agent,
                "weir_agent_snmp_dropped_total{reason=\"decrypt_failed\"}",
            )
            .await
                > before_priv;
        if dropped {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(dropped, "refused traps are counted by reason");

    let got = by_case(&agg.events());
    for refused in ["refused-community", "refused-auth", "refused-priv"] {
        assert!(!got.contains_key(refused), "{refused} was stored");
    }
    for (case, tag, severity) in &expected {
        let e = &got[case].event;
        assert_eq!(e.tag.as_deref(), Some(*tag), "{case}");
        assert_eq!(e.event_type.as_deref(), Some(*tag), "{case}");
        assert_eq!(e.severity, *severity, "{case}");
        assert_eq!(e.input, weir_common::InputKind::SnmpTrap, "{case}");
        assert_eq!(e.source, "snmp");
        assert!(
            e.raw_payload.as_ref().is_some_and(|r| r.len() > 20),
            "{case}"
        );
        if case.starts_with("v1") {
            assert_eq!(e.hostname, "192.0.2.9");
            assert_eq!(e.tags["snmp_trap_oid"], "1.3.6.1.6.3.1.1.5.3");
        } else {
            assert_eq!(e.hostname, "127.0.0.1", "{case}");
            assert_eq!(e.tags["vb.1.3.6.1.2.1.2.2.1.1.3"], "integer:3", "{case}");
        }
        if case.starts_with("v3") {
            let user = case.split_once("-").unwrap().1.split_once('-').unwrap().1;
            assert_eq!(e.tags["snmp_user"], user, "{case}");
        }
    }
    agent.stop().await;
    agg.stop().await;
}

/// `weir-trapgen` (v2c and v3 SHA/AES) at a small rate through a real agent: every `seq=N`
/// reaches the aggregator exactly once. Needs no external tool.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn trapgen_traps_are_stored_once_each() {
    let env = Env::new();
    let agg = Aggregator::start(&env.aggregator_config("agg", 0, 0)).await;
    let tls = env.issue_agent("site-a", "agent-1");
    let text = weir_tests::without_dedup(&env.agent_config_text(
        "agent",
        &agg.quic_addr.to_string(),
        &tls,
        0,
    )) + "\n[[snmp.users]]\nname = \"weir\"\nauth = \"sha\"\nauth_password = \"weir-auth-pass\"\nprivacy = \"aes\"\nprivacy_password = \"weir-priv-pass\"\n";
    let agent = Agent::start(&env.write("agent.toml", &text)).await;
    let target = agent.running().trap_addrs[0].to_string();
    for (version, first) in [("v2c", "0"), ("v3", "1000")] {
        let out = Command::new(env!("CARGO_BIN_EXE_weir-trapgen"))
            .args(["--target", &target, "--version", version, "--rate", "500"])
            .args(["--duration", "1", "--first-seq", first])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    weir_tests::eventually(Duration::from_secs(30), "1000 traps stored", || {
        agg.len() >= 1000
    })
    .await;
    let mut seqs: Vec<u64> = agg
        .events()
        .iter()
        .filter_map(|e| {
            e.event
                .tags
                .get("vb.1.3.6.1.4.1.8072.2.3.2.1")?
                .strip_prefix("string:seq=")?
                .parse()
                .ok()
        })
        .collect();
    seqs.sort_unstable();
    let want: Vec<u64> = (0..500).chain(1000..1500).collect();
    assert_eq!(seqs, want);
    agent.stop().await;
    agg.stop().await;
}
