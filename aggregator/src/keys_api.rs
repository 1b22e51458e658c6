//! The admin API for keys: `GET /api/v1/keys`, `POST /api/v1/keys`, `DELETE /api/v1/keys/{id}`
//! (admin scope). Edits go to the same keys file as `weir-aggregator keys`, under its lock; the
//! keyring picks them up on the next request.

use std::collections::BTreeSet;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::api::{ApiError, ApiState};
use crate::keys::{self, KeyRecord, KeysError, Scope};

/// A key as the API lists it: never the secret, never its digest.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct KeyView {
    pub id: String,
    pub name: String,
    pub scopes: BTreeSet<Scope>,
    pub created: Timestamp,
    pub revoked: Option<Timestamp>,
}

impl From<KeyRecord> for KeyView {
    fn from(k: KeyRecord) -> KeyView {
        KeyView {
            id: k.id,
            name: k.name,
            scopes: k.scopes,
            created: k.created,
            revoked: k.revoked,
        }
    }
}

/// `POST /api/v1/keys` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    pub name: String,
    /// Each scope once (the schema says `uniqueItems`; a repeated scope is a 422, since it
    /// usually means a typo for another scope).
    #[serde(deserialize_with = "unique_scopes")]
    pub scopes: BTreeSet<Scope>,
}

/// A scope list that names no scope twice.
fn unique_scopes<'de, D: serde::Deserializer<'de>>(d: D) -> Result<BTreeSet<Scope>, D::Error> {
    let list = Vec::<Scope>::deserialize(d)?;
    let mut set = BTreeSet::new();
    for s in list {
        if !set.insert(s) {
            return Err(serde::de::Error::custom(format_args!(
                "scope {s} is listed twice"
            )));
        }
    }
    Ok(set)
}

/// `POST /api/v1/keys` answer: the key and, this once, its secret.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CreatedKey {
    #[serde(flatten)]
    pub key: KeyView,
    pub secret: String,
}

fn keys_file(state: &ApiState) -> Result<std::path::PathBuf, ApiError> {
    state
        .auth
        .keys
        .path()
        .map(|p| p.to_path_buf())
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_IMPLEMENTED,
                "this aggregator has no keys file",
            )
        })
}

fn keys_error(e: KeysError) -> ApiError {
    match e {
        KeysError::Invalid(m) => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, m),
        e @ KeysError::NotFound(_) => ApiError::new(StatusCode::NOT_FOUND, e.to_string()),
        e => ApiError::internal(e),
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, KeysError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(ApiError::internal)?
        .map_err(keys_error)
}

#[utoipa::path(
    get,
    path = "/api/v1/keys",
    tag = "keys",
    summary = "API keys (never their secrets)",
    responses(
        (status = 200, description = "Every key, revoked ones too", body = Vec<KeyView>),
        (status = 501, description = "This aggregator has no keys file", body = crate::openapi::ProblemDocument, content_type = "application/problem+json")
    )
)]
pub async fn list_keys(State(state): State<ApiState>) -> Result<Json<Vec<KeyView>>, ApiError> {
    let path = keys_file(&state)?;
    let keys = blocking(move || keys::read_keys(&path)).await?;
    Ok(Json(keys.into_iter().map(KeyView::from).collect()))
}

#[utoipa::path(
    post,
    path = "/api/v1/keys",
    tag = "keys",
    summary = "Create an API key; the answer holds its secret, this once",
    request_body = NewKey,
    responses(
        (status = 201, description = "The key and its secret", body = CreatedKey),
        (status = 400, description = "The body is not JSON", body = crate::openapi::ProblemDocument, content_type = "application/problem+json"),
        (status = 413, description = "The body is too large", body = crate::openapi::ProblemDocument, content_type = "application/problem+json"),
        (status = 415, description = "The body is not `application/json`", body = crate::openapi::ProblemDocument, content_type = "application/problem+json"),
        (status = 422, description = "A bad name or scope, or a name already in use", body = crate::openapi::ProblemDocument, content_type = "application/problem+json"),
        (status = 501, description = "This aggregator has no keys file", body = crate::openapi::ProblemDocument, content_type = "application/problem+json")
    )
)]
pub async fn create_key(
    State(state): State<ApiState>,
    body: Result<Json<NewKey>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(new) = body.map_err(|e| ApiError::new(e.status(), e.body_text()))?;
    let path = keys_file(&state)?;
    let (rec, secret) =
        blocking(move || keys::create_key(&path, &new.name, new.scopes, Timestamp::now())).await?;
    tracing::info!(id = %rec.id, name = %rec.name, scopes = ?rec.scopes, "API key created through the admin API");
    Ok((
        StatusCode::CREATED,
        Json(CreatedKey {
            key: rec.into(),
            secret,
        }),
    )
        .into_response())
}

#[utoipa::path(
    delete,
    path = "/api/v1/keys/{id}",
    tag = "keys",
    summary = "Revoke an API key",
    params(("id" = String, Path, description = "Key id (`k_...`)")),
    responses(
        (status = 200, description = "The revoked key", body = KeyView),
        (status = 404, description = "No such key", body = crate::openapi::ProblemDocument, content_type = "application/problem+json"),
        (status = 422, description = "The key cannot be revoked", body = crate::openapi::ProblemDocument, content_type = "application/problem+json"),
        (status = 501, description = "This aggregator has no keys file", body = crate::openapi::ProblemDocument, content_type = "application/problem+json")
    )
)]
pub async fn revoke_key(
    State(state): State<ApiState>,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<KeyView>, ApiError> {
    let path = keys_file(&state)?;
    let rec = blocking(move || keys::revoke_key(&path, &id, Timestamp::now())).await?;
    tracing::info!(id = %rec.id, name = %rec.name, "API key revoked through the admin API");
    Ok(Json(rec.into()))
}
