//! Router tests with `oneshot`: every transition, 404s and 409s, on a real redb file fed
//! through the real store writer.

use axum::body::Body;
use axum::http::Request;
use tower::ServiceExt;

use super::*;
use crate::alarm::ProcessingConfig;
use crate::alarm::incident::{EventRef, IncidentSpec};
use crate::alarm::tests::{Rig, create, ev, t};

fn app(rig: &Rig) -> Router {
    let st = AlarmApiState {
        engine: rig.engine.clone(),
        correlation: None,
    };
    Router::new()
        .merge(read_routes(st.clone()))
        .merge(operate_routes(st.clone()))
        .merge(admin_routes(st))
}

async fn call(
    app: &Router,
    method: &str,
    uri: &str,
    body: Option<serde_json::Value>,
    user: Option<&str>,
) -> (StatusCode, serde_json::Value) {
    let mut req = Request::builder().method(method).uri(uri);
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    let mut req = req
        .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
        .unwrap();
    if let Some(u) = user {
        req.extensions_mut().insert(crate::keys::Principal {
            id: format!("k_{u}").into(),
            name: u.into(),
            scopes: crate::keys::ScopeSet::all(),
        });
    }
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    )
}

fn rig(dir: &tempfile::TempDir) -> Rig {
    let rig = Rig::open(&dir.path().join("e.redb"), ProcessingConfig::default());
    let mut down = ev("PING_DOWN", "db-1", 1);
    down.severity = Severity::Error;
    rig.send(
        "paris",
        "gw",
        1,
        vec![
            down,
            ev("PING_DOWN", "web-1", 2),
            ev("PING_DOWN", "db-2", 3),
        ],
    );
    rig.send("lyon", "gw", 1, vec![ev("PING_DOWN", "db-9", 4)]);
    rig
}

#[tokio::test(flavor = "multi_thread")]
async fn alarms_list_filters_paginates_and_transitions() {
    let dir = tempfile::tempdir().unwrap();
    let rig = tokio::task::block_in_place(|| rig(&dir));
    let app = app(&rig);
    let (s, page) = call(&app, "GET", "/api/v1/alarms", None, None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(page["total"], 4);
    assert_eq!(page["alarms"][0]["id"], 4, "newest first");
    let (_, page) = call(
        &app,
        "GET",
        "/api/v1/alarms?hostname=db-*&site=paris",
        None,
        None,
    )
    .await;
    assert_eq!(page["total"], 2);
    let (_, page) = call(&app, "GET", "/api/v1/alarms?severity=critical", None, None).await;
    assert_eq!(page["total"], 3);
    let (_, page) = call(
        &app,
        "GET",
        "/api/v1/alarms?tag=PING_DOWN&limit=3",
        None,
        None,
    )
    .await;
    assert_eq!(page["alarms"].as_array().unwrap().len(), 3);
    let cursor = page["next_cursor"].as_str().unwrap().to_string();
    let (_, next) = call(
        &app,
        "GET",
        &format!("/api/v1/alarms?tag=PING_DOWN&limit=3&cursor={cursor}"),
        None,
        None,
    )
    .await;
    assert_eq!(next["alarms"].as_array().unwrap().len(), 1);
    assert_eq!(next["alarms"][0]["id"], 1);
    assert!(next.get("next_cursor").is_none());
    let (s, e) = call(&app, "GET", "/api/v1/alarms?status=sideways", None, None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(e["detail"].as_str().unwrap().contains("status"), "{e}");

    let (s, a) = call(&app, "GET", "/api/v1/alarms/1", None, None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(a["reduction_key"], "PING_DOWN:paris:db-1");
    for uri in ["/api/v1/alarms/99", "/api/v1/alarms/x"] {
        let (s, _) = call(&app, "GET", uri, None, None).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{uri}");
    }
    let (s, _) = call(&app, "POST", "/api/v1/alarms/99/ack", None, None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    let (s, e) = call(&app, "POST", "/api/v1/alarms/1/unack", None, None).await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert_eq!(e["current_status"], "open");
    let (s, a) = call(&app, "POST", "/api/v1/alarms/1/ack", None, Some("ann")).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        (a["status"].as_str(), a["acked_by"].as_str()),
        (Some("acknowledged"), Some("ann"))
    );
    let (s, e) = call(&app, "POST", "/api/v1/alarms/1/ack", None, None).await;
    assert_eq!(
        (s, e["current_status"].as_str()),
        (StatusCode::CONFLICT, Some("acknowledged"))
    );
    let (_, page) = call(
        &app,
        "GET",
        "/api/v1/alarms?status=acknowledged",
        None,
        None,
    )
    .await;
    assert_eq!(page["total"], 1);
    let (s, a) = call(&app, "POST", "/api/v1/alarms/1/unack", None, None).await;
    assert_eq!((s, a["status"].as_str()), (StatusCode::OK, Some("open")));
    let (s, a) = call(&app, "POST", "/api/v1/alarms/1/clear", None, None).await;
    assert_eq!((s, a["status"].as_str()), (StatusCode::OK, Some("cleared")));
    let (s, e) = call(&app, "POST", "/api/v1/alarms/1/clear", None, None).await;
    assert_eq!(
        (s, e["current_status"].as_str()),
        (StatusCode::CONFLICT, Some("cleared"))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn incidents_every_transition_notes_assign_404_and_409() {
    let dir = tempfile::tempdir().unwrap();
    let rig = tokio::task::block_in_place(|| rig(&dir));
    let refs = vec![EventRef {
        id: "paris:gw:1".into(),
        site: "paris".into(),
        event_time: t(1),
        count: 1,
    }];
    let spec = IncidentSpec {
        title: "db down".into(),
        severity: Severity::Critical,
        contact_list: Some("DBA On-Call".into()),
        explanation: Explanation {
            rule: "Database Connectivity Failure".into(),
            rule_version: "2".into(),
            conditions: vec!["hostname matches db-*".into()],
            event_ids: vec!["paris:gw:1".into()],
            window_start: Some(t(0)),
            window_end: Some(t(300)),
            group_key: "hostname=db-1".into(),
        },
        events: refs,
        alarms: vec!["PING_DOWN:paris:db-1".into()],
        auto_resolve: false,
        actor: "rule:db".into(),
    };
    create(&rig.store, spec.clone());
    let mut other = spec;
    other.contact_list = Some("Web".into());
    other.severity = Severity::Warning;
    other.explanation.rule = "web".into();
    other.events[0].site = "lyon".into();
    create(&rig.store, other);
    let app = app(&rig);

    let (s, page) = call(&app, "GET", "/api/v1/incidents", None, None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(page["total"], 2);
    assert_eq!(page["incidents"][0]["id"], "INC-0002");
    for (q, n) in [
        ("contact_list=DBA%20On-Call", 1),
        ("rule=web", 1),
        ("site=lyon", 1),
        ("severity=critical", 1),
        ("status=open", 2),
        ("from=2023-11-14T22:13:00Z", 2),
        ("to=2000-01-01T00:00:00Z", 0),
    ] {
        let (_, page) = call(&app, "GET", &format!("/api/v1/incidents?{q}"), None, None).await;
        assert_eq!(page["total"], n, "{q}");
    }
    let (s, d) = call(&app, "GET", "/api/v1/incidents/INC-0001", None, None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(d["explanation"]["rule"], "Database Connectivity Failure");
    assert_eq!(d["explanation"]["group_key"], "hostname=db-1");
    assert_eq!(
        d["event_details"][0]["correlated_incident"], "INC-0002",
        "the later incident took it"
    );
    assert_eq!(
        d["alarm_details"][0]["reduction_key"],
        "PING_DOWN:paris:db-1"
    );
    assert!(
        d["audit"][0]["what"]
            .as_str()
            .unwrap()
            .starts_with("created by rule")
    );
    assert!(
        d["explanation_summary"]
            .as_str()
            .unwrap()
            .contains("version 2")
    );
    for uri in ["/api/v1/incidents/INC-0099", "/api/v1/incidents/nope"] {
        let (s, _) = call(&app, "GET", uri, None, None).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{uri}");
    }
    let (s, _) = call(&app, "POST", "/api/v1/incidents/INC-0099/ack", None, None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    let base = "/api/v1/incidents/INC-0001";
    let (s, e) = call(&app, "POST", &format!("{base}/reopen"), None, None).await;
    assert_eq!(
        (s, e["current_status"].as_str()),
        (StatusCode::CONFLICT, Some("open"))
    );
    for (action, want) in [
        ("ack", "acknowledged"),
        ("resolve", "resolved"),
        ("close", "closed"),
        ("reopen", "open"),
        ("resolve", "resolved"),
        ("reopen", "open"),
        ("close", "closed"),
    ] {
        let (s, i) = call(&app, "POST", &format!("{base}/{action}"), None, Some("bob")).await;
        assert_eq!(
            (s, i["status"].as_str()),
            (StatusCode::OK, Some(want)),
            "{action}"
        );
    }
    for action in ["ack", "resolve", "close"] {
        let (s, e) = call(&app, "POST", &format!("{base}/{action}"), None, None).await;
        assert_eq!(
            (s, e["current_status"].as_str()),
            (StatusCode::CONFLICT, Some("closed")),
            "{action}"
        );
    }
    let (s, i) = call(
        &app,
        "POST",
        &format!("{base}/reopen"),
        Some(serde_json::json!({"reason": "came back"})),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        i["audit"].as_array().unwrap().last().unwrap()["what"]
            .as_str()
            .unwrap()
            .ends_with("came back")
    );
    assert_eq!(i["audit"].as_array().unwrap().last().unwrap()["by"], "api");

    let (s, i) = call(
        &app,
        "POST",
        &format!("{base}/notes"),
        Some(serde_json::json!({"text": "called the DBA"})),
        Some("ann"),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(i["notes"][0]["by"], "ann");
    let (s, _) = call(
        &app,
        "POST",
        &format!("{base}/notes"),
        Some(serde_json::json!({"text": ""})),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = call(
        &app,
        "POST",
        &format!("{base}/notes"),
        Some(serde_json::json!({"txt": "x"})),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    let (s, i) = call(
        &app,
        "POST",
        &format!("{base}/assign"),
        Some(serde_json::json!({"assignee": "carol", "contact_list": "NOC"})),
        Some("ann"),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        (i["assignee"].as_str(), i["contact_list"].as_str()),
        (Some("carol"), Some("NOC"))
    );
    let (s, _) = call(
        &app,
        "POST",
        &format!("{base}/assign"),
        Some(serde_json::json!({})),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
}

#[tokio::test(flavor = "multi_thread")]
async fn config_reload_ok_and_refused() {
    let dir = tempfile::tempdir().unwrap();
    let defs = dir.path().join("d.toml");
    std::fs::write(&defs, crate::alarm::definition::DEFAULTS).unwrap();
    let cfg = ProcessingConfig {
        definitions: Some(defs.clone()),
        ..ProcessingConfig::default()
    };
    let rig = tokio::task::block_in_place(|| Rig::open(&dir.path().join("e.redb"), cfg));
    let app = app(&rig);
    let (s, r) = call(&app, "POST", "/api/v1/config/reload", None, None).await;
    assert_eq!((s, r["definitions"].as_u64()), (StatusCode::OK, Some(7)));
    std::fs::write(&defs, "[[definition]]\ntag = \"**\"\n").unwrap();
    let (s, e) = call(&app, "POST", "/api/v1/config/reload", None, None).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(e["detail"].as_str().unwrap().contains("d.toml:1"), "{e}");
    assert_eq!(
        rig.engine.processor().definitions.len(),
        7,
        "nothing changed"
    );
}
