//! The correlation rules API: [`read_routes`] (scope `read`: the rules in force, dry runs) and
//! [`admin_routes`] (scope `admin`: replace the rules).
//!
//! - `GET /api/v1/rules`: the rule file, its rules (enabled and disabled) and aggregates as
//!   written, and each enabled rule's version hash.
//! - `PUT /api/v1/rules` (body: JSON rules in any form the rule file takes): validated, written
//!   to the rule file atomically, then reloaded; rules whose definition is unchanged keep their
//!   windows. Invalid rules: 422 naming the rule and field; nothing changes.
//! - `POST /api/v1/rules/dry-run` (body: `{"rules": ..., "from": ..., "to": ...}`): replays the
//!   stored events of that time range (event time) through the candidate rules in a fresh
//!   engine, at most [`MAX_DRY_RUN_EVENTS`] (413 beyond: narrow the range), and returns the
//!   decisions with their explanations. Live state is not touched.

use std::collections::BTreeMap;
use std::path::Path;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::api::{ApiError, ApiState};
use crate::correlate::rules::{RawRuleFile, versions};
use crate::correlate::{Decision, EventIn, ReloadReport, RuleSet};
use crate::correlation::ReplaceError;
use crate::query::EventFilter;

/// Most stored events one dry run replays. They are read with their raw payloads (up to the
/// message size limit each) and converted one by one into the engine's payload-free form.
pub const MAX_DRY_RUN_EVENTS: usize = 200_000;

/// Routes for scope `read`.
pub fn read_routes<S>(state: ApiState) -> Router<S> {
    Router::new()
        .route("/api/v1/rules", get(get_rules))
        .route("/api/v1/rules/dry-run", post(dry_run))
        .with_state(state)
}

/// Routes for scope `admin`.
pub fn admin_routes<S>(state: ApiState) -> Router<S> {
    Router::new()
        .route("/api/v1/rules", axum::routing::put(put_rules))
        .with_state(state)
}

#[derive(Debug, Serialize, Deserialize)]
pub struct RulesView {
    /// The rule file (`null`: correlation is off).
    pub file: Option<String>,
    #[serde(flatten)]
    pub rules: RawRuleFile,
    /// Enabled rules and their version hashes.
    pub versions: BTreeMap<String, String>,
}

#[utoipa::path(
    get,
    path = "/api/v1/rules",
    tag = "rules",
    summary = "The correlation rules in force, with their version hashes",
    responses(
        (status = 200, description = "`file` (null: correlation is off), `rules`, `aggregates` as the rule file holds them, and `versions` (rule name → version hash)", body = serde_json::Value)
    )
)]
pub(crate) async fn get_rules(State(st): State<ApiState>) -> Json<RulesView> {
    let set = st.correlation.rules();
    Json(RulesView {
        file: st.correlation.rules_file().map(|p| p.display().to_string()),
        rules: set.raw(),
        versions: versions(&set)
            .into_iter()
            .map(|(k, v)| (k, v.to_string()))
            .collect(),
    })
}

#[derive(Debug, Serialize, Deserialize)]
pub struct PutReply {
    #[serde(flatten)]
    pub report: ReloadReport,
    pub versions: BTreeMap<String, String>,
}

#[utoipa::path(
    put,
    path = "/api/v1/rules",
    tag = "rules",
    summary = "Replace the rule file and reload; unchanged rules keep their windows",
    request_body(content = serde_json::Value, description = "A rule file's content: seed 000 JSON (one rule, a list, or an object with `rules` and `aggregates`)", content_type = "application/json"),
    responses(
        (status = 200, description = "Reloaded: rules `kept`, `reset`, `removed`, and the new `versions`", body = serde_json::Value),
        (status = 400, description = "The body is not UTF-8", body = crate::openapi::ProblemDocument, content_type = "application/problem+json"),
        (status = 409, description = "No rule file is configured (`[correlation] rules`)", body = crate::openapi::ProblemDocument, content_type = "application/problem+json"),
        (status = 413, description = "The body is too large", body = crate::openapi::ProblemDocument, content_type = "application/problem+json"),
        (status = 422, description = "The rules are invalid (names the rule and field); the previous rules stay in force", body = crate::openapi::ProblemDocument, content_type = "application/problem+json")
    )
)]
pub(crate) async fn put_rules(
    State(st): State<ApiState>,
    body: Bytes,
) -> Result<Json<PutReply>, ApiError> {
    let text = std::str::from_utf8(&body)
        .map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "the body is not UTF-8"))?
        .to_string();
    let c = st.correlation.clone();
    let report = tokio::task::spawn_blocking(move || c.replace_rules(&text))
        .await
        .map_err(ApiError::internal)?
        .map_err(|e| match e {
            ReplaceError::Invalid(e) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("rules refused, the previous rules stay in force: {e}"),
            ),
            ReplaceError::NoFile => ApiError::new(StatusCode::CONFLICT, e.to_string()),
            ReplaceError::Write(_) | ReplaceError::Stopped => ApiError::internal(e),
        })?;
    let set = st.correlation.rules();
    Ok(Json(PutReply {
        report,
        versions: versions(&set)
            .into_iter()
            .map(|(k, v)| (k, v.to_string()))
            .collect(),
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DryRunBody {
    /// Candidate rules, in any form the rule file takes (JSON).
    pub rules: serde_json::Value,
    pub from: Timestamp,
    pub to: Timestamp,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct DryRunReply {
    /// Stored events replayed.
    pub events: usize,
    /// Incidents the rules would have opened.
    pub incidents: usize,
    pub decisions: Vec<Decision>,
}

#[utoipa::path(
    post,
    path = "/api/v1/rules/dry-run",
    tag = "rules",
    summary = "Replay stored events from a time range through candidate rules; nothing live changes",
    request_body(content = serde_json::Value, description = "`{\"rules\": <rule file JSON>, \"from\": RFC 3339, \"to\": RFC 3339}`", content_type = "application/json"),
    responses(
        (status = 200, description = "`events` replayed, `incidents` opened, and every decision with its explanation", body = serde_json::Value),
        (status = 400, description = "The body is not JSON", body = crate::openapi::ProblemDocument, content_type = "application/problem+json"),
        (status = 413, description = "More events in the range than a dry-run replays, or the body is too large", body = crate::openapi::ProblemDocument, content_type = "application/problem+json"),
        (status = 415, description = "The body is not `application/json`", body = crate::openapi::ProblemDocument, content_type = "application/problem+json"),
        (status = 422, description = "Bad rules (names the rule and field), bad fields, or `from` after `to`", body = crate::openapi::ProblemDocument, content_type = "application/problem+json")
    )
)]
pub(crate) async fn dry_run(
    State(st): State<ApiState>,
    body: Result<Json<DryRunBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<DryRunReply>, ApiError> {
    let Json(body) = body.map_err(|e| ApiError::new(e.status(), e.body_text()))?;
    if body.from > body.to {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "from: must not be after to",
        ));
    }
    let text = body.rules.to_string();
    let rules = RuleSet::parse(&text, Path::new("rules.json")).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("candidate rules: {e}"),
        )
    })?;
    let store = st.store.clone();
    let config = st.correlation.config().engine();
    let reply = tokio::task::spawn_blocking(move || {
        let mut filter = EventFilter::default();
        filter.set_time_range(body.from, body.to);
        // Replay everything live processing saw, including events hidden from default views
        // (a live rule may have suppressed them).
        filter.set_hidden(crate::query::Hidden::Include);
        let page = store
            .search(&filter, MAX_DRY_RUN_EVENTS, None)
            .map_err(ApiError::internal)?;
        if page.more {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "{} stored events in that range; a dry run replays at most {MAX_DRY_RUN_EVENTS}: narrow from/to",
                    page.total
                ),
            ));
        }
        // Replayed in arrival order, each at the clock it arrived at (as live processing saw it).
        let mut events: Vec<(EventIn, Timestamp)> = page
            .events
            .into_iter()
            .map(|(_, s)| {
                let at = s.stored_at;
                (EventIn::from_owned(s), at)
            })
            .collect();
        events.sort_by(|a, b| (a.1, &a.0.id).cmp(&(b.1, &b.0.id)));
        let n = events.len();
        let decisions = crate::correlate::dry_run(rules, config, events.iter().map(|(e, t)| (e, *t)));
        let incidents = decisions
            .iter()
            .filter(|d| matches!(d, Decision::OpenIncident(_)))
            .count();
        Ok(DryRunReply {
            events: n,
            incidents,
            decisions,
        })
    })
    .await
    .map_err(ApiError::internal)??;
    Ok(Json(reply))
}

#[cfg(test)]
mod tests;
