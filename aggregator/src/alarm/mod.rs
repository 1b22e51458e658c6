//! From events to alarms and incidents.
//!
//! Per event, at the aggregator: **transformation rules** ([`transform`], seed 002) → **event
//! definition** by tag ([`definition`], seed 001: severity, `dest`, alarm data) → store unless
//! `dest` says otherwise → update **alarms** ([`state`]), in the same redb transaction as the
//! event ([`persist`]). **Incidents** ([`incident`]) are created by correlation rules through
//! [`persist::create_incident`].
//!
//! The decision logic takes events and a clock value and returns outcomes ([`Processor`],
//! [`state`], [`incident`]); [`persist`] is the thin layer that reads and writes redb.
//!
//! Where each step runs: [`Processor::process`] is stateless, so it runs in the connection
//! tasks, in parallel, inside [`crate::store::prepare_with`]; alarm updates run in the single
//! store writer, inside [`crate::store::Store::commit_with`], only for records that are not
//! redeliveries.

pub mod definition;
pub mod incident;
pub mod list;
mod marks;
pub mod persist;
pub mod state;
pub mod template;
pub mod transform;
pub mod trap_policy;

use std::path::{Path, PathBuf};

use serde::Deserialize;
use weir_common::config::{ConfigError, HumanDuration};
use weir_common::{Event, InputKind};

use crate::store::StoredEvent;
use definition::{AlarmType, Definitions, Dest};
use state::{Clear, Problem};
use template::Context;
use transform::Transforms;

/// `[processing]` in aggregator.toml.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessingConfig {
    /// Transformation rules file; without it no rules run.
    #[serde(default)]
    pub transforms: Option<PathBuf>,
    /// Event definitions file; without it the built-in definitions apply
    /// (`aggregator/conf/definitions.toml`).
    #[serde(default)]
    pub definitions: Option<PathBuf>,
    /// How long a cleared alarm stays visible before it is removed.
    #[serde(default = "d_retention")]
    pub cleared_alarm_retention: HumanDuration,
    /// How long a clear is remembered after its alarm is removed (or when it came before its
    /// problem), so late, older problems do not open stale alarms.
    #[serde(default = "d_clear_memory")]
    pub clear_memory: HumanDuration,
    /// Most alarms kept (open, acknowledged and cleared). Problems that would open more are
    /// counted (`weir_aggregator_dropped_total{reason="alarm_limit"}`), still stored as events.
    #[serde(default = "d_max_alarms")]
    pub max_alarms: u64,
    /// Most clears remembered without their alarm (see `clear_memory`); over it the oldest
    /// are forgotten first (counted: `weir_aggregator_dropped_total{reason="clear_mark_limit"}`).
    #[serde(default = "d_max_clear_marks")]
    pub max_clear_marks: u64,
}

impl Default for ProcessingConfig {
    fn default() -> Self {
        ProcessingConfig {
            transforms: None,
            definitions: None,
            cleared_alarm_retention: d_retention(),
            clear_memory: d_clear_memory(),
            max_alarms: d_max_alarms(),
            max_clear_marks: d_max_clear_marks(),
        }
    }
}

fn d_retention() -> HumanDuration {
    HumanDuration::secs(3600)
}
fn d_clear_memory() -> HumanDuration {
    HumanDuration::secs(86_400)
}
fn d_max_alarms() -> u64 {
    100_000
}
fn d_max_clear_marks() -> u64 {
    100_000
}

impl ProcessingConfig {
    /// Resolves relative paths against the config file and checks values.
    pub fn resolve_and_check(&mut self, config_path: &Path) -> Result<(), ConfigError> {
        let resolve = |p: &Option<PathBuf>| {
            p.as_ref()
                .map(|p| weir_common::config::resolve(config_path, p))
        };
        self.transforms = resolve(&self.transforms);
        self.definitions = resolve(&self.definitions);
        let fail = |field: &str, message: &str| ConfigError::Check {
            path: config_path.to_path_buf(),
            field: field.into(),
            message: message.into(),
        };
        if self.max_alarms == 0 {
            return Err(fail("processing.max_alarms", "must be at least 1"));
        }
        if self.max_clear_marks == 0 {
            return Err(fail("processing.max_clear_marks", "must be at least 1"));
        }
        if self.clear_memory < self.cleared_alarm_retention {
            return Err(fail(
                "processing.clear_memory",
                "must be at least cleared_alarm_retention",
            ));
        }
        Ok(())
    }
}

/// Compiled transforms and definitions: what [`Processor::process`] applies to every event.
#[derive(Debug)]
pub struct Processor {
    pub transforms: Transforms,
    pub definitions: Definitions,
}

/// Why an event is not stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotStored {
    /// A transformation rule suppressed it (the rule's name).
    Suppressed(String),
    /// Its definition says `suppress` (or `discardtraps` for a non-trap).
    DefinitionSuppress,
    /// Its definition says `discardtraps` and it is a trap.
    DiscardTrap,
    /// Its definition says `donotpersist`: not stored, but alarms still see it.
    DoNotPersist,
}

impl NotStored {
    /// The `reason` label of `weir_aggregator_dropped_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            NotStored::Suppressed(_) => "transform_suppress",
            NotStored::DefinitionSuppress => "definition_suppress",
            NotStored::DiscardTrap => "discardtraps",
            NotStored::DoNotPersist => "donotpersist",
        }
    }
}

/// What processing decided for one event: whether it is stored, and its alarm effects.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outcome {
    /// The agent sequence of the record (filled by the caller that knows it).
    pub seq: u64,
    pub not_stored: Option<NotStored>,
    pub problem: Option<Problem>,
    pub clears: Vec<Clear>,
    /// A `donotpersist` event, encoded as [`StoredEvent`] (with its sequence): not stored,
    /// but handed to correlation after the commit.
    pub unstored: Option<Vec<u8>>,
}

impl Outcome {
    pub fn stored(&self) -> bool {
        self.not_stored.is_none()
    }

    /// Whether there is anything for the writer to do (most events: nothing).
    pub fn is_noop(&self) -> bool {
        self.not_stored.is_none() && self.problem.is_none() && self.clears.is_empty()
    }

    /// Gives an outcome decided before its event had a sequence (API ingest numbers events in
    /// the writer) that sequence and the fleet id made of it.
    pub fn with_id(mut self, seq: u64, event_id: &str) -> Outcome {
        self.seq = seq;
        if let Some(p) = &mut self.problem {
            p.event_id = event_id.to_string();
        }
        for c in &mut self.clears {
            c.event_id = event_id.to_string();
        }
        self
    }
}

/// The tag `logonly` events are stored with, so default views can hide them.
pub const DEST_TAG: &str = "weir.dest";

/// The tag a problem event is stored with: the reduction key of the alarm it raised, so a
/// later first-stage dedup count update for the event raises that alarm's count too
/// ([`persist::apply_counts`]).
pub const ALARM_TAG: &str = "weir.alarm";

impl Processor {
    /// Loads the files `cfg` names (the built-in definitions when it names none).
    pub fn load(cfg: &ProcessingConfig) -> Result<Processor, ConfigError> {
        let transforms = match &cfg.transforms {
            Some(p) => Transforms::load(p)?,
            None => Transforms::default(),
        };
        let definitions = match &cfg.definitions {
            Some(p) => Definitions::load(p)?,
            None => Definitions::defaults(),
        };
        Ok(Processor {
            transforms,
            definitions,
        })
    }

    /// Transforms `event` (from `site`, fleet id `event_id`) in place and decides its fate.
    pub fn process(&self, site: &str, event_id: &str, event: &mut Event) -> Outcome {
        let applied = self.transforms.apply(site, event);
        let mut out = Outcome {
            clears: applied
                .close
                .into_iter()
                .map(|key| Clear {
                    key,
                    event_id: event_id.to_string(),
                    event_time: event.event_time,
                })
                .collect(),
            ..Outcome::default()
        };
        if let Some(rule) = applied.suppressed_by {
            out.not_stored = Some(NotStored::Suppressed(rule));
            return out;
        }
        let Some(tag) = event.tag.clone() else {
            return out;
        };
        let Some((def, matched)) = self.definitions.lookup(&tag) else {
            return out;
        };
        if let Some(s) = def.severity {
            event.severity = s;
        }
        match def.dest {
            Dest::Logndisplay => {}
            Dest::Logonly => {
                event.tags.insert(DEST_TAG.into(), "logonly".into());
            }
            Dest::Suppress => {
                out.not_stored = Some(NotStored::DefinitionSuppress);
                return out;
            }
            Dest::Discardtraps => {
                out.not_stored = Some(if event.input == InputKind::SnmpTrap {
                    NotStored::DiscardTrap
                } else {
                    NotStored::DefinitionSuppress
                });
                return out;
            }
            Dest::Donotpersist => out.not_stored = Some(NotStored::DoNotPersist),
        }
        let Some(alarm) = &def.alarm else {
            return out;
        };
        let cx = Context {
            site,
            event,
            matched,
        };
        match alarm.kind {
            AlarmType::Problem => {
                if let Some(t) = &alarm.reduction_key {
                    let key = t.expand(cx);
                    event.tags.insert(ALARM_TAG.into(), key.clone());
                    out.problem = Some(Problem {
                        key,
                        event_id: event_id.to_string(),
                        event_time: event.event_time,
                        severity: event.severity,
                        count: event.count,
                        site: site.to_string(),
                        hostname: event.hostname.clone(),
                        tag: event.tag.clone(),
                        message: event.message.clone(),
                    });
                }
            }
            AlarmType::Resolution => {
                if let Some(t) = &alarm.clear_key {
                    out.clears.push(Clear {
                        key: t.expand(cx),
                        event_id: event_id.to_string(),
                        event_time: event.event_time,
                    });
                }
            }
            AlarmType::Notification => {}
        }
        out
    }

    /// Whether [`Processor::process`] would leave this event as it is and decide nothing for
    /// it (a no-op [`Outcome`]): no transformation rule is loaded (any rule might match, and
    /// they read the whole event) and no event definition exists for its tag.
    pub fn leaves_alone(&self, event: &weir_common::event::EventView<'_>) -> bool {
        self.transforms.rules.is_empty()
            && event
                .tag
                .is_none_or(|tag| self.definitions.lookup(tag).is_none())
    }

    /// [`Processor::process`] on a [`StoredEvent`] (its fleet id is known).
    pub fn process_stored(&self, stored: &mut StoredEvent) -> Outcome {
        // Most events touch no alarm: format the fleet id only for those that do.
        let out = self.process(&stored.site, "", &mut stored.event);
        if out.is_noop() {
            Outcome {
                seq: stored.seq,
                ..out
            }
        } else {
            out.with_id(stored.seq, &stored.id())
        }
    }
}

/// Decodes and encodes a batch as [`crate::store::prepare`] does, running `processor` on each
/// event first: the records for the writer, and the outcomes it must apply (only the events
/// that need it).
pub fn prepare_batch(
    processor: &Processor,
    site: &str,
    name: &str,
    batch: &weir_common::wire::Batch,
    now: jiff::Timestamp,
) -> (Vec<crate::store::Prepared>, Vec<Outcome>) {
    prepare_records(processor, site, name, &batch.borrowed().records, now)
}

/// [`prepare_batch`] of a batch decoded borrowed from its frame (the ingest session's way).
/// Events no transform or definition applies to are stored as the agent encoded them
/// ([`Processor::leaves_alone`]); the others are decoded, processed and encoded again.
pub fn prepare_records(
    processor: &Processor,
    site: &str,
    name: &str,
    records: &[weir_common::wire::WireRecordRef<'_>],
    now: jiff::Timestamp,
) -> (Vec<crate::store::Prepared>, Vec<Outcome>) {
    let mut outcomes = Vec::new();
    let records = crate::store::prepare_with(
        site,
        name,
        records.iter().map(|r| (r.seq, r.payload)),
        now,
        |view| processor.leaves_alone(view),
        |stored| {
            let mut o = processor.process_stored(stored);
            if o.not_stored == Some(NotStored::DoNotPersist) {
                o.unstored = postcard::to_allocvec(&*stored).ok();
            }
            let keep = o.stored();
            if !o.is_noop() {
                outcomes.push(o);
            }
            keep
        },
    );
    (records, outcomes)
}

/// The line of byte offset `offset` in `text` (1-based).
pub(crate) fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// A rule-file error naming file, line, rule and field.
pub(crate) fn rule_error(
    path: &Path,
    line: usize,
    kind: &str,
    index: usize,
    name: &str,
    field: &str,
    message: String,
) -> ConfigError {
    ConfigError::Invalid {
        path: path.to_path_buf(),
        line,
        column: 1,
        message: format!("{kind} #{} {name:?}: {field}: {message}", index + 1),
    }
}

#[cfg(test)]
pub(crate) mod tests;
