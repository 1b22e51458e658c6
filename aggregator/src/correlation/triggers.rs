//! What seed 003's trigger handling does to live state: `delayed_action` holds,
//! their releases, and the combination incidents that supersede (or `auto_acknowledge`)
//! their triggers.
//!
//! - **Hold** ([`Decision::HoldEvent`]): the stored event is tagged `weir.held_by=<rule>`
//!   and `weir.held_until=<event time>`: its actions wait. Clients that act on events (and a
//!   NOC view) see the tags; the event stays in the default views.
//! - **Release** ([`Decision::ReleaseEvent`]): the delay passed without a combination: the tags
//!   go, and the event is an ordinary event again.
//! - **Supersede** (an incident whose `triggers` is `superseded` or `acknowledged`): each
//!   trigger loses its hold and is tagged `weir.suppressed_by=<rule>` (hidden from default
//!   views, like `suppress_individual`: seed 003's "only the new synthetic event is current");
//!   the alarms the triggers raised are attached to the combination incident.
//! - **Acknowledge** (`auto_acknowledge`, and [`Decision::AcknowledgeEvent`] for triggers of an
//!   inhibited rule): as superseding, then the triggers' alarms and the other incidents they
//!   belonged to are acknowledged through the alarm and incident transitions, by
//!   `rule:<name>`, so the audit trail says which rule did it. An inhibited trigger is also
//!   attached to the last incident its rule opened for its group.
//!
//! An event's alarm is found by the reduction key processing gave its problem, which the
//! writer hands over with the events (the last `MAX_ALARM_KEYS` are remembered).
//! Events that were not stored (`donotpersist`) have no tags to change: only their alarms
//! are handled.

use std::collections::{BTreeSet, HashMap, VecDeque};

use jiff::Timestamp;
use redb::WriteTransaction;

use crate::alarm::incident::{self, IncidentAction};
use crate::alarm::persist;
use crate::alarm::state::{AlarmAction, AlarmStatus};
use crate::store::{SUPPRESSED_TAG, Store};

/// The tag a `delayed_action` hold sets on the stored event (value: the rule).
pub const HELD_TAG: &str = "weir.held_by";
/// When the hold ends (RFC 3339 event time).
pub const HELD_UNTIL_TAG: &str = "weir.held_until";

/// Most (rule, group) → last incident entries remembered for acknowledged triggers.
pub(super) const MAX_LAST_INCIDENTS: usize = 10_000;

/// Tags `event_id` as held by `rule` until `until` (inside the decisions' transaction).
pub(super) fn hold(
    txn: &WriteTransaction,
    event_id: &str,
    rule: &str,
    until: Timestamp,
) -> Result<(), redb::Error> {
    Store::update_event(txn, event_id, |s| {
        s.event.tags.insert(HELD_TAG.into(), rule.to_string());
        s.event
            .tags
            .insert(HELD_UNTIL_TAG.into(), until.to_string());
    })?;
    Ok(())
}

/// Ends the hold of `event_id` (its delay passed, or a rule change released it).
pub(super) fn release(txn: &WriteTransaction, event_id: &str) -> Result<(), redb::Error> {
    Store::update_event(txn, event_id, |s| {
        s.event.tags.remove(HELD_TAG);
        s.event.tags.remove(HELD_UNTIL_TAG);
    })?;
    Ok(())
}

/// Ends the holds of `event_ids` and hides them: `rule`'s incident supersedes them.
pub(super) fn supersede(
    txn: &WriteTransaction,
    event_ids: &[String],
    rule: &str,
) -> Result<(), redb::Error> {
    for id in event_ids {
        Store::update_event(txn, id, |s| {
            s.event.tags.remove(HELD_TAG);
            s.event.tags.remove(HELD_UNTIL_TAG);
            s.event
                .tags
                .insert(SUPPRESSED_TAG.to_string(), rule.to_string());
        })?;
    }
    Ok(())
}

/// Trigger events a combination incident took over, handled after the decisions' commit.
#[derive(Debug)]
pub(super) struct Takeover {
    pub rule: String,
    /// The combination incident (`None`: an inhibited trigger whose rule has no incident
    /// remembered for its group).
    pub incident: Option<u64>,
    pub event_ids: Vec<String>,
    /// `auto_acknowledge`: acknowledge their alarms and other incidents too.
    pub acknowledge: bool,
    /// Incidents the triggers belonged to before (read before the takeover re-pointed them).
    pub prior_incidents: BTreeSet<u64>,
}

/// The incidents `event_ids` belong to now (stored events only).
pub(super) fn incidents_of(store: &Store, event_ids: &[String]) -> BTreeSet<u64> {
    event_ids
        .iter()
        .filter_map(|id| store.get_by_id(id).ok().flatten())
        .filter_map(|s| s.correlated_incident)
        .filter_map(|i| incident::parse_incident_id(&i))
        .collect()
}

/// What [`take_over`] did, for tests and logs.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct TakeoverReport {
    pub alarms_attached: usize,
    pub alarms_acked: usize,
    pub incidents_acked: usize,
}

/// Attaches the triggers' alarms to their combination incidents, and acknowledges what an
/// `auto_acknowledge` rule asks for. `alarm_keys`: event id → the reduction key of the alarm
/// its problem raised.
pub(super) fn take_over(
    store: &Store,
    work: &[Takeover],
    alarm_keys: &Bounded<String, String>,
    now: Timestamp,
) -> TakeoverReport {
    let mut report = TakeoverReport::default();
    for w in work {
        let by = format!("rule:{}", w.rule);
        // (id, key, status) of each distinct alarm the triggers raised.
        let keys: BTreeSet<&str> = w
            .event_ids
            .iter()
            .filter_map(|id| alarm_keys.get(id.as_str()))
            .map(String::as_str)
            .collect();
        let mut alarms: Vec<(u64, String, AlarmStatus)> = Vec::new();
        for key in keys {
            match persist::alarm_by_key(store.database(), key) {
                Ok(Some(a)) => alarms.push((a.id, a.reduction_key, a.status)),
                Ok(None) => {}
                Err(e) => {
                    weir_common::warn_limited!("correlation_takeover", error = %e, "cannot read the alarm of a superseded trigger event; it stays as it is. Check the disk under data_dir");
                }
            }
        }
        if let Some(n) = w.incident
            && !alarms.is_empty()
        {
            let keys: Vec<String> = alarms.iter().map(|(_, k, _)| k.clone()).collect();
            let attached = (|| -> Result<(), redb::Error> {
                let txn = store.database().begin_write()?;
                persist::attach_events(&txn, n, &[], &keys, &by, now)?;
                txn.commit()?;
                Ok(())
            })();
            match attached {
                Ok(()) => report.alarms_attached += keys.len(),
                Err(e) => {
                    weir_common::warn_limited!("correlation_takeover", error = %e, "cannot attach the triggers' alarms to the combination incident. Check the disk under data_dir");
                }
            }
        }
        if !w.acknowledge {
            continue;
        }
        let reason = match w.incident {
            Some(n) => format!("superseded by {}", incident::incident_id(n)),
            None => format!("trigger of rule {:?} while it was inhibited", w.rule),
        };
        for (id, _, status) in &alarms {
            if *status != AlarmStatus::Open {
                continue;
            }
            match persist::alarm_action(store.database(), *id, AlarmAction::Ack, &by, now) {
                Ok(_) => report.alarms_acked += 1,
                Err(e) => {
                    tracing::debug!(alarm = id, error = %e, "auto_acknowledge: alarm not acknowledged")
                }
            }
        }
        for &n in &w.prior_incidents {
            if Some(n) == w.incident {
                continue;
            }
            let r = persist::incident_update(store.database(), n, |inc| {
                incident::transition(inc, IncidentAction::Ack, &by, Some(reason.as_str()), now)
            });
            match r {
                Ok(_) => report.incidents_acked += 1,
                Err(e) => {
                    tracing::debug!(incident = n, error = %e, "auto_acknowledge: incident not acknowledged (not open?)")
                }
            }
        }
    }
    if report != TakeoverReport::default() {
        metrics::counter!("weir_aggregator_correlation_alarms_acknowledged_total")
            .increment(report.alarms_acked as u64);
        metrics::counter!("weir_aggregator_correlation_incidents_acknowledged_total")
            .increment(report.incidents_acked as u64);
        tracing::info!(
            alarms_attached = report.alarms_attached,
            alarms_acknowledged = report.alarms_acked,
            incidents_acknowledged = report.incidents_acked,
            "combination incidents took over their trigger events"
        );
    }
    report
}

/// A bounded map with insertion-order eviction: what the correlation thread remembers beside
/// the engine (last incident per rule and group, events that were not stored, alarm keys of
/// recent events, recent site incidents). Evictions are routine once a map is full, so they
/// are counted apart from losses, in `weir_aggregator_correlation_evictions_total{map}`.
#[derive(Debug)]
pub(super) struct Bounded<K, V> {
    map: HashMap<K, V>,
    order: VecDeque<K>,
    cap: usize,
    reason: &'static str,
}

impl<K: std::hash::Hash + Eq + Clone, V> Bounded<K, V> {
    pub fn new(cap: usize, reason: &'static str) -> Self {
        Bounded {
            map: HashMap::new(),
            order: VecDeque::new(),
            cap: cap.max(1),
            reason,
        }
    }

    pub fn insert(&mut self, k: K, v: V) {
        if self.map.insert(k.clone(), v).is_some() {
            return;
        }
        self.order.push_back(k);
        while self.map.len() > self.cap {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if self.map.remove(&old).is_some() {
                metrics::counter!("weir_aggregator_correlation_evictions_total", "map" => self.reason)
                    .increment(1);
            }
        }
        // Keys removed by `remove` leave stale entries in `order`: compact now and then.
        if self.order.len() > 2 * self.cap {
            let map = &self.map;
            self.order.retain(|k| map.contains_key(k));
        }
    }

    pub fn get<Q>(&self, k: &Q) -> Option<&V>
    where
        K: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        self.map.get(k)
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.map.len()
    }
}
