use std::sync::Arc;

use axum::body::Body;
use axum::http::Request;
use serde_json::{Value, json};
use tower::ServiceExt;

use super::*;
use crate::api::router;
use crate::api::tests::test_state;
use crate::correlate::SEED_000_RULE;
use crate::correlation::Correlator;
use crate::keys::{create_key, keys_path, parse_scopes};
use crate::store::Store;

const BOOT: &str = "boot-key";

struct Fx {
    _dir: tempfile::TempDir,
    app: Router,
    read: String,
    rules: std::path::PathBuf,
}

fn fixture() -> Fx {
    let dir = tempfile::tempdir().unwrap();
    let kp = keys_path(dir.path());
    let (_, read) = create_key(
        &kp,
        "reader",
        parse_scopes("read").unwrap(),
        Timestamp::now(),
    )
    .unwrap();
    let store = Arc::new(Store::open(&dir.path().join("e.redb")).unwrap());
    let mut st = test_state(store.clone(), BOOT, Some(kp), 0, false);
    let rules = dir.path().join("rules.json");
    std::fs::write(&rules, SEED_000_RULE).unwrap();
    st.correlation = Correlator::start(
        store,
        st.registry.clone(),
        crate::correlate::CorrelationConfig {
            rules: Some(rules.clone()),
            ..Default::default()
        },
    )
    .unwrap();
    Fx {
        _dir: dir,
        app: router(st),
        read,
        rules,
    }
}

async fn call(
    app: &Router,
    method: &str,
    uri: &str,
    key: Option<&str>,
    body: Option<String>,
) -> (StatusCode, Value) {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(k) = key {
        req = req.header("x-api-key", k);
    }
    let req = req
        .header("content-type", "application/json")
        .body(body.map(Body::from).unwrap_or_else(Body::empty))
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 22)
        .await
        .unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn rules_routes_check_keys_and_scopes() {
    let f = fixture();
    let (s, _) = call(&f.app, "GET", "/api/v1/rules", None, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, b) = call(&f.app, "GET", "/api/v1/rules", Some(&f.read), None).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["rules"][0]["name"], "Database Connectivity Failure");
    assert!(
        b["versions"]["Database Connectivity Failure"].is_string(),
        "{b}"
    );
    let (s, b) = call(
        &f.app,
        "PUT",
        "/api/v1/rules",
        Some(&f.read),
        Some(SEED_000_RULE.into()),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{b}");
    assert!(
        b["detail"].as_str().unwrap().contains("`admin` scope"),
        "{b}"
    );
}

#[tokio::test]
async fn put_validates_writes_and_reloads() {
    let f = fixture();
    let bad = SEED_000_RULE.replace("\"op\": \"matches\"", "\"op\": \"resembles\"");
    let (s, b) = call(&f.app, "PUT", "/api/v1/rules", Some(BOOT), Some(bad)).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
    let detail = b["detail"].as_str().unwrap();
    assert!(detail.contains("Database Connectivity Failure"), "{detail}");
    assert!(detail.contains("op"), "{detail}");
    assert_eq!(
        std::fs::read_to_string(&f.rules).unwrap(),
        SEED_000_RULE,
        "file untouched"
    );
    let changed = SEED_000_RULE.replace("\"window_minutes\": 5", "\"window_minutes\": 10");
    let (s, b) = call(&f.app, "PUT", "/api/v1/rules", Some(BOOT), Some(changed)).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["reset"], json!(["Database Connectivity Failure"]));
    let on_disk = crate::correlate::RuleSet::load(&f.rules).unwrap();
    assert_eq!(on_disk.rules[0].window, 600_000_000);
    let (_, b) = call(&f.app, "GET", "/api/v1/rules", Some(&f.read), None).await;
    assert_eq!(b["rules"][0]["window_minutes"], 10, "{b}");
}

#[tokio::test]
async fn dry_run_rejects_bad_rules_and_ranges() {
    let f = fixture();
    let body = |rules: Value, from: &str, to: &str| {
        Some(json!({"rules": rules, "from": from, "to": to}).to_string())
    };
    let rules: Value = serde_json::from_str(SEED_000_RULE).unwrap();
    let (s, b) = call(
        &f.app,
        "POST",
        "/api/v1/rules/dry-run",
        Some(&f.read),
        body(
            rules.clone(),
            "2026-01-01T00:00:00Z",
            "2026-01-02T00:00:00Z",
        ),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["events"], 0);
    assert_eq!(b["decisions"], json!([]));
    let (s, b) = call(
        &f.app,
        "POST",
        "/api/v1/rules/dry-run",
        Some(&f.read),
        body(
            rules.clone(),
            "2026-01-02T00:00:00Z",
            "2026-01-01T00:00:00Z",
        ),
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
    let mut bad = rules;
    bad["min_event_count"] = json!(0);
    let (s, b) = call(
        &f.app,
        "POST",
        "/api/v1/rules/dry-run",
        Some(&f.read),
        body(bad, "2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z"),
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
    assert!(
        b["detail"].as_str().unwrap().contains("min_event_count"),
        "{b}"
    );
}
