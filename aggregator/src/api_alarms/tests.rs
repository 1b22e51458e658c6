//! Router tests with `oneshot`: every transition, 404s and 409s, on a real redb file fed
//! through the real store writer.

use axum::body::Body;
use axum::http::Request;
use redb::{ReadableDatabase, ReadableTable};
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

/// Every page of `query` (limit 7), walked with the cursor: the ids, and each page's total.
async fn walk(app: &Router, query: &str) -> (Vec<u64>, Vec<serde_json::Value>) {
    let mut ids = Vec::new();
    let mut totals = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut uri = format!("/api/v1/alarms?limit=7{query}");
        if let Some(c) = &cursor {
            uri.push_str(&format!("&cursor={c}"));
        }
        let (s, page) = call(app, "GET", &uri, None, None).await;
        assert_eq!(s, StatusCode::OK, "{uri}: {page}");
        let alarms = page["alarms"].as_array().unwrap();
        assert!(alarms.len() <= 7);
        ids.extend(alarms.iter().map(|a| a["id"].as_u64().unwrap()));
        totals.push(page["total"].clone());
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return (ids, totals),
        }
    }
}

/// Every filter, paged with the cursor, gives exactly the alarms a full in-memory filter gives,
/// newest id first, with the exact total on every page; also after acks and clears move alarms
/// between statuses, and after the status index is rebuilt from scratch.
#[tokio::test(flavor = "multi_thread")]
async fn alarm_pages_equal_a_full_filter_for_every_filter() {
    use crate::alarm::state::AlarmAction;
    let dir = tempfile::tempdir().unwrap();
    let rig = tokio::task::block_in_place(|| {
        let rig = Rig::open(&dir.path().join("e.redb"), ProcessingConfig::default());
        fill_alarms(&rig, 200);
        let db = rig.store.database();
        for id in (3..200).step_by(5) {
            // Every 7th is cleared (409): only the status moves matter here.
            let _ = persist::alarm_action(db, id, AlarmAction::Ack, "ann", t(1));
        }
        for id in (4..200).step_by(11) {
            let _ = persist::alarm_action(db, id, AlarmAction::Clear, "ann", t(2));
        }
        rig
    });
    let app = app(&rig);
    let all: Vec<Alarm> = {
        let db = rig.store.database();
        let txn = db.begin_read().unwrap();
        let t = txn.open_table(persist::ALARMS).unwrap();
        let mut v: Vec<Alarm> = t
            .iter()
            .unwrap()
            .map(|r| persist::dec("alarm", r.unwrap().1.value()).unwrap())
            .collect();
        v.sort_by_key(|a| std::cmp::Reverse(a.id));
        v
    };
    assert_eq!(all.len(), 200);
    type Keep = Box<dyn Fn(&Alarm) -> bool>;
    let queries: Vec<(&str, Keep)> = vec![
        ("", Box::new(|_| true)),
        ("&status=open", Box::new(|a| a.status == AlarmStatus::Open)),
        (
            "&status=acknowledged",
            Box::new(|a| a.status == AlarmStatus::Acknowledged),
        ),
        (
            "&status=cleared",
            Box::new(|a| a.status == AlarmStatus::Cleared),
        ),
        (
            "&severity=critical",
            Box::new(|a| a.severity == Severity::Critical),
        ),
        ("&site=site-3", Box::new(|a| a.site == "site-3")),
        ("&hostname=h1*", Box::new(|a| a.hostname.starts_with("h1"))),
        ("&tag=PING_DOWN", Box::new(|_| true)),
        ("&tag=NOPE", Box::new(|_| false)),
        (
            "&status=open&site=site-7&severity=warning",
            Box::new(|a| a.status == AlarmStatus::Open && a.site == "site-7"),
        ),
    ];
    let check = |app: Router| {
        let queries = &queries;
        let all = &all;
        async move {
            for (q, keep) in queries {
                let want: Vec<u64> = all.iter().filter(|a| keep(a)).map(|a| a.id).collect();
                let (got, totals) = walk(&app, q).await;
                assert_eq!(got, want, "{q}");
                for total in totals {
                    assert_eq!(total, want.len(), "{q}");
                }
            }
        }
    };
    check(app.clone()).await;
    let (_, page) = call(&app, "GET", "/api/v1/alarms?site=site-1", None, None).await;
    assert_eq!(page["total_exact"], true);

    // A store written before the status index: init builds it.
    tokio::task::block_in_place(|| {
        let db = rig.store.database();
        let txn = db.begin_write().unwrap();
        txn.delete_table(crate::alarm::list::BY_STATUS).unwrap();
        txn.open_table(persist::COUNTERS)
            .unwrap()
            .remove("index_version")
            .unwrap();
        txn.commit().unwrap();
        persist::init(db).unwrap();
    });
    check(app).await;
}

/// With filters other than status, the total is counted among at most `COUNT_BUDGET`
/// alarms and says so; with status alone it stays exact.
#[tokio::test(flavor = "multi_thread")]
async fn filtered_totals_are_bounded_and_say_so() {
    let dir = tempfile::tempdir().unwrap();
    let n = crate::alarm::list::COUNT_BUDGET + 500;
    let rig = tokio::task::block_in_place(|| {
        let rig = Rig::open(&dir.path().join("e.redb"), ProcessingConfig::default());
        fill_alarms(&rig, n);
        rig
    });
    let app = app(&rig);
    let (_, page) = call(&app, "GET", "/api/v1/alarms?limit=1", None, None).await;
    assert_eq!(
        (page["total"].as_u64(), page["total_exact"].as_bool()),
        (Some(n), Some(true))
    );
    let (_, page) = call(
        &app,
        "GET",
        "/api/v1/alarms?status=cleared&limit=1",
        None,
        None,
    )
    .await;
    assert_eq!(page["total"], n.div_ceil(7));
    assert_eq!(page["total_exact"], true);
    // One site in ten: among the newest COUNT_BUDGET alarms examined, a tenth match.
    for cursor in [String::new(), format!("&cursor={}", encode_cursor(5000))] {
        let uri = format!("/api/v1/alarms?site=site-3&limit=2{cursor}");
        let (s, page) = call(&app, "GET", &uri, None, None).await;
        assert_eq!(s, StatusCode::OK, "{page}");
        assert_eq!(page["total_exact"], false, "{uri}");
        let total = page["total"].as_u64().unwrap();
        assert!(
            (crate::alarm::list::COUNT_BUDGET / 10 - 1..=crate::alarm::list::COUNT_BUDGET / 10 + 1)
                .contains(&total),
            "{uri}: {total}"
        );
        assert_eq!(page["alarms"].as_array().unwrap().len(), 2);
    }
    // A first page whose walk reached the end has counted everything: exact.
    let (_, page) = call(&app, "GET", "/api/v1/alarms?hostname=h1000*", None, None).await;
    assert_eq!(
        (page["total"].as_u64(), page["total_exact"].as_bool()),
        (Some(11), Some(true))
    );
    let (_, page) = call(
        &app,
        "GET",
        "/api/v1/alarms?status=acknowledged&site=site-3",
        None,
        None,
    )
    .await;
    assert_eq!(
        (page["total"].as_u64(), page["total_exact"].as_bool()),
        (Some(0), Some(true))
    );
}

/// Fills `rig` with `n` alarms in one transaction, through [`persist::apply`]: 10 sites, host
/// `h<i>`, every 10th critical, every 7th cleared.
pub(crate) fn fill_alarms(rig: &Rig, n: u64) {
    use crate::alarm::Outcome;
    use crate::alarm::state::{Clear, Problem};
    let outcomes: Vec<Outcome> = (0..n)
        .map(|i| {
            let key = format!("PING_DOWN:site-{}:h{i}", i % 10);
            let id = format!("site-{}:gw:{i}", i % 10);
            Outcome {
                seq: i + 1,
                not_stored: None,
                problem: Some(Problem {
                    key: key.clone(),
                    event_id: id.clone(),
                    event_time: t(i as i64),
                    severity: if i % 10 == 0 {
                        Severity::Critical
                    } else {
                        Severity::Warning
                    },
                    count: 1,
                    site: format!("site-{}", i % 10),
                    hostname: format!("h{i}"),
                    tag: Some("PING_DOWN".into()),
                    message: format!("PING_DOWN on h{i}"),
                }),
                clears: Vec::new(),
                unstored: None,
            }
        })
        .collect();
    let clears: Vec<Outcome> = (0..n)
        .filter(|i| i % 7 == 0)
        .map(|i| Outcome {
            seq: n + i + 1,
            clears: vec![Clear {
                key: format!("PING_DOWN:site-{}:h{i}", i % 10),
                event_id: format!("site-{}:gw:up{i}", i % 10),
                event_time: t(i as i64 + 1),
            }],
            ..Outcome::default()
        })
        .collect();
    let cfg = ProcessingConfig {
        max_alarms: n + 1,
        ..ProcessingConfig::default()
    };
    let db = rig.store.database();
    let txn = db.begin_write().unwrap();
    persist::apply(&txn, outcomes.iter().chain(&clears), &cfg, t(0)).unwrap();
    txn.commit().unwrap();
}

/// List latency with 100,000 alarms (run by hand, prints figures):
/// `cargo test -p weir-aggregator --lib alarm_list_latency -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread")]
#[ignore = "a measurement, not a check: run by hand"]
async fn alarm_list_latency_100k() {
    let dir = tempfile::tempdir().unwrap();
    let rig = tokio::task::block_in_place(|| {
        let rig = Rig::open(&dir.path().join("e.redb"), ProcessingConfig::default());
        let started = std::time::Instant::now();
        fill_alarms(&rig, 100_000);
        println!("filled 100000 alarms in {:?}", started.elapsed());
        rig
    });
    let app = app(&rig);
    for q in [
        "",
        "?limit=50",
        "?status=open",
        "?status=cleared",
        "?severity=critical",
        "?site=site-3",
        "?hostname=h99*",
        "?hostname=h99999",
        "?site=site-3&status=acknowledged",
    ] {
        let uri = format!("/api/v1/alarms{q}");
        let mut times = Vec::new();
        let mut total = serde_json::Value::Null;
        for _ in 0..5 {
            let started = std::time::Instant::now();
            let (s, page) = call(&app, "GET", &uri, None, None).await;
            times.push(started.elapsed());
            assert_eq!(s, StatusCode::OK);
            total = page["total"].clone();
        }
        times.sort();
        println!(
            "GET {uri:<45} median {:>10.2?}  total {total}",
            times[times.len() / 2]
        );
    }
}
