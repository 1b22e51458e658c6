//! The NOC API end to end over a real socket, driven with `curl` (as operators and
//! Alertmanager would): scoped keys made with the real `weir-aggregator keys` CLI, events posted
//! and read back, scope refusals, revocation taking effect without a restart, and problem
//! documents for bodies over the limit. Needs `curl`: skipped with a message when missing,
//! unless `CI=true`.

use std::path::Path;
use std::process::Command;

use serde_json::{Value, json};
use weir_tests::{Aggregator, Env, binary};

fn have_curl() -> bool {
    let ok = Command::new("curl")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "curl is required under CI=true (apt-get install curl)"
        );
        eprintln!("SKIPPED: curl not found (apt-get install curl)");
    }
    ok
}

/// `curl` a request; returns (status, JSON body or Null, raw headers).
fn curl(method: &str, url: &str, key: Option<&str>, body: Option<&Path>) -> (u16, Value, String) {
    let mut c = Command::new("curl");
    c.args(["-sS", "-D", "-", "-X", method, url]);
    if let Some(k) = key {
        c.args(["-H", &format!("Authorization: Bearer {k}")]);
    }
    if let Some(b) = body {
        c.args(["-H", "Content-Type: application/json", "--data-binary"]);
        c.arg(format!("@{}", b.display()));
    }
    let out = c.output().expect("running curl");
    assert!(out.status.success(), "curl failed: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (head, body) = text.split_once("\r\n\r\n").expect("headers and body");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status line");
    (
        status,
        serde_json::from_str(body).unwrap_or(Value::Null),
        head.to_string(),
    )
}

fn keys_cli(config: &Path, args: &[&str]) -> String {
    let out = Command::new(binary("weir-aggregator"))
        .arg("keys")
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .expect("running weir-aggregator keys");
    assert!(
        out.status.success(),
        "keys {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_posts_events_and_reads_them_back_with_scoped_keys() {
    if !have_curl() {
        return;
    }
    let env = Env::new();
    let config = env.aggregator_config("agg", 0, 0);
    let agg = Aggregator::start(&config).await;
    let base = format!("http://{}", agg.api_addr);

    // Keys made by the real CLI while the aggregator runs (it holds the store open).
    let poster = keys_cli(
        &config,
        &["create", "--name", "poster", "--scopes", "ingest"],
    );
    let poster = poster.trim().to_string();
    let reader = keys_cli(&config, &["create", "--name", "noc", "--scopes", "read"]);
    let reader = reader.trim().to_string();
    let listed = keys_cli(&config, &["list"]);
    assert!(
        listed.contains("poster") && listed.contains("noc"),
        "{listed}"
    );
    assert!(
        !listed.contains(&poster) && !listed.contains(&reader),
        "list never prints secrets"
    );

    let events = env.write(
        "events.json",
        &json!([
            {"source": "billing", "hostname": "app-1", "severity": "critical",
             "message": "payment queue stalled", "event_type": "queue_stall",
             "tags": {"resource": "payments"}, "timestamp": "2026-02-24T14:37:00Z"},
            {"source": "billing", "hostname": "app-2", "severity": "warn",
             "message": "retrying", "event_type": "retry", "tags": {"resource": "payments"}}
        ])
        .to_string(),
    );
    let (s, b, _) = curl(
        "POST",
        &format!("{base}/api/v1/events"),
        Some(&poster),
        Some(&events),
    );
    assert_eq!(s, 202, "{b}");
    assert_eq!(b["ids"], json!(["central:api:1", "central:api:2"]));
    // The ingest key cannot read; the read key cannot post.
    let (s, b, _) = curl("GET", &format!("{base}/api/v1/events"), Some(&poster), None);
    assert_eq!(s, 403);
    assert!(
        b["detail"].as_str().unwrap().contains("`read` scope"),
        "{b}"
    );
    let (s, _, _) = curl(
        "POST",
        &format!("{base}/api/v1/events"),
        Some(&reader),
        Some(&events),
    );
    assert_eq!(s, 403);

    let (s, page, _) = curl(
        "GET",
        &format!("{base}/api/v1/events?source=billing&severity=%3E%3Dwarning"),
        Some(&reader),
        None,
    );
    assert_eq!(s, 200, "{page}");
    assert_eq!(page["total"], 2);
    let first = &page["events"][1];
    assert_eq!(first["id"], "central:api:1");
    assert_eq!(first["severity"], "critical");
    assert_eq!(first["input"], "api");
    assert_eq!(first["event_time"], "2026-02-24T14:37:00Z");
    assert_eq!(page["events"][0]["severity"], "warning", "alias warn");

    // Alertmanager's webhook.
    let am = env.write(
        "am.json",
        &json!({"version": "4", "status": "firing", "receiver": "weir", "groupKey": "g",
            "alerts": [{"status": "firing", "labels": {"alertname": "NodeDown",
            "instance": "db-1:9100", "severity": "critical"}, "annotations": {"summary": "down"},
            "startsAt": "2026-02-24T14:00:00Z", "endsAt": "0001-01-01T00:00:00Z",
            "fingerprint": "0123abcd"}]})
        .to_string(),
    );
    let (s, b, _) = curl(
        "POST",
        &format!("{base}/api/v1/ingest/alertmanager"),
        Some(&poster),
        Some(&am),
    );
    assert_eq!(s, 202, "{b}");
    let (_, e, _) = curl(
        "GET",
        &format!("{base}/api/v1/events/{}", b["ids"][0].as_str().unwrap()),
        Some(&reader),
        None,
    );
    assert_eq!(e["hostname"], "db-1");
    assert_eq!(e["tag"], "AM_NodeDown");

    // Over the body limit (8 MiB): a problem document, not plain text.
    let big = env.write("big.json", &"x".repeat(9 << 20));
    let (s, b, head) = curl(
        "POST",
        &format!("{base}/api/v1/events"),
        Some(&poster),
        Some(&big),
    );
    assert_eq!(s, 413);
    assert!(
        head.to_ascii_lowercase()
            .contains("application/problem+json"),
        "{head}"
    );
    assert_eq!(b["status"], 413);

    // Sites: the API's pseudo-agent is a site of its own.
    let (_, sites, _) = curl("GET", &format!("{base}/api/v1/sites"), Some(&reader), None);
    assert_eq!(sites[0]["site"], "central", "{sites}");

    // Revoked with the CLI: refused at the next request, no restart.
    keys_cli(&config, &["revoke", "noc"]);
    let (s, b, _) = curl("GET", &format!("{base}/api/v1/events"), Some(&reader), None);
    assert_eq!(s, 401);
    assert_eq!(b["detail"], "API key revoked");
    let stored: Vec<_> = agg.events().into_iter().map(|e| e.id()).collect();
    assert_eq!(stored, ["central:api:1", "central:api:2", "central:api:3"]);
    agg.stop().await;
}
