//! The REST API the NOC works from. [`router`] builds the whole app, so tests can drive it
//! with `oneshot` and no socket.
//!
//! Errors are RFC 9457 problem documents: client errors say what is wrong; server errors are
//! logged and answered without internals.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Path as UrlPath, Query, State};
use axum::http::{StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use jiff::Timestamp;
use metrics_exporter_prometheus::PrometheusHandle;
use serde::{Deserialize, Serialize};
use weir_common::ingest::problem_body;
use weir_common::{InputKind, Severity};

use crate::api_ingest::ApiIngest;
use crate::auth::{self, Auth};
use crate::keys::Scope;
use crate::query::{EventFilter, EventParams};
use crate::registry::Registry;
use crate::store::{Store, StoredEvent};

#[derive(Clone)]
pub struct ApiState {
    pub store: Arc<Store>,
    pub registry: Arc<Registry>,
    /// API keys and per-key rate limits (see [`crate::auth`]).
    pub auth: Arc<Auth>,
    /// Where posted events go (see [`crate::api_ingest`]).
    pub ingest: Arc<ApiIngest>,
    /// Alarms, incidents and the processing rules (see [`crate::api_alarms`]).
    pub alarms: Arc<crate::alarm::persist::Engine>,
    /// Live correlation: rules API and reloads (see [`crate::api_rules`]).
    pub correlation: Arc<crate::correlation::Correlator>,
    pub metrics: PrometheusHandle,
}

pub fn router(state: ApiState) -> Router {
    let scoped = |scope: Scope| middleware::from_fn_with_state(scope, auth::require_scope);
    let alarms = crate::api_alarms::AlarmApiState {
        engine: state.alarms.clone(),
        correlation: Some(state.correlation.clone()),
    };
    let read = Router::new()
        .route("/api/v1/events", get(list_events))
        .route("/api/v1/events/histogram", get(crate::histogram::histogram))
        .route("/api/v1/events/{id}", get(get_event))
        .route("/api/v1/agents", get(list_agents))
        .route("/api/v1/sites", get(crate::sites::list_sites))
        .merge(crate::api_alarms::read_routes(alarms.clone()))
        .merge(crate::api_rules::read_routes(state.clone()))
        .route_layer(scoped(Scope::Read));
    let operate =
        crate::api_alarms::operate_routes(alarms.clone()).route_layer(scoped(Scope::Operate));
    let ingest = Router::new()
        .route("/api/v1/events", post(crate::api_ingest::post_events))
        .route(
            "/api/v1/ingest/alertmanager",
            post(crate::alertmanager::post_alertmanager),
        )
        .route_layer(scoped(Scope::Ingest))
        .layer(DefaultBodyLimit::max(state.ingest.max_body_bytes()));
    let admin = Router::new()
        .route(
            "/api/v1/keys",
            get(crate::keys_api::list_keys).post(crate::keys_api::create_key),
        )
        .route("/api/v1/keys/{id}", delete(crate::keys_api::revoke_key))
        .merge(crate::api_alarms::admin_routes(alarms))
        .merge(crate::api_rules::admin_routes(state.clone()))
        .route_layer(scoped(Scope::Admin));
    let api = Router::new()
        .merge(read)
        .merge(ingest)
        .merge(operate)
        .merge(admin)
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate,
        ));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics))
        .merge(api)
        .merge(crate::openapi::routes())
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such endpoint") })
        .with_state(state)
}

/// An error answered as an RFC 9457 problem document.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    detail: String,
}

impl ApiError {
    pub fn new(status: StatusCode, detail: impl Into<String>) -> ApiError {
        ApiError {
            status,
            detail: detail.into(),
        }
    }

    pub(crate) fn internal(e: impl std::fmt::Display) -> ApiError {
        tracing::error!(error = %e, "API request failed");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal error; see the aggregator's log",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = problem_body(
            self.status.as_u16(),
            self.status.canonical_reason().unwrap_or("error"),
            &self.detail,
            &[],
        );
        let mut resp = (self.status, Json(body)).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/problem+json"),
        );
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        resp
    }
}

#[utoipa::path(
    get,
    path = "/healthz",
    tag = "health",
    summary = "Liveness",
    responses(
        (status = 200, description = "Alive", body = String, content_type = "text/plain")
    )
)]
pub(crate) async fn healthz() -> &'static str {
    "ok\n"
}

#[utoipa::path(
    get,
    path = "/readyz",
    tag = "health",
    summary = "Readiness: the event store is readable",
    responses(
        (status = 200, description = "Ready", body = String, content_type = "text/plain"),
        (status = 503, description = "The event store is unreadable", body = crate::openapi::ProblemDocument, content_type = "application/problem+json")
    )
)]
pub(crate) async fn readyz(State(state): State<ApiState>) -> Result<String, ApiError> {
    let store = state.store.clone();
    tokio::task::spawn_blocking(move || store.len())
        .await
        .map_err(ApiError::internal)?
        .map_err(|e| {
            tracing::error!(error = %e, "readiness check: store unreadable");
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "event store unreadable")
        })?;
    // Ready either way (searches are complete), but an operator should know they are slower.
    let (lag, max) = (state.store.index_lag(), state.store.index_max_lag());
    if max > 0 && lag > max {
        return Ok(format!(
            "ready; search indexing is {lag} events behind (index_max_lag_events = {max}): searches scan those unindexed and are slower until it catches up\n"
        ));
    }
    Ok("ready\n".into())
}

#[utoipa::path(
    get,
    path = "/metrics",
    tag = "health",
    summary = "Prometheus metrics",
    responses(
        (status = 200, description = "Prometheus text exposition format", body = String, content_type = "text/plain")
    )
)]
pub(crate) async fn render_metrics(State(state): State<ApiState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

/// One event as the API shows it (seed 000's fields plus the fleet's).
#[derive(Debug, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct EventView {
    pub id: String,
    pub source: String,
    pub hostname: String,
    pub severity: Severity,
    pub message: String,
    pub event_type: Option<String>,
    pub tag: Option<String>,
    pub input: InputKind,
    pub site: String,
    pub agent: String,
    pub correlated_incident: Option<String>,
    pub event_time: Timestamp,
    pub received_at: Timestamp,
    pub stored_at: Timestamp,
    pub tags: BTreeMap<String, String>,
    /// The original message; `raw_payload_hex` holds it instead when it is not UTF-8.
    pub raw_payload: Option<String>,
    pub raw_payload_hex: Option<String>,
    pub peer: Option<String>,
    pub count: u64,
    pub first_seen: Timestamp,
    pub last_seen: Timestamp,
}

impl From<StoredEvent> for EventView {
    fn from(s: StoredEvent) -> EventView {
        let id = s.id();
        let e = s.event;
        let (raw_payload, raw_payload_hex) = match e.raw_payload {
            None => (None, None),
            Some(bytes) => match String::from_utf8(bytes) {
                Ok(text) => (Some(text), None),
                Err(e) => (None, Some(hex::encode(e.into_bytes()))),
            },
        };
        EventView {
            id,
            source: e.source,
            hostname: e.hostname,
            severity: e.severity,
            message: e.message,
            event_type: e.event_type,
            tag: e.tag,
            input: e.input,
            site: s.site,
            agent: s.agent,
            correlated_incident: s.correlated_incident,
            event_time: e.event_time,
            received_at: e.received_at,
            stored_at: s.stored_at,
            tags: e.tags,
            raw_payload,
            raw_payload_hex,
            peer: e.peer,
            count: e.count,
            first_seen: e.first_seen,
            last_seen: e.last_seen,
        }
    }
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EventsPage {
    /// Events matching the filters, on every page together.
    pub total: u64,
    pub events: Vec<EventView>,
    /// Pass as `cursor` for the next (older) page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

pub const DEFAULT_LIMIT: usize = 100;
pub const MAX_LIMIT: usize = 1000;

#[utoipa::path(
    get,
    path = "/api/v1/events",
    tag = "events",
    summary = "Search events, newest first",
    params(EventParams),
    responses(
        (status = 200, description = "A page of events", body = EventsPage),
        (status = 400, description = "A bad filter, limit or cursor (named in `detail`)", body = crate::openapi::ProblemDocument, content_type = "application/problem+json")
    )
)]
pub(crate) async fn list_events(
    State(state): State<ApiState>,
    query: Result<Query<EventParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<EventsPage>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    let limit = match &q.limit {
        None => DEFAULT_LIMIT,
        Some(s) => match s.parse::<usize>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
            _ => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!("limit: {s:?} is not a whole number from 1 to {MAX_LIMIT}"),
                ));
            }
        },
    };
    let param_err = |e: crate::query::ParamError| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("{}: {}", e.param, e.message),
        )
    };
    let filter = EventFilter::parse(&q).map_err(param_err)?;
    let before = q
        .cursor
        .as_deref()
        .map(crate::query::decode_cursor)
        .transpose()
        .map_err(param_err)?;
    let store = state.store.clone();
    let page = tokio::task::spawn_blocking(move || store.search(&filter, limit, before))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?;
    let next_cursor = if page.more {
        page.events
            .last()
            .map(|(c, _)| crate::query::encode_cursor(*c))
    } else {
        None
    };
    Ok(Json(EventsPage {
        total: page.total,
        events: page.events.into_iter().map(|(_, e)| e.into()).collect(),
        next_cursor,
    }))
}

#[utoipa::path(
    get,
    path = "/api/v1/events/{id}",
    tag = "events",
    summary = "One event by id",
    params(("id" = String, Path, description = "`site:agent:sequence`")),
    responses(
        (status = 200, description = "The event", body = EventView),
        (status = 404, description = "No such event", body = crate::openapi::ProblemDocument, content_type = "application/problem+json")
    )
)]
pub(crate) async fn get_event(
    State(state): State<ApiState>,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<EventView>, ApiError> {
    let store = state.store.clone();
    let lookup = id.clone();
    let ev = tokio::task::spawn_blocking(move || store.get_by_id(&lookup))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?;
    ev.map(|e| Json(e.into())).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no event with id {id:?} (ids look like site:agent:sequence)"),
        )
    })
}

/// One agent as the API shows it.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AgentView {
    pub site: String,
    pub name: String,
    pub connected: bool,
    pub last_seen: Option<Timestamp>,
    pub remote: Option<String>,
    pub software: Option<String>,
    /// Highest agent sequence stored.
    pub last_sequence: u64,
    pub backlog_records: Option<u64>,
    pub backlog_bytes: Option<u64>,
    pub oldest_queued_age_seconds: Option<f64>,
    pub drops: BTreeMap<String, u64>,
    pub cert_serial: Option<String>,
    pub cert_not_after: Option<Timestamp>,
    pub first_seen: Option<Timestamp>,
}

#[utoipa::path(
    get,
    path = "/api/v1/agents",
    tag = "fleet",
    summary = "Agents, connected or not",
    responses(
        (status = 200, description = "Every agent, sorted by site and name", body = Vec<AgentView>)
    )
)]
pub(crate) async fn list_agents(
    State(state): State<ApiState>,
) -> Result<Json<Vec<AgentView>>, ApiError> {
    agent_views(&state).await.map(Json)
}

/// Every agent the store or the registry knows, sorted by site and name.
pub(crate) async fn agent_views(state: &ApiState) -> Result<Vec<AgentView>, ApiError> {
    let store = state.store.clone();
    let stored = tokio::task::spawn_blocking(move || store.agents())
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?;
    let mut live = state.registry.snapshot();
    let now = Timestamp::now();
    let mut out: HashMap<String, AgentView> = HashMap::new();
    for rec in stored {
        let key = format!("{}/{}", rec.site, rec.name);
        let l = live.remove(&key).unwrap_or_default();
        out.insert(
            key,
            view(Some(&rec), l, rec.site.clone(), rec.name.clone(), now),
        );
    }
    for (key, l) in live {
        let (site, name) = (l.site.clone(), l.name.clone());
        out.insert(key, view(None, l, site, name, now));
    }
    let mut list: Vec<AgentView> = out.into_values().collect();
    list.sort_by(|a, b| (&a.site, &a.name).cmp(&(&b.site, &b.name)));
    Ok(list)
}

fn view(
    rec: Option<&crate::store::AgentRecord>,
    l: crate::registry::AgentLive,
    site: String,
    name: String,
    now: Timestamp,
) -> AgentView {
    let status = l.status.as_ref();
    let last_seen = match (l.last_seen, rec.map(|r| r.last_commit)) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
    AgentView {
        site,
        name,
        connected: l.sessions > 0,
        last_seen,
        remote: l.remote.clone(),
        software: l.software.clone(),
        last_sequence: rec.map_or(0, |r| r.committed_seq),
        backlog_records: status.map(|s| s.backlog_records),
        backlog_bytes: status.map(|s| s.backlog_bytes),
        oldest_queued_age_seconds: status.map(|s| {
            if s.oldest_queued_us == 0 {
                0.0
            } else {
                // Agent-supplied: never trust it not to overflow.
                (now.as_microsecond().saturating_sub(s.oldest_queued_us) as f64 / 1e6).max(0.0)
            }
        }),
        drops: status.map(|s| s.drops.clone()).unwrap_or_default(),
        cert_serial: l.cert_serial.clone(),
        cert_not_after: l.cert_not_after,
        first_seen: rec.map(|r| r.first_seen),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request as HttpRequest;
    use tower::ServiceExt;
    use weir_common::wire::{Batch, WireRecord};
    use weir_common::{Event, Record};

    const KEY: &str = "test-key";

    fn app(dir: &tempfile::TempDir, events: u64) -> Router {
        let store = Arc::new(Store::open(&dir.path().join("e.redb")).unwrap());
        let t = Timestamp::from_second(1_700_000_000).unwrap();
        if events > 0 {
            let records = (1..=events)
                .map(|seq| WireRecord {
                    seq,
                    payload: Record::Event(Event::new(
                        InputKind::Syslog,
                        "syslog",
                        "core-1",
                        Severity::Warning,
                        format!("m{seq}"),
                        t,
                    ))
                    .to_bytes(),
                })
                .collect();
            let batch = Batch {
                first_seq: 1,
                last_seq: events,
                records,
            };
            let records = crate::store::prepare("paris", "gw-1", &batch, t);
            store
                .commit(
                    &[crate::store::AgentBatch {
                        site: "paris",
                        name: "gw-1",
                        records: &records,
                    }],
                    t,
                )
                .unwrap();
        }
        // No writer: these tests reopen the store for each request and post nothing.
        router(test_state(store, KEY, None, 0, false))
    }

    /// A real state; with `writer`, the store writer runs on its own thread (until the router
    /// is dropped).
    pub(crate) fn test_state(
        store: Arc<Store>,
        bootstrap: &str,
        keys_file: Option<std::path::PathBuf>,
        rate: u32,
        writer: bool,
    ) -> ApiState {
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let alarms = Arc::new(
            crate::alarm::persist::Engine::new(store.clone(), Default::default()).unwrap(),
        );
        let registry = Arc::new(Registry::default());
        let correlation = crate::correlation::Correlator::start(
            store.clone(),
            registry.clone(),
            Default::default(),
        )
        .unwrap();
        if writer {
            let s = store.clone();
            let a = alarms.clone();
            let c = correlation.clone();
            std::thread::spawn(move || crate::ingest::run_writer(s, a, c, rx));
        }
        ApiState {
            store,
            registry,
            auth: Arc::new(Auth::new(
                crate::keys::Keyring::new(bootstrap, keys_file),
                rate,
                rate,
            )),
            ingest: Arc::new(
                ApiIngest::new(tx, "central", None, 64 * 1024).with_processing(alarms.clone()),
            ),
            alarms,
            correlation,
            metrics: weir_common::telemetry::prometheus(),
        }
    }

    async fn get(
        app: Router,
        uri: &str,
        key: Option<(&str, &str)>,
    ) -> (StatusCode, serde_json::Value) {
        let mut req = HttpRequest::get(uri);
        if let Some((h, v)) = key {
            req = req.header(h, v);
        }
        let resp = app.oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        (status, json)
    }

    #[tokio::test]
    async fn api_key_is_required_on_api_routes_only() {
        let dir = tempfile::tempdir().unwrap();
        let (s, body) = get(app(&dir, 1), "/api/v1/events", None).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        assert!(
            body["detail"].as_str().unwrap().contains("missing API key"),
            "{body}"
        );
        let (s, body) = get(app(&dir, 0), "/api/v1/agents", Some(("x-api-key", "wrong"))).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        assert_eq!(body["detail"], "unknown API key");
        let (s, _) = get(
            app(&dir, 0),
            "/api/v1/agents",
            Some(("authorization", "Bearer test-key")),
        )
        .await;
        assert_eq!(s, StatusCode::OK);
        let (s, _) = get(app(&dir, 0), "/healthz", None).await;
        assert_eq!(s, StatusCode::OK);
        let (s, _) = get(app(&dir, 0), "/readyz", None).await;
        assert_eq!(s, StatusCode::OK);
        let (s, body) = get(app(&dir, 0), "/nope", None).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        assert_eq!(body["status"], 404);
    }

    #[tokio::test]
    async fn cursor_pages_stay_correct_while_events_arrive() {
        let dir = tempfile::tempdir().unwrap();
        let k = Some(("x-api-key", KEY));
        let (s, body) = get(app(&dir, 5), "/api/v1/events?limit=2", k).await;
        assert_eq!(s, StatusCode::OK);
        let msgs = |b: &serde_json::Value| -> Vec<String> {
            b["events"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["message"].as_str().unwrap().to_string())
                .collect()
        };
        assert_eq!(msgs(&body), ["m5", "m4"]);
        let cursor = body["next_cursor"].as_str().unwrap().to_string();
        // Three newer events arrive between the pages (the store skips the 5 it has).
        let (_, body) = get(
            app(&dir, 8),
            &format!("/api/v1/events?limit=2&cursor={cursor}"),
            k,
        )
        .await;
        assert_eq!(
            msgs(&body),
            ["m3", "m2"],
            "the next page continues where it was"
        );
        assert_eq!(body["total"], 8);
        let cursor = body["next_cursor"].as_str().unwrap().to_string();
        let (_, body) = get(
            app(&dir, 8),
            &format!("/api/v1/events?limit=2&cursor={cursor}"),
            k,
        )
        .await;
        assert_eq!(msgs(&body), ["m1"]);
        assert!(body.get("next_cursor").is_none(), "{body}");
    }

    #[tokio::test]
    async fn filters_select_and_bad_parameters_get_400_naming_them() {
        let dir = tempfile::tempdir().unwrap();
        let k = Some(("x-api-key", KEY));
        for (uri, total) in [
            ("/api/v1/events?q=M3", 1),
            ("/api/v1/events?severity=warning", 5),
            ("/api/v1/events?severity=%3E%3Derror", 0),
            ("/api/v1/events?severity=%3E%3Dinfo&hostname=core-*", 5),
            ("/api/v1/events?hostname=edge-*", 0),
            ("/api/v1/events?site=paris&agent=gw-1&source=syslog", 5),
            ("/api/v1/events?site=lyon", 0),
            (
                "/api/v1/events?from=2023-11-14T22:13:20Z&to=2023-11-14T22:13:21Z",
                5,
            ),
            ("/api/v1/events?to=2023-11-14T22:13:20Z", 0),
            ("/api/v1/events?tag=X", 0),
            ("/api/v1/events?correlated_incident=INC-1", 0),
        ] {
            let (s, body) = get(app(&dir, 5), uri, k).await;
            assert_eq!(s, StatusCode::OK, "{uri}: {body}");
            assert_eq!(body["total"], total, "{uri}: {body}");
            assert_eq!(body["events"].as_array().unwrap().len(), total, "{uri}");
        }
        // Filtered pages page too.
        let (_, body) = get(app(&dir, 5), "/api/v1/events?hostname=core-*&limit=3", k).await;
        assert_eq!(body["events"].as_array().unwrap().len(), 3);
        let cursor = body["next_cursor"].as_str().unwrap().to_string();
        let (_, body) = get(
            app(&dir, 5),
            &format!("/api/v1/events?hostname=core-*&limit=3&cursor={cursor}"),
            k,
        )
        .await;
        assert_eq!(body["events"].as_array().unwrap().len(), 2);
        for (uri, param) in [
            ("/api/v1/events?severity=loud", "severity"),
            ("/api/v1/events?from=yesterday", "from"),
            ("/api/v1/events?cursor=12", "cursor"),
            ("/api/v1/events?hostname=db-%5B", "hostname"),
            ("/api/v1/events?colour=red", "colour"),
        ] {
            let (s, body) = get(app(&dir, 5), uri, k).await;
            assert_eq!(s, StatusCode::BAD_REQUEST, "{uri}");
            assert!(
                body["detail"].as_str().unwrap_or("").contains(param),
                "{uri}: {body}"
            );
        }
    }

    #[tokio::test]
    async fn events_newest_first_with_limit_and_total() {
        let dir = tempfile::tempdir().unwrap();
        let (s, body) = get(
            app(&dir, 5),
            "/api/v1/events?limit=2",
            Some(("x-api-key", KEY)),
        )
        .await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(body["total"], 5);
        let events = body["events"].as_array().unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(events[0]["id"], "paris:gw-1:5");
        assert_eq!(events[0]["message"], "m5");
        assert_eq!(events[0]["severity"], "warning");
        assert_eq!(events[0]["site"], "paris");
        assert_eq!(events[0]["event_time"], "2023-11-14T22:13:20Z");
        assert_eq!(events[1]["id"], "paris:gw-1:4");
        let (_, body) = get(app(&dir, 0), "/api/v1/events", Some(("x-api-key", KEY))).await;
        assert_eq!(
            body["events"].as_array().unwrap().len(),
            5,
            "default limit covers all 5"
        );
    }

    #[tokio::test]
    async fn bad_queries_are_400_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        for (uri, needle) in [
            ("/api/v1/events?limit=0", "limit"),
            ("/api/v1/events?limit=1001", "limit"),
            ("/api/v1/events?limit=ten", "limit"),
            ("/api/v1/events?colour=red", "colour"),
        ] {
            let (s, body) = get(app(&dir, 0), uri, Some(("x-api-key", KEY))).await;
            assert_eq!(s, StatusCode::BAD_REQUEST, "{uri}");
            assert!(
                body["detail"].as_str().unwrap().contains(needle),
                "{uri}: {body}"
            );
        }
    }

    #[tokio::test]
    async fn event_by_id_and_agents() {
        let dir = tempfile::tempdir().unwrap();
        let (s, body) = get(
            app(&dir, 3),
            "/api/v1/events/paris:gw-1:2",
            Some(("x-api-key", KEY)),
        )
        .await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(body["message"], "m2");
        let (s, body) = get(
            app(&dir, 0),
            "/api/v1/events/paris:gw-1:99",
            Some(("x-api-key", KEY)),
        )
        .await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        assert!(
            body["detail"]
                .as_str()
                .unwrap()
                .contains("site:agent:sequence")
        );
        let (s, body) = get(app(&dir, 0), "/api/v1/agents", Some(("x-api-key", KEY))).await;
        assert_eq!(s, StatusCode::OK);
        let agents = body.as_array().unwrap();
        assert_eq!(agents.len(), 1);
        assert_eq!(agents[0]["site"], "paris");
        assert_eq!(agents[0]["last_sequence"], 3);
        assert_eq!(agents[0]["connected"], false);
    }
}
