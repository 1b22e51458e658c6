//! Events posted to the aggregator's API (`POST /api/v1/events`, the Alertmanager webhook):
//! they are stored through the same single store writer as agent batches, as the events of a
//! local pseudo-agent (`<api.site>/api`, input kind `api`).
//!
//! # Sequence numbers
//! Exactly-once in the store rests on each agent's increasing sequence. API requests run
//! concurrently, so their sequences are assigned **inside the writer** ([`Sequencer`]), in
//! commit order: the next sequence is the pseudo-agent's committed sequence + 1 (read from the
//! store at start and after any failed commit), so ids (`central:api:17`) are unique and
//! survive restarts. Handlers encode each [`StoredEvent`] with sequence 0 and the writer only
//! splices the real sequence's varint in (see [`Pending`]).
//!
//! # First-stage dedup
//! The agent's rules (`weir_agent::dedup::DedupRules`, configured by `[api.dedup]`) compute each
//! event's key. The writer remembers, per key, the first occurrence's sequence until its window
//! ends: a repeat within the window is not stored again; the first occurrence's `count` and
//! `last_seen` are raised by a count update committed in the same transaction (one per key and
//! request). At most [`MAX_DEDUP_KEYS`] keys are remembered; when full, expired keys go first,
//! then the half whose windows end soonest (a later repeat of those starts a new event).
//! Counted in `weir_aggregator_api_dedup_evictions_total`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use jiff::Timestamp;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use weir_agent::dedup::{DedupConfig, DedupRules, DedupTag, RuleConfig};
use weir_common::ingest::{FieldError, parse_events, problem_body};
use weir_common::{Event, InputKind};

use crate::api::ApiState;
use crate::auth::count_refusal;
use crate::ingest::IngestItem;
use crate::store::{Prepared, Store, StoreError, StoredEvent};

/// The pseudo-agent name API events are stored under (with the site from `api.site`).
pub const API_AGENT: &str = "api";
/// Most dedup keys the writer remembers.
pub const MAX_DEDUP_KEYS: usize = 65_536;

/// API-posted events on their way to the writer.
#[derive(Debug)]
pub struct Pending {
    /// Each event encoded as [`StoredEvent`] with `seq = 0`, and its dedup tag.
    pub events: Vec<(Vec<u8>, Option<DedupTag>)>,
    /// Where the sequence varint starts in each encoding (the same for all: site and agent
    /// come first and are the same).
    pub seq_offset: usize,
    /// When the events were received (dedup windows run on it).
    pub received_at: Timestamp,
    /// Receives what each event became, once sequences are assigned (before the commit).
    pub assigned: Option<oneshot::Sender<Vec<Assigned>>>,
    /// What transformation rules and event definitions decided for each event, in the same
    /// order (`None`: nothing for the writer; empty when processing is off).
    pub outcomes: Vec<Option<crate::alarm::Outcome>>,
}

/// What one posted event became.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Assigned {
    /// Stored as a new event with this sequence.
    Stored(u64),
    /// A repeat merged into the event with this sequence.
    Merged(u64),
}

#[derive(Debug, Clone, Copy)]
struct DedupEntry {
    seq: u64,
    count: u64,
    window_end_us: i64,
}

/// The writer's state for API events: next sequence and the dedup memory. Owned by the single
/// store writer thread.
#[derive(Debug, Default)]
pub struct Sequencer {
    /// The next sequence to assign; `None` = read it from the store first.
    next: Option<u64>,
    dedup: HashMap<u64, DedupEntry>,
}

impl Sequencer {
    /// Forgets everything that may describe an uncommitted transaction (after a failed commit).
    pub fn reset(&mut self) {
        self.next = None;
        self.dedup.clear();
    }

    /// Turns the item's pending events into records with sequences (and count updates), and
    /// tells the handler what each event became.
    pub fn assign(&mut self, store: &Store, item: &mut IngestItem) -> Result<(), StoreError> {
        let Some(mut pending) = item.api.take() else {
            return Ok(());
        };
        let mut next = match self.next {
            Some(n) => n,
            None => store.committed_seq(&item.site, &item.name)? + 1,
        };
        let now_us = pending.received_at.as_microsecond();
        let mut out = Vec::with_capacity(pending.events.len());
        let mut assigned = Vec::with_capacity(pending.events.len());
        let mut repeated: Vec<u64> = Vec::new();
        let mut outcomes = std::mem::take(&mut pending.outcomes);
        for (i, (bytes, tag)) in pending.events.drain(..).enumerate() {
            let outcome = outcomes.get_mut(i).and_then(Option::take);
            if let Some(o) = outcome.as_ref().filter(|o| !o.stored()) {
                // Suppressed or not persisted: it takes a sequence (its alarm effects refer
                // to the id) but nothing is stored under it.
                let id = weir_common::event_id(&item.site, &item.name, next);
                let mut o = o.clone().with_id(next, &id);
                if o.not_stored == Some(crate::alarm::NotStored::DoNotPersist) {
                    // Not stored, but correlated: the writer hands it on after the commit.
                    o.unstored = Some(splice_seq(&bytes, pending.seq_offset, next));
                }
                item.outcomes.push(o);
                out.push(Prepared::Skip { seq: next });
                assigned.push(Assigned::Stored(next));
                next += 1;
                continue;
            }
            if let Some(tag) = tag {
                if let Some(e) = self.dedup.get_mut(&tag.key)
                    && e.window_end_us > now_us
                {
                    e.count += 1;
                    if !repeated.contains(&tag.key) {
                        repeated.push(tag.key);
                    }
                    assigned.push(Assigned::Merged(e.seq));
                    continue;
                }
                self.make_room(now_us);
                self.dedup.insert(
                    tag.key,
                    DedupEntry {
                        seq: next,
                        count: 1,
                        window_end_us: now_us.saturating_add(tag.window_us),
                    },
                );
            }
            if let Some(o) = outcome {
                let id = weir_common::event_id(&item.site, &item.name, next);
                item.outcomes.push(o.with_id(next, &id));
            }
            out.push(Prepared::Event {
                seq: next,
                bytes: splice_seq(&bytes, pending.seq_offset, next).into(),
            });
            assigned.push(Assigned::Stored(next));
            next += 1;
        }
        for key in repeated {
            let e = self.dedup[&key];
            out.push(Prepared::Count {
                seq: next,
                target_seq: e.seq,
                count: e.count,
                last_seen: pending.received_at,
            });
            next += 1;
        }
        self.next = Some(next);
        item.records = out;
        if let Some(tx) = pending.assigned.take() {
            let _ = tx.send(assigned);
        }
        Ok(())
    }

    fn make_room(&mut self, now_us: i64) {
        if self.dedup.len() < MAX_DEDUP_KEYS {
            return;
        }
        let before = self.dedup.len();
        self.dedup.retain(|_, e| e.window_end_us > now_us);
        if self.dedup.len() >= MAX_DEDUP_KEYS {
            // Drop the half whose windows end soonest: amortized O(1) per insert.
            let mut ends: Vec<i64> = self.dedup.values().map(|e| e.window_end_us).collect();
            let mid = ends.len() / 2;
            let (_, cut, _) = ends.select_nth_unstable(mid);
            let cut = *cut;
            self.dedup.retain(|_, e| e.window_end_us > cut);
            let evicted = (before - self.dedup.len()) as u64;
            metrics::counter!("weir_aggregator_api_dedup_evictions_total").increment(evicted);
        }
    }
}

/// Replaces the one-byte varint of sequence 0 at `offset` with `seq`'s varint.
fn splice_seq(bytes: &[u8], offset: usize, seq: u64) -> Vec<u8> {
    debug_assert_eq!(bytes.get(offset), Some(&0));
    let mut out = Vec::with_capacity(bytes.len() + 9);
    out.extend_from_slice(&bytes[..offset]);
    out = postcard::to_extend(&seq, out).expect("encode u64");
    out.extend_from_slice(&bytes[offset + 1..]);
    out
}

/// The API ingest path's settings and its handle on the store writer.
#[derive(Debug)]
pub struct ApiIngest {
    writer: mpsc::Sender<IngestItem>,
    site: Arc<str>,
    name: Arc<str>,
    rules: DedupRules,
    seq_offset: usize,
    max_body_bytes: usize,
    /// Transformation rules and event definitions, as for agents' events (None in tests that
    /// exercise ingest alone).
    alarms: Option<Arc<crate::alarm::persist::Engine>>,
}

impl ApiIngest {
    /// `dedup` is the `[api.dedup]` rule (None: the agent's default rule for API events);
    /// `max_body_bytes` the largest request body the ingest routes read.
    pub fn new(
        writer: mpsc::Sender<IngestItem>,
        site: &str,
        dedup: Option<RuleConfig>,
        max_body_bytes: usize,
    ) -> Self {
        let mut cfg = DedupConfig::default();
        if let Some(rule) = dedup {
            cfg.api = rule;
        }
        let seq_offset = postcard::to_allocvec(&(site, API_AGENT))
            .expect("encode site")
            .len();
        ApiIngest {
            writer,
            site: site.into(),
            name: API_AGENT.into(),
            rules: DedupRules::new(&cfg),
            seq_offset,
            max_body_bytes,
            alarms: None,
        }
    }

    /// Runs posted events through the same transformation rules and event definitions as
    /// agents' events.
    pub fn with_processing(mut self, alarms: Arc<crate::alarm::persist::Engine>) -> Self {
        self.alarms = Some(alarms);
        self
    }

    pub fn max_body_bytes(&self) -> usize {
        self.max_body_bytes
    }

    /// Stores events durably (dedup applied); returns what each became.
    pub async fn submit(&self, events: Vec<Event>, now: Timestamp) -> Result<Vec<String>, String> {
        let processor = self.alarms.as_ref().map(|a| a.processor());
        let mut outcomes = Vec::new();
        let encoded = events
            .into_iter()
            .map(|mut event| {
                if let Some(p) = &processor {
                    // The id is filled in when the writer numbers the event.
                    let o = p.process(&self.site, "", &mut event);
                    outcomes.push((!o.is_noop()).then_some(o));
                }
                let tag = self.rules.tag(&event);
                let stored = StoredEvent {
                    site: self.site.to_string(),
                    agent: self.name.to_string(),
                    seq: 0,
                    stored_at: now,
                    correlated_incident: None,
                    event,
                };
                (
                    postcard::to_allocvec(&stored).expect("encode StoredEvent"),
                    tag,
                )
            })
            .collect();
        let (assigned_tx, assigned_rx) = oneshot::channel();
        let (reply_tx, mut reply_rx) = mpsc::unbounded_channel();
        let item = IngestItem {
            site: self.site.clone(),
            name: self.name.clone(),
            records: Vec::new(),
            reply: reply_tx,
            poisoned: Arc::new(AtomicBool::new(false)),
            outcomes: Vec::new(),
            api: Some(Box::new(Pending {
                events: encoded,
                seq_offset: self.seq_offset,
                received_at: now,
                assigned: Some(assigned_tx),
                outcomes,
            })),
        };
        const GONE: &str = "the store writer is shutting down";
        self.writer.send(item).await.map_err(|_| GONE.to_string())?;
        let committed = reply_rx.recv().await.ok_or(GONE)?;
        committed.map_err(|()| "the event store could not commit them".to_string())?;
        let assigned = assigned_rx.await.map_err(|_| GONE.to_string())?;
        Ok(assigned
            .into_iter()
            .map(|a| {
                let (Assigned::Stored(seq) | Assigned::Merged(seq)) = a;
                weir_common::event_id(&self.site, &self.name, seq)
            })
            .collect())
    }
}

/// The answer to an accepted ingest request.
#[derive(Debug, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Accepted {
    /// Events in the request.
    pub accepted: usize,
    /// The stored id of each, in request order (a repeat merged by dedup gets its first
    /// occurrence's id).
    pub ids: Vec<String>,
}

pub(crate) fn problem(status: StatusCode, detail: &str, errors: &[FieldError]) -> Response {
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

/// A body the extractor refused (too large, or unreadable) as a problem document.
pub(crate) fn body_problem(e: BytesRejection) -> Response {
    let status = e.status();
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        count_refusal("body_too_large");
        return problem(
            status,
            "request body over api.max_body_bytes; send fewer events per request",
            &[],
        );
    }
    count_refusal("bad_body");
    problem(status, &e.body_text(), &[])
}

/// Answers a list of field errors: 400 when the body as a whole is unusable, 422 otherwise.
pub(crate) fn invalid(errors: &[FieldError]) -> Response {
    count_refusal("invalid_event");
    let whole = errors.iter().all(|e| e.pointer.is_empty());
    if whole {
        let detail = errors.first().map_or("bad request body", |e| &e.message);
        return problem(StatusCode::BAD_REQUEST, detail, &[]);
    }
    problem(
        StatusCode::UNPROCESSABLE_ENTITY,
        "the request holds invalid events; nothing was accepted",
        errors,
    )
}

pub(crate) async fn store_events(state: &ApiState, events: Vec<Event>, now: Timestamp) -> Response {
    let n = events.len();
    match state.ingest.submit(events, now).await {
        Ok(ids) => {
            metrics::counter!("weir_aggregator_api_events_total").increment(n as u64);
            (StatusCode::ACCEPTED, Json(Accepted { accepted: n, ids })).into_response()
        }
        Err(e) => {
            count_refusal("store_unavailable");
            problem(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("events not stored: {e}; send them again"),
                &[],
            )
        }
    }
}

/// `POST /api/v1/events`: one event object or an array (seed 000's schema).
#[utoipa::path(
    post,
    path = "/api/v1/events",
    tag = "ingest",
    summary = "Post one event or an array of events (seed 000)",
    request_body(content = crate::openapi::IngestBody, description = "One event, or an array of up to 10000"),
    responses(
        (status = 202, description = "Stored (ids in request order)", body = Accepted),
        (status = 400, description = "The body is not JSON, or not an event or array of events", body = crate::openapi::ProblemDocument, content_type = "application/problem+json"),
        (status = 413, description = "The body is over `api.max_body_bytes`", body = crate::openapi::ProblemDocument, content_type = "application/problem+json"),
        (status = 422, description = "Invalid events: `errors` names each bad field (JSON pointer); nothing was stored", body = crate::openapi::ProblemDocument, content_type = "application/problem+json"),
        (status = 503, description = "The store did not take the events; send them again", body = crate::openapi::ProblemDocument, content_type = "application/problem+json")
    )
)]
pub async fn post_events(
    State(state): State<ApiState>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(b) => b,
        Err(e) => return body_problem(e),
    };
    let events = match parse_events(&body) {
        Ok(evs) => evs,
        Err(errors) => return invalid(&errors),
    };
    let now = Timestamp::now();
    let events = events
        .into_iter()
        .map(|e| e.into_event(InputKind::Api, now))
        .collect();
    store_events(&state, events, now).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spliced_sequences_decode() {
        let ev = Event::new(
            InputKind::Api,
            "app",
            "h1",
            weir_common::Severity::Info,
            "m",
            Timestamp::from_second(1).unwrap(),
        );
        let site = "central";
        let stored = StoredEvent {
            site: site.into(),
            agent: API_AGENT.into(),
            seq: 0,
            stored_at: Timestamp::from_second(2).unwrap(),
            correlated_incident: None,
            event: ev,
        };
        let bytes = postcard::to_allocvec(&stored).unwrap();
        let off = postcard::to_allocvec(&(site, API_AGENT)).unwrap().len();
        for seq in [1, 127, 128, 300, u32::MAX as u64 + 7, u64::MAX] {
            let got: StoredEvent = postcard::from_bytes(&splice_seq(&bytes, off, seq)).unwrap();
            assert_eq!(got.seq, seq);
            assert_eq!(got.event, stored.event);
            assert_eq!(got.stored_at, stored.stored_at);
        }
    }

    #[test]
    fn eviction_keeps_memory_bounded() {
        let mut s = Sequencer::default();
        for k in 0..MAX_DEDUP_KEYS as u64 {
            s.dedup.insert(
                k,
                DedupEntry {
                    seq: k,
                    count: 1,
                    window_end_us: 1_000 + k as i64,
                },
            );
        }
        s.make_room(0);
        assert!(s.dedup.len() <= MAX_DEDUP_KEYS / 2 + 1, "{}", s.dedup.len());
        assert!(
            s.dedup.contains_key(&(MAX_DEDUP_KEYS as u64 - 1)),
            "latest kept"
        );
        assert!(!s.dedup.contains_key(&0), "soonest-ending evicted");
    }
}

/// Router tests for auth, scopes, rate limits and every ingest status code (no sockets).
#[cfg(test)]
mod router_tests {
    use std::sync::Arc;

    use axum::Router;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use serde_json::{Value, json};
    use tower::ServiceExt;

    use crate::api::router;
    use crate::api::tests::test_state;
    use crate::keys::{create_key, keys_path, parse_scopes, revoke_key};
    use crate::store::Store;

    const BOOT: &str = "boot-key";

    struct Fixture {
        _dir: tempfile::TempDir,
        app: Router,
        read: String,
        ingest: String,
        revoked: String,
    }

    fn fixture(rate: u32) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let kp = keys_path(dir.path());
        let now = jiff::Timestamp::now();
        let (_, read) = create_key(&kp, "reader", parse_scopes("read").unwrap(), now).unwrap();
        let (_, ingest) = create_key(&kp, "poster", parse_scopes("ingest").unwrap(), now).unwrap();
        let (_, revoked) = create_key(&kp, "old", parse_scopes("read").unwrap(), now).unwrap();
        revoke_key(&kp, "old", now).unwrap();
        let store = Arc::new(Store::open(&dir.path().join("e.redb")).unwrap());
        let app = router(test_state(store, BOOT, Some(kp), rate, true));
        Fixture {
            _dir: dir,
            app,
            read,
            ingest,
            revoked,
        }
    }

    async fn call(
        app: &Router,
        method: &str,
        uri: &str,
        key: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> (StatusCode, axum::http::HeaderMap, Value) {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(k) = key {
            req = req.header("x-api-key", k);
        }
        let req = match body {
            Some(b) => req
                .header("content-type", "application/json")
                .body(Body::from(b)),
            None => req.body(Body::empty()),
        }
        .unwrap();
        let resp = app.clone().oneshot(req).await.unwrap();
        let (status, headers) = (resp.status(), resp.headers().clone());
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 22)
            .await
            .unwrap();
        let v = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (status, headers, v)
    }

    fn ev(msg: &str) -> Value {
        json!({"source": "app", "hostname": "h1", "severity": "error", "message": msg})
    }

    #[tokio::test]
    async fn keys_are_checked_and_scopes_enforced() {
        let f = fixture(0);
        let post = Some(serde_json::to_vec(&ev("x")).unwrap());
        let (s, h, b) = call(&f.app, "GET", "/api/v1/events", None, None).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        assert_eq!(h["content-type"], "application/problem+json");
        assert_eq!(h["www-authenticate"], "Bearer");
        assert!(b["detail"].as_str().unwrap().contains("missing"), "{b}");
        let (s, _, b) = call(&f.app, "GET", "/api/v1/events", Some("weir_nope"), None).await;
        assert_eq!(
            (s, b["detail"].as_str()),
            (StatusCode::UNAUTHORIZED, Some("unknown API key"))
        );
        let (s, _, b) = call(&f.app, "GET", "/api/v1/events", Some(&f.revoked), None).await;
        assert_eq!(
            (s, b["detail"].as_str()),
            (StatusCode::UNAUTHORIZED, Some("API key revoked"))
        );
        // Wrong scope: 403 naming the scope needed.
        for (method, uri, key, body, scope) in [
            ("GET", "/api/v1/events", &f.ingest, None, "read"),
            ("GET", "/api/v1/sites", &f.ingest, None, "read"),
            ("POST", "/api/v1/events", &f.read, post.clone(), "ingest"),
            (
                "POST",
                "/api/v1/ingest/alertmanager",
                &f.read,
                post.clone(),
                "ingest",
            ),
            ("GET", "/api/v1/keys", &f.read, None, "admin"),
            ("DELETE", "/api/v1/keys/k_1", &f.ingest, None, "admin"),
        ] {
            let (s, _, b) = call(&f.app, method, uri, Some(key), body).await;
            assert_eq!(s, StatusCode::FORBIDDEN, "{method} {uri}");
            let detail = b["detail"].as_str().unwrap();
            assert!(detail.contains(&format!("`{scope}` scope")), "{detail}");
            assert!(!detail.contains(key.as_str()), "keys never echoed");
        }
        // The right scopes pass; bootstrap keys hold every scope.
        let (s, _, _) = call(&f.app, "GET", "/api/v1/events", Some(&f.read), None).await;
        assert_eq!(s, StatusCode::OK);
        let (s, _, _) = call(
            &f.app,
            "POST",
            "/api/v1/events",
            Some(&f.ingest),
            post.clone(),
        )
        .await;
        assert_eq!(s, StatusCode::ACCEPTED);
        for uri in [
            "/api/v1/events",
            "/api/v1/sites",
            "/api/v1/agents",
            "/api/v1/keys",
        ] {
            let (s, _, _) = call(&f.app, "GET", uri, Some(BOOT), None).await;
            assert_eq!(s, StatusCode::OK, "{uri}");
        }
    }

    #[tokio::test]
    async fn over_the_rate_is_429_with_retry_after() {
        let f = fixture(1);
        let (s, _, _) = call(&f.app, "GET", "/api/v1/events", Some(&f.read), None).await;
        assert_eq!(s, StatusCode::OK);
        let (s, h, b) = call(&f.app, "GET", "/api/v1/events", Some(&f.read), None).await;
        assert_eq!(s, StatusCode::TOO_MANY_REQUESTS);
        let wait: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((1..=2).contains(&wait), "{wait}");
        assert_eq!(b["status"], 429);
        assert!(b["detail"].as_str().unwrap().contains("reader"), "{b}");
        // Another key has its own budget.
        let (s, _, _) = call(&f.app, "GET", "/api/v1/events", Some(BOOT), None).await;
        assert_eq!(s, StatusCode::OK);
    }

    #[tokio::test]
    async fn posted_events_are_stored_deduplicated_and_read_back() {
        let f = fixture(0);
        let k = Some(f.ingest.as_str());
        let one = serde_json::to_vec(&json!({
            "source": "my-application", "hostname": "app-prod-01", "severity": "critical",
            "event_type": "application_error", "message": "Database connection pool exhausted",
            "tags": { "environment": "production", "team": "backend" },
            "timestamp": "2026-02-24T14:37:00Z"
        }))
        .unwrap();
        let (s, _, b) = call(&f.app, "POST", "/api/v1/events", k, Some(one.clone())).await;
        assert_eq!(s, StatusCode::ACCEPTED, "{b}");
        assert_eq!(b["accepted"], 1);
        assert_eq!(b["ids"], json!(["central:api:1"]));
        let bulk = serde_json::to_vec(&json!([ev("a"), ev("b"), ev("c")])).unwrap();
        let (s, _, b) = call(&f.app, "POST", "/api/v1/events", k, Some(bulk)).await;
        assert_eq!(s, StatusCode::ACCEPTED);
        assert_eq!(
            b["ids"],
            json!(["central:api:2", "central:api:3", "central:api:4"])
        );
        // The same event again within the window: merged into the first, its count raised.
        let (s, _, b) = call(&f.app, "POST", "/api/v1/events", k, Some(one.clone())).await;
        assert_eq!(s, StatusCode::ACCEPTED);
        assert_eq!(b["ids"], json!(["central:api:1"]));
        let twice = serde_json::to_vec(&json!([ev("d"), ev("d")])).unwrap();
        let (_, _, b) = call(&f.app, "POST", "/api/v1/events", k, Some(twice)).await;
        assert_eq!(b["ids"][0], b["ids"][1], "repeats in one request merge too");
        let r = Some(f.read.as_str());
        let (s, _, e) = call(&f.app, "GET", "/api/v1/events/central:api:1", r, None).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(e["count"], 2);
        assert_eq!(e["input"], "api");
        assert_eq!(e["site"], "central");
        assert_eq!(e["agent"], "api");
        assert_eq!(e["event_time"], "2026-02-24T14:37:00Z");
        assert_eq!(e["tags"]["team"], "backend");
        let (_, _, page) = call(&f.app, "GET", "/api/v1/events?source=app", r, None).await;
        assert_eq!(page["total"], 4, "a, b, c, d once: {page}");
        let (_, _, sites) = call(&f.app, "GET", "/api/v1/sites", r, None).await;
        assert_eq!(sites[0]["site"], "central");
        assert_eq!(sites[0]["agents"], 1);
    }

    #[tokio::test]
    async fn posted_events_raise_and_clear_alarms_and_alarm_actions_need_operate() {
        let f = fixture(0);
        let k = Some(f.ingest.as_str());
        let down = |t: &str| {
            json!({"source": "pinger", "hostname": "core-1", "severity": "critical",
                   "tag": "PING_DOWN", "message": "no reply", "timestamp": t})
        };
        let body = serde_json::to_vec(&down("2026-02-24T14:00:00Z")).unwrap();
        let (s, _, b) = call(&f.app, "POST", "/api/v1/events", k, Some(body)).await;
        assert_eq!(s, StatusCode::ACCEPTED, "{b}");
        let r = Some(f.read.as_str());
        let (s, _, page) = call(&f.app, "GET", "/api/v1/alarms", r, None).await;
        assert_eq!(s, StatusCode::OK, "{page}");
        let alarms = page["alarms"].as_array().expect("alarms list");
        assert_eq!(alarms.len(), 1, "{page}");
        assert_eq!(alarms[0]["status"], "open");
        assert_eq!(alarms[0]["last_event_id"], "central:api:1", "{page}");
        let id = alarms[0]["id"].to_string();
        // Acting on alarms needs `operate`: a read key gets 403, the bootstrap key may.
        let ack = format!("/api/v1/alarms/{id}/ack");
        let (s, _, _) = call(&f.app, "POST", &ack, r, None).await;
        assert_eq!(s, StatusCode::FORBIDDEN);
        let (s, _, b) = call(&f.app, "POST", &ack, Some(BOOT), None).await;
        assert_eq!(s, StatusCode::OK, "{b}");
        // The matching PING_UP (seed 002's *_UP clears *_DOWN) clears it.
        let mut up = down("2026-02-24T14:05:00Z");
        up["tag"] = json!("PING_UP");
        up["severity"] = json!("info");
        let body = serde_json::to_vec(&up).unwrap();
        let (s, _, _) = call(&f.app, "POST", "/api/v1/events", k, Some(body)).await;
        assert_eq!(s, StatusCode::ACCEPTED);
        let (_, _, page) = call(&f.app, "GET", "/api/v1/alarms?status=cleared", r, None).await;
        assert_eq!(page["alarms"].as_array().map(Vec::len), Some(1), "{page}");
        // A bad tag is a 422 naming the field.
        let mut bad = down("2026-02-24T14:00:00Z");
        bad["tag"] = json!("has space");
        let body = serde_json::to_vec(&bad).unwrap();
        let (s, _, b) = call(&f.app, "POST", "/api/v1/events", k, Some(body)).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(b["errors"][0]["pointer"], "/tag", "{b}");
    }

    #[tokio::test]
    async fn bad_bodies_get_problem_documents_naming_fields() {
        let f = fixture(0);
        let k = Some(f.ingest.as_str());
        for (body, status, pointer) in [
            ("not json".to_string(), 400, None),
            ("42".into(), 400, None),
            ("[]".into(), 400, None),
            (r#"{"source":"a","severity":"info","message":"m"}"#.into(), 422, Some("/hostname")),
            (r#"{"source":"a","hostname":"h","severity":5,"message":"m"}"#.into(), 422, Some("/severity")),
            (r#"{"source":"a","hostname":"h","severity":"loud","message":"m"}"#.into(), 422, Some("/severity")),
            (r#"{"source":"a","hostname":"h","severity":"info","message":"m","timestamp":"2026-13-45"}"#.into(), 422, Some("/timestamp")),
            (r#"{"source":"a","hostname":"h","severity":"info","message":"m","tags":{"a":1}}"#.into(), 422, Some("/tags/a")),
            (r#"[{"source":"a","hostname":"h","severity":"info","message":"m","colour":"red"}]"#.into(), 422, Some("/0")),
        ] {
            let (s, h, b) = call(&f.app, "POST", "/api/v1/events", k, Some(body.clone().into_bytes())).await;
            assert_eq!(s.as_u16(), status, "{body}: {b}");
            assert_eq!(h["content-type"], "application/problem+json", "{body}");
            if let Some(p) = pointer {
                let errs = b["errors"].as_array().unwrap();
                assert!(errs.iter().any(|e| e["pointer"].as_str().unwrap().starts_with(p)), "{body}: {b}");
            } else {
                assert!(!b["detail"].as_str().unwrap().is_empty());
            }
        }
        let (_, _, b) = call(
            &f.app,
            "POST",
            "/api/v1/events",
            k,
            Some(
                br#"{"source":"a","hostname":"h","severity":"info","message":"m","colour":"red"}"#
                    .to_vec(),
            ),
        )
        .await;
        assert!(
            b["errors"][0]["message"]
                .as_str()
                .unwrap()
                .contains("colour"),
            "{b}"
        );
        // Over the body limit (64 KiB in these tests).
        let big = serde_json::to_vec(&vec![ev(&"x".repeat(1000)); 100]).unwrap();
        let (s, h, b) = call(&f.app, "POST", "/api/v1/events", k, Some(big)).await;
        assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(h["content-type"], "application/problem+json");
        assert!(
            b["detail"].as_str().unwrap().contains("max_body_bytes"),
            "{b}"
        );
        // Nothing of the refused requests was stored.
        let (_, _, page) = call(&f.app, "GET", "/api/v1/events", Some(BOOT), None).await;
        assert_eq!(page["total"], 0);
    }

    #[tokio::test]
    async fn alertmanager_webhook_stores_alerts_and_clears() {
        let f = fixture(0);
        let k = Some(f.ingest.as_str());
        let body = crate::alertmanager::tests::EXAMPLE.as_bytes().to_vec();
        let (s, _, b) = call(&f.app, "POST", "/api/v1/ingest/alertmanager", k, Some(body)).await;
        assert_eq!(s, StatusCode::ACCEPTED, "{b}");
        assert_eq!(b["accepted"], 2);
        let (_, _, page) = call(
            &f.app,
            "GET",
            "/api/v1/events?source=alertmanager",
            Some(BOOT),
            None,
        )
        .await;
        let tags: Vec<&str> = page["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["tag"].as_str().unwrap())
            .collect();
        assert_eq!(tags, ["AM_DiskFull_CLEAR", "AM_HighLatency"]);
        let bad = crate::alertmanager::tests::EXAMPLE.replace("\"4\"", "\"3\"");
        let (s, _, b) = call(
            &f.app,
            "POST",
            "/api/v1/ingest/alertmanager",
            k,
            Some(bad.into_bytes()),
        )
        .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(b["errors"][0]["pointer"], "/version");
        let (s, _, _) = call(
            &f.app,
            "POST",
            "/api/v1/ingest/alertmanager",
            k,
            Some(b"[1]".to_vec()),
        )
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
    }

    #[tokio::test]
    async fn admin_api_creates_lists_and_revokes_keys() {
        let f = fixture(0);
        let new = serde_json::to_vec(&json!({"name": "grafana", "scopes": ["read"]})).unwrap();
        let (s, _, b) = call(
            &f.app,
            "POST",
            "/api/v1/keys",
            Some(BOOT),
            Some(new.clone()),
        )
        .await;
        assert_eq!(s, StatusCode::CREATED, "{b}");
        let secret = b["secret"].as_str().unwrap().to_string();
        let id = b["id"].as_str().unwrap().to_string();
        let (s, _, _) = call(&f.app, "POST", "/api/v1/keys", Some(BOOT), Some(new)).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "duplicate name");
        let bad = serde_json::to_vec(&json!({"name": "x", "scopes": ["root"]})).unwrap();
        let (s, _, _) = call(&f.app, "POST", "/api/v1/keys", Some(BOOT), Some(bad)).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "unknown scope");
        let twice = serde_json::to_vec(&json!({"name": "y", "scopes": ["read", "read"]})).unwrap();
        let (s, _, b) = call(&f.app, "POST", "/api/v1/keys", Some(BOOT), Some(twice)).await;
        assert_eq!(
            s,
            StatusCode::UNPROCESSABLE_ENTITY,
            "a scope listed twice: {b}"
        );
        assert!(b.to_string().contains("listed twice"), "{b}");
        let (s, _, _) = call(&f.app, "GET", "/api/v1/events", Some(&secret), None).await;
        assert_eq!(s, StatusCode::OK);
        let (_, _, list) = call(&f.app, "GET", "/api/v1/keys", Some(BOOT), None).await;
        let text = list.to_string();
        assert!(
            text.contains("grafana") && !text.contains(&secret) && !text.contains("sha256"),
            "{text}"
        );
        let (s, _, _) = call(
            &f.app,
            "DELETE",
            &format!("/api/v1/keys/{id}"),
            Some(BOOT),
            None,
        )
        .await;
        assert_eq!(s, StatusCode::OK);
        let (s, _, _) = call(&f.app, "GET", "/api/v1/events", Some(&secret), None).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        let (s, _, _) = call(&f.app, "DELETE", "/api/v1/keys/k_none", Some(BOOT), None).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
    }
}

#[cfg(test)]
mod sequencer_tests {
    use super::*;

    fn pending(site: &str, msgs: &[&str], rules: &DedupRules, now: Timestamp) -> Box<Pending> {
        let events = msgs
            .iter()
            .map(|m| {
                let ev = Event::new(
                    InputKind::Api,
                    "app",
                    "h",
                    weir_common::Severity::Info,
                    *m,
                    now,
                );
                let tag = rules.tag(&ev);
                let stored = StoredEvent {
                    site: site.into(),
                    agent: API_AGENT.into(),
                    seq: 0,
                    stored_at: now,
                    correlated_incident: None,
                    event: ev,
                };
                (postcard::to_allocvec(&stored).unwrap(), tag)
            })
            .collect();
        Box::new(Pending {
            events,
            seq_offset: postcard::to_allocvec(&(site, API_AGENT)).unwrap().len(),
            received_at: now,
            assigned: None,
            outcomes: Vec::new(),
        })
    }

    fn commit(store: &Store, seqr: &mut Sequencer, p: Box<Pending>) -> crate::store::CommitOutcome {
        let (tx, _rx) = mpsc::unbounded_channel();
        let mut item = IngestItem {
            site: "central".into(),
            name: API_AGENT.into(),
            records: Vec::new(),
            reply: tx,
            poisoned: Arc::default(),
            api: Some(p),
            outcomes: Vec::new(),
        };
        seqr.assign(store, &mut item).unwrap();
        store
            .commit(
                &[crate::store::AgentBatch {
                    site: &item.site,
                    name: &item.name,
                    records: &item.records,
                }],
                Timestamp::now(),
            )
            .unwrap()
    }

    #[test]
    fn sequences_continue_after_a_restart_and_windows_end() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("e.redb")).unwrap();
        let rules = DedupRules::new(&DedupConfig::default());
        let t0 = Timestamp::from_second(1_000).unwrap();
        let mut s = Sequencer::default();
        let out = commit(
            &store,
            &mut s,
            pending("central", &["a", "b", "a"], &rules, t0),
        );
        assert_eq!((out.stored, out.count_updates), (2, 1));
        // A new writer (restart): the next sequence follows the committed one, and nothing
        // already stored is overwritten.
        let mut s = Sequencer::default();
        let out = commit(&store, &mut s, pending("central", &["c"], &rules, t0));
        assert_eq!(out.stored, 1);
        assert_eq!(out.duplicates, 0);
        let c = store.get_by_id("central:api:4").unwrap().unwrap();
        assert_eq!(c.event.message, "c");
        // After the window (120 s by default) the same event is stored again.
        let later = Timestamp::from_second(1_000 + 121).unwrap();
        let out = commit(
            &store,
            &mut s,
            pending("central", &["c", "c"], &rules, later),
        );
        assert_eq!((out.stored, out.count_updates), (1, 1));
        assert_eq!(store.len().unwrap(), 4);
    }
}
