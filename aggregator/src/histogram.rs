//! `GET /api/v1/events/histogram`: events per severity per time bucket (seed 002's history
//! histogram), with the same filters as `GET /api/v1/events`.
//!
//! Buckets are aligned to multiples of their size since the Unix epoch (UTC), so `1h` buckets
//! start on the hour and `1d` buckets at 00:00 UTC; the first bucket holds `from`, the last one
//! holds the instant before `to`. Every bucket is listed, empty ones too. Each bucket counts
//! `events` (stored events) and `occurrences` (the sum of their first-stage dedup counts: what
//! the devices actually sent).

use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};
use weir_common::config::HumanDuration;

use crate::api::{ApiError, ApiState};
use crate::query::{EventFilter, EventParams};

/// Most buckets one request may ask for.
pub const MAX_BUCKETS: i64 = 10_000;

/// The window when `from` is absent: a day before `to`.
const DEFAULT_SPAN: SignedDuration = SignedDuration::from_hours(24);

/// Query parameters: the event filters plus `bucket`.
#[derive(Debug, Default, Clone, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct HistogramParams {
    /// Bucket width: `1m`, `5m`, `1h`, `1d`, … (whole seconds, at least `1s`).
    pub bucket: Option<String>,
    /// Start (RFC 3339, inclusive); default: a day before `to`.
    pub from: Option<String>,
    /// End (RFC 3339, exclusive); default: now.
    pub to: Option<String>,
    pub severity: Option<String>,
    pub hostname: Option<String>,
    pub source: Option<String>,
    pub site: Option<String>,
    pub agent: Option<String>,
    pub tag: Option<String>,
    pub event_type: Option<String>,
    pub correlated_incident: Option<String>,
    pub q: Option<String>,
    /// Events hidden from default views: `exclude` (default), `include`, or `only`.
    pub hidden: Option<String>,
}

/// Counts by severity.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SeverityCounts {
    pub critical: u64,
    pub error: u64,
    pub warning: u64,
    pub info: u64,
    pub debug: u64,
}

impl SeverityCounts {
    fn from_ranks(r: [u64; 5]) -> SeverityCounts {
        SeverityCounts {
            debug: r[0],
            info: r[1],
            warning: r[2],
            error: r[3],
            critical: r[4],
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Bucket {
    /// Start of the bucket (inclusive); it ends where the next one starts.
    pub start: Timestamp,
    /// Stored events by severity.
    pub events: SeverityCounts,
    /// Occurrences (sum of first-stage dedup counts) by severity.
    pub occurrences: SeverityCounts,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HistogramResponse {
    pub from: Timestamp,
    pub to: Timestamp,
    pub bucket_seconds: u64,
    pub total_events: u64,
    pub total_occurrences: u64,
    pub buckets: Vec<Bucket>,
}

fn bad(detail: String) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, detail)
}

#[utoipa::path(
    get,
    path = "/api/v1/events/histogram",
    tag = "events",
    summary = "Events per severity per time bucket",
    params(HistogramParams),
    responses(
        (status = 200, description = "Every bucket, empty ones too", body = HistogramResponse),
        (status = 400, description = "A bad filter or bucket (named in `detail`)", body = crate::openapi::ProblemDocument, content_type = "application/problem+json")
    )
)]
pub async fn histogram(
    State(state): State<ApiState>,
    query: Result<Query<HistogramParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<HistogramResponse>, ApiError> {
    let Query(p) = query.map_err(|e| bad(e.body_text()))?;
    let bucket_s = match p.bucket.as_deref() {
        None => return Err(bad("bucket: required, e.g. bucket=1h (s, m, h, d)".into())),
        Some(b) => match b.parse::<HumanDuration>() {
            Ok(d) if d.0.as_secs() >= 1 && d.0.subsec_nanos() == 0 => d.0.as_secs(),
            _ => {
                return Err(bad(format!(
                    "bucket: {b:?} is not a whole number of seconds, minutes, hours or days (1m, 5m, 1h, 1d)"
                )));
            }
        },
    };
    let params = EventParams {
        limit: None,
        cursor: None,
        severity: p.severity,
        from: p.from,
        to: p.to,
        hostname: p.hostname,
        source: p.source,
        site: p.site,
        agent: p.agent,
        tag: p.tag,
        event_type: p.event_type,
        correlated_incident: p.correlated_incident,
        q: p.q,
        hidden: p.hidden,
    };
    let mut filter =
        EventFilter::parse(&params).map_err(|e| bad(format!("{}: {}", e.param, e.message)))?;
    let (from, to) = filter.time_range();
    let to = to.unwrap_or_else(Timestamp::now);
    let from = match from {
        Some(f) => f,
        // Near the earliest time jiff can hold there is no day before `to`.
        None => to
            .checked_sub(DEFAULT_SPAN)
            .map_err(|_| bad("to: too early for the default 24 h range; give `from`".into()))?,
    };
    if from >= to {
        return Err(bad("from: must be earlier than `to` (default: now)".into()));
    }
    filter.set_time_range(from, to);
    let bucket_us = i64::try_from(bucket_s)
        .ok()
        .and_then(|s| s.checked_mul(1_000_000))
        .ok_or_else(|| bad("bucket: too large".into()))?;
    // Both fit in i64 for any time jiff holds and bucket size above, but say so, not wrap.
    let origin = from.as_microsecond().div_euclid(bucket_us) * bucket_us;
    let span = to
        .as_microsecond()
        .checked_sub(origin)
        .ok_or_else(|| bad("bucket: too large for this range".into()))?;
    let n = span / bucket_us + i64::from(span % bucket_us != 0);
    if n > MAX_BUCKETS {
        return Err(bad(format!(
            "bucket: {n} buckets of {bucket_s}s between `from` and `to`; at most {MAX_BUCKETS}: use a wider bucket or a shorter range"
        )));
    }
    let store = state.store.clone();
    let counts = tokio::task::spawn_blocking(move || {
        store.histogram(&filter, origin, bucket_us, n as usize)
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(ApiError::internal)?;
    let (mut total_events, mut total_occurrences) = (0, 0);
    let buckets = counts
        .into_iter()
        .enumerate()
        .map(|(i, by_rank)| {
            let events = by_rank.map(|(e, _)| e);
            let occ = by_rank.map(|(_, o)| o);
            total_events += events.iter().sum::<u64>();
            total_occurrences += occ.iter().sum::<u64>();
            Bucket {
                start: Timestamp::from_microsecond(origin + i as i64 * bucket_us).unwrap_or(from),
                events: SeverityCounts::from_ranks(events),
                occurrences: SeverityCounts::from_ranks(occ),
            }
        })
        .collect();
    Ok(Json(HistogramResponse {
        from,
        to,
        bucket_seconds: bucket_s,
        total_events,
        total_occurrences,
        buckets,
    }))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;
    use weir_common::wire::{Batch, WireRecord};
    use weir_common::{Event, InputKind, Record, Severity};

    use crate::api::router;
    use crate::store::{AgentBatch, Store, prepare};

    const T0: i64 = 1_700_000_000; // 2023-11-14T22:13:20Z

    /// Events at T0 + i*10 min (i = 0..12): severities cycle warning, error, info; site paris
    /// for even i, lyon for odd; event 1 seen 4 times.
    fn app(dir: &tempfile::TempDir) -> axum::Router {
        let store = Arc::new(Store::open(&dir.path().join("e.redb")).unwrap());
        for (site, parity) in [("paris", 0), ("lyon", 1)] {
            let mut records: Vec<WireRecord> = (0..12u64)
                .filter(|i| i % 2 == parity)
                .map(|i| {
                    let t = jiff::Timestamp::from_second(T0 + i as i64 * 600).unwrap();
                    let sev = [Severity::Warning, Severity::Error, Severity::Info][i as usize % 3];
                    WireRecord {
                        seq: i + 1,
                        payload: Record::Event(Event::new(
                            InputKind::Syslog,
                            "syslog",
                            "core-1",
                            sev,
                            format!("m{i}"),
                            t,
                        ))
                        .to_bytes(),
                    }
                })
                .collect();
            if site == "paris" {
                records.push(WireRecord {
                    seq: 100,
                    payload: Record::Count {
                        target_seq: 1,
                        count: 4,
                        last_seen: jiff::Timestamp::from_second(T0 + 60).unwrap(),
                    }
                    .to_bytes(),
                });
            }
            let batch = Batch {
                first_seq: records[0].seq,
                last_seq: records.last().unwrap().seq,
                records,
            };
            let now = jiff::Timestamp::from_second(T0 + 9000).unwrap();
            let prepared = prepare(site, "gw-1", &batch, now);
            store
                .commit(
                    &[AgentBatch {
                        site,
                        name: "gw-1",
                        records: &prepared,
                    }],
                    now,
                )
                .unwrap();
        }
        router(crate::api::tests::test_state(store, "k", None, 0, false))
    }

    async fn get(app: axum::Router, uri: &str) -> (u16, serde_json::Value) {
        let req = Request::get(uri)
            .header("x-api-key", "k")
            .body(Body::empty())
            .unwrap();
        let resp = app.oneshot(req).await.unwrap();
        let status = resp.status().as_u16();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 22)
            .await
            .unwrap();
        (status, serde_json::from_slice(&bytes).unwrap_or_default())
    }

    const RANGE: &str = "from=2023-11-14T22:00:00Z&to=2023-11-15T00:00:00Z";

    #[tokio::test]
    async fn counts_per_severity_per_bucket() {
        let dir = tempfile::tempdir().unwrap();
        let (s, body) = get(
            app(&dir),
            &format!("/api/v1/events/histogram?{RANGE}&bucket=1h"),
        )
        .await;
        assert_eq!(s, 200, "{body}");
        let buckets = body["buckets"].as_array().unwrap();
        assert_eq!(buckets.len(), 2);
        assert_eq!(buckets[0]["start"], "2023-11-14T22:00:00Z");
        assert_eq!(buckets[1]["start"], "2023-11-14T23:00:00Z");
        // 22:13:20 + i*10min: i = 0..=4 in the 22h bucket, 5..=10 in the 23h one, 11 after `to`.
        assert_eq!(
            buckets[0]["events"],
            serde_json::json!({"critical": 0, "error": 2, "warning": 2, "info": 1, "debug": 0})
        );
        assert_eq!(buckets[0]["occurrences"]["warning"], 5, "m0 seen 4 times");
        assert_eq!(
            buckets[1]["events"],
            serde_json::json!({"critical": 0, "error": 2, "warning": 2, "info": 2, "debug": 0})
        );
        assert_eq!(body["total_events"], 11);
        assert_eq!(body["total_occurrences"], 14);
        assert_eq!(body["bucket_seconds"], 3600);
    }

    #[tokio::test]
    async fn filters_apply_and_buckets_align() {
        let dir = tempfile::tempdir().unwrap();
        let (_, body) = get(
            app(&dir),
            &format!("/api/v1/events/histogram?{RANGE}&bucket=1h&site=lyon&severity=%3E%3Derror"),
        )
        .await;
        assert_eq!(body["total_events"], 2, "{body}");
        let (_, body) = get(
            app(&dir),
            &format!("/api/v1/events/histogram?{RANGE}&bucket=1h&q=M1"),
        )
        .await;
        assert_eq!(
            body["total_events"], 2,
            "m1, m10 (m11 is after `to`): {body}"
        );
        let (s, body) = get(
            app(&dir),
            "/api/v1/events/histogram?from=2023-11-14T22:13:20Z&to=2023-11-14T22:33:21Z&bucket=10m",
        )
        .await;
        assert_eq!(s, 200);
        let b = body["buckets"].as_array().unwrap();
        assert_eq!(b.len(), 3, "22:10, 22:20, 22:30: {body}");
        assert_eq!(b[0]["start"], "2023-11-14T22:10:00Z");
        assert_eq!(body["total_events"], 3);
        let (s, body) = get(
            app(&dir),
            "/api/v1/events/histogram?to=2023-11-15T00:00:00Z&bucket=1d",
        )
        .await;
        assert_eq!(s, 200);
        assert_eq!(body["from"], "2023-11-14T00:00:00Z", "default: a day");
        assert_eq!(body["total_events"], 11);
    }

    #[tokio::test]
    async fn bad_requests_name_the_parameter() {
        let dir = tempfile::tempdir().unwrap();
        for (uri, needle) in [
            (format!("/api/v1/events/histogram?{RANGE}"), "bucket: required"),
            (format!("/api/v1/events/histogram?{RANGE}&bucket=1x"), "bucket"),
            (format!("/api/v1/events/histogram?{RANGE}&bucket=0s"), "bucket"),
            (
                "/api/v1/events/histogram?from=2020-01-01T00:00:00Z&to=2023-01-01T00:00:00Z&bucket=1m"
                    .to_string(),
                "at most 10000",
            ),
            (format!("/api/v1/events/histogram?{RANGE}&bucket=1h&limit=5"), "limit"),
            (format!("/api/v1/events/histogram?{RANGE}&bucket=1h&severity=loud"), "severity"),
            ("/api/v1/events/histogram?from=soon&bucket=1h".to_string(), "from"),
            // No 24 h before the earliest time jiff holds: a 400, not a panic.
            (
                "/api/v1/events/histogram?to=-009999-01-02T01:59:59Z&bucket=1h".to_string(),
                "give `from`",
            ),
        ] {
            let (s, body) = get(app(&dir), &uri).await;
            assert_eq!(s, 400, "{uri}: {body}");
            assert!(
                body["detail"].as_str().unwrap().contains(needle),
                "{uri}: {body}"
            );
        }
    }
}
