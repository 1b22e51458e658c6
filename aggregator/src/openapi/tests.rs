use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::Value;
use tower::ServiceExt;

use super::*;
use crate::store::Store;

const KEY: &str = "test-key";

fn doc() -> Value {
    serde_json::from_str(document()).expect("openapi.json is JSON")
}

fn app(dir: &tempfile::TempDir) -> Router {
    let store = Arc::new(Store::open(&dir.path().join("e.redb")).unwrap());
    crate::api::router(crate::api::tests::test_state(store, KEY, None, 0, false))
}

async fn get(app: &Router, uri: &str) -> (StatusCode, String, String) {
    let resp = app
        .clone()
        .oneshot(Request::get(uri).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let ctype = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let body = axum::body::to_bytes(resp.into_body(), 8 << 20)
        .await
        .unwrap();
    (status, ctype, String::from_utf8_lossy(&body).into_owned())
}

#[test]
fn document_is_openapi_3_1_and_documents_exactly_the_routes() {
    let doc = doc();
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1."),
        "{}",
        doc["openapi"]
    );
    assert_eq!(doc["servers"][0]["url"], "/", "servers are relative");
    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(schemes["api_key"]["in"], "header");
    assert_eq!(schemes["api_key"]["name"], "X-API-Key");
    assert_eq!(schemes["bearer"]["scheme"], "bearer");

    let mut documented = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            documented.push((method.clone(), path.clone()));
        }
    }
    for (method, path, access) in ROUTES {
        let op = &doc["paths"][*path][*method];
        if *access == Access::PublicUndocumented {
            assert!(op.is_null(), "{method} {path} is documented");
            continue;
        }
        assert!(
            op.is_object(),
            "{method} {path} is in ROUTES but not documented"
        );
        let statuses = op["responses"].as_object().unwrap();
        match access {
            Access::Key(scope) => {
                let desc = op["description"].as_str().unwrap();
                assert!(
                    desc.contains(&format!("`{scope}` scope")),
                    "{method} {path}: {desc}"
                );
                assert_eq!(op["security"].as_array().unwrap().len(), 2);
                for s in ["401", "403", "429", "500"] {
                    assert!(statuses.contains_key(s), "{method} {path} lacks {s}");
                }
                assert!(op["responses"]["429"]["headers"]["Retry-After"].is_object());
            }
            _ => assert!(op.get("security").is_none(), "{method} {path}"),
        }
        // Every error answer is a problem document.
        for (status, resp) in statuses {
            if status.starts_with('4') || status.starts_with('5') {
                assert_eq!(
                    resp["content"]["application/problem+json"]["schema"]["$ref"],
                    "#/components/schemas/ProblemDocument",
                    "{method} {path} {status}"
                );
            }
        }
    }
    for (method, path) in &documented {
        assert!(
            ROUTES.iter().any(|(m, p, _)| m == method && p == path),
            "{method} {path} is documented but not in ROUTES (the router's route list)"
        );
    }
    // Schemas every reference points to exist.
    let text = document();
    for part in text.split("\"#/components/schemas/").skip(1) {
        let name = &part[..part.find('"').unwrap()];
        assert!(
            doc["components"]["schemas"][name].is_object(),
            "dangling $ref {name}"
        );
    }
}

/// Every route of [`ROUTES`] is served by the router (not the "no such endpoint" fallback,
/// not 405): the list cannot drift from the router.
#[tokio::test]
async fn every_listed_route_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(&dir);
    for (method, path, _) in ROUTES {
        let uri = path.replace("{id}", "1");
        let resp = app
            .clone()
            .oneshot(
                Request::builder()
                    .method(method.to_uppercase().as_str())
                    .uri(&uri)
                    .header("x-api-key", KEY)
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        let status = resp.status();
        let body = axum::body::to_bytes(resp.into_body(), 8 << 20)
            .await
            .unwrap();
        let body = String::from_utf8_lossy(&body);
        assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {uri}");
        assert!(
            !body.contains("no such endpoint"),
            "{method} {uri}: {status} {body}"
        );
    }
    let (s, _, body) = get(&app, "/api/v1/not-a-route").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(
        body.contains("no such endpoint"),
        "the probe above can fail"
    );
}

#[tokio::test]
async fn openapi_json_is_served_without_a_key() {
    let dir = tempfile::tempdir().unwrap();
    let (s, ctype, body) = get(&app(&dir), "/api/v1/openapi.json").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(ctype, "application/json");
    let served: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(served, doc());
}

/// The docs page and everything it loads come from the aggregator: no CDN, no call out.
#[tokio::test]
async fn docs_page_works_offline() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(&dir);
    let resp = app
        .clone()
        .oneshot(Request::get("/api/v1/docs").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert!(resp.status().is_redirection(), "{}", resp.status());
    assert_eq!(resp.headers()[header::LOCATION], "/api/v1/docs/");

    let (s, ctype, html) = get(&app, "/api/v1/docs/").await;
    assert_eq!(s, StatusCode::OK);
    assert!(ctype.starts_with("text/html"), "{ctype}");
    // Every asset the page references, relative to the page.
    let mut assets = Vec::new();
    for attr in ["src=\"", "href=\""] {
        for part in html.split(attr).skip(1) {
            let url = &part[..part.find('"').unwrap()];
            assert!(
                !url.contains("://") && !url.starts_with("//"),
                "the docs page loads {url} from elsewhere"
            );
            assets.push(url.trim_start_matches("./").to_string());
        }
    }
    for needed in [
        "swagger-ui-bundle.js",
        "swagger-initializer.js",
        "swagger-ui.css",
    ] {
        assert!(assets.iter().any(|a| a == needed), "{needed}: {assets:?}");
    }
    for asset in &assets {
        let (s, _, text) = get(&app, &format!("/api/v1/docs/{asset}")).await;
        assert_eq!(s, StatusCode::OK, "{asset}");
        assert!(text.len() > 100, "{asset} is served");
        for cdn in ["unpkg.com", "jsdelivr", "cdnjs", "googleapis.com"] {
            assert!(!text.contains(cdn), "{asset} refers to {cdn}");
        }
        if asset.ends_with("swagger-initializer.js") {
            assert!(text.contains("/api/v1/openapi.json"), "{text}");
            assert!(
                !text.contains("http://") && !text.contains("https://"),
                "{text}"
            );
        }
    }
}
