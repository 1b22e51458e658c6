//! The API's OpenAPI 3.1 document (`GET /api/v1/openapi.json`) and an offline docs page
//! (`GET /api/v1/docs/`: Swagger UI, its assets compiled into the binary; no CDN).
//!
//! Each handler carries its own `#[utoipa::path]` (method, path, parameters, bodies and the
//! statuses it answers). What every authenticated route shares (the two security schemes,
//! 401/403/429/500 and the scope it needs) is added here by [`Scoped`] from [`ROUTES`], the
//! list of every route the router serves. To document a new route: add its handler to
//! `paths(...)` below and one line to [`ROUTES`]; the tests fail until both are done.
//!
//! Neither the document nor the docs page needs a key: they describe the API and hold no
//! data, and an operator reads them before they have a key.

use std::sync::LazyLock;

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use serde::Serialize;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder};
use utoipa::openapi::security::{SecurityRequirement, SecurityScheme};
use utoipa::openapi::{
    ContentBuilder, ObjectBuilder, Ref, ResponseBuilder, Type, header::HeaderBuilder,
};
use utoipa::{Modify, OpenApi, ToSchema};
use weir_common::ingest::{FieldError, IngestEvent};

use crate::keys::Scope;

/// An RFC 9457 problem document: every 4xx and 5xx answer of the API.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProblemDocument {
    /// Always `about:blank`: the status says what kind of problem it is.
    #[serde(rename = "type")]
    pub kind: String,
    /// The HTTP status's reason phrase.
    pub title: String,
    pub status: u16,
    /// What is wrong and, where it helps, how to fix it.
    pub detail: String,
    /// Each bad field of a request body (`422` on ingest).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
    /// On `409`: the alarm's or incident's status that forbids the action.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current_status: Option<String>,
}

/// `POST /api/v1/events` body: one event, or an array of them.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum IngestBody {
    One(IngestEvent),
    Many(Vec<IngestEvent>),
}

/// Who may call a route: `None` is public (no key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Public,
    /// Public and left out of the OpenAPI document (the docs page's own files).
    PublicUndocumented,
    Key(Scope),
}

/// Every route the router serves: method, path (OpenAPI syntax), who may call it.
pub const ROUTES: &[(&str, &str, Access)] = {
    use Access::{Key, Public, PublicUndocumented};
    use Scope::{Admin, Ingest, Operate, Read};
    &[
        ("get", "/healthz", Public),
        ("get", "/readyz", Public),
        ("get", "/metrics", Public),
        ("get", "/api/v1/openapi.json", Public),
        ("get", "/api/v1/docs", PublicUndocumented),
        ("get", "/api/v1/docs/", PublicUndocumented),
        ("get", "/api/v1/events", Key(Read)),
        ("get", "/api/v1/events/histogram", Key(Read)),
        ("get", "/api/v1/events/{id}", Key(Read)),
        ("get", "/api/v1/agents", Key(Read)),
        ("get", "/api/v1/sites", Key(Read)),
        ("get", "/api/v1/alarms", Key(Read)),
        ("get", "/api/v1/alarms/{id}", Key(Read)),
        ("get", "/api/v1/incidents", Key(Read)),
        ("get", "/api/v1/incidents/{id}", Key(Read)),
        ("post", "/api/v1/events", Key(Ingest)),
        ("post", "/api/v1/ingest/alertmanager", Key(Ingest)),
        ("post", "/api/v1/alarms/{id}/ack", Key(Operate)),
        ("post", "/api/v1/alarms/{id}/unack", Key(Operate)),
        ("post", "/api/v1/alarms/{id}/clear", Key(Operate)),
        ("post", "/api/v1/incidents/{id}/ack", Key(Operate)),
        ("post", "/api/v1/incidents/{id}/resolve", Key(Operate)),
        ("post", "/api/v1/incidents/{id}/close", Key(Operate)),
        ("post", "/api/v1/incidents/{id}/reopen", Key(Operate)),
        ("post", "/api/v1/incidents/{id}/notes", Key(Operate)),
        ("post", "/api/v1/incidents/{id}/assign", Key(Operate)),
        ("get", "/api/v1/keys", Key(Admin)),
        ("post", "/api/v1/keys", Key(Admin)),
        ("delete", "/api/v1/keys/{id}", Key(Admin)),
        ("post", "/api/v1/config/reload", Key(Admin)),
        ("get", "/api/v1/rules", Key(Read)),
        ("put", "/api/v1/rules", Key(Admin)),
        ("post", "/api/v1/rules/dry-run", Key(Read)),
    ]
};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Weir aggregator API",
        description = "The NOC's REST API: events (search, histogram, ingest), agents and sites, \
alarms and incidents, API keys.\n\nAuthenticate with an API key in `X-API-Key` or as \
`Authorization: Bearer <key>`; each operation says the scope it needs (`read`, `ingest`, \
`operate`, `admin`). Errors are RFC 9457 problem documents (`application/problem+json`).",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    servers((url = "/", description = "This aggregator")),
    paths(
        crate::api::healthz,
        crate::api::readyz,
        crate::api::render_metrics,
        openapi_json,
        crate::api::list_events,
        crate::histogram::histogram,
        crate::api::get_event,
        crate::api::list_agents,
        crate::sites::list_sites,
        crate::api_alarms::list_alarms,
        crate::api_alarms::get_alarm,
        crate::api_alarms::list_incidents,
        crate::api_alarms::get_incident,
        crate::api_ingest::post_events,
        crate::alertmanager::post_alertmanager,
        crate::api_alarms::alarm_ack,
        crate::api_alarms::alarm_unack,
        crate::api_alarms::alarm_clear,
        crate::api_alarms::incident_ack,
        crate::api_alarms::incident_resolve,
        crate::api_alarms::incident_close,
        crate::api_alarms::incident_reopen,
        crate::api_alarms::incident_note,
        crate::api_alarms::incident_assign,
        crate::keys_api::list_keys,
        crate::keys_api::create_key,
        crate::keys_api::revoke_key,
        crate::api_alarms::reload,
        crate::api_rules::get_rules,
        crate::api_rules::put_rules,
        crate::api_rules::dry_run,
    ),
    components(schemas(ProblemDocument, FieldError)),
    modifiers(&Scoped),
)]
pub struct ApiDoc;

/// Adds the security schemes, and to each keyed operation its security, scope and the
/// answers of the authentication layers.
struct Scoped;

fn problem(description: &str) -> utoipa::openapi::Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/problem+json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ProblemDocument")))
                .build(),
        )
        .build()
}

impl Modify for Scoped {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "X-API-Key",
                "An API key (`weir-aggregator keys create`)",
            ))),
        );
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("The same API key as `Authorization: Bearer <key>`"))
                    .build(),
            ),
        );
        let integer = ObjectBuilder::new().schema_type(Type::Integer).build();
        let string = ObjectBuilder::new().schema_type(Type::String).build();
        for (method, path, access) in ROUTES {
            let Access::Key(scope) = access else {
                continue;
            };
            let Some(op) = doc
                .paths
                .paths
                .get_mut(*path)
                .and_then(|item| operation(item, method))
            else {
                continue; // the tests report it
            };
            let needs = format!("Needs an API key with the `{scope}` scope.");
            op.description = Some(match op.description.take() {
                Some(d) => format!("{needs}\n\n{d}"),
                None => needs,
            });
            op.security = Some(vec![
                SecurityRequirement::new("api_key", Vec::<String>::new()),
                SecurityRequirement::new("bearer", Vec::<String>::new()),
            ]);
            let mut unauthorized =
                problem("No API key, or an unknown or revoked one; nothing was done");
            unauthorized.headers.insert(
                "WWW-Authenticate".into(),
                HeaderBuilder::new().schema(string.clone()).build(),
            );
            let mut limited = problem("The key is over its request rate; retry later");
            limited.headers.insert(
                "Retry-After".into(),
                HeaderBuilder::new()
                    .schema(integer.clone())
                    .description(Some("Seconds to wait"))
                    .build(),
            );
            let r = &mut op.responses.responses;
            r.insert("401".into(), unauthorized.into());
            r.insert(
                "403".into(),
                problem(&format!("The key lacks the `{scope}` scope")).into(),
            );
            r.insert("429".into(), limited.into());
            r.entry("500".into()).or_insert_with(|| {
                problem("The aggregator failed (its log says why); retry later").into()
            });
        }
    }
}

fn operation<'a>(
    item: &'a mut utoipa::openapi::PathItem,
    method: &str,
) -> Option<&'a mut utoipa::openapi::path::Operation> {
    match method {
        "get" => item.get.as_mut(),
        "post" => item.post.as_mut(),
        "put" => item.put.as_mut(),
        "delete" => item.delete.as_mut(),
        "patch" => item.patch.as_mut(),
        _ => None,
    }
}

/// The document, built once.
pub fn document() -> &'static str {
    static DOC: LazyLock<String> = LazyLock::new(|| {
        ApiDoc::openapi()
            .to_pretty_json()
            .expect("the OpenAPI document serializes")
    });
    &DOC
}

/// The OpenAPI document of this API.
#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    tag = "docs",
    summary = "This API's OpenAPI 3.1 document (no key needed)",
    responses((status = 200, description = "The document", content_type = "application/json", body = Object))
)]
pub(crate) async fn openapi_json() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], document())
}

/// `GET /api/v1/openapi.json` and the docs page at `/api/v1/docs/` (public).
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    let ui = utoipa_swagger_ui::SwaggerUi::new("/api/v1/docs").config(
        utoipa_swagger_ui::Config::new(["/api/v1/openapi.json"])
            // The default asks validator.swagger.io about the document: no calls out.
            .validator_url("none"),
    );
    Router::new()
        .route("/api/v1/openapi.json", get(openapi_json))
        .merge(ui)
}

#[cfg(test)]
mod tests;
