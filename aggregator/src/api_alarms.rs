//! The alarms and incidents API. Three routers, so the app can wrap each with its scope:
//! [`read_routes`] (scope `read`: lists and details), [`operate_routes`] (scope `operate`:
//! acknowledge, clear, resolve, notes, assign) and [`admin_routes`] (scope `admin`: reload).
//!
//! Illegal transitions answer 409 with the current status in the problem document
//! (`current_status`); unknown ids 404. The acting user for the audit trail is the name of the
//! API key (the [`crate::keys::Principal`] the authentication layer sets; `api` without one).

use std::sync::Arc;

use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use globset::{Glob, GlobMatcher};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use weir_common::Severity;
use weir_common::ingest::problem_body;

use crate::alarm::incident::{
    self, Explanation, Incident, IncidentAction, IncidentError, IncidentStatus, parse_incident_id,
};
use crate::alarm::list::{self, AlarmFilter};
use crate::alarm::persist::{self, ActionError, Engine};
use crate::alarm::state::{Alarm, AlarmAction, AlarmStatus};
use crate::api::{DEFAULT_LIMIT, EventView, MAX_LIMIT};
use crate::query::{decode_key_cursor as decode_cursor, encode_key_cursor as encode_cursor};

/// Most events an incident's detail view includes (the rest are listed by id only).
const DETAIL_EVENTS: usize = 200;

#[derive(Clone)]
pub struct AlarmApiState {
    pub engine: Arc<Engine>,
    /// Correlation rules, reloaded with the processing rules (`None` in tests without it).
    pub correlation: Option<Arc<crate::correlation::Correlator>>,
}

/// `GET` routes (scope `read`).
pub fn read_routes<S>(state: AlarmApiState) -> Router<S> {
    Router::new()
        .route("/api/v1/alarms", get(list_alarms))
        .route("/api/v1/alarms/{id}", get(get_alarm))
        .route("/api/v1/incidents", get(list_incidents))
        .route("/api/v1/incidents/{id}", get(get_incident))
        .with_state(state)
}

/// `POST` routes (scope `operate`).
pub fn operate_routes<S>(state: AlarmApiState) -> Router<S> {
    Router::new()
        .route("/api/v1/alarms/{id}/ack", post(alarm_ack))
        .route("/api/v1/alarms/{id}/unack", post(alarm_unack))
        .route("/api/v1/alarms/{id}/clear", post(alarm_clear))
        .route("/api/v1/incidents/{id}/ack", post(incident_ack))
        .route("/api/v1/incidents/{id}/resolve", post(incident_resolve))
        .route("/api/v1/incidents/{id}/close", post(incident_close))
        .route("/api/v1/incidents/{id}/reopen", post(incident_reopen))
        .route("/api/v1/incidents/{id}/notes", post(incident_note))
        .route("/api/v1/incidents/{id}/assign", post(incident_assign))
        .with_state(state)
}

/// Configuration routes (scope `admin`).
pub fn admin_routes<S>(state: AlarmApiState) -> Router<S> {
    Router::new()
        .route("/api/v1/config/reload", post(reload))
        .with_state(state)
}

/// A problem document; `current_status` is set on 409s.
#[derive(Debug)]
pub struct Problem {
    status: StatusCode,
    detail: String,
    current_status: Option<&'static str>,
}

impl Problem {
    fn new(status: StatusCode, detail: impl Into<String>) -> Problem {
        Problem {
            status,
            detail: detail.into(),
            current_status: None,
        }
    }
    fn bad(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::BAD_REQUEST, detail)
    }
    fn internal(e: impl std::fmt::Display) -> Problem {
        tracing::error!(error = %e, "alarm/incident API request failed");
        Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal error; see the aggregator's log",
        )
    }
    fn from_action(e: ActionError, what: &str, id: &str) -> Problem {
        match e {
            ActionError::NotFound => {
                Problem::new(StatusCode::NOT_FOUND, format!("no {what} with id {id:?}"))
            }
            ActionError::Alarm(e) => Problem {
                status: StatusCode::CONFLICT,
                detail: e.to_string(),
                current_status: Some(e.current.as_str()),
            },
            ActionError::Incident(IncidentError::Transition { action, current }) => Problem {
                status: StatusCode::CONFLICT,
                detail: format!("cannot {action} an incident that is {}", current.as_str()),
                current_status: Some(current.as_str()),
            },
            ActionError::Incident(IncidentError::Invalid(m)) => Problem::bad(m),
            ActionError::Store(e) => Problem::internal(e),
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let mut body = problem_body(
            self.status.as_u16(),
            self.status.canonical_reason().unwrap_or("error"),
            &self.detail,
            &[],
        );
        if let Some(c) = self.current_status {
            body["current_status"] = c.into();
        }
        let mut resp = (self.status, Json(body)).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/problem+json"),
        );
        resp
    }
}

fn actor(key: &Option<Extension<crate::keys::Principal>>) -> String {
    key.as_ref()
        .map_or_else(|| "api".to_string(), |Extension(p)| p.name.to_string())
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Problem> + Send + 'static,
) -> Result<T, Problem> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(Problem::internal)?
}

fn parse_limit(limit: &Option<String>) -> Result<usize, Problem> {
    match limit {
        None => Ok(DEFAULT_LIMIT),
        Some(s) => match s.parse::<usize>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
            _ => Err(Problem::bad(format!(
                "limit: {s:?} is not a whole number from 1 to {MAX_LIMIT}"
            ))),
        },
    }
}

fn parse_cursor(c: &Option<String>) -> Result<Option<u64>, Problem> {
    c.as_deref()
        .map(decode_cursor)
        .transpose()
        .map_err(|e| Problem::bad(format!("{}: {}", e.param, e.message)))
}

fn parse<T: std::str::FromStr<Err: std::fmt::Display>>(
    name: &str,
    v: &Option<String>,
) -> Result<Option<T>, Problem> {
    v.as_deref()
        .map(|s| {
            s.parse::<T>()
                .map_err(|e| Problem::bad(format!("{name}: {e}")))
        })
        .transpose()
}

fn parse_glob(name: &str, v: &Option<String>) -> Result<Option<GlobMatcher>, Problem> {
    v.as_deref()
        .map(|g| {
            Glob::new(g)
                .map(|g| g.compile_matcher())
                .map_err(|e| Problem::bad(format!("{name}: {e}")))
        })
        .transpose()
}

fn parse_time(name: &str, v: &Option<String>) -> Result<Option<Timestamp>, Problem> {
    v.as_deref()
        .map(|s| {
            s.parse::<Timestamp>().map_err(|e| {
                Problem::bad(format!(
                    "{name}: {s:?} is not an RFC 3339 time (2026-02-24T14:37:00Z): {e}"
                ))
            })
        })
        .transpose()
}

/// Query parameters of `GET /api/v1/alarms`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AlarmParams {
    /// open, acknowledged or cleared.
    pub status: Option<String>,
    /// At least this severity.
    pub severity: Option<String>,
    pub site: Option<String>,
    /// Glob on the hostname.
    pub hostname: Option<String>,
    pub tag: Option<String>,
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000)]
    pub limit: Option<String>,
    pub cursor: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AlarmsPage {
    /// Alarms matching the filters in all. Exact with no filter or `status` alone; with other
    /// filters it counts matches among at most the 10,000 newest candidate alarms, and
    /// `total_exact` is false when there were more (a lower bound, not a full scan).
    pub total: u64,
    /// Whether `total` is exact (see `total`).
    #[serde(default = "yes")]
    pub total_exact: bool,
    pub alarms: Vec<Alarm>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

#[utoipa::path(
    get,
    path = "/api/v1/alarms",
    tag = "alarms",
    summary = "Alarms, newest first",
    description = "Reads only the page asked for (walking alarm ids down from the cursor, through a status index when `status` is given). `total` is exact with no filter or with `status` alone; with other filters it counts matches among at most 10,000 candidate alarms and `total_exact` says whether it stopped there.",
    params(AlarmParams),
    responses(
        (status = 200, description = "A page of alarms", body = AlarmsPage),
        (status = 400, description = "A bad filter, limit or cursor", body = crate::openapi::ProblemDocument, content_type = "application/problem+json")
    )
)]
pub(crate) async fn list_alarms(
    State(st): State<AlarmApiState>,
    query: Result<Query<AlarmParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<AlarmsPage>, Problem> {
    let Query(q) = query.map_err(|e| Problem::bad(e.body_text()))?;
    let limit = parse_limit(&q.limit)?;
    let before = parse_cursor(&q.cursor)?;
    let status: Option<AlarmStatus> = parse("status", &q.status)?;
    let severity: Option<Severity> = parse("severity", &q.severity)?;
    let hostname = parse_glob("hostname", &q.hostname)?;
    let filter = AlarmFilter {
        status,
        severity,
        site: q.site,
        tag: q.tag,
        hostname,
    };
    let engine = st.engine.clone();
    let page = blocking(move || {
        list::page(engine.store.database(), &filter, limit, before).map_err(Problem::internal)
    })
    .await?;
    let next_cursor = page
        .more
        .then(|| page.alarms.last().map(|a| encode_cursor(a.id)))
        .flatten();
    Ok(Json(AlarmsPage {
        total: page.total,
        total_exact: page.total_exact,
        alarms: page.alarms,
        next_cursor,
    }))
}

fn yes() -> bool {
    true
}

fn alarm_id(id: &str) -> Result<u64, Problem> {
    id.parse()
        .map_err(|_| Problem::new(StatusCode::NOT_FOUND, format!("no alarm with id {id:?}")))
}

#[utoipa::path(
    get,
    path = "/api/v1/alarms/{id}",
    tag = "alarms",
    summary = "One alarm",
    params(("id" = String, Path, description = "Alarm number")),
    responses(
        (status = 200, description = "The alarm", body = Alarm),
        (status = 404, description = "No such alarm", body = crate::openapi::ProblemDocument, content_type = "application/problem+json")
    )
)]
pub(crate) async fn get_alarm(
    State(st): State<AlarmApiState>,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<Alarm>, Problem> {
    let n = alarm_id(&id)?;
    let engine = st.engine.clone();
    blocking(move || persist::alarm(engine.store.database(), n).map_err(Problem::internal))
        .await?
        .map(Json)
        .ok_or_else(|| Problem::new(StatusCode::NOT_FOUND, format!("no alarm with id {id:?}")))
}

async fn alarm_act(
    st: AlarmApiState,
    id: String,
    action: AlarmAction,
    by: String,
) -> Result<Json<Alarm>, Problem> {
    let n = alarm_id(&id)?;
    let engine = st.engine.clone();
    let (a, _) = blocking(move || {
        persist::alarm_action(engine.store.database(), n, action, &by, Timestamp::now())
            .map_err(|e| Problem::from_action(e, "alarm", &id))
    })
    .await?;
    metrics::counter!("weir_aggregator_alarm_actions_total", "action" => action.as_str())
        .increment(1);
    Ok(Json(a))
}

#[utoipa::path(
    post,
    path = "/api/v1/alarms/{id}/ack",
    tag = "alarms",
    summary = "Acknowledge an alarm",
    params(("id" = String, Path, description = "Alarm number")),
    responses(
        (status = 200, description = "The alarm after the action", body = Alarm),
        (status = 404, description = "No such alarm", body = crate::openapi::ProblemDocument, content_type = "application/problem+json"),
        (status = 409, description = "Not allowed in the alarm's status (`current_status`)", body = crate::openapi::ProblemDocument, content_type = "application/problem+json")
    )
)]
pub(crate) async fn alarm_ack(
    State(st): State<AlarmApiState>,
    key: Option<Extension<crate::keys::Principal>>,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<Alarm>, Problem> {
    alarm_act(st, id, AlarmAction::Ack, actor(&key)).await
}

#[utoipa::path(
    post,
    path = "/api/v1/alarms/{id}/unack",
    tag = "alarms",
    summary = "Take back an acknowledgement",
    params(("id" = String, Path, description = "Alarm number")),
    responses(
        (status = 200, description = "The alarm after the action", body = Alarm),
        (status = 404, description = "No such alarm", body = crate::openapi::ProblemDocument, content_type = "application/problem+json"),
        (status = 409, description = "Not allowed in the alarm's status (`current_status`)", body = crate::openapi::ProblemDocument, content_type = "application/problem+json")
    )
)]
pub(crate) async fn alarm_unack(
    State(st): State<AlarmApiState>,
    key: Option<Extension<crate::keys::Principal>>,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<Alarm>, Problem> {
    alarm_act(st, id, AlarmAction::Unack, actor(&key)).await
}

#[utoipa::path(
    post,
    path = "/api/v1/alarms/{id}/clear",
    tag = "alarms",
    summary = "Clear an alarm by hand",
    params(("id" = String, Path, description = "Alarm number")),
    responses(
        (status = 200, description = "The alarm after the action", body = Alarm),
        (status = 404, description = "No such alarm", body = crate::openapi::ProblemDocument, content_type = "application/problem+json"),
        (status = 409, description = "Not allowed in the alarm's status (`current_status`)", body = crate::openapi::ProblemDocument, content_type = "application/problem+json")
    )
)]
pub(crate) async fn alarm_clear(
    State(st): State<AlarmApiState>,
    key: Option<Extension<crate::keys::Principal>>,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<Alarm>, Problem> {
    alarm_act(st, id, AlarmAction::Clear, actor(&key)).await
}

/// Query parameters of `GET /api/v1/incidents`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct IncidentParams {
    pub status: Option<String>,
    /// At least this severity.
    pub severity: Option<String>,
    /// Incidents involving this site.
    pub site: Option<String>,
    pub contact_list: Option<String>,
    pub rule: Option<String>,
    /// Incidents whose events span overlaps [from, to] (RFC 3339).
    pub from: Option<String>,
    pub to: Option<String>,
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000)]
    pub limit: Option<String>,
    pub cursor: Option<String>,
}

/// An incident in lists: without its journal and audit trail.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct IncidentSummary {
    pub id: String,
    pub title: String,
    pub severity: Severity,
    pub status: IncidentStatus,
    pub contact_list: Option<String>,
    pub assignee: Option<String>,
    pub rule: String,
    pub sites: Vec<String>,
    pub count: u64,
    pub events: usize,
    pub alarms: usize,
    pub first_seen: Option<Timestamp>,
    pub last_seen: Option<Timestamp>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

impl From<&Incident> for IncidentSummary {
    fn from(i: &Incident) -> Self {
        IncidentSummary {
            id: i.id.clone(),
            title: i.title.clone(),
            severity: i.severity,
            status: i.status,
            contact_list: i.contact_list.clone(),
            assignee: i.assignee.clone(),
            rule: i.rule.clone(),
            sites: i.sites.iter().cloned().collect(),
            count: i.count,
            events: i.events.len(),
            alarms: i.alarms.len(),
            first_seen: i.first_seen,
            last_seen: i.last_seen,
            created_at: i.created_at,
            updated_at: i.updated_at,
        }
    }
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct IncidentsPage {
    pub total: u64,
    pub incidents: Vec<IncidentSummary>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

#[utoipa::path(
    get,
    path = "/api/v1/incidents",
    tag = "incidents",
    summary = "Incidents, newest first",
    params(IncidentParams),
    responses(
        (status = 200, description = "A page of incidents", body = IncidentsPage),
        (status = 400, description = "A bad filter, limit or cursor", body = crate::openapi::ProblemDocument, content_type = "application/problem+json")
    )
)]
pub(crate) async fn list_incidents(
    State(st): State<AlarmApiState>,
    query: Result<Query<IncidentParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<IncidentsPage>, Problem> {
    let Query(q) = query.map_err(|e| Problem::bad(e.body_text()))?;
    let limit = parse_limit(&q.limit)?;
    let before = parse_cursor(&q.cursor)?;
    let status: Option<IncidentStatus> = parse("status", &q.status)?;
    let severity: Option<Severity> = parse("severity", &q.severity)?;
    let from = parse_time("from", &q.from)?;
    let to = parse_time("to", &q.to)?;
    let engine = st.engine.clone();
    let (mut page, total) = blocking(move || {
        let keep = |i: &Incident| {
            status.is_none_or(|s| i.status == s)
                && severity.is_none_or(|s| i.severity >= s)
                && q.site.as_deref().is_none_or(|s| i.sites.contains(s))
                && q.contact_list
                    .as_deref()
                    .is_none_or(|c| i.contact_list.as_deref() == Some(c))
                && q.rule.as_deref().is_none_or(|r| i.rule == r)
                && from.is_none_or(|f| i.last_seen.unwrap_or(i.created_at) >= f)
                && to.is_none_or(|t| i.first_seen.unwrap_or(i.created_at) <= t)
        };
        persist::incidents(engine.store.database(), limit + 1, before, keep)
            .map_err(Problem::internal)
    })
    .await?;
    let more = page.len() > limit;
    page.truncate(limit);
    let next_cursor = more
        .then(|| page.last().map(|i| encode_cursor(i.number)))
        .flatten();
    Ok(Json(IncidentsPage {
        total,
        incidents: page.iter().map(IncidentSummary::from).collect(),
        next_cursor,
    }))
}

/// `GET /api/v1/incidents/{id}`: everything, including why it exists.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct IncidentDetail {
    #[serde(flatten)]
    pub incident: Incident,
    /// The first events it holds, as stored (`donotpersist` events are listed by id only).
    pub event_details: Vec<EventView>,
    /// The alarms it holds, as they are now (removed ones are absent).
    pub alarm_details: Vec<Alarm>,
    pub explanation_summary: String,
}

fn explain(e: &Explanation) -> String {
    let window = match (e.window_start, e.window_end) {
        (Some(s), Some(t)) => format!(" within {s} .. {t}"),
        _ => String::new(),
    };
    format!(
        "rule {:?} (version {}) matched {} event(s){window} for group {:?}: {}",
        e.rule,
        e.rule_version,
        e.event_ids.len(),
        e.group_key,
        e.conditions.join("; ")
    )
}

fn incident_number(id: &str) -> Result<u64, Problem> {
    parse_incident_id(id).ok_or_else(|| {
        Problem::new(
            StatusCode::NOT_FOUND,
            format!("no incident with id {id:?} (ids look like INC-0001)"),
        )
    })
}

#[utoipa::path(
    get,
    path = "/api/v1/incidents/{id}",
    tag = "incidents",
    summary = "One incident with its events, alarms and why it exists",
    params(("id" = String, Path, description = "`INC-0001` or the number")),
    responses(
        (status = 200, description = "The incident", body = IncidentDetail),
        (status = 404, description = "No such incident", body = crate::openapi::ProblemDocument, content_type = "application/problem+json")
    )
)]
pub(crate) async fn get_incident(
    State(st): State<AlarmApiState>,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<IncidentDetail>, Problem> {
    let n = incident_number(&id)?;
    let engine = st.engine.clone();
    blocking(move || {
        let db = engine.store.database();
        let Some(inc) = persist::incident(db, n).map_err(Problem::internal)? else {
            return Err(Problem::new(
                StatusCode::NOT_FOUND,
                format!("no incident with id {id:?}"),
            ));
        };
        let mut event_details = Vec::new();
        for eid in inc.events.iter().take(DETAIL_EVENTS) {
            if let Some(ev) = engine.store.get_by_id(eid).map_err(Problem::internal)? {
                event_details.push(EventView::from(ev));
            }
        }
        let mut alarm_details = Vec::new();
        for k in &inc.alarms {
            if let Some(a) = persist::alarm_by_key(db, k).map_err(Problem::internal)? {
                alarm_details.push(a);
            }
        }
        Ok(Json(IncidentDetail {
            explanation_summary: explain(&inc.explanation),
            incident: inc,
            event_details,
            alarm_details,
        }))
    })
    .await
}

async fn incident_update(
    st: AlarmApiState,
    id: String,
    f: impl FnOnce(&mut Incident) -> Result<(), IncidentError> + Send + 'static,
) -> Result<Json<Incident>, Problem> {
    let n = incident_number(&id)?;
    let engine = st.engine.clone();
    blocking(move || {
        persist::incident_update(engine.store.database(), n, f)
            .map(Json)
            .map_err(|e| Problem::from_action(e, "incident", &id))
    })
    .await
}

/// Optional body of the status actions.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ActionBody {
    /// Recorded in the audit trail.
    pub reason: Option<String>,
}

async fn incident_act(
    st: AlarmApiState,
    id: String,
    action: IncidentAction,
    by: String,
    body: Option<Json<ActionBody>>,
) -> Result<Json<Incident>, Problem> {
    let reason = body.and_then(|Json(b)| b.reason);
    if reason.as_ref().is_some_and(|r| r.len() > 1024) {
        return Err(Problem::bad("reason: longer than 1024 bytes"));
    }
    let out = incident_update(st, id, move |inc| {
        incident::transition(inc, action, &by, reason.as_deref(), Timestamp::now())
    })
    .await?;
    metrics::counter!("weir_aggregator_incident_actions_total", "action" => action.as_str())
        .increment(1);
    Ok(out)
}

macro_rules! incident_action {
    ($name:ident, $action:expr, $path:tt, $summary:tt) => {
        #[utoipa::path(
            post,
            path = $path,
            tag = "incidents",
            summary = $summary,
            params(("id" = String, Path, description = "`INC-0001` or the number")),
            request_body(content = Option<ActionBody>, description = "Optional: a reason for the audit trail"),
            responses(
                (status = 200, description = "The incident after the action", body = Incident),
                (status = 400, description = "A bad body or reason", body = crate::openapi::ProblemDocument, content_type = "application/problem+json"),
                (status = 404, description = "No such incident", body = crate::openapi::ProblemDocument, content_type = "application/problem+json"),
                (status = 409, description = "Not allowed in the incident's status (`current_status`)", body = crate::openapi::ProblemDocument, content_type = "application/problem+json"),
                (status = 413, description = "The body is too large", body = crate::openapi::ProblemDocument, content_type = "application/problem+json"),
                (status = 415, description = "The body is not `application/json`", body = crate::openapi::ProblemDocument, content_type = "application/problem+json"),
                (status = 422, description = "The body does not have the expected fields", body = crate::openapi::ProblemDocument, content_type = "application/problem+json")
            )
        )]
        pub(crate) async fn $name(
            State(st): State<AlarmApiState>,
            key: Option<Extension<crate::keys::Principal>>,
            UrlPath(id): UrlPath<String>,
            body: Result<
                Option<Json<Option<ActionBody>>>,
                axum::extract::rejection::JsonRejection,
            >,
        ) -> Result<Json<Incident>, Problem> {
            // Not `Option<Json<_>>` alone: its rejection is a plain-text answer, not a problem.
            // A `null` body is no body.
            let body = body
                .map_err(|e| Problem::new(e.status(), e.body_text()))?
                .and_then(|Json(b)| b)
                .map(Json);
            incident_act(st, id, $action, actor(&key), body).await
        }
    };
}

incident_action!(
    incident_ack,
    IncidentAction::Ack,
    "/api/v1/incidents/{id}/ack",
    "Acknowledge an incident"
);
incident_action!(
    incident_resolve,
    IncidentAction::Resolve,
    "/api/v1/incidents/{id}/resolve",
    "Resolve an incident"
);
incident_action!(
    incident_close,
    IncidentAction::Close,
    "/api/v1/incidents/{id}/close",
    "Close an incident"
);
incident_action!(
    incident_reopen,
    IncidentAction::Reopen,
    "/api/v1/incidents/{id}/reopen",
    "Reopen an incident"
);

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NoteBody {
    pub text: String,
}

fn json_body<T>(
    body: Result<Json<T>, axum::extract::rejection::JsonRejection>,
) -> Result<T, Problem> {
    body.map(|Json(b)| b)
        .map_err(|e| Problem::new(e.status(), e.body_text()))
}

#[utoipa::path(
    post,
    path = "/api/v1/incidents/{id}/notes",
    tag = "incidents",
    summary = "Add a note",
    params(("id" = String, Path, description = "`INC-0001` or the number")),
    request_body = NoteBody,
    responses(
        (status = 200, description = "The incident with the note", body = Incident),
        (status = 400, description = "A bad body or value", body = crate::openapi::ProblemDocument, content_type = "application/problem+json"),
        (status = 404, description = "No such incident", body = crate::openapi::ProblemDocument, content_type = "application/problem+json"),
        (status = 409, description = "Not allowed in the incident's status (`current_status`)", body = crate::openapi::ProblemDocument, content_type = "application/problem+json"),
        (status = 413, description = "The body is too large", body = crate::openapi::ProblemDocument, content_type = "application/problem+json"),
        (status = 415, description = "The body is not `application/json`", body = crate::openapi::ProblemDocument, content_type = "application/problem+json"),
        (status = 422, description = "The body does not have the expected fields", body = crate::openapi::ProblemDocument, content_type = "application/problem+json")
    )
)]
pub(crate) async fn incident_note(
    State(st): State<AlarmApiState>,
    key: Option<Extension<crate::keys::Principal>>,
    UrlPath(id): UrlPath<String>,
    body: Result<Json<NoteBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Incident>, Problem> {
    let body = json_body(body)?;
    let by = actor(&key);
    incident_update(st, id, move |inc| {
        incident::add_note(inc, &body.text, &by, Timestamp::now())
    })
    .await
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AssignBody {
    pub assignee: Option<String>,
    pub contact_list: Option<String>,
}

#[utoipa::path(
    post,
    path = "/api/v1/incidents/{id}/assign",
    tag = "incidents",
    summary = "Assign to a person and/or contact list",
    params(("id" = String, Path, description = "`INC-0001` or the number")),
    request_body = AssignBody,
    responses(
        (status = 200, description = "The incident after the change", body = Incident),
        (status = 400, description = "A bad body or value", body = crate::openapi::ProblemDocument, content_type = "application/problem+json"),
        (status = 404, description = "No such incident", body = crate::openapi::ProblemDocument, content_type = "application/problem+json"),
        (status = 409, description = "Not allowed in the incident's status (`current_status`)", body = crate::openapi::ProblemDocument, content_type = "application/problem+json"),
        (status = 413, description = "The body is too large", body = crate::openapi::ProblemDocument, content_type = "application/problem+json"),
        (status = 415, description = "The body is not `application/json`", body = crate::openapi::ProblemDocument, content_type = "application/problem+json"),
        (status = 422, description = "The body does not have the expected fields", body = crate::openapi::ProblemDocument, content_type = "application/problem+json")
    )
)]
pub(crate) async fn incident_assign(
    State(st): State<AlarmApiState>,
    key: Option<Extension<crate::keys::Principal>>,
    UrlPath(id): UrlPath<String>,
    body: Result<Json<AssignBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Incident>, Problem> {
    let body = json_body(body)?;
    let by = actor(&key);
    incident_update(st, id, move |inc| {
        incident::assign(
            inc,
            body.assignee.as_deref(),
            body.contact_list.as_deref(),
            &by,
            Timestamp::now(),
        )
    })
    .await
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Reloaded {
    pub transforms: usize,
    pub definitions: usize,
}

/// `POST /api/v1/config/reload`: 422 with the file/line/rule/field when the new files are
/// invalid (the old rules stay in force).
#[utoipa::path(
    post,
    path = "/api/v1/config/reload",
    tag = "config",
    summary = "Reload the event definitions and rules from their files",
    responses(
        (status = 200, description = "The rules now in force", body = Reloaded),
        (status = 422, description = "The files are invalid; the previous rules stay in force", body = crate::openapi::ProblemDocument, content_type = "application/problem+json")
    )
)]
pub(crate) async fn reload(
    State(st): State<AlarmApiState>,
    key: Option<Extension<crate::keys::Principal>>,
) -> Result<Json<Reloaded>, Problem> {
    let engine = st.engine.clone();
    let correlation = st.correlation.clone();
    let by = actor(&key);
    let (transforms, definitions) = blocking(move || {
        let counts = engine.reload().map_err(|e| {
            Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("reload refused, the previous rules stay in force: {e}"),
            )
        })?;
        if let Some(c) = correlation {
            c.reload_rules().map_err(|e| {
                Problem::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!("correlation rules refused, the previous ones stay in force: {e}"),
                )
            })?;
        }
        Ok(counts)
    })
    .await?;
    tracing::info!(by = %by, "rules reloaded through the API");
    Ok(Json(Reloaded {
        transforms,
        definitions,
    }))
}

#[cfg(test)]
mod tests;
