//! Seed 004's aggregate rules: notifications (of incidents and alarms) that share the values of
//! an aggregate's `fields` are throttled for `throttle` seconds after one is notified; a change
//! in a `watch` field bypasses the throttle, and re-opens may bypass it at most `flapping`
//! times per period. Every notification is counted on its aggregate, and the count is in each
//! decision so the API can show it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::rules::{Aggregate, Field, Fields};

/// A notification about to go out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    /// Incident or alarm id, for the caller's bookkeeping.
    pub id: String,
    /// When it happened (event time of the alarm or incident change).
    pub time: Timestamp,
    /// Its fields by canonical name (`hostname`, `severity`, `message`, `tags.X`, ...).
    pub fields: BTreeMap<String, String>,
    /// A closed alarm or incident opened again (seed 004 flapping).
    pub reopened: bool,
}

impl Fields for Notification {
    fn get(&self, field: &Field) -> Option<&str> {
        let name = field.name();
        if let Some(v) = self.fields.get(&name) {
            return Some(v);
        }
        // Seed 004 writes `host`; plain tag names are accepted too.
        match field {
            Field::Hostname => self.fields.get("host"),
            Field::Tags(t) => self.fields.get(&**t),
            _ => None,
        }
        .map(String::as_str)
    }
}

/// Why a notification goes out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum NotifyReason {
    /// No aggregate rule applies.
    NoAggregate,
    /// The first of its aggregate.
    First,
    /// The throttle period of the previous notification ended.
    ThrottleExpired,
    /// A watched field changed: the throttle period restarts.
    WatchChanged {
        field: String,
        from: String,
        to: String,
    },
    /// Re-opened within the throttle period, under the flapping cap.
    Reopened { flaps: u32 },
}

/// Notify or not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum NotifyDecision {
    Notify {
        aggregate: Option<String>,
        key: String,
        /// Notifications aggregated under this key so far, this one included.
        aggregated_count: u64,
        #[serde(flatten)]
        reason: NotifyReason,
    },
    Throttled {
        aggregate: String,
        key: String,
        aggregated_count: u64,
        /// End of the throttle period; `None` for an infinite throttle.
        until: Option<Timestamp>,
        explanation: String,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct AggState {
    /// Start of the current throttle period (microseconds).
    start: i64,
    watched: Vec<String>,
    count: u64,
    flaps: u32,
}

/// Serialisable throttle state of one aggregate rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AggSnapshot {
    name: String,
    version: String,
    keys: Vec<(String, AggState)>,
}

#[derive(Debug)]
pub(super) struct Throttler {
    rules: Vec<Arc<Aggregate>>,
    /// Per rule (parallel to `rules`): key → state.
    states: Vec<HashMap<String, AggState>>,
    max_keys: usize,
    pub(super) evicted: u64,
}

impl Throttler {
    pub(super) fn new(max_keys: usize) -> Throttler {
        Throttler {
            rules: Vec::new(),
            states: Vec::new(),
            max_keys: max_keys.max(1),
            evicted: 0,
        }
    }

    /// Installs aggregate rules, keeping the state of unchanged ones.
    pub(super) fn install(&mut self, rules: &[Arc<Aggregate>]) {
        let snap = self.snapshot();
        self.rules = rules.to_vec();
        self.states = rules.iter().map(|_| HashMap::new()).collect();
        self.restore(snap);
    }

    pub(super) fn snapshot(&self) -> Vec<AggSnapshot> {
        self.rules
            .iter()
            .zip(&self.states)
            .map(|(r, s)| AggSnapshot {
                name: r.name.to_string(),
                version: r.version.to_string(),
                keys: s.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            })
            .collect()
    }

    pub(super) fn restore(&mut self, snaps: Vec<AggSnapshot>) {
        for s in snaps {
            if let Some(i) = self
                .rules
                .iter()
                .position(|r| *r.name == s.name && *r.version == s.version)
            {
                self.states[i] = s.keys.into_iter().collect();
            }
        }
    }

    pub(super) fn notify(&mut self, n: &Notification) -> NotifyDecision {
        let Some(i) = self.rules.iter().position(|r| r.cond.eval(n)) else {
            return NotifyDecision::Notify {
                aggregate: None,
                key: String::new(),
                aggregated_count: 1,
                reason: NotifyReason::NoAggregate,
            };
        };
        let rule = self.rules[i].clone();
        let t = n.time.as_microsecond();
        let key = rule
            .fields
            .iter()
            .map(|f| format!("{}={}", f.name(), n.get(f).unwrap_or("")))
            .collect::<Vec<_>>()
            .join(",");
        let watched: Vec<String> = rule
            .watch
            .iter()
            .map(|f| n.get(f).unwrap_or("").to_string())
            .collect();
        let states = &mut self.states[i];
        if !states.contains_key(&key)
            && states.len() >= self.max_keys
            && let Some(oldest) = states
                .iter()
                .min_by_key(|(k, s)| (s.start, (*k).clone()))
                .map(|(k, _)| k.clone())
        {
            states.remove(&oldest);
            self.evicted += 1;
            metrics::counter!("weir_aggregator_correlation_dropped_total", "reason" => "aggregate_evicted")
                .increment(1);
        }
        let notify = |count, reason| NotifyDecision::Notify {
            aggregate: Some(rule.name.to_string()),
            key: key.clone(),
            aggregated_count: count,
            reason,
        };
        let Some(s) = states.get_mut(&key) else {
            states.insert(
                key.clone(),
                AggState {
                    start: t,
                    watched,
                    count: 1,
                    flaps: 0,
                },
            );
            return notify(1, NotifyReason::First);
        };
        s.count += 1;
        let until = rule.throttle.map(|d| s.start.saturating_add(d));
        if until.is_some_and(|u| t >= u) {
            s.start = t;
            s.flaps = 0;
            s.watched = watched;
            return notify(s.count, NotifyReason::ThrottleExpired);
        }
        if let Some(j) = (0..watched.len()).find(|&j| watched[j] != s.watched[j]) {
            let reason = NotifyReason::WatchChanged {
                field: rule.watch[j].name(),
                from: s.watched[j].clone(),
                to: watched[j].clone(),
            };
            s.start = t;
            s.flaps = 0;
            s.watched = watched;
            return notify(s.count, reason);
        }
        if n.reopened && s.flaps < rule.flapping {
            s.flaps += 1;
            return notify(s.count, NotifyReason::Reopened { flaps: s.flaps });
        }
        let why = if n.reopened {
            format!(
                "re-opened, but the flapping cap ({}) is reached",
                rule.flapping
            )
        } else {
            "within the throttle period".to_string()
        };
        NotifyDecision::Throttled {
            aggregate: rule.name.to_string(),
            explanation: format!(
                "aggregate {:?} for {key}: {why} ({} so far)",
                rule.name, s.count
            ),
            key,
            aggregated_count: s.count,
            until: until.and_then(|u| Timestamp::from_microsecond(u).ok()),
        }
    }
}
