//! Alarms: the current state of one problem, keyed by its reduction key. No I/O here: each
//! function takes the alarm as stored (or `None`), the input and the wall clock, and returns
//! the new state; the redb layer ([`super::persist`]) and the in-memory [`AlarmBook`] (tests)
//! both call them.
//!
//! # Ordering by event time, not arrival
//! Agents deliver hours late after a WAN outage, so arrival order means nothing. An alarm's
//! state is a function of the events it has seen: `last_seen` is the newest problem event
//! time, `cleared_at` the newest clear event time, and the alarm is cleared exactly when
//! `cleared_at >= last_seen` (a clear counts only if the problem is not newer than it). So:
//! - a newer problem re-opens a cleared alarm;
//! - a late, older problem is counted into the alarm but does not re-open it;
//! - a clear that arrives before its problem (OpenNMS NMS-10473) is remembered as a
//!   [`ClearMark`], and the problem that arrives later, older than the clear, creates the
//!   alarm already cleared instead of a stale open one.
//!
//! The current severity is that of the newest problem (ties broken by event id), so the same
//! events in any arrival order give the same state (property-tested below). Operator actions
//! (ack, unack, clear) come on top: an acknowledged alarm re-opens only when a newer problem
//! is more severe than it was when acknowledged (Alerta's rule).

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use weir_common::Severity;

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum AlarmStatus {
    Open,
    Acknowledged,
    Cleared,
}

impl AlarmStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AlarmStatus::Open => "open",
            AlarmStatus::Acknowledged => "acknowledged",
            AlarmStatus::Cleared => "cleared",
        }
    }
}

impl std::str::FromStr for AlarmStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "open" => Ok(AlarmStatus::Open),
            "acknowledged" | "ack" => Ok(AlarmStatus::Acknowledged),
            "cleared" => Ok(AlarmStatus::Cleared),
            _ => Err(format!(
                "unknown alarm status {s:?}: expected open, acknowledged or cleared"
            )),
        }
    }
}

/// One alarm. Timestamps named `*_seen` and `cleared_at` are event times; `updated_at` and
/// `cleared_wall` are the aggregator's clock.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Alarm {
    pub id: u64,
    pub reduction_key: String,
    pub status: AlarmStatus,
    pub site: String,
    pub hostname: String,
    pub tag: Option<String>,
    /// The newest problem's message.
    pub message: String,
    /// Problem events counted (each event's own first-stage count included).
    pub count: u64,
    pub first_seen: Timestamp,
    pub last_seen: Timestamp,
    /// The newest problem's severity.
    pub severity: Severity,
    pub highest_severity: Severity,
    /// The newest problem's event id.
    pub last_event_id: String,
    /// Event time of the newest clear (resolution event, `close_existing`, or manual clear).
    pub cleared_at: Option<Timestamp>,
    pub clear_event_id: Option<String>,
    pub acked_by: Option<String>,
    pub acked_at: Option<Timestamp>,
    /// Severity when acknowledged: only worse re-opens.
    pub acked_severity: Option<Severity>,
    /// When the alarm last became cleared, by the aggregator's clock (for retention).
    pub cleared_wall: Option<Timestamp>,
    pub updated_at: Timestamp,
}

/// A clear with no alarm (yet): remembered so a later-arriving older problem stays cleared.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClearMark {
    pub event_time: Timestamp,
    pub event_id: String,
    /// Aggregator clock when recorded (marks are forgotten after `clear_memory`).
    pub recorded_at: Timestamp,
}

/// A problem event for an alarm.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Problem {
    pub key: String,
    pub event_id: String,
    pub event_time: Timestamp,
    pub severity: Severity,
    pub count: u64,
    pub site: String,
    pub hostname: String,
    pub tag: Option<String>,
    pub message: String,
}

/// A clear for the alarm with reduction key `key`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Clear {
    pub key: String,
    pub event_id: String,
    pub event_time: Timestamp,
}

/// What an input did to its alarm (for metrics, logs and incident auto-resolve).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Opened,
    /// Created already cleared: a remembered clear is newer than the problem.
    OpenedCleared,
    Reopened,
    Updated,
    Cleared,
    /// A clear for an alarm that does not exist (remembered).
    ClearRemembered,
    /// Nothing changed in status (e.g. an older clear).
    Unchanged,
}

fn newer(t: Timestamp, id: &str, than_t: Timestamp, than_id: &str) -> bool {
    (t, id) > (than_t, than_id)
}

fn is_cleared(a: &Alarm) -> bool {
    a.cleared_at.is_some_and(|c| c >= a.last_seen)
}

/// Applies a problem. `mark` is the remembered clear for the key, if any (consumed when the
/// alarm is created); `new_id` is called only when an alarm is created.
pub fn raise(
    existing: Option<Alarm>,
    mark: Option<ClearMark>,
    p: &Problem,
    new_id: impl FnOnce() -> u64,
    now: Timestamp,
) -> (Alarm, Change) {
    let count = p.count.max(1);
    let Some(mut a) = existing else {
        let mut a = Alarm {
            id: new_id(),
            reduction_key: p.key.clone(),
            status: AlarmStatus::Open,
            site: p.site.clone(),
            hostname: p.hostname.clone(),
            tag: p.tag.clone(),
            message: p.message.clone(),
            count,
            first_seen: p.event_time,
            last_seen: p.event_time,
            severity: p.severity,
            highest_severity: p.severity,
            last_event_id: p.event_id.clone(),
            cleared_at: mark.as_ref().map(|m| m.event_time),
            clear_event_id: mark.map(|m| m.event_id),
            acked_by: None,
            acked_at: None,
            acked_severity: None,
            cleared_wall: None,
            updated_at: now,
        };
        if is_cleared(&a) {
            a.status = AlarmStatus::Cleared;
            a.cleared_wall = Some(now);
            return (a, Change::OpenedCleared);
        }
        return (a, Change::Opened);
    };
    let was = a.status;
    a.count = a.count.saturating_add(count);
    a.first_seen = a.first_seen.min(p.event_time);
    a.highest_severity = a.highest_severity.max(p.severity);
    a.updated_at = now;
    let is_newest = newer(p.event_time, &p.event_id, a.last_seen, &a.last_event_id);
    if is_newest {
        a.last_seen = p.event_time;
        a.last_event_id = p.event_id.clone();
        a.severity = p.severity;
        a.message = p.message.clone();
        a.site = p.site.clone();
        a.hostname = p.hostname.clone();
        a.tag = p.tag.clone();
    }
    let change = if is_cleared(&a) {
        Change::Updated
    } else {
        match was {
            AlarmStatus::Cleared => {
                a.status = AlarmStatus::Open;
                a.acked_by = None;
                a.acked_at = None;
                a.acked_severity = None;
                a.cleared_wall = None;
                Change::Reopened
            }
            AlarmStatus::Acknowledged if a.acked_severity.is_some_and(|s| p.severity > s) => {
                a.status = AlarmStatus::Open;
                Change::Reopened
            }
            _ => Change::Updated,
        }
    };
    (a, change)
}

/// Applies a clear to an existing alarm.
pub fn clear(mut a: Alarm, c: &Clear, now: Timestamp) -> (Alarm, Change) {
    let newest_clear = match a.cleared_at {
        None => true,
        Some(t) => newer(
            c.event_time,
            &c.event_id,
            t,
            a.clear_event_id.as_deref().unwrap_or(""),
        ),
    };
    if newest_clear {
        a.cleared_at = Some(c.event_time);
        a.clear_event_id = Some(c.event_id.clone());
        a.updated_at = now;
    }
    if a.status != AlarmStatus::Cleared && is_cleared(&a) {
        a.status = AlarmStatus::Cleared;
        a.cleared_wall = Some(now);
        return (a, Change::Cleared);
    }
    (a, Change::Unchanged)
}

/// Remembers a clear whose alarm does not exist (keeping the newest).
pub fn remember(mark: Option<ClearMark>, c: &Clear, now: Timestamp) -> ClearMark {
    match mark {
        Some(m) if !newer(c.event_time, &c.event_id, m.event_time, &m.event_id) => m,
        _ => ClearMark {
            event_time: c.event_time,
            event_id: c.event_id.clone(),
            recorded_at: now,
        },
    }
}

/// An operator action refused in the alarm's current state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot {action} an alarm that is {}", current.as_str())]
pub struct AlarmTransitionError {
    pub action: &'static str,
    pub current: AlarmStatus,
}

/// Operator actions on alarms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlarmAction {
    Ack,
    Unack,
    Clear,
}

impl AlarmAction {
    pub fn as_str(self) -> &'static str {
        match self {
            AlarmAction::Ack => "acknowledge",
            AlarmAction::Unack => "unacknowledge",
            AlarmAction::Clear => "clear",
        }
    }
}

/// Applies an operator action at `now` (a manual clear clears at `now`, so only a problem
/// newer than the action re-opens the alarm).
pub fn act(
    mut a: Alarm,
    action: AlarmAction,
    user: &str,
    now: Timestamp,
) -> Result<Alarm, AlarmTransitionError> {
    let refuse = |current| AlarmTransitionError {
        action: action.as_str(),
        current,
    };
    match (action, a.status) {
        (AlarmAction::Ack, AlarmStatus::Open) => {
            a.status = AlarmStatus::Acknowledged;
            a.acked_by = Some(user.to_string());
            a.acked_at = Some(now);
            a.acked_severity = Some(a.severity);
        }
        (AlarmAction::Unack, AlarmStatus::Acknowledged) => {
            a.status = AlarmStatus::Open;
            a.acked_by = None;
            a.acked_at = None;
            a.acked_severity = None;
        }
        (AlarmAction::Clear, AlarmStatus::Open | AlarmStatus::Acknowledged) => {
            let at = now.max(a.last_seen);
            a.cleared_at = Some(at);
            a.clear_event_id = Some(format!("manual:{user}"));
            a.status = AlarmStatus::Cleared;
            a.cleared_wall = Some(now);
        }
        (_, current) => return Err(refuse(current)),
    }
    a.updated_at = now;
    Ok(a)
}

/// Whether a cleared alarm has been kept long enough to be removed.
pub fn expired(a: &Alarm, now: Timestamp, retention: std::time::Duration) -> bool {
    let age_us = |w: Timestamp| now.as_microsecond().saturating_sub(w.as_microsecond());
    a.status == AlarmStatus::Cleared
        && a.cleared_wall
            .is_some_and(|w| age_us(w) >= 0 && age_us(w) as u128 >= retention.as_micros())
}

/// The mark an expired alarm leaves behind, so a late older problem does not re-open it.
pub fn mark_of(a: &Alarm, now: Timestamp) -> Option<ClearMark> {
    Some(ClearMark {
        event_time: a.cleared_at?,
        event_id: a.clear_event_id.clone().unwrap_or_default(),
        recorded_at: now,
    })
}

/// Alarms in memory, keyed by reduction key: the same transitions as the redb layer, for
/// tests and tools.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct AlarmBook {
    pub alarms: BTreeMap<String, Alarm>,
    pub marks: BTreeMap<String, ClearMark>,
    pub next_id: u64,
}

impl AlarmBook {
    pub fn raise(&mut self, p: &Problem, now: Timestamp) -> Change {
        let existing = self.alarms.remove(&p.key);
        let mark = if existing.is_none() {
            self.marks.remove(&p.key)
        } else {
            None
        };
        let next = &mut self.next_id;
        let (a, change) = raise(
            existing,
            mark,
            p,
            || {
                *next += 1;
                *next
            },
            now,
        );
        self.alarms.insert(p.key.clone(), a);
        change
    }

    pub fn clear(&mut self, c: &Clear, now: Timestamp) -> Change {
        match self.alarms.remove(&c.key) {
            Some(a) => {
                let (a, change) = clear(a, c, now);
                self.alarms.insert(c.key.clone(), a);
                change
            }
            None => {
                let m = remember(self.marks.remove(&c.key), c, now);
                self.marks.insert(c.key.clone(), m);
                Change::ClearRemembered
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + s).unwrap()
    }

    fn problem(key: &str, id: &str, at: i64, sev: Severity) -> Problem {
        Problem {
            key: key.into(),
            event_id: id.into(),
            event_time: t(at),
            severity: sev,
            count: 1,
            site: "s".into(),
            hostname: "h".into(),
            tag: Some("PING_DOWN".into()),
            message: format!("m{id}"),
        }
    }

    fn clr(key: &str, id: &str, at: i64) -> Clear {
        Clear {
            key: key.into(),
            event_id: id.into(),
            event_time: t(at),
        }
    }

    #[test]
    fn problem_then_clear_then_newer_problem_reopens() {
        let mut b = AlarmBook::default();
        let now = t(1000);
        assert_eq!(
            b.raise(&problem("k", "e1", 10, Severity::Critical), now),
            Change::Opened
        );
        assert_eq!(b.clear(&clr("k", "e2", 20), now), Change::Cleared);
        assert_eq!(b.alarms["k"].status, AlarmStatus::Cleared);
        // A late problem older than the clear is counted but does not re-open.
        assert_eq!(
            b.raise(&problem("k", "e0", 5, Severity::Critical), now),
            Change::Updated
        );
        assert_eq!(b.alarms["k"].status, AlarmStatus::Cleared);
        assert_eq!(b.alarms["k"].count, 2);
        assert_eq!(b.alarms["k"].first_seen, t(5));
        assert_eq!(
            b.raise(&problem("k", "e3", 30, Severity::Warning), now),
            Change::Reopened
        );
        let a = &b.alarms["k"];
        assert_eq!(
            (a.status, a.count, a.severity, a.highest_severity),
            (AlarmStatus::Open, 3, Severity::Warning, Severity::Critical)
        );
        assert_eq!(a.last_event_id, "e3");
    }

    #[test]
    fn clear_older_than_the_problem_does_not_clear() {
        let mut b = AlarmBook::default();
        b.raise(&problem("k", "e1", 50, Severity::Error), t(0));
        assert_eq!(b.clear(&clr("k", "e0", 40), t(0)), Change::Unchanged);
        assert_eq!(b.alarms["k"].status, AlarmStatus::Open);
        // Same event time: "not newer than the clear" clears.
        assert_eq!(b.clear(&clr("k", "e2", 50), t(0)), Change::Cleared);
    }

    /// OpenNMS NMS-10473: the clear arrives before its (older) problem.
    #[test]
    fn nms_10473_clear_before_problem_does_not_open_a_stale_alarm() {
        let mut b = AlarmBook::default();
        assert_eq!(b.clear(&clr("k", "up", 20), t(0)), Change::ClearRemembered);
        assert!(b.alarms.is_empty());
        assert_eq!(
            b.raise(&problem("k", "down", 10, Severity::Critical), t(1)),
            Change::OpenedCleared
        );
        assert_eq!(b.alarms["k"].status, AlarmStatus::Cleared);
        assert!(b.marks.is_empty());
        // A genuinely newer problem opens it.
        assert_eq!(
            b.raise(&problem("k", "down2", 30, Severity::Critical), t(2)),
            Change::Reopened
        );
    }

    #[test]
    fn hours_late_events_after_an_outage_keep_event_time_order() {
        // Link went down at 08:00, came up at 09:00; the site's agent was cut off and delivers
        // both five hours later, up first. Meanwhile the link went down again at 12:00.
        let mut b = AlarmBook::default();
        let h = 3600;
        b.raise(&problem("k", "d3", 4 * h, Severity::Critical), t(5 * h));
        b.clear(&clr("k", "u1", h), t(5 * h));
        b.raise(&problem("k", "d1", 0, Severity::Critical), t(5 * h));
        let a = &b.alarms["k"];
        assert_eq!(a.status, AlarmStatus::Open, "the 12:00 outage is still on");
        assert_eq!(a.count, 2);
        assert_eq!(a.last_event_id, "d3");
    }

    #[test]
    fn acknowledged_reopens_only_when_severity_worsens() {
        let mut b = AlarmBook::default();
        b.raise(&problem("k", "e1", 1, Severity::Warning), t(0));
        let a = act(b.alarms["k"].clone(), AlarmAction::Ack, "ann", t(2)).unwrap();
        assert_eq!(a.acked_by.as_deref(), Some("ann"));
        b.alarms.insert("k".into(), a);
        b.raise(&problem("k", "e2", 3, Severity::Warning), t(3));
        assert_eq!(b.alarms["k"].status, AlarmStatus::Acknowledged);
        b.raise(&problem("k", "e3", 4, Severity::Info), t(4));
        assert_eq!(b.alarms["k"].status, AlarmStatus::Acknowledged);
        assert_eq!(
            b.raise(&problem("k", "e4", 5, Severity::Critical), t(5)),
            Change::Reopened
        );
        assert_eq!(b.alarms["k"].status, AlarmStatus::Open);
    }

    #[test]
    fn operator_actions_and_illegal_transitions() {
        let mut b = AlarmBook::default();
        b.raise(&problem("k", "e1", 1, Severity::Warning), t(0));
        let a = b.alarms["k"].clone();
        let e = act(a.clone(), AlarmAction::Unack, "u", t(1)).unwrap_err();
        assert_eq!(e.current, AlarmStatus::Open);
        let a = act(a, AlarmAction::Ack, "u", t(1)).unwrap();
        let a = act(a, AlarmAction::Unack, "u", t(2)).unwrap();
        assert_eq!(a.status, AlarmStatus::Open);
        let a = act(a, AlarmAction::Clear, "u", t(3)).unwrap();
        assert_eq!(a.status, AlarmStatus::Cleared);
        let e = act(a.clone(), AlarmAction::Ack, "u", t(4)).unwrap_err();
        assert_eq!(e.to_string(), "cannot acknowledge an alarm that is cleared");
        assert!(!expired(&a, t(4), std::time::Duration::from_secs(60)));
        assert!(expired(&a, t(63), std::time::Duration::from_secs(60)));
        // A problem from before the manual clear does not re-open; a later one does.
        let mut b = AlarmBook::default();
        b.alarms.insert("k".into(), a);
        b.raise(&problem("k", "e2", 2, Severity::Warning), t(5));
        assert_eq!(b.alarms["k"].status, AlarmStatus::Cleared);
        b.raise(&problem("k", "e3", 10, Severity::Warning), t(5));
        assert_eq!(b.alarms["k"].status, AlarmStatus::Open);
    }

    #[derive(Debug, Clone)]
    enum Input {
        P(Problem),
        C(Clear),
    }

    fn inputs() -> impl Strategy<Value = Vec<Input>> {
        let one = (0u8..3, 0i64..20, any::<bool>(), 0usize..5).prop_map(|(k, at, is_p, sev)| {
            let key = format!("k{k}");
            (key, at, is_p, Severity::ALL[sev])
        });
        proptest::collection::vec(one, 0..24).prop_map(|v| {
            v.into_iter()
                .enumerate()
                .map(|(i, (key, at, is_p, sev))| {
                    let id = format!("e{i:03}");
                    if is_p {
                        Input::P(problem(&key, &id, at, sev))
                    } else {
                        Input::C(clr(&key, &id, at))
                    }
                })
                .collect()
        })
    }

    fn run(inputs: &[Input]) -> BTreeMap<String, Alarm> {
        let mut b = AlarmBook::default();
        for i in inputs {
            match i {
                Input::P(p) => b.raise(p, t(100)),
                Input::C(c) => b.clear(c, t(100)),
            };
        }
        // Ids are assigned in arrival order and the wall clocks are the same: compare the rest.
        b.alarms
            .into_iter()
            .map(|(k, mut a)| {
                a.id = 0;
                (k, a)
            })
            .collect()
    }

    proptest! {
        #[test]
        fn same_events_in_any_arrival_order_give_the_same_alarms(
            (events, perm) in inputs().prop_flat_map(|v| {
                let n = v.len();
                (Just(v), Just((0..n).collect::<Vec<_>>()).prop_shuffle())
            })
        ) {
            let shuffled: Vec<Input> = perm.iter().map(|&i| events[i].clone()).collect();
            prop_assert_eq!(run(&events), run(&shuffled));
        }
    }
}
