//! Incidents (seed 000): a human-meaningful situation requiring action, created by correlation
//! rules from events and alarms. This is the state machine and nothing else: no I/O, the
//! clock is an argument, every change appends to the audit trail.
//!
//! ```text
//! open ──ack──▶ acknowledged ──resolve──▶ resolved ──close──▶ closed
//!   └──────────────resolve──────────────▶    │                  │
//!   ◀──────────────────reopen────────────────┴──────────────────┘
//! ```
//! `close` is also allowed from open and acknowledged (an operator may close noise outright).
//! Illegal transitions are [`IncidentTransitionError`]s carrying the current status.
//!
//! Memory is bounded: an incident holds at most [`MAX_EVENT_IDS`] event ids (later events are
//! still counted, and `events_truncated` says so), [`MAX_NOTES`] notes of at most
//! [`MAX_NOTE_BYTES`], and [`MAX_AUDIT`] audit entries (the oldest are dropped, counted).

use std::collections::BTreeSet;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use weir_common::Severity;

pub const MAX_EVENT_IDS: usize = 10_000;
pub const MAX_ALARMS: usize = 10_000;
pub const MAX_NOTES: usize = 1_000;
pub const MAX_NOTE_BYTES: usize = 8 * 1024;
pub const MAX_AUDIT: usize = 5_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum IncidentStatus {
    Open,
    Acknowledged,
    Resolved,
    Closed,
}

impl IncidentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            IncidentStatus::Open => "open",
            IncidentStatus::Acknowledged => "acknowledged",
            IncidentStatus::Resolved => "resolved",
            IncidentStatus::Closed => "closed",
        }
    }
}

impl std::str::FromStr for IncidentStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "open" => Ok(IncidentStatus::Open),
            "acknowledged" | "ack" => Ok(IncidentStatus::Acknowledged),
            "resolved" => Ok(IncidentStatus::Resolved),
            "closed" => Ok(IncidentStatus::Closed),
            _ => Err(format!(
                "unknown incident status {s:?}: expected open, acknowledged, resolved or closed"
            )),
        }
    }
}

/// Why an incident exists: enough to answer "why did this page me".
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Explanation {
    pub rule: String,
    pub rule_version: String,
    /// The conditions that matched, as the rule states them (e.g. `hostname matches db-*`).
    pub conditions: Vec<String>,
    /// Ids of the events the rule counted.
    pub event_ids: Vec<String>,
    pub window_start: Option<Timestamp>,
    pub window_end: Option<Timestamp>,
    /// The values the rule grouped by (e.g. `site=paris,hostname=db-01`).
    pub group_key: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Note {
    pub at: Timestamp,
    pub by: String,
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditEntry {
    pub at: Timestamp,
    pub by: String,
    /// What changed, e.g. `status open -> acknowledged`.
    pub what: String,
}

/// An event as an incident takes it in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventRef {
    pub id: String,
    pub site: String,
    pub event_time: Timestamp,
    /// First-stage dedup count (at least 1).
    pub count: u64,
}

/// What a correlation rule asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct IncidentSpec {
    pub title: String,
    pub severity: Severity,
    pub contact_list: Option<String>,
    pub explanation: Explanation,
    pub events: Vec<EventRef>,
    /// Reduction keys of alarms the incident holds.
    pub alarms: Vec<String>,
    /// Resolve by itself once every held alarm has cleared.
    pub auto_resolve: bool,
    /// Who creates it (the rule engine: `rule:<name>`).
    pub actor: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Incident {
    /// `INC-0001`, ...
    pub id: String,
    pub number: u64,
    pub title: String,
    pub severity: Severity,
    pub contact_list: Option<String>,
    pub assignee: Option<String>,
    pub status: IncidentStatus,
    pub rule: String,
    pub events: Vec<String>,
    pub events_truncated: bool,
    pub alarms: Vec<String>,
    pub sites: BTreeSet<String>,
    /// Events counted (with their first-stage counts).
    pub count: u64,
    pub first_seen: Option<Timestamp>,
    pub last_seen: Option<Timestamp>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub auto_resolve: bool,
    pub explanation: Explanation,
    pub notes: Vec<Note>,
    pub audit: Vec<AuditEntry>,
    /// Audit entries dropped to stay within [`MAX_AUDIT`].
    pub audit_dropped: u64,
}

/// The display form of incident number `n`.
pub fn incident_id(n: u64) -> String {
    format!("INC-{n:04}")
}

/// Parses `INC-0042` (or `42`) to its number.
pub fn parse_incident_id(s: &str) -> Option<u64> {
    s.strip_prefix("INC-").unwrap_or(s).parse().ok()
}

/// Operator (or automatic) actions on an incident.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IncidentAction {
    Ack,
    Resolve,
    Close,
    Reopen,
}

impl IncidentAction {
    pub fn as_str(self) -> &'static str {
        match self {
            IncidentAction::Ack => "acknowledge",
            IncidentAction::Resolve => "resolve",
            IncidentAction::Close => "close",
            IncidentAction::Reopen => "reopen",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IncidentError {
    #[error("cannot {action} an incident that is {}", current.as_str())]
    Transition {
        action: &'static str,
        current: IncidentStatus,
    },
    #[error("{0}")]
    Invalid(String),
}

/// Kept for callers that match on the transition case only.
pub type IncidentTransitionError = IncidentError;

/// Creates incident number `number` from a rule's spec.
pub fn create_incident(number: u64, spec: IncidentSpec, now: Timestamp) -> Incident {
    let mut inc = Incident {
        id: incident_id(number),
        number,
        title: spec.title,
        severity: spec.severity,
        contact_list: spec.contact_list,
        assignee: None,
        status: IncidentStatus::Open,
        rule: spec.explanation.rule.clone(),
        events: Vec::new(),
        events_truncated: false,
        alarms: Vec::new(),
        sites: BTreeSet::new(),
        count: 0,
        first_seen: None,
        last_seen: None,
        created_at: now,
        updated_at: now,
        auto_resolve: spec.auto_resolve,
        explanation: spec.explanation,
        notes: Vec::new(),
        audit: Vec::new(),
        audit_dropped: 0,
    };
    let what = format!(
        "created by rule {:?} version {:?} (group {:?})",
        inc.explanation.rule, inc.explanation.rule_version, inc.explanation.group_key
    );
    audit(&mut inc, &spec.actor, what, now);
    attach_events(&mut inc, &spec.events, &spec.actor, now);
    attach_alarms(&mut inc, &spec.alarms, &spec.actor, now);
    inc
}

fn audit(inc: &mut Incident, by: &str, what: String, now: Timestamp) {
    if inc.audit.len() >= MAX_AUDIT {
        // Keep the creation entry; drop the oldest after it.
        inc.audit.remove(1);
        inc.audit_dropped += 1;
    }
    inc.audit.push(AuditEntry {
        at: now,
        by: by.to_string(),
        what,
    });
    inc.updated_at = now;
}

/// Adds events (ignoring ones it already holds); returns the ids newly held.
pub fn attach_events(
    inc: &mut Incident,
    events: &[EventRef],
    by: &str,
    now: Timestamp,
) -> Vec<String> {
    let mut added = Vec::new();
    for e in events {
        if inc.events.contains(&e.id) {
            continue;
        }
        inc.count = inc.count.saturating_add(e.count.max(1));
        inc.first_seen = Some(inc.first_seen.map_or(e.event_time, |f| f.min(e.event_time)));
        inc.last_seen = Some(inc.last_seen.map_or(e.event_time, |l| l.max(e.event_time)));
        if !inc.sites.contains(&e.site) && inc.sites.len() < MAX_EVENT_IDS {
            inc.sites.insert(e.site.clone());
        }
        if inc.events.len() < MAX_EVENT_IDS {
            inc.events.push(e.id.clone());
            added.push(e.id.clone());
        } else {
            inc.events_truncated = true;
        }
    }
    if !events.is_empty() {
        audit(
            inc,
            by,
            format!(
                "{} event(s) attached, count now {}",
                events.len(),
                inc.count
            ),
            now,
        );
    }
    added
}

/// Adds alarms by reduction key (ignoring ones it already holds).
pub fn attach_alarms(inc: &mut Incident, keys: &[String], by: &str, now: Timestamp) {
    let mut n = 0;
    for k in keys {
        if !inc.alarms.contains(k) && inc.alarms.len() < MAX_ALARMS {
            inc.alarms.push(k.clone());
            n += 1;
        }
    }
    if n > 0 {
        audit(inc, by, format!("{n} alarm(s) attached"), now);
    }
}

/// Applies a status action by `by` (with a reason for the audit trail, when given).
pub fn transition(
    inc: &mut Incident,
    action: IncidentAction,
    by: &str,
    reason: Option<&str>,
    now: Timestamp,
) -> Result<(), IncidentError> {
    use IncidentStatus::*;
    let to = match (action, inc.status) {
        (IncidentAction::Ack, Open) => Acknowledged,
        (IncidentAction::Resolve, Open | Acknowledged) => Resolved,
        (IncidentAction::Close, Open | Acknowledged | Resolved) => Closed,
        (IncidentAction::Reopen, Resolved | Closed) => Open,
        (_, current) => {
            return Err(IncidentError::Transition {
                action: action.as_str(),
                current,
            });
        }
    };
    let from = inc.status;
    inc.status = to;
    let mut what = format!("status {} -> {}", from.as_str(), to.as_str());
    if let Some(r) = reason {
        what.push_str(": ");
        what.push_str(r);
    }
    audit(inc, by, what, now);
    Ok(())
}

/// Appends a note to the journal.
pub fn add_note(
    inc: &mut Incident,
    text: &str,
    by: &str,
    now: Timestamp,
) -> Result<(), IncidentError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(IncidentError::Invalid("text: must not be empty".into()));
    }
    if text.len() > MAX_NOTE_BYTES {
        return Err(IncidentError::Invalid(format!(
            "text: longer than {MAX_NOTE_BYTES} bytes"
        )));
    }
    if inc.notes.len() >= MAX_NOTES {
        return Err(IncidentError::Invalid(format!(
            "the incident already has {MAX_NOTES} notes"
        )));
    }
    inc.notes.push(Note {
        at: now,
        by: by.to_string(),
        text: text.to_string(),
    });
    audit(inc, by, "note added".into(), now);
    Ok(())
}

/// Assigns the incident to someone (`None` unassigns), and/or moves it to another contact list.
pub fn assign(
    inc: &mut Incident,
    assignee: Option<&str>,
    contact_list: Option<&str>,
    by: &str,
    now: Timestamp,
) -> Result<(), IncidentError> {
    for (field, v) in [("assignee", assignee), ("contact_list", contact_list)] {
        if v.is_some_and(|v| v.len() > 256 || v.trim().is_empty()) {
            return Err(IncidentError::Invalid(format!(
                "{field}: must be 1 to 256 bytes"
            )));
        }
    }
    if assignee.is_none() && contact_list.is_none() {
        return Err(IncidentError::Invalid(
            "give assignee and/or contact_list".into(),
        ));
    }
    if let Some(a) = assignee {
        let what = format!(
            "assignee {} -> {a}",
            inc.assignee.as_deref().unwrap_or("(none)")
        );
        inc.assignee = Some(a.to_string());
        audit(inc, by, what, now);
    }
    if let Some(c) = contact_list {
        let what = format!(
            "contact list {} -> {c}",
            inc.contact_list.as_deref().unwrap_or("(none)")
        );
        inc.contact_list = Some(c.to_string());
        audit(inc, by, what, now);
    }
    Ok(())
}

/// Resolves the incident when it asks for it, is open or acknowledged, holds alarms, and
/// `cleared` says every one of them has cleared. Returns whether it did.
pub fn auto_resolve(inc: &mut Incident, cleared: impl Fn(&str) -> bool, now: Timestamp) -> bool {
    if !inc.auto_resolve
        || inc.alarms.is_empty()
        || !matches!(
            inc.status,
            IncidentStatus::Open | IncidentStatus::Acknowledged
        )
        || !inc.alarms.iter().all(|k| cleared(k))
    {
        return false;
    }
    transition(
        inc,
        IncidentAction::Resolve,
        "weir",
        Some("auto-resolved: every alarm it holds has cleared"),
        now,
    )
    .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + s).unwrap()
    }

    pub(crate) fn spec() -> IncidentSpec {
        IncidentSpec {
            title: "DB connectivity".into(),
            severity: Severity::Critical,
            contact_list: Some("DBA On-Call".into()),
            explanation: Explanation {
                rule: "Database Connectivity Failure".into(),
                rule_version: "3".into(),
                conditions: vec!["hostname matches db-*".into()],
                event_ids: vec!["p:a:1".into(), "l:b:2".into()],
                window_start: Some(t(0)),
                window_end: Some(t(300)),
                group_key: "hostname=db-01".into(),
            },
            events: vec![
                EventRef {
                    id: "p:a:1".into(),
                    site: "p".into(),
                    event_time: t(10),
                    count: 3,
                },
                EventRef {
                    id: "l:b:2".into(),
                    site: "l".into(),
                    event_time: t(5),
                    count: 1,
                },
            ],
            alarms: vec!["A".into(), "B".into()],
            auto_resolve: true,
            actor: "rule:db".into(),
        }
    }

    #[test]
    fn lifecycle_counts_and_audit() {
        let mut inc = create_incident(41, spec(), t(100));
        assert_eq!(inc.id, "INC-0041");
        assert_eq!(parse_incident_id("INC-0041"), Some(41));
        assert_eq!(inc.count, 4);
        assert_eq!((inc.first_seen, inc.last_seen), (Some(t(5)), Some(t(10))));
        assert_eq!(inc.sites.iter().cloned().collect::<Vec<_>>(), ["l", "p"]);
        // Attaching the same event twice does not count it twice.
        let added = attach_events(&mut inc, &spec().events[..1], "x", t(101));
        assert!(added.is_empty());
        assert_eq!(inc.count, 4);
        transition(&mut inc, IncidentAction::Ack, "ann", None, t(110)).unwrap();
        let e = transition(&mut inc, IncidentAction::Ack, "ann", None, t(111)).unwrap_err();
        assert_eq!(
            e,
            IncidentError::Transition {
                action: "acknowledge",
                current: IncidentStatus::Acknowledged
            }
        );
        transition(&mut inc, IncidentAction::Resolve, "ann", None, t(120)).unwrap();
        transition(&mut inc, IncidentAction::Close, "bob", None, t(130)).unwrap();
        assert!(transition(&mut inc, IncidentAction::Resolve, "bob", None, t(131)).is_err());
        transition(&mut inc, IncidentAction::Reopen, "bob", None, t(140)).unwrap();
        assert!(transition(&mut inc, IncidentAction::Reopen, "bob", None, t(141)).is_err());
        add_note(&mut inc, "called the DBA", "ann", t(150)).unwrap();
        assert!(add_note(&mut inc, "  ", "ann", t(150)).is_err());
        assign(&mut inc, Some("carol"), None, "ann", t(160)).unwrap();
        let whats: Vec<_> = inc.audit.iter().map(|a| a.what.as_str()).collect();
        assert!(whats[0].starts_with("created by rule"), "{whats:?}");
        assert!(whats.contains(&"status resolved -> closed"));
        assert!(whats.contains(&"assignee (none) -> carol"));
        assert_eq!(inc.audit.last().unwrap().by, "ann");
    }

    #[test]
    fn auto_resolves_only_when_every_alarm_cleared() {
        let mut inc = create_incident(1, spec(), t(0));
        assert!(!auto_resolve(&mut inc, |k| k == "A", t(1)));
        assert!(auto_resolve(&mut inc, |_| true, t(2)));
        assert_eq!(inc.status, IncidentStatus::Resolved);
        assert!(inc.audit.last().unwrap().what.contains("auto-resolved"));
        assert_eq!(inc.audit.last().unwrap().by, "weir");
        let mut s = spec();
        s.auto_resolve = false;
        let mut inc = create_incident(2, s, t(0));
        assert!(!auto_resolve(&mut inc, |_| true, t(2)));
    }
}
