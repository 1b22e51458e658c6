//! The agent's local HTTP server: `GET /metrics`, `GET /healthz`, and `POST /api/v1/events`
//! (seed 000's JSON schema, one event or an array) for site-local applications and webhooks.
//!
//! JSON ingest answers `202 Accepted` only once the events are durably in the queue; a client
//! that got an error (or no answer, if the agent died) should send again.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use jiff::Timestamp;
use metrics_exporter_prometheus::PrometheusHandle;
use weir_common::ingest::{ApiKeys, AuthError, FieldError, parse_events, problem_body};
use weir_common::{InputKind, Record};

use crate::forwarder::LinkState;
use crate::pipeline::Sink;

#[derive(Clone)]
pub struct HttpState {
    pub sink: Sink,
    pub keys: Arc<ApiKeys>,
    pub metrics: PrometheusHandle,
    pub link: Arc<LinkState>,
}

pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route(
            "/metrics",
            get(|State(s): State<HttpState>| async move {
                (
                    [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                    s.metrics.render(),
                )
            }),
        )
        .route("/api/v1/events", post(ingest))
        .fallback(|| async { problem(StatusCode::NOT_FOUND, "no such endpoint", &[]) })
        .with_state(state)
}

/// An RFC 9457 problem document, with per-field errors when there are some.
fn problem(status: StatusCode, detail: &str, errors: &[FieldError]) -> Response {
    let body = problem_body(
        status.as_u16(),
        status.canonical_reason().unwrap_or("error"),
        detail,
        errors,
    );
    let mut resp = (status, Json(body)).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/problem+json"),
    );
    resp
}

async fn healthz(State(s): State<HttpState>) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "status": "ok",
        "aggregator_connected": s.link.connected.load(Ordering::Relaxed),
    }))
}

async fn ingest(State(s): State<HttpState>, headers: HeaderMap, body: Bytes) -> Response {
    let auth = s.keys.authorize(
        headers.get("x-api-key").and_then(|v| v.to_str().ok()),
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok()),
    );
    if let Err(e) = auth {
        if e == AuthError::Unknown {
            s.sink.drops.count("api_bad_key");
        }
        return problem(StatusCode::UNAUTHORIZED, &e.to_string(), &[]);
    }
    let events = match parse_events(&body) {
        Ok(evs) => evs,
        Err(errors) => {
            s.sink.drops.count("api_invalid_event");
            return problem(
                StatusCode::UNPROCESSABLE_ENTITY,
                "the request holds invalid events; nothing was accepted",
                &errors,
            );
        }
    };
    let now = Timestamp::now();
    let n = events.len();
    metrics::counter!("weir_agent_received_total", "input" => "api").increment(n as u64);
    let records: Vec<Record> = events
        .into_iter()
        .map(|e| Record::Event(e.into_event(InputKind::Api, now)))
        .collect();
    match s.sink.send_committed(records, now).await {
        // The outcome is the whole group commit's (other inputs share the transaction), so the
        // answer is per request: all n events were durably handed to the queue, subject to
        // its queue-full policy, whose drops are counted and reported.
        Ok(_) => (
            StatusCode::ACCEPTED,
            Json(serde_json::json!({ "accepted": n })),
        )
            .into_response(),
        Err(e) => problem(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("events not stored: {e}; send them again"),
            &[],
        ),
    }
}
