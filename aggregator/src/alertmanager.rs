//! `POST /api/v1/ingest/alertmanager`: Prometheus Alertmanager webhook payloads (version 4)
//! become events, one per alert, stored like `POST /api/v1/events`.
//!
//! Mapping (also in the README):
//! - firing: severity from the `severity` label (aliases as in the event API, e.g. `crit`,
//!   `major`, `warn`); absent or unknown → `warning`, with the original value in tag
//!   `weir.severity_unmapped`. `event_type` = `alert`, `tag` = `AM_<alertname>`, event time =
//!   `startsAt`.
//! - resolved: a clearing event: severity `info`, `event_type` = `resolution`,
//!   `tag` = `AM_<alertname>_CLEAR`, event time = `endsAt`.
//! - both: `source` = `alertmanager`; hostname from the `instance` label (its `:port` removed),
//!   else `host`, else `hostname`, else `unknown`; message `[<alertname>] <summary>` (or
//!   `description`, or the alertname); labels as tags `label.<name>`, annotations as
//!   `annotation.<name>`; `alertmanager.fingerprint`, `alertmanager.status`,
//!   `alertmanager.receiver`, `alertmanager.generator_url`; and `weir.clear_key` =
//!   `am:<fingerprint>`, the same on an alert and its resolution so rules can pair them.
//!   The alert's JSON is the event's `raw_payload`.
//!
//! Fields Alertmanager may add later are ignored (it is not our format); fields we read must
//! have the right type, and `version` must be "4".

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::response::Response;
use jiff::Timestamp;
use serde::Deserialize;
use weir_common::ingest::FieldError;
use weir_common::{Event, InputKind, Severity};

use crate::api::ApiState;
use crate::api_ingest::{body_problem, invalid, store_events};

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct Payload {
    version: String,
    #[serde(default)]
    receiver: String,
    alerts: Vec<Alert>,
}

#[derive(Debug, Deserialize, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct Alert {
    status: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
    #[serde(default)]
    starts_at: Option<Timestamp>,
    #[serde(default)]
    ends_at: Option<Timestamp>,
    #[serde(default, rename = "generatorURL")]
    generator_url: String,
    #[serde(default)]
    fingerprint: String,
}

fn one(pointer: String, message: impl Into<String>) -> Vec<FieldError> {
    vec![FieldError {
        pointer,
        message: message.into(),
    }]
}

/// Maps a webhook body to events, or the problems with it.
pub fn parse(body: &[u8], now: Timestamp) -> Result<Vec<Event>, Vec<FieldError>> {
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| one(String::new(), format!("body is not valid JSON: {e}")))?;
    if !value.is_object() {
        return Err(one(
            String::new(),
            "expected an Alertmanager webhook object (version 4)",
        ));
    }
    let payload: Payload = serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let pointer = if path == "." {
            String::new()
        } else {
            let p = path.replace('[', ".").replace(']', "").replace('.', "/");
            format!("/{}", p.trim_start_matches('/'))
        };
        // An empty pointer (the body is not an object at all) is answered 400, a field 422.
        one(pointer, e.into_inner().to_string())
    })?;
    if payload.version != "4" {
        return Err(one(
            "/version".into(),
            format!(
                "webhook payload version {:?}; only \"4\" is understood",
                payload.version
            ),
        ));
    }
    if payload.alerts.len() > weir_common::ingest::MAX_BULK {
        return Err(one(
            "/alerts".into(),
            format!(
                "{} alerts; the limit is {}",
                payload.alerts.len(),
                weir_common::ingest::MAX_BULK
            ),
        ));
    }
    let mut errors = Vec::new();
    let mut events = Vec::with_capacity(payload.alerts.len());
    for (i, alert) in payload.alerts.into_iter().enumerate() {
        let firing = match alert.status.as_str() {
            "firing" => true,
            "resolved" => false,
            other => {
                errors.push(FieldError {
                    pointer: format!("/alerts/{i}/status"),
                    message: format!("{other:?}: expected \"firing\" or \"resolved\""),
                });
                continue;
            }
        };
        events.push(to_event(alert, firing, &payload.receiver, now));
    }
    if errors.is_empty() {
        Ok(events)
    } else {
        Err(errors)
    }
}

fn hostname(labels: &BTreeMap<String, String>) -> String {
    if let Some(inst) = labels.get("instance").filter(|s| !s.is_empty()) {
        // "host:9100" → "host"; "[::1]:9100" → "::1"; anything else as it is.
        if let Some((host, port)) = inst.rsplit_once(':')
            && !port.is_empty()
            && port.bytes().all(|b| b.is_ascii_digit())
            && (!host.contains(':') || (host.starts_with('[') && host.ends_with(']')))
        {
            return host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
        }
        return inst.clone();
    }
    ["host", "hostname"]
        .iter()
        .find_map(|k| labels.get(*k).filter(|s| !s.is_empty()).cloned())
        .unwrap_or_else(|| "unknown".into())
}

fn to_event(alert: Alert, firing: bool, receiver: &str, now: Timestamp) -> Event {
    let raw = serde_json::to_vec(&alert).ok();
    let alertname = alert
        .labels
        .get("alertname")
        .cloned()
        .unwrap_or_else(|| "unnamed".into());
    let mut tags = BTreeMap::new();
    let severity = if firing {
        match alert.labels.get("severity").map(|s| s.parse::<Severity>()) {
            Some(Ok(s)) => s,
            other => {
                let original = alert.labels.get("severity").cloned().unwrap_or_default();
                debug_assert!(!matches!(other, Some(Ok(_))));
                tags.insert("weir.severity_unmapped".to_string(), original);
                Severity::Warning
            }
        }
    } else {
        Severity::Info
    };
    let text = ["summary", "description"]
        .iter()
        .find_map(|k| alert.annotations.get(*k).filter(|s| !s.is_empty()))
        .cloned()
        .unwrap_or_else(|| alertname.clone());
    let message = format!("[{alertname}] {text}");
    let mut e = Event::new(
        InputKind::Api,
        "alertmanager",
        hostname(&alert.labels),
        severity,
        message,
        now,
    );
    // Alertmanager sends 0001-01-01T00:00:00Z for "unset".
    let set = |t: Option<Timestamp>| t.filter(|t| t.as_second() > 0);
    let time = if firing {
        set(alert.starts_at)
    } else {
        set(alert.ends_at).or(set(alert.starts_at))
    };
    if let Some(t) = time {
        e.event_time = t;
    }
    e.event_type = Some(if firing { "alert" } else { "resolution" }.into());
    e.tag = Some(if firing {
        format!("AM_{alertname}")
    } else {
        format!("AM_{alertname}_CLEAR")
    });
    for (k, v) in alert.labels {
        tags.insert(format!("label.{k}"), v);
    }
    for (k, v) in alert.annotations {
        tags.insert(format!("annotation.{k}"), v);
    }
    tags.insert("alertmanager.status".into(), alert.status);
    if !receiver.is_empty() {
        tags.insert("alertmanager.receiver".into(), receiver.into());
    }
    if !alert.generator_url.is_empty() {
        tags.insert("alertmanager.generator_url".into(), alert.generator_url);
    }
    if !alert.fingerprint.is_empty() {
        tags.insert("weir.clear_key".into(), format!("am:{}", alert.fingerprint));
        tags.insert("alertmanager.fingerprint".into(), alert.fingerprint);
    }
    e.tags = tags;
    e.raw_payload = raw;
    e
}

/// `POST /api/v1/ingest/alertmanager`.
#[utoipa::path(
    post,
    path = "/api/v1/ingest/alertmanager",
    tag = "ingest",
    summary = "Prometheus Alertmanager webhook (firing and resolved alerts become events)",
    request_body = Payload,
    responses(
        (status = 202, description = "Stored (ids in request order)", body = crate::api_ingest::Accepted),
        (status = 400, description = "The body is not JSON, or not an event or array of events", body = crate::openapi::ProblemDocument, content_type = "application/problem+json"),
        (status = 413, description = "The body is over `api.max_body_bytes`", body = crate::openapi::ProblemDocument, content_type = "application/problem+json"),
        (status = 422, description = "Invalid events: `errors` names each bad field (JSON pointer); nothing was stored", body = crate::openapi::ProblemDocument, content_type = "application/problem+json"),
        (status = 503, description = "The store did not take the events; send them again", body = crate::openapi::ProblemDocument, content_type = "application/problem+json")
    )
)]
pub async fn post_alertmanager(
    State(state): State<ApiState>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(b) => b,
        Err(e) => return body_problem(e),
    };
    let now = Timestamp::now();
    match parse(&body, now) {
        Ok(events) if events.is_empty() => invalid(&one("/alerts".into(), "no alerts")),
        Ok(events) => store_events(&state, events, now).await,
        Err(errors) => invalid(&errors),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The example from the Prometheus Alertmanager docs (webhook_config), with two alerts.
    pub(crate) const EXAMPLE: &str = r#"{
      "version": "4",
      "groupKey": "{}:{alertname=\"HighLatency\"}",
      "truncatedAlerts": 0,
      "status": "firing",
      "receiver": "weir",
      "groupLabels": {"alertname": "HighLatency"},
      "commonLabels": {"alertname": "HighLatency"},
      "commonAnnotations": {},
      "externalURL": "http://alertmanager:9093",
      "alerts": [
        {
          "status": "firing",
          "labels": {"alertname": "HighLatency", "instance": "web-1:9100", "severity": "crit", "job": "node"},
          "annotations": {"summary": "p99 latency over 1s"},
          "startsAt": "2026-02-24T14:30:00Z",
          "endsAt": "0001-01-01T00:00:00Z",
          "generatorURL": "http://prometheus:9090/graph?g0.expr=latency",
          "fingerprint": "a1b2c3d4e5f60718"
        },
        {
          "status": "resolved",
          "labels": {"alertname": "DiskFull", "host": "db-2"},
          "annotations": {},
          "startsAt": "2026-02-24T13:00:00Z",
          "endsAt": "2026-02-24T14:35:00Z",
          "generatorURL": "http://prometheus:9090/graph?g0.expr=disk",
          "fingerprint": "ffee000011112222"
        }
      ]
    }"#;

    #[test]
    fn docs_example_maps_to_events() {
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let evs = parse(EXAMPLE.as_bytes(), now).unwrap();
        assert_eq!(evs.len(), 2);
        let f = &evs[0];
        assert_eq!(f.severity, Severity::Critical);
        assert_eq!(f.hostname, "web-1");
        assert_eq!(f.source, "alertmanager");
        assert_eq!(f.message, "[HighLatency] p99 latency over 1s");
        assert_eq!(f.tag.as_deref(), Some("AM_HighLatency"));
        assert_eq!(f.event_type.as_deref(), Some("alert"));
        assert_eq!(f.event_time.to_string(), "2026-02-24T14:30:00Z");
        assert_eq!(f.tags["label.job"], "node");
        assert_eq!(f.tags["alertmanager.fingerprint"], "a1b2c3d4e5f60718");
        assert_eq!(f.tags["weir.clear_key"], "am:a1b2c3d4e5f60718");
        assert_eq!(f.input, InputKind::Api);
        let r = &evs[1];
        assert_eq!(r.severity, Severity::Info);
        assert_eq!(r.hostname, "db-2");
        assert_eq!(r.tag.as_deref(), Some("AM_DiskFull_CLEAR"));
        assert_eq!(r.event_type.as_deref(), Some("resolution"));
        assert_eq!(r.event_time.to_string(), "2026-02-24T14:35:00Z");
        assert_eq!(r.message, "[DiskFull] DiskFull");
    }

    #[test]
    fn unknown_severity_is_warning_and_tagged() {
        let body = EXAMPLE.replace("\"crit\"", "\"page-someone\"");
        let evs = parse(body.as_bytes(), Timestamp::now()).unwrap();
        assert_eq!(evs[0].severity, Severity::Warning);
        assert_eq!(evs[0].tags["weir.severity_unmapped"], "page-someone");
        let body = EXAMPLE.replace(", \"severity\": \"crit\"", "");
        let evs = parse(body.as_bytes(), Timestamp::now()).unwrap();
        assert_eq!(evs[0].severity, Severity::Warning);
        assert_eq!(evs[0].tags["weir.severity_unmapped"], "");
    }

    #[test]
    fn hostnames_from_instance() {
        let l = |k: &str, v: &str| BTreeMap::from([(k.to_string(), v.to_string())]);
        assert_eq!(hostname(&l("instance", "a:9100")), "a");
        assert_eq!(hostname(&l("instance", "[::1]:9100")), "::1");
        assert_eq!(hostname(&l("instance", "fe80::1")), "fe80::1");
        assert_eq!(hostname(&l("instance", "plain")), "plain");
        assert_eq!(hostname(&l("hostname", "h")), "h");
        assert_eq!(hostname(&BTreeMap::new()), "unknown");
    }

    #[test]
    fn bad_payloads_name_the_field() {
        let e = parse(
            EXAMPLE.replace("\"4\"", "\"3\"").as_bytes(),
            Timestamp::now(),
        )
        .unwrap_err();
        assert_eq!(e[0].pointer, "/version");
        let e = parse(
            EXAMPLE.replace("\"resolved\"", "\"gone\"").as_bytes(),
            Timestamp::now(),
        )
        .unwrap_err();
        assert_eq!(e[0].pointer, "/alerts/1/status");
        let e = parse(
            EXAMPLE
                .replace("\"2026-02-24T14:30:00Z\"", "\"yesterday\"")
                .as_bytes(),
            Timestamp::now(),
        )
        .unwrap_err();
        assert_eq!(e[0].pointer, "/alerts/0/startsAt", "{e:?}");
        let e = parse(b"[1]", Timestamp::now()).unwrap_err();
        assert_eq!(e[0].pointer, "");
        assert!(
            parse(b"nope", Timestamp::now()).unwrap_err()[0]
                .pointer
                .is_empty()
        );
    }
}
