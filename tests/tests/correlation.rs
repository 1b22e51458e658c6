//! Correlation end to end: syslog from a device reaches a real agent, crosses mutual-TLS QUIC,
//! is stored, and a seed-000 rule turns two matching events into one incident whose events
//! point back to it. The dry-run over the same stored events must decide the same.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::AsyncWriteExt as _;
use weir_tests::{API_KEY, Agent, Aggregator, Env, eventually, http_client};

/// Seed 000's "Database Connectivity Failure" rule, as the seed writes it.
const SEED_000_RULE: &str = r#"{
  "name": "Database Connectivity Failure",
  "priority": 10,
  "enabled": true,
  "conditions": {
    "operator": "AND",
    "filters": [
      { "field": "hostname", "op": "matches", "value": "db-*" },
      { "field": "severity", "op": ">=", "value": "critical" },
      { "field": "message", "op": "contains_any",
        "value": ["connection refused", "max_connections", "too many connections"] }
    ]
  },
  "window_minutes": 5,
  "min_event_count": 2,
  "action": {
    "create_incident": true,
    "incident_severity": "CRITICAL",
    "contact_list": "DBA On-Call",
    "suppress_individual": true
  }
}"#;

async fn get(url: String) -> Value {
    let resp = http_client()
        .get(&url)
        .header("x-api-key", API_KEY)
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "GET {url}: {}", resp.status());
    resp.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_000_rule_opens_one_incident_from_agent_events_and_dry_run_agrees() {
    let env = Env::new();
    let rules = env.write("rules.json", SEED_000_RULE);
    let text = env.aggregator_config_text("agg", 0, 0);
    let text = text.replacen(
        "# rules = \"rules.json\"",
        &format!("rules = \"{}\"", rules.display()),
        1,
    );
    // Correlate as soon as events are a second old (the default waits 10 s for stragglers).
    let text = text.replacen("allowed_lateness = \"10s\"", "allowed_lateness = \"1s\"", 1);
    assert!(text.contains("rules = \"/"), "the example config changed");
    let agg = Aggregator::start(&env.write("agg.toml", &text)).await;
    let tls = env.issue_agent("paris", "gw-01");
    let agent = Agent::start(&env.agent_config("agent", &agg.quic_addr.to_string(), &tls, 0)).await;

    // PRI 10 = facility user, severity 2 (critical); RFC 5424 with the current time (events
    // far older than the allowed lateness are correlated only into windows still open). Two
    // matching lines, one that is not critical, one from another host: only two count.
    let now = jiff::Timestamp::now();
    let line = |pri: u8, offset: i64, host: &str, msg: &str| {
        let t = now + jiff::SignedDuration::from_millis(offset);
        format!("<{pri}>1 {t} {host} app - - - {msg}")
    };
    let lines = [
        line(10, 0, "db-prod-01", "connection refused for user app"),
        line(12, 100, "db-prod-01", "connection refused (warning only)"),
        line(10, 200, "web-01", "upstream connection refused"),
        line(10, 300, "db-prod-01", "too many connections for role app"),
    ];
    let mut stream = tokio::net::TcpStream::connect(agent.running().tcp_addrs[0])
        .await
        .unwrap();
    for l in lines {
        stream.write_all(format!("{l}\n").as_bytes()).await.unwrap();
    }
    stream.shutdown().await.unwrap();
    eventually(Duration::from_secs(20), "4 events stored", || {
        agg.events().len() == 4
    })
    .await;

    let api = format!("http://{}", agg.api_addr);
    let mut incidents = Value::Null;
    for _ in 0..200 {
        incidents = get(format!("{api}/api/v1/incidents")).await;
        if incidents["total"] == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(incidents["total"], 1, "{incidents}");
    let summary = &incidents["incidents"][0];
    assert_eq!(summary["rule"], "Database Connectivity Failure");
    assert_eq!(summary["severity"], "critical");
    assert_eq!(summary["contact_list"], "DBA On-Call");
    assert_eq!(summary["events"], 2);

    // The incident says why it exists, and which events it counted.
    let id = summary["id"].as_str().unwrap();
    let detail = get(format!("{api}/api/v1/incidents/{id}")).await;
    let incident = &detail;
    let explanation = &incident["explanation"];
    assert_eq!(
        explanation["rule"], "Database Connectivity Failure",
        "{detail}"
    );
    let counted: Vec<String> = incident["events"]
        .as_array()
        .expect("event ids")
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(counted.len(), 2, "{detail}");
    assert!(counted.iter().all(|e| e.starts_with("paris:gw-01:")));

    // Both events point back to the incident; suppress_individual hides them from the
    // default view but they are still stored and findable.
    let inc_events = get(format!(
        "{api}/api/v1/events?correlated_incident={id}&hidden=include"
    ))
    .await;
    assert_eq!(inc_events["total"], 2, "{inc_events}");
    for e in inc_events["events"].as_array().unwrap() {
        assert!(counted.contains(&e["id"].as_str().unwrap().to_string()));
        assert_eq!(
            e["tags"]["weir.suppressed_by"],
            "Database Connectivity Failure"
        );
    }
    let default_view = get(format!("{api}/api/v1/events")).await;
    assert_eq!(
        default_view["total"], 2,
        "suppressed events hidden: {default_view}"
    );

    // Dry-run of the same rule over the same stored events: the same incident, same events,
    // and nothing live changes.
    let from = "2000-01-01T00:00:00Z";
    let to = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(60);
    let rule: Value = serde_json::from_str(SEED_000_RULE).unwrap();
    let resp = http_client()
        .post(format!("{api}/api/v1/rules/dry-run"))
        .header("x-api-key", API_KEY)
        .json(&json!({"rules": rule, "from": from, "to": to.to_string()}))
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let dry: Value = resp.json().await.unwrap();
    assert!(status.is_success(), "{status}: {dry}");
    assert_eq!(dry["events"], 4, "{dry}");
    assert_eq!(dry["incidents"], 1, "{dry}");
    let opened: Vec<&Value> = dry["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["decision"] == "open_incident")
        .collect();
    assert_eq!(opened.len(), 1, "{dry}");
    let mut dry_ids: Vec<String> = opened[0]["event_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let mut live_ids = counted.clone();
    dry_ids.sort();
    live_ids.sort();
    assert_eq!(
        dry_ids, live_ids,
        "dry-run and live counted the same events"
    );
    let after = get(format!("{api}/api/v1/incidents")).await;
    assert_eq!(after["total"], 1, "the dry-run opened nothing live");

    agent.stop().await;
    agg.stop().await;
}
