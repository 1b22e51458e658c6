//! Request authentication, scope checks and per-key rate limits for `/api/v1`.
//!
//! Two layers, composable per route group:
//! - [`authenticate`] (once, over every `/api/v1` route): finds the key, checks it against the
//!   [`Keyring`], applies the key's rate limit and leaves the [`Principal`] in the request's
//!   extensions. 401 without, with an unknown or with a revoked key; 429 over the limit.
//! - [`require_scope`] (per route group): 403 unless the principal holds the scope. Wire a group
//!   with `.route_layer(middleware::from_fn_with_state(Scope::Operate, auth::require_scope))`.
//!
//! Keys never reach a log line: only key ids and names do.

use std::num::NonZeroU32;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

use crate::api::{ApiError, ApiState};
use crate::keys::{Keyring, Principal, Scope};

/// Counts a refused API request (`weir_aggregator_api_refused_total{reason}`).
pub fn count_refusal(reason: &'static str) {
    metrics::counter!("weir_aggregator_api_refused_total", "reason" => reason).increment(1);
    weir_common::warn_limited!(
        reason,
        reason,
        "refused an API request (the client got a problem document saying why); see weir_aggregator_api_refused_total"
    );
}

/// Keys plus the per-key request rate limiter.
#[derive(Debug)]
pub struct Auth {
    pub keys: Keyring,
    /// Keyed by key id; one small entry per key that made a request (keys are few and
    /// operator-made, so this is bounded; idle entries are pruned too).
    limiter: Option<DefaultKeyedRateLimiter<Arc<str>>>,
    clock: DefaultClock,
}

impl Auth {
    /// `per_second` = 0 turns rate limiting off.
    pub fn new(keys: Keyring, per_second: u32, burst: u32) -> Auth {
        let limiter = NonZeroU32::new(per_second).map(|rate| {
            let burst = NonZeroU32::new(burst).unwrap_or(rate);
            governor::RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
        });
        Auth {
            keys,
            limiter,
            clock: DefaultClock::default(),
        }
    }

    /// `Err(seconds to wait)` when the key is over its rate.
    fn check_rate(&self, id: &Arc<str>) -> Result<(), u64> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        if limiter.len() > 10_000 {
            limiter.retain_recent();
        }
        limiter.check_key(id).map_err(|not_until| {
            let wait = not_until.wait_time_from(self.clock.now());
            // Round up: a client that waits exactly Retry-After must get through.
            (wait.as_secs_f64().ceil() as u64).max(1)
        })
    }
}

/// Authenticates and rate-limits every `/api/v1` request.
pub async fn authenticate(State(state): State<ApiState>, mut req: Request, next: Next) -> Response {
    let headers = req.headers();
    let secret = crate::keys::extract(
        headers.get("x-api-key").and_then(|v| v.to_str().ok()),
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok()),
    );
    let principal = match state.auth.keys.authenticate(secret) {
        Ok(p) => p,
        Err(e) => {
            count_refusal(e.reason());
            return ApiError::new(StatusCode::UNAUTHORIZED, e.to_string()).into_response();
        }
    };
    if let Err(wait) = state.auth.check_rate(&principal.id) {
        count_refusal("rate_limited");
        weir_common::warn_limited!("api_rate_limited", key_id = %principal.id, key_name = %principal.name, "API key over its request rate; answering 429");
        let mut resp = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "API key {:?} is over its request rate (api.rate_limit_per_second); retry in {wait} s",
                &*principal.name
            ),
        )
        .into_response();
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(wait));
        return resp;
    }
    req.extensions_mut().insert(principal);
    next.run(req).await
}

/// 403 unless the authenticated key holds `scope`. Apply per route group after
/// [`authenticate`] (see the module docs).
pub async fn require_scope(State(scope): State<Scope>, req: Request, next: Next) -> Response {
    let Some(p) = req.extensions().get::<Principal>() else {
        // A route wired without `authenticate`: refuse rather than serve unauthenticated.
        tracing::error!(path = %req.uri().path(), "route has a scope check but no authentication layer; refusing");
        count_refusal("missing_key");
        return ApiError::new(StatusCode::UNAUTHORIZED, "missing API key").into_response();
    };
    if p.scopes.contains(scope) {
        return next.run(req).await;
    }
    count_refusal("missing_scope");
    ApiError::new(
        StatusCode::FORBIDDEN,
        format!(
            "this endpoint needs an API key with the `{scope}` scope; key {:?} has [{}]",
            &*p.name, p.scopes
        ),
    )
    .into_response()
}

/// Turns a plain-text 413 from the body limit layer into a problem document.
pub async fn problem_for_413(req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    let is_problem = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/problem+json"));
    if resp.status() == StatusCode::PAYLOAD_TOO_LARGE && !is_problem {
        count_refusal("body_too_large");
        return ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request body over api.max_body_bytes; send fewer events per request",
        )
        .into_response();
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_waits_round_up() {
        let auth = Auth::new(Keyring::new("", None), 1, 2);
        let id: Arc<str> = "k_1".into();
        assert!(auth.check_rate(&id).is_ok());
        assert!(auth.check_rate(&id).is_ok());
        assert_eq!(auth.check_rate(&id), Err(1));
        let other: Arc<str> = "k_2".into();
        assert!(auth.check_rate(&other).is_ok(), "limits are per key");
        let off = Auth::new(Keyring::new("", None), 0, 0);
        for _ in 0..100 {
            assert!(off.check_rate(&id).is_ok());
        }
    }
}
