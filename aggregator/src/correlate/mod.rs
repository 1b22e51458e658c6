//! The correlation engine: turns stored events into incident decisions (seed 000's correlation
//! rules, seed 003's synthesis rules) and throttles notifications (seed 004's aggregate rules).
//!
//! It is a pure state machine in the quinn-proto style: [`Engine::push`] takes an event and the
//! caller's clock value, [`Engine::advance`] takes only the clock, and both return
//! [`Decision`]s. No I/O, no sleeps, no wall clock inside, so the same inputs always give the
//! same decisions, and tests need no timers.
//!
//! Invariants:
//! - **Event time.** Windows are measured on each event's own time (clamped to its arrival, so
//!   a device clock in the future cannot hold an event back). Events are held in a reorder
//!   buffer until the *watermark* (`now - allowed_lateness`) passes them, then correlated in
//!   (event time, id) order: every arrival order within the allowed lateness gives the same
//!   incidents. An event older than the watermark when it arrives is *late*: it still joins the
//!   retained triggers of its window, and an incident it completes says `late: true`.
//! - **Consumption.** A firing consumes its triggers, so windows of one rule and group never
//!   overlap (seed 003). Between firings no window holds `count` unconsumed triggers.
//! - **Bounded.** Live groups per rule, the reorder buffer and aggregate keys are capped; what
//!   a cap pushes out is counted in [`Stats`] and in `weir_aggregator_correlation_dropped_total`.
//! - **Immediate verdicts.** Whether an event matches a rule does not depend on order, so
//!   `SuppressEvent` and `HoldEvent` come back from the `push` that delivered the event: the
//!   caller never raises an alarm it then has to take back.

mod config;
mod engine;
mod matcher;
mod reorder;
pub mod replay;
pub mod rules;
mod throttle;

#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use weir_common::{Event, Severity};

pub use config::{CorrelationConfig, EXAMPLE as CONFIG_EXAMPLE};
pub use engine::{Engine, EngineConfig, ReloadReport, Snapshot, Stats};
pub use rules::{RawRuleFile, RuleError, RuleSet};
pub use throttle::{Notification, NotifyDecision, NotifyReason};

use crate::store::StoredEvent;
use rules::{Field, Fields};

/// An event as the engine sees it: the stored event and where it came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventIn {
    /// The fleet-wide event id (`StoredEvent::id()`), shared with the decisions about it.
    #[serde(with = "arc_str")]
    pub id: Arc<str>,
    pub site: String,
    pub agent: String,
    pub event: Event,
}

/// The fields [`EventIn::properties`] lists, in name order: `node` sorts between `name` and
/// `peer`, `tag` before every `tags.X`.
const PROPERTIES_BEFORE_NODE: [Field; 6] = [
    Field::Agent,
    Field::EventType,
    Field::Hostname,
    Field::Input,
    Field::Message,
    Field::Name,
];
const PROPERTIES_AFTER_NODE: [Field; 5] = [
    Field::Peer,
    Field::Severity,
    Field::Site,
    Field::Source,
    Field::Tag,
];

impl EventIn {
    /// The engine's view of a stored event. The raw payload is left out: no rule reads it,
    /// and windows and snapshots would otherwise carry up to 64 KiB per trigger. Moves the
    /// event (the live path); [`EventIn::from_stored`] copies it.
    pub fn from_owned(s: StoredEvent) -> EventIn {
        let id = s.id().into();
        let mut event = s.event;
        event.raw_payload = None;
        EventIn {
            id,
            site: s.site,
            agent: s.agent,
            event,
        }
    }

    /// As [`EventIn::from_owned`], from a borrowed event.
    pub fn from_stored(s: &StoredEvent) -> EventIn {
        let mut event = s.event.clone();
        event.raw_payload = None;
        EventIn {
            id: s.id().into(),
            site: s.site.clone(),
            agent: s.agent.clone(),
            event,
        }
    }

    /// The event's name for seed 003's `events` lists: its tag, else its event type.
    pub fn name(&self) -> Option<&str> {
        self.event
            .tag
            .as_deref()
            .or(self.event.event_type.as_deref())
    }

    /// Every property a `/regex/` copy directive can take, by canonical name, in name order
    /// (the engine builds a map of them: sorted input sorts in one pass). Names are allocated
    /// only for tags: the caller tests a name before it copies it.
    fn properties(&self) -> impl Iterator<Item = (Cow<'static, str>, &str)> {
        let plain = |f: &Field| {
            let name = f.plain_name()?;
            self.get(f).map(|v| (Cow::Borrowed(name), v))
        };
        PROPERTIES_BEFORE_NODE
            .iter()
            .filter_map(plain)
            .chain(std::iter::once((
                Cow::Borrowed("node"),
                self.event.hostname.as_str(),
            )))
            .chain(PROPERTIES_AFTER_NODE.iter().filter_map(plain))
            .chain(self.event.tags.iter().map(|(k, v)| {
                let mut name = String::with_capacity(5 + k.len());
                name.push_str("tags.");
                name.push_str(k);
                (Cow::Owned(name), v.as_str())
            }))
    }

    /// The value [`EventIn::properties`] lists under `name`, found without listing them (a
    /// firing that needs a few properties asks for each by name).
    fn listed_property(&self, name: &str) -> Option<&str> {
        if name == "node" {
            return Some(&self.event.hostname);
        }
        if let Some(k) = name.strip_prefix("tags.") {
            return self.event.tags.get(k).map(String::as_str);
        }
        PROPERTIES_BEFORE_NODE
            .iter()
            .chain(&PROPERTIES_AFTER_NODE)
            .find(|f| f.plain_name() == Some(name))
            .and_then(|f| self.get(f))
    }

    /// One property by canonical name (see [`rules::canonical_property`]).
    fn property(&self, name: &str) -> Option<&str> {
        if name == "node" {
            return Some(&self.event.hostname);
        }
        Field::parse(name).ok().and_then(|f| self.get(&f))
    }
}

impl Fields for EventIn {
    fn severity(&self, field: &Field) -> Option<Severity> {
        match field {
            Field::Severity => Some(self.event.severity),
            other => self.get(other).and_then(|v| v.parse().ok()),
        }
    }

    fn get(&self, field: &Field) -> Option<&str> {
        let e = &self.event;
        match field {
            Field::Source => Some(&e.source),
            Field::Hostname => Some(&e.hostname),
            Field::Severity => Some(e.severity.as_str()),
            Field::Message => Some(&e.message),
            Field::EventType => e.event_type.as_deref(),
            Field::Tag => e.tag.as_deref(),
            Field::Name => self.name(),
            Field::Input => Some(e.input.as_str()),
            Field::Site => Some(&self.site),
            Field::Agent => Some(&self.agent),
            Field::Peer => e.peer.as_deref(),
            Field::Id => Some(&self.id),
            Field::Tags(t) => e.tags.get(&**t).map(String::as_str),
        }
    }
}

/// What happens to the triggering events when a rule fires (seed 003).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TriggerHandling {
    /// Triggers keep their own alarms and actions ("plain" synthetic events).
    Plain,
    /// `delayed_action`: their held actions are dropped, they stay open.
    Superseded,
    /// `auto_acknowledge`: acknowledge and close them, no actions.
    Acknowledged,
}

/// The identity of a stateful synthetic incident (seed 003: node + stateful + element).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct StatefulKey {
    pub node: String,
    pub stateful: String,
    pub element: String,
}

/// A rule fired: open an incident.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IncidentDecision {
    /// Rule name, also the incident's title (seed 003: the synthetic event's name); shared
    /// with the rule set.
    #[serde(with = "arc_str")]
    pub rule: Arc<str>,
    /// The rule definition's hash: which version of the rule decided this.
    #[serde(with = "arc_str")]
    pub rule_version: Arc<str>,
    pub priority: i64,
    /// The group's values joined (`customer=acme`), empty for a global rule.
    pub group_key: String,
    /// The `group_by` fields and this group's values.
    pub group: Vec<(String, String)>,
    pub severity: Severity,
    pub contact_list: Option<String>,
    /// Event time of the first and last trigger.
    pub window: (Timestamp, Timestamp),
    /// The caller's clock when the rule fired.
    pub decided_at: Timestamp,
    /// Triggers, oldest first: the audit trail (seed 003 `eventids`).
    pub event_ids: Vec<String>,
    /// Distinct hostnames and sites of the triggers (seed 003 `nodes`).
    pub hosts: Vec<String>,
    pub sites: Vec<String>,
    /// The node the incident belongs to: set by a copy/enrich directive, else the default node.
    pub node: String,
    /// Properties after seed 003's copy and enrich steps.
    pub properties: BTreeMap<String, String>,
    /// Set when the incident is a stateful synthetic one, with its state.
    pub stateful: Option<(StatefulKey, String)>,
    pub triggers: TriggerHandling,
    /// The rule's seed 000 `suppress_individual`.
    pub suppress_individual: bool,
    /// The event that completed the window arrived after the watermark had passed it.
    pub late: bool,
    /// How far behind the clock the window's end was when the rule fired, in seconds.
    pub delay_secs: i64,
    /// Why the rule fired, in words; the text is built when it is displayed or serialised.
    pub explanation: Explanation,
}

/// A decision's explanation in words. The text is built when it is displayed or serialised,
/// not when the rule fires. Each opened incident is still formatted once (the live server's
/// incident note, a dry-run's JSON): this moves the work out of the engine's loop into whoever
/// reads it, so it saves real work only where nobody does (the benchmark, which found the
/// formatting of two timestamps and five pieces to be a tenth of the engine's time in an
/// outage storm). Serialises as the plain string; two explanations are equal when their texts
/// are, however they were built (e.g. one read back from JSON).
#[derive(Debug, Clone)]
pub struct Explanation(Repr);

impl PartialEq for Explanation {
    fn eq(&self, other: &Explanation) -> bool {
        match (&self.0, &other.0) {
            (Repr::Text(a), Repr::Text(b)) => a == b,
            _ => self.to_string() == other.to_string(),
        }
    }
}

#[derive(Debug, Clone)]
enum Repr {
    Text(String),
    Fired(Box<engine::Fired>),
}

impl Explanation {
    pub(crate) fn fired(f: engine::Fired) -> Explanation {
        Explanation(Repr::Fired(Box::new(f)))
    }
}

impl From<String> for Explanation {
    fn from(s: String) -> Explanation {
        Explanation(Repr::Text(s))
    }
}

impl std::fmt::Display for Explanation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Repr::Text(s) => f.write_str(s),
            Repr::Fired(x) => x.fmt(f),
        }
    }
}

impl Serialize for Explanation {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Explanation {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Explanation, D::Error> {
        String::deserialize(d).map(Explanation::from)
    }
}

/// An opposite rule fired: close a stateful synthetic incident.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClearDecision {
    /// The rule that fired (the "happy" one).
    pub rule: String,
    pub rule_version: String,
    /// The rule that had opened the incident.
    pub opened_by: String,
    pub key: StatefulKey,
    pub state: String,
    pub window: (Timestamp, Timestamp),
    pub decided_at: Timestamp,
    pub event_ids: Vec<String>,
    pub late: bool,
    pub explanation: String,
}

/// What the engine tells its caller to do. The per-event verdicts share the event's id and the
/// rule's name (`Arc<str>`): a matched event costs no string copies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum Decision {
    OpenIncident(Box<IncidentDecision>),
    ClearIncident(Box<ClearDecision>),
    /// A stateful synthetic incident fired again in the state it is already in (seed 003:
    /// statefully deduplicated): count it on the open incident.
    Deduplicated {
        rule: String,
        key: StatefulKey,
        state: String,
        event_ids: Vec<String>,
    },
    /// Seed 000 `suppress_individual`: the event raises no alarm or notification of its own.
    SuppressEvent {
        #[serde(with = "arc_str")]
        event_id: Arc<str>,
        #[serde(with = "arc_str")]
        rule: Arc<str>,
    },
    /// Seed 003 `delayed_action`: hold the event's actions until `until` (event time); a
    /// `ReleaseEvent` or a firing that supersedes it follows.
    HoldEvent {
        #[serde(with = "arc_str")]
        event_id: Arc<str>,
        #[serde(with = "arc_str")]
        rule: Arc<str>,
        until: Timestamp,
    },
    /// The hold ended without a combination: run the event's actions now.
    ReleaseEvent {
        #[serde(with = "arc_str")]
        event_id: Arc<str>,
        #[serde(with = "arc_str")]
        rule: Arc<str>,
    },
    /// Seed 003 (2.2.1): a trigger arriving while an `auto_acknowledge` rule is inhibited is
    /// acknowledged and closed.
    AcknowledgeEvent {
        #[serde(with = "arc_str")]
        event_id: Arc<str>,
        #[serde(with = "arc_str")]
        rule: Arc<str>,
        group_key: String,
    },
    /// The rule is inhibited for this group: the event was not counted.
    Inhibited {
        #[serde(with = "arc_str")]
        event_id: Arc<str>,
        #[serde(with = "arc_str")]
        rule: Arc<str>,
        group_key: String,
        until: Timestamp,
    },
    /// The rule fired, but every trigger came from a site that was unreachable at the time:
    /// the site-unreachable incident covers it.
    SiteInhibited {
        rule: String,
        group_key: String,
        sites: Vec<String>,
        event_ids: Vec<String>,
        explanation: String,
    },
}

impl Decision {
    /// A short name of the decision's kind, for metrics labels and summaries.
    pub fn kind(&self) -> &'static str {
        match self {
            Decision::OpenIncident(_) => "open_incident",
            Decision::ClearIncident(_) => "clear_incident",
            Decision::Deduplicated { .. } => "deduplicated",
            Decision::SuppressEvent { .. } => "suppress_event",
            Decision::HoldEvent { .. } => "hold_event",
            Decision::ReleaseEvent { .. } => "release_event",
            Decision::AcknowledgeEvent { .. } => "acknowledge_event",
            Decision::Inhibited { .. } => "inhibited",
            Decision::SiteInhibited { .. } => "site_inhibited",
        }
    }
}

/// Serde for `Arc<str>` as a plain string (serde's own impl needs its `rc` feature, which
/// would rebuild every crate that uses serde).
mod arc_str {
    use std::sync::Arc;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Arc<str>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Arc<str>, D::Error> {
        String::deserialize(d).map(Arc::from)
    }
}

/// Replays `events` (each with the clock value at which it arrived, e.g. `stored_at`) through
/// `rules` in a fresh engine, then lets the clock run out so every window and hold resolves.
/// Live state is never touched: this is `POST /api/v1/rules/dry-run` and `rules test`.
pub fn dry_run<'a>(
    rules: RuleSet,
    config: EngineConfig,
    events: impl IntoIterator<Item = (&'a EventIn, Timestamp)>,
) -> Vec<Decision> {
    let mut engine = Engine::new(rules, config);
    let mut out = Vec::new();
    let mut last = Timestamp::UNIX_EPOCH;
    for (ev, now) in events {
        last = last.max(now);
        out.extend(engine.push(Arc::new(ev.clone()), now));
    }
    out.extend(engine.finish(last));
    out
}

/// Seed 000's example rule, "Database Connectivity Failure", exactly as the seed writes it:
/// the rule format's reference example, shared by the unit and end-to-end tests.
#[doc(hidden)]
pub const SEED_000_RULE: &str = r#"{
  "name": "Database Connectivity Failure",
  "priority": 10,
  "enabled": true,
  "conditions": {
    "operator": "AND",
    "filters": [
      { "field": "hostname", "op": "matches", "value": "db-*" },
      { "field": "severity", "op": ">=", "value": "critical" },
      { "field": "message", "op": "contains_any",
        "value": ["connection refused", "max_connections", "too many connections"] }
    ]
  },
  "window_minutes": 5,
  "min_event_count": 2,
  "action": {
    "create_incident": true,
    "incident_severity": "CRITICAL",
    "contact_list": "DBA On-Call",
    "suppress_individual": true
  }
}"#;
