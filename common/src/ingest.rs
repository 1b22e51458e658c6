//! The JSON event schema of seed 000 (`POST /api/v1/events`), shared by the agent's local
//! ingest and the aggregator's API, and API-key checking for both.
//!
//! Parsing never stops at the first problem: every bad field of every event is reported with
//! a JSON pointer, so a client can fix a whole bulk request in one go.

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::{Event, InputKind, Severity};

/// Most events in one request.
pub const MAX_BULK: usize = 10_000;
/// Longest message accepted (bytes).
pub const MAX_MESSAGE: usize = 64 * 1024;

/// One event as a client posts it (seed 000's schema).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct IngestEvent {
    #[cfg_attr(feature = "openapi", schema(min_length = 1, pattern = r"\S"))]
    pub source: String,
    #[cfg_attr(feature = "openapi", schema(min_length = 1, pattern = r"\S"))]
    pub hostname: String,
    pub severity: Severity,
    /// At most 64 KiB of UTF-8 (65536 ASCII characters; fewer when multi-byte).
    #[cfg_attr(feature = "openapi", schema(max_length = 65536))]
    pub message: String,
    #[serde(default)]
    pub event_type: Option<String>,
    /// The short machine tag (e.g. `PING_DOWN`) event definitions and rules key on; an
    /// addition to seed 000's fields, optional.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(pattern = "^[!-~]{1,128}$"))]
    pub tag: Option<String>,
    /// ISO 8601 / RFC 3339 with an offset; ingest time when absent.
    #[serde(default)]
    pub timestamp: Option<Timestamp>,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    #[serde(default)]
    pub raw_payload: Option<String>,
}

impl IngestEvent {
    pub fn into_event(self, input: InputKind, received_at: Timestamp) -> Event {
        let mut e = Event::new(
            input,
            self.source,
            self.hostname,
            self.severity,
            self.message,
            received_at,
        );
        e.event_type = self.event_type;
        e.tag = self.tag;
        if let Some(t) = self.timestamp {
            e.event_time = t;
        }
        e.tags = self.tags;
        e.raw_payload = self.raw_payload.map(String::into_bytes);
        e
    }
}

/// One problem in a request body: where (a JSON pointer such as `/3/severity`) and what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FieldError {
    pub pointer: String,
    pub message: String,
}

/// Parses one event object or an array of them.
pub fn parse_events(body: &[u8]) -> Result<Vec<IngestEvent>, Vec<FieldError>> {
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
        vec![FieldError {
            pointer: String::new(),
            message: format!("body is not valid JSON: {e}"),
        }]
    })?;
    let (items, bulk) = match value {
        serde_json::Value::Array(items) => (items, true),
        v @ serde_json::Value::Object(_) => (vec![v], false),
        _ => {
            return Err(vec![FieldError {
                pointer: String::new(),
                message: "expected an event object or an array of event objects".into(),
            }]);
        }
    };
    if items.is_empty() {
        return Err(vec![FieldError {
            pointer: String::new(),
            message: "empty array: send at least one event".into(),
        }]);
    }
    if items.len() > MAX_BULK {
        return Err(vec![FieldError {
            pointer: String::new(),
            message: format!(
                "{} events in one request; the limit is {MAX_BULK}",
                items.len()
            ),
        }]);
    }
    let mut out = Vec::with_capacity(items.len());
    let mut errors = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        let base = if bulk { format!("/{i}") } else { String::new() };
        if let Some(obj) = item.as_object() {
            for field in ["source", "hostname", "severity", "message"] {
                if !obj.contains_key(field) {
                    errors.push(FieldError {
                        pointer: format!("{base}/{field}"),
                        message: "required field is missing".into(),
                    });
                }
            }
        }
        match serde_path_to_error::deserialize::<_, IngestEvent>(item) {
            Ok(ev) => {
                let mut bad = |field: &str, message: String| {
                    errors.push(FieldError {
                        pointer: format!("{base}/{field}"),
                        message,
                    })
                };
                if ev.source.trim().is_empty() {
                    bad("source", "must not be empty".into());
                }
                if ev.hostname.trim().is_empty() {
                    bad("hostname", "must not be empty".into());
                }
                if let Some(t) = &ev.tag
                    && (t.is_empty() || t.len() > 128 || !t.bytes().all(|b| b.is_ascii_graphic()))
                {
                    bad(
                        "tag",
                        "must be 1 to 128 printable ASCII characters without spaces".into(),
                    );
                }
                if ev.message.len() > MAX_MESSAGE {
                    bad(
                        "message",
                        format!("{} bytes; the limit is {MAX_MESSAGE}", ev.message.len()),
                    );
                }
                out.push(ev);
            }
            Err(e) => {
                let path = e.path().to_string();
                let pointer = if path == "." {
                    base.clone()
                } else {
                    format!("{base}/{}", path.replace('.', "/"))
                };
                let message = e.into_inner().to_string();
                // "missing field" is already reported above for each field.
                if !message.starts_with("missing field") {
                    errors.push(FieldError { pointer, message });
                }
            }
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// API keys, kept only as SHA-256 digests and compared in constant time.
#[derive(Debug, Default)]
pub struct ApiKeys {
    digests: Vec<[u8; 32]>,
}

impl ApiKeys {
    /// Reads keys from a file, one per line; blank lines and `#` comments are ignored.
    pub fn load(path: &std::path::Path) -> Result<ApiKeys, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read API key file {}: {e}", path.display()))?;
        let keys = ApiKeys::from_lines(&text);
        if keys.digests.is_empty() {
            return Err(format!(
                "API key file {} holds no key: add one per line",
                path.display()
            ));
        }
        Ok(keys)
    }

    pub fn from_lines(text: &str) -> ApiKeys {
        let digests = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|k| Sha256::digest(k.as_bytes()).into())
            .collect();
        ApiKeys { digests }
    }

    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }

    pub fn check(&self, key: &str) -> bool {
        let d: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        // Compare against every key, so timing does not reveal which one matched.
        self.digests
            .iter()
            .fold(subtle::Choice::from(0), |acc, k| acc | k.ct_eq(&d))
            .into()
    }

    /// Checks the key a request carries in `X-API-Key` or `Authorization: Bearer`.
    pub fn authorize(
        &self,
        x_api_key: Option<&str>,
        authorization: Option<&str>,
    ) -> Result<(), AuthError> {
        match Self::extract(x_api_key, authorization) {
            None => Err(AuthError::Missing),
            Some(k) if !self.check(k) => Err(AuthError::Unknown),
            Some(_) => Ok(()),
        }
    }

    /// Finds the key in `X-API-Key` or `Authorization: Bearer` header values.
    pub fn extract<'a>(
        x_api_key: Option<&'a str>,
        authorization: Option<&'a str>,
    ) -> Option<&'a str> {
        x_api_key
            .or_else(|| authorization.and_then(|v| v.strip_prefix("Bearer ")))
            .map(str::trim)
    }
}

/// Why a request was not authorized (both answer 401; the message tells the client which).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing API key: send X-API-Key or Authorization: Bearer")]
    Missing,
    #[error("unknown API key")]
    Unknown,
}

/// An RFC 9457 problem document body; `errors` lists per-field problems when there are some.
pub fn problem_body(
    status: u16,
    title: &str,
    detail: &str,
    errors: &[FieldError],
) -> serde_json::Value {
    let mut body = serde_json::json!({
        "type": "about:blank",
        "title": title,
        "status": status,
        "detail": detail,
    });
    if !errors.is_empty() {
        body["errors"] = serde_json::json!(errors);
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_000_example_parses() {
        let body = br#"{
            "source": "my-application", "hostname": "app-prod-01", "severity": "critical",
            "event_type": "application_error", "message": "Database connection pool exhausted",
            "tags": { "environment": "production", "team": "backend" },
            "timestamp": "2026-02-24T14:37:00Z" }"#;
        let evs = parse_events(body).unwrap();
        assert_eq!(evs.len(), 1);
        let e = evs[0].clone().into_event(InputKind::Api, Timestamp::now());
        assert_eq!(e.severity, Severity::Critical);
        assert_eq!(e.event_time.to_string(), "2026-02-24T14:37:00Z");
        assert_eq!(e.tags["team"], "backend");
    }

    #[test]
    fn every_bad_field_is_reported() {
        let body = br#"[
            {"source": "a", "hostname": "h", "severity": "info", "message": "ok"},
            {"source": "a", "severity": "loud", "message": "x"},
            {"source": "a", "hostname": "h", "severity": "info", "message": "m", "timestamp": "yesterday"},
            {"source": "a", "hostname": "h", "severity": "info", "message": "m", "colour": "red"},
            {"source": "", "hostname": "h", "severity": "info", "message": "m"}
        ]"#;
        let errs = parse_events(body).unwrap_err();
        let pointers: Vec<_> = errs.iter().map(|e| e.pointer.as_str()).collect();
        assert!(pointers.contains(&"/1/hostname"), "{errs:?}");
        assert!(pointers.contains(&"/1/severity"), "{errs:?}");
        assert!(pointers.contains(&"/2/timestamp"), "{errs:?}");
        assert!(
            errs.iter()
                .any(|e| e.pointer.starts_with("/3") && e.message.contains("colour")),
            "{errs:?}"
        );
        assert!(pointers.contains(&"/4/source"), "{errs:?}");
        assert!(
            errs.iter().any(|e| e.message.contains("critical")),
            "severity error lists accepted values: {errs:?}"
        );
    }

    #[test]
    fn bodies_that_are_not_events() {
        assert!(parse_events(b"not json").is_err());
        assert!(parse_events(b"42").is_err());
        assert!(parse_events(b"[]").is_err());
    }

    #[test]
    fn api_keys() {
        let keys = ApiKeys::from_lines("# comment\n\n  secret-1 \nsecret-2\n");
        assert!(keys.check("secret-1"));
        assert!(keys.check("secret-2"));
        assert!(!keys.check("secret-3"));
        assert!(!keys.check(""));
        assert_eq!(ApiKeys::extract(None, Some("Bearer abc")), Some("abc"));
        assert_eq!(ApiKeys::extract(Some("k"), Some("Bearer abc")), Some("k"));
        assert_eq!(ApiKeys::extract(None, Some("Basic abc")), None);
        assert_eq!(keys.authorize(None, None), Err(AuthError::Missing));
        assert_eq!(keys.authorize(Some("nope"), None), Err(AuthError::Unknown));
        assert_eq!(keys.authorize(None, Some("Bearer secret-2")), Ok(()));
    }
}
