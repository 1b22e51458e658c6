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
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
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
}

/// Counts by severity.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
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

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Bucket {
    /// Start of the bucket (inclusive); it ends where the next one starts.
    pub start: Timestamp,
    /// Stored events by severity.
    pub events: SeverityCounts,
    /// Occurrences (sum of first-stage dedup counts) by severity.
    pub occurrences: SeverityCounts,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
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
    };
    let mut filter =
        EventFilter::parse(&params).map_err(|e| bad(format!("{}: {}", e.param, e.message)))?;
    let (from, to) = filter.time_range();
    let to = to.unwrap_or_else(Timestamp::now);
    let from = from.unwrap_or(to - DEFAULT_SPAN);
    if from >= to {
        return Err(bad("from: must be earlier than `to` (default: now)".into()));
    }
    filter.set_time_range(from, to);
    let bucket_us = i64::try_from(bucket_s)
        .ok()
        .and_then(|s| s.checked_mul(1_000_000))
        .ok_or_else(|| bad("bucket: too large".into()))?;
    let origin = from.as_microsecond().div_euclid(bucket_us) * bucket_us;
    let span = to.as_microsecond() - origin;
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
