//! Seed 001 `discardtraps` ("for traps, dropped as early as possible"), end to end: the
//! aggregator pushes its trap drop policy to the agent (protocol v2), the agent drops matching
//! traps and Informs (still answering the Informs) before they are queued, and a reload of the
//! definitions without the entry makes the agent keep them again.
//!
//! Needs net-snmp's `snmptrap` and `snmpinform` (Debian: `apt-get install snmp`); skipped with
//! a message when missing, unless `CI=true`.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use weir_tests::netsnmp::{run, tools_present};
use weir_tests::{
    API_KEY, Agent, Aggregator, Env, agent_metric, eventually, eventually_async, http_client,
};

/// Varbind carrying each trap's case name.
const CASE_OID: &str = "1.3.6.1.2.1.1.5.0";

const DISCARD_WARM: &str = r#"
[[definition]]
tag = "SNMP_WARM_START"
dest = "discardtraps"

[[definition]]
tag = "SNMP_COLD_START"
"#;

const KEEP_WARM: &str = r#"
[[definition]]
tag = "SNMP_WARM_START"

[[definition]]
tag = "SNMP_COLD_START"
"#;

/// A v1 generic trap (0 cold start, 1 warm start) named `case`.
fn v1_trap(target: SocketAddr, generic: u8, case: &str, persist: &Path) -> bool {
    let args: Vec<String> = [
        "-v",
        "1",
        "-c",
        "public",
        &target.to_string(),
        "1.3.6.1.4.1.8072.3.2.10",
        "192.0.2.9",
        &generic.to_string(),
        "0",
        "",
        CASE_OID,
        "s",
        case,
    ]
    .map(String::from)
    .to_vec();
    run("snmptrap", &args, persist)
}

/// A v2c warmStart Inform named `case`; true when it was acknowledged.
fn v2c_warm_inform(target: SocketAddr, case: &str, persist: &Path) -> bool {
    let args: Vec<String> = [
        "-v",
        "2c",
        "-c",
        "public",
        "-t",
        "3",
        "-r",
        "0",
        &target.to_string(),
        "",
        "1.3.6.1.6.3.1.1.5.2",
        CASE_OID,
        "s",
        case,
    ]
    .map(String::from)
    .to_vec();
    run("snmpinform", &args, persist)
}

fn stored_cases(agg: &Aggregator) -> Vec<String> {
    agg.events()
        .iter()
        .filter_map(|e| {
            let v = e.event.tags.get(&format!("vb.{CASE_OID}"))?;
            Some(v.strip_prefix("string:")?.to_string())
        })
        .collect()
}

fn policy_file(env: &Env) -> String {
    std::fs::read_to_string(env.path().join("agent-data/trap-policy.json")).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn discardtraps_are_dropped_at_the_agent_until_the_definition_is_reloaded_away() {
    if !tools_present() {
        return;
    }
    let env = Env::new();
    let defs = env.write("definitions.toml", DISCARD_WARM);
    let text = env.aggregator_config_text("agg", 0, 0).replace(
        "# definitions = \"definitions.toml\"",
        &format!("definitions = \"{}\"", defs.display()),
    );
    let agg = Aggregator::start(&env.write("agg.toml", &text)).await;
    let tls = env.issue_agent("site-a", "agent-1");
    let text = weir_tests::without_dedup(&env.agent_config_text(
        "agent",
        &agg.quic_addr.to_string(),
        &tls,
        0,
    ));
    let agent = Agent::start(&env.write("agent.toml", &text)).await;
    let target = agent.running().trap_addrs[0];
    let persist = tempfile::tempdir().unwrap();
    let p = persist.path();

    eventually(Duration::from_secs(10), "agent connected", || {
        agent.connected()
    })
    .await;
    eventually(
        Duration::from_secs(10),
        "policy received and persisted",
        || policy_file(&env).contains("SNMP_WARM_START"),
    )
    .await;
    let dropped = "weir_agent_dropped_total{reason=\"discardtraps\"}";
    let at_aggregator = "weir_aggregator_dropped_total{reason=\"discardtraps\"}";
    assert_eq!(agent_metric(&agent, dropped).await, 0.0);

    assert!(v1_trap(target, 1, "warm-1", p));
    assert!(v1_trap(target, 0, "cold-1", p));
    assert!(
        v2c_warm_inform(target, "warm-inform", p),
        "a discarded Inform must still be acknowledged"
    );
    eventually(Duration::from_secs(10), "cold start stored", || {
        stored_cases(&agg).contains(&"cold-1".to_string())
    })
    .await;
    eventually_async(
        Duration::from_secs(10),
        "both warm starts counted as dropped at the agent",
        || async { agent_metric(&agent, dropped).await == 2.0 },
    )
    .await;
    // Sent after the warm start from the same sender: once it is stored, the warm start
    // would be queued by now had it not been dropped.
    assert!(v1_trap(target, 0, "cold-2", p));
    eventually(Duration::from_secs(10), "second cold start stored", || {
        stored_cases(&agg).contains(&"cold-2".to_string())
    })
    .await;
    let cases = stored_cases(&agg);
    assert!(!cases.iter().any(|c| c.starts_with("warm")), "{cases:?}");
    assert!(
        !agent
            .queued_messages()
            .iter()
            .any(|m| m.contains("warm") || m.contains("Warm")),
        "a dropped trap entered the agent queue"
    );
    assert_eq!(
        agent_metric(&agent, at_aggregator).await,
        0.0,
        "nothing left for the aggregator to discard"
    );

    // Reload the definitions without the discardtraps entry: the agent stops dropping.
    std::fs::write(&defs, KEEP_WARM).unwrap();
    let resp = http_client()
        .post(format!("http://{}/api/v1/config/reload", agg.api_addr))
        .header("X-API-Key", API_KEY)
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{:?}", resp.text().await);
    eventually(Duration::from_secs(10), "empty policy received", || {
        let f = policy_file(&env);
        !f.is_empty() && !f.contains("SNMP_WARM_START")
    })
    .await;
    assert!(v1_trap(target, 1, "warm-2", p));
    assert!(v2c_warm_inform(target, "warm-inform-2", p));
    eventually(Duration::from_secs(10), "warm starts stored", || {
        let cases = stored_cases(&agg);
        cases.contains(&"warm-2".to_string()) && cases.contains(&"warm-inform-2".to_string())
    })
    .await;
    assert_eq!(agent_metric(&agent, dropped).await, 2.0);

    agent.stop().await;
    agg.stop().await;
}
