//! Correlation end to end: syslog from a device reaches a real agent, crosses mutual-TLS QUIC,
//! is stored, and a seed-000 rule turns two matching events into one incident whose events
//! point back to it. The dry-run over the same stored events must decide the same.
//! `donotpersist` events correlate without being stored; a killed agent makes its site
//! unreachable, which inhibits the incidents of that site's outage.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::AsyncWriteExt as _;
use weir_tests::{
    API_KEY, Agent, Aggregator, Env, Proc, agent_reports_connected, edit, eventually,
    eventually_async, free_tcp_port, http_client, post_events, wait_healthy, without_dedup,
};

use weir_aggregator::correlate::SEED_000_RULE;

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

/// The aggregator config with `rules` and a 1 s allowed lateness.
fn config_with_rules(env: &Env, rules: &std::path::Path) -> String {
    let text = env.aggregator_config_text("agg", 0, 0);
    let text = edit(
        &text,
        "# rules = \"rules.json\"",
        &format!("rules = \"{}\"", rules.display()),
    );
    edit(
        &text,
        "allowed_lateness = \"10s\"",
        "allowed_lateness = \"1s\"",
    )
}

/// Polls `GET url` until `check` accepts the body (20 s).
async fn get_until(url: String, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let v = get(url.clone()).await;
        if check(&v) {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}: {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn donotpersist_events_open_incidents_but_stay_out_of_the_events_api() {
    let env = Env::new();
    let rules = env.write(
        "rules.json",
        r#"[{"name": "Volatile Pair", "events": ["VOLATILE"], "window": 300, "count": 2}]"#,
    );
    let defs = env.write(
        "definitions.toml",
        "[[definition]]\ntag = \"VOLATILE\"\ndest = \"donotpersist\"\n",
    );
    let text = edit(
        &config_with_rules(&env, &rules),
        "# definitions = \"definitions.toml\"",
        &format!("definitions = \"{}\"", defs.display()),
    );
    let agg = Aggregator::start(&env.write("agg.toml", &text)).await;
    let tls = env.issue_agent("paris", "gw-01");
    let agent_text =
        without_dedup(&env.agent_config_text("agent", &agg.quic_addr.to_string(), &tls, 0));
    let agent = Agent::start(&env.write("agent.toml", &agent_text)).await;
    let http = agent.running().http_addr.expect("agent HTTP");
    let volatile = |host: &str| {
        json!({"source": "probe", "hostname": host, "severity": "error",
               "message": format!("flapping on {host}"), "tag": "VOLATILE"})
    };
    // Through the agent and QUIC.
    post_events(&http_client(), http, &[volatile("h1"), volatile("h2")])
        .await
        .unwrap();
    let api = format!("http://{}", agg.api_addr);
    let list = get_until(format!("{api}/api/v1/incidents"), "the incident", |v| {
        v["total"] == 1
    })
    .await;
    let id = list["incidents"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(list["incidents"][0]["rule"], "Volatile Pair");
    let detail = get(format!("{api}/api/v1/incidents/{id}")).await;
    let ids: Vec<&str> = detail["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 2, "{detail}");
    assert!(
        ids.iter().all(|i| i.starts_with("paris:gw-01:")),
        "{detail}"
    );
    assert_eq!(detail["count"], 2, "{detail}");

    // Through the aggregator's own ingest API.
    let resp = http_client()
        .post(format!("{api}/api/v1/events"))
        .header("x-api-key", API_KEY)
        .json(&json!([volatile("h3"), volatile("h4")]))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let list = get_until(
        format!("{api}/api/v1/incidents"),
        "the second incident",
        |v| v["total"] == 2,
    )
    .await;
    let id = list["incidents"][0]["id"].as_str().unwrap().to_string();
    let detail = get(format!("{api}/api/v1/incidents/{id}")).await;
    assert!(
        detail["events"]
            .as_array()
            .unwrap()
            .iter()
            .all(|v| v.as_str().unwrap().starts_with("central:api:")),
        "{detail}"
    );

    // Not one of them is stored.
    for q in ["", "?hidden=include"] {
        let events = get(format!("{api}/api/v1/events{q}")).await;
        assert_eq!(events["total"], 0, "{q}: {events}");
    }
    assert!(agg.events().is_empty());
    agent.stop().await;
    agg.stop().await;
}

/// A real agent process is killed: after `site_unreachable_after` (2 s here) its site gets a
/// "site unreachable" incident; events from the outage that reach a rule afterwards are
/// attached to it instead of opening their own incident; the incident resolves when the agent
/// is back; events after the outage open incidents as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn site_unreachable_inhibits_outage_incidents_and_resolves_on_reconnect() {
    let env = Env::new();
    let rules = env.write(
        "rules.json",
        r#"[{"name": "Node Pair", "events": ["NODE_DOWN"], "window": 300, "count": 2}]"#,
    );
    let text = edit(
        &config_with_rules(&env, &rules),
        "site_unreachable_after = \"2m\"",
        "site_unreachable_after = \"2s\"",
    );
    let agg = Aggregator::start(&env.write("agg.toml", &text)).await;
    let api = format!("http://{}", agg.api_addr);
    let tls = env.issue_agent("paris", "gw-01");
    let http_port = free_tcp_port();
    let agent_text =
        without_dedup(&env.agent_config_text("agent", &agg.quic_addr.to_string(), &tls, http_port));
    let config = env.write("agent.toml", &agent_text);
    let http: std::net::SocketAddr = format!("127.0.0.1:{http_port}").parse().unwrap();
    let client = http_client();
    let mut agent = Proc::agent(&config, http, env.path()).await;
    eventually_async(Duration::from_secs(20), "the agent connected", || async {
        agent_reports_connected(&client, http)
            .await
            .unwrap_or(false)
    })
    .await;

    agent.kill9();
    // The aggregator notices at its idle timeout (5 s in tests), then waits 2 s more.
    let list = get_until(
        format!("{api}/api/v1/incidents"),
        "the site-unreachable incident",
        |v| v["total"] == 1,
    )
    .await;
    let during_outage = jiff::Timestamp::now();
    let site = &list["incidents"][0];
    assert_eq!(site["rule"], "site-unreachable", "{list}");
    assert_eq!(site["status"], "open", "{list}");
    assert!(site["title"].as_str().unwrap().contains("paris"), "{list}");
    let site_id = site["id"].as_str().unwrap().to_string();

    agent.start();
    wait_healthy(http, "the agent restarted").await;
    get_until(
        format!("{api}/api/v1/incidents/{site_id}"),
        "the site incident resolved",
        |v| v["status"] == "resolved",
    )
    .await;

    // Devices at the site saw the outage: two node-down events stamped during it, delivered
    // now. The rule fires, but the site-unreachable incident covers it.
    let node_down = |host: &str, at: jiff::Timestamp| {
        json!({"source": "probe", "hostname": host, "severity": "critical",
               "message": format!("{host} unreachable"), "tag": "NODE_DOWN",
               "timestamp": at.to_string()})
    };
    post_events(
        &client,
        http,
        &[
            node_down("db-1", during_outage),
            node_down("db-2", during_outage),
        ],
    )
    .await
    .unwrap();
    let detail = get_until(
        format!("{api}/api/v1/incidents/{site_id}"),
        "the outage events attached to the site incident",
        |v| v["events"].as_array().is_some_and(|e| e.len() == 2),
    )
    .await;
    assert!(
        detail["audit"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["by"] == "rule:Node Pair"),
        "{detail}"
    );
    let list = get(format!("{api}/api/v1/incidents")).await;
    assert_eq!(
        list["total"], 1,
        "inhibited, no incident of its own: {list}"
    );

    // After the outage the same rule opens its own incident.
    let now = jiff::Timestamp::now();
    post_events(
        &client,
        http,
        &[node_down("db-3", now), node_down("db-4", now)],
    )
    .await
    .unwrap();
    let list = get_until(
        format!("{api}/api/v1/incidents"),
        "the rule's incident",
        |v| v["total"] == 2,
    )
    .await;
    assert_eq!(list["incidents"][0]["rule"], "Node Pair", "{list}");
    let status = agent.terminate(Duration::from_secs(20));
    assert!(status.success(), "{status}");
    agg.stop().await;
}
