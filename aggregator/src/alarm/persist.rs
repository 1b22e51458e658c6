//! Alarms, incidents and their counters in the aggregator's redb file, beside the events.
//!
//! The functions taking a `&WriteTransaction` run inside the store writer's transaction (see
//! [`crate::store::Store::commit_with`]), so an event and the alarm it raises are committed
//! together or not at all. The logic is in [`super::state`] and [`super::incident`]; this
//! module only loads a value, calls it, and writes the result back.
//!
//! # Tables (values postcard)
//! - `alarms`: reduction key → [`Alarm`]; `alarm_ids`: alarm id → reduction key.
//! - `alarm_by_status`: `(status, id)` → reduction key, for listing ([`super::list`]).
//! - `alarm_clear_marks`, `alarm_clear_mark_ages`: clears without an alarm, capped
//!   ([`super::marks`]).
//! - `incidents`: incident number → [`Incident`]; `alarm_incidents`: reduction key →
//!   incident numbers holding it (multimap), for auto-resolve.
//! - `alarm_counters`: `next_alarm`, `next_incident`, `suppressed:<rule>`,
//!   `index_version` (of `alarm_by_status` and `alarm_clear_mark_ages`) → u64.
//!
//! Events that raised an alarm carry its reduction key in tag [`super::ALARM_TAG`]: a
//! first-stage dedup count update for such an event raises that alarm's count too
//! ([`apply_counts`], called by the store in the same transaction).

use std::sync::{Arc, RwLock};

use jiff::Timestamp;
use redb::{
    Database, MultimapTableDefinition, ReadableDatabase, ReadableMultimapTable, ReadableTable,
    ReadableTableMetadata, TableDefinition, WriteTransaction,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use weir_common::config::ConfigError;

use super::incident::{self, EventRef, Incident, IncidentError, IncidentSpec};
use super::list;
use super::marks::Marks;
use super::state::{self, Alarm, AlarmAction, AlarmStatus, AlarmTransitionError, Change};
use super::{NotStored, Outcome, ProcessingConfig, Processor};
use crate::store::{Store, StoredEvent};

pub(crate) const ALARMS: TableDefinition<&str, &[u8]> = TableDefinition::new("alarms");
pub(crate) const ALARM_IDS: TableDefinition<u64, &str> = TableDefinition::new("alarm_ids");
const INCIDENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("incidents");
const ALARM_INCIDENTS: MultimapTableDefinition<&str, u64> =
    MultimapTableDefinition::new("alarm_incidents");
pub(crate) const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("alarm_counters");

/// The version of the alarm indexes; a store with an older one has them rebuilt at startup.
const INDEX_VERSION: u64 = 1;

pub(super) fn enc<T: Serialize>(v: &T) -> Vec<u8> {
    postcard::to_allocvec(v).expect("postcard encoding into a Vec")
}

pub(crate) fn dec<T: DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, redb::Error> {
    postcard::from_bytes(bytes)
        .map_err(|e| redb::StorageError::Corrupted(format!("{what}: {e}")).into())
}

/// Creates the tables (at startup, so readers never find them missing), and builds the
/// indexes of a store written before they existed (bounded by `max_alarms` and
/// `max_clear_marks`, so one transaction).
pub fn init(db: &Database) -> Result<(), redb::Error> {
    let txn = db.begin_write()?;
    {
        let alarms = txn.open_table(ALARMS)?;
        txn.open_table(ALARM_IDS)?;
        let mut by_status = txn.open_table(list::BY_STATUS)?;
        let mut marks = Marks::open(&txn)?;
        txn.open_table(INCIDENTS)?;
        txn.open_multimap_table(ALARM_INCIDENTS)?;
        let mut counters = txn.open_table(COUNTERS)?;
        let version = counters.get("index_version")?.map_or(0, |v| v.value());
        if version < INDEX_VERSION {
            if !alarms.is_empty()? || marks.len()? > 0 {
                tracing::info!("building the alarm indexes (once, after an upgrade)");
            }
            by_status.retain(|_, _| false)?;
            for item in alarms.iter()? {
                let (_, v) = item?;
                let a: Alarm = dec("alarm", v.value())?;
                list::reindex(&mut by_status, None, &a)?;
            }
            marks.rebuild_ages()?;
            counters.insert("index_version", INDEX_VERSION)?;
        }
    }
    txn.commit()?;
    Ok(())
}

fn next(txn: &WriteTransaction, counter: &str) -> Result<u64, redb::Error> {
    let mut c = txn.open_table(COUNTERS)?;
    let n = c.get(counter)?.map_or(1, |v| v.value());
    c.insert(counter, n + 1)?;
    Ok(n)
}

/// What applying a group of outcomes did (metrics are counted by the caller after commit).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Applied {
    pub opened: u64,
    pub reopened: u64,
    pub cleared: u64,
    pub updated: u64,
    pub clears_remembered: u64,
    /// Alarms whose count a first-stage dedup count update raised ([`apply_counts`]).
    pub count_raised: u64,
    /// Problems refused because `max_alarms` alarms exist.
    pub over_limit: u64,
    /// Clear marks evicted, oldest first, because `max_clear_marks` are kept.
    pub marks_evicted: u64,
    /// Events not stored, by reason (and the suppressing rule).
    pub not_stored: Vec<NotStored>,
    /// Incidents auto-resolved because their last alarm cleared.
    pub auto_resolved: Vec<String>,
}

impl Applied {
    /// Counts everything in Prometheus and logs what an operator should know.
    pub fn record_metrics(&self) {
        for (what, n) in [
            ("opened", self.opened),
            ("reopened", self.reopened),
            ("cleared", self.cleared),
            ("updated", self.updated),
            ("clear_remembered", self.clears_remembered),
            ("count_update", self.count_raised),
        ] {
            if n > 0 {
                metrics::counter!("weir_aggregator_alarm_changes_total", "change" => what)
                    .increment(n);
            }
        }
        if self.over_limit > 0 {
            metrics::counter!("weir_aggregator_dropped_total", "reason" => "alarm_limit")
                .increment(self.over_limit);
            weir_common::warn_limited!(
                "alarm_limit",
                refused = self.over_limit,
                "processing.max_alarms alarms exist: new problems raise no alarm (their events are stored). Clear alarms or raise the limit"
            );
        }
        record_evictions(self.marks_evicted);
        for ns in &self.not_stored {
            metrics::counter!("weir_aggregator_dropped_total", "reason" => ns.reason())
                .increment(1);
            if let NotStored::Suppressed(rule) = ns {
                metrics::counter!("weir_aggregator_transform_suppressed_total", "rule" => rule.clone())
                    .increment(1);
            }
        }
        for id in &self.auto_resolved {
            tracing::info!(incident = %id, "auto-resolved: every alarm it holds has cleared");
        }
    }
}

fn record_evictions(n: u64) {
    if n > 0 {
        metrics::counter!("weir_aggregator_dropped_total", "reason" => "clear_mark_limit")
            .increment(n);
        weir_common::warn_limited!(
            "clear_mark_limit",
            evicted = n,
            "processing.max_clear_marks clears without an alarm are remembered: the oldest were forgotten, so a late problem older than them may open an alarm to clear by hand. Look for a source of clears without problems, or raise the limit"
        );
    }
}

/// Writes alarm `a` under `key` and keeps `alarm_by_status` in step (`before`: its status
/// as read, `None` for a new alarm).
fn put_alarm(
    alarms: &mut redb::Table<'_, &'static str, &'static [u8]>,
    by_status: &mut redb::Table<'_, (u8, u64), &'static str>,
    key: &str,
    before: Option<AlarmStatus>,
    a: &Alarm,
) -> Result<(), redb::Error> {
    alarms.insert(key, enc(a).as_slice())?;
    list::reindex(by_status, before, a)?;
    Ok(())
}

/// Applies processing outcomes inside the writer's transaction.
pub fn apply<'a>(
    txn: &WriteTransaction,
    outcomes: impl IntoIterator<Item = &'a Outcome>,
    cfg: &ProcessingConfig,
    now: Timestamp,
) -> Result<Applied, redb::Error> {
    let mut out = Applied::default();
    let mut cleared_keys = Vec::new();
    {
        let mut alarms = txn.open_table(ALARMS)?;
        let mut ids = txn.open_table(ALARM_IDS)?;
        let mut by_status = txn.open_table(list::BY_STATUS)?;
        let mut marks = Marks::open(txn)?;
        for o in outcomes {
            if let Some(ns) = &o.not_stored {
                out.not_stored.push(ns.clone());
                if let NotStored::Suppressed(rule) = ns {
                    let mut c = txn.open_table(COUNTERS)?;
                    let key = format!("suppressed:{rule}");
                    let n = c.get(key.as_str())?.map_or(0, |v| v.value());
                    c.insert(key.as_str(), n + 1)?;
                }
            }
            for c in &o.clears {
                let existing = alarms
                    .get(c.key.as_str())?
                    .map(|v| dec::<Alarm>("alarm", v.value()))
                    .transpose()?;
                match existing {
                    Some(a) => {
                        let before = a.status;
                        let (a, change) = state::clear(a, c, now);
                        put_alarm(&mut alarms, &mut by_status, &c.key, Some(before), &a)?;
                        if change == Change::Cleared {
                            out.cleared += 1;
                            cleared_keys.push(c.key.clone());
                        }
                    }
                    None => {
                        let old = marks.get(&c.key)?;
                        let mark = state::remember(old.clone(), c, now);
                        out.marks_evicted +=
                            marks.put(&c.key, old.as_ref(), &mark, cfg.max_clear_marks)?;
                        out.clears_remembered += 1;
                    }
                }
            }
            let Some(p) = &o.problem else { continue };
            let existing = alarms
                .get(p.key.as_str())?
                .map(|v| dec::<Alarm>("alarm", v.value()))
                .transpose()?;
            let before = existing.as_ref().map(|a| a.status);
            let mark = if existing.is_none() {
                if alarms.len()? >= cfg.max_alarms {
                    out.over_limit += 1;
                    continue;
                }
                marks.take(&p.key)?
            } else {
                None
            };
            let mut new_id = None;
            let (a, change) = state::raise(
                existing,
                mark,
                p,
                || {
                    let id = next(txn, "next_alarm").unwrap_or(0);
                    new_id = Some(id);
                    id
                },
                now,
            );
            if let Some(id) = new_id {
                if id == 0 {
                    return Err(
                        redb::StorageError::Corrupted("cannot read alarm_counters".into()).into(),
                    );
                }
                ids.insert(id, p.key.as_str())?;
            }
            put_alarm(&mut alarms, &mut by_status, &p.key, before, &a)?;
            match change {
                Change::Opened | Change::OpenedCleared => out.opened += 1,
                Change::Reopened => out.reopened += 1,
                _ => out.updated += 1,
            }
        }
    }
    for key in cleared_keys {
        out.auto_resolved
            .extend(auto_resolve_holding(txn, &key, now)?);
    }
    Ok(out)
}

/// The event time of an event's last repeat (see [`apply_counts`]).
fn repeat_time(e: &weir_common::Event) -> Timestamp {
    let span_us = e
        .last_seen
        .as_microsecond()
        .saturating_sub(e.first_seen.as_microsecond())
        .max(0);
    Timestamp::from_microsecond(e.event_time.as_microsecond().saturating_add(span_us))
        .unwrap_or(e.event_time)
}

/// A first-stage dedup count update that raised a stored event's count by `delta`: the
/// event as it is now (count and `last_seen` updated).
#[derive(Debug, Clone)]
pub struct CountRaise {
    pub delta: u64,
    pub stored: StoredEvent,
}

impl CountRaise {
    /// The raise to apply to an alarm, if the event raised one (it carries
    /// [`super::ALARM_TAG`]) and its count went up.
    pub fn of(old_count: u64, stored: &StoredEvent) -> Option<CountRaise> {
        let delta = stored
            .event
            .count
            .checked_sub(old_count)
            .filter(|&d| d > 0)?;
        stored
            .event
            .tags
            .contains_key(super::ALARM_TAG)
            .then(|| CountRaise {
                delta,
                stored: stored.clone(),
            })
    }
}

/// Raises the alarms that count-updated events fed, inside the store writer's transaction
/// (after [`apply`], so an event and its count update in one commit both count). The alarm
/// gains the update's delta (counts are absolute, so a replay adds nothing) and the last
/// repeat's time as its newest problem when it is newer: a repeat newer than the alarm's
/// clear re-opens it, like any newer problem. Events that raised no alarm, or whose alarm is
/// gone (cleared and expired), change nothing.
///
/// Alarms order by event time (the device's clock) but the agent stamps repeats with its
/// own receive time, so the last repeat's event time is taken as the event's time plus how
/// long the repeats went on (`last_seen - first_seen`): a device clock an hour behind then
/// cannot make a repeat look newer than a clear the device sent after it.
pub fn apply_counts(
    txn: &WriteTransaction,
    raises: &[CountRaise],
    now: Timestamp,
) -> Result<Applied, redb::Error> {
    let mut out = Applied::default();
    if raises.is_empty() {
        return Ok(out);
    }
    let mut alarms = txn.open_table(ALARMS)?;
    let mut by_status = txn.open_table(list::BY_STATUS)?;
    for r in raises {
        let e = &r.stored.event;
        let Some(key) = e.tags.get(super::ALARM_TAG) else {
            continue;
        };
        let Some(a) = alarms
            .get(key.as_str())?
            .map(|v| dec::<Alarm>("alarm", v.value()))
            .transpose()?
        else {
            continue;
        };
        let before = a.status;
        let p = state::Problem {
            key: key.clone(),
            event_id: r.stored.id(),
            event_time: repeat_time(e),
            severity: e.severity,
            count: r.delta,
            site: r.stored.site.clone(),
            hostname: e.hostname.clone(),
            tag: e.tag.clone(),
            message: e.message.clone(),
        };
        // An existing alarm keeps its id: the id source is never called.
        let (a, change) = state::raise(Some(a), None, &p, || 0, now);
        put_alarm(&mut alarms, &mut by_status, key, Some(before), &a)?;
        out.count_raised += 1;
        if change == Change::Reopened {
            out.reopened += 1;
        }
    }
    Ok(out)
}

/// Auto-resolves the incidents holding alarm `key` whose alarms have all cleared.
fn auto_resolve_holding(
    txn: &WriteTransaction,
    key: &str,
    now: Timestamp,
) -> Result<Vec<String>, redb::Error> {
    let numbers: Vec<u64> = {
        let idx = txn.open_multimap_table(ALARM_INCIDENTS)?;
        let mut v = Vec::new();
        for n in idx.get(key)? {
            v.push(n?.value());
        }
        v
    };
    let mut resolved = Vec::new();
    for n in numbers {
        let Some(mut inc) = load_incident(txn, n)? else {
            continue;
        };
        let cleared: Vec<bool> = {
            let alarms = txn.open_table(ALARMS)?;
            let mut v = Vec::with_capacity(inc.alarms.len());
            for k in &inc.alarms {
                // A removed alarm (retention) was cleared.
                v.push(match alarms.get(k.as_str())? {
                    None => true,
                    Some(a) => dec::<Alarm>("alarm", a.value())?.status == AlarmStatus::Cleared,
                });
            }
            v
        };
        let keys = inc.alarms.clone();
        let is_cleared = |k: &str| keys.iter().position(|x| x == k).is_some_and(|i| cleared[i]);
        if incident::auto_resolve(&mut inc, is_cleared, now) {
            save_incident(txn, &inc)?;
            resolved.push(inc.id.clone());
        }
    }
    Ok(resolved)
}

fn load_incident(txn: &WriteTransaction, n: u64) -> Result<Option<Incident>, redb::Error> {
    let t = txn.open_table(INCIDENTS)?;
    let v = t.get(n)?;
    v.map(|v| dec("incident", v.value())).transpose()
}

fn save_incident(txn: &WriteTransaction, inc: &Incident) -> Result<(), redb::Error> {
    let mut t = txn.open_table(INCIDENTS)?;
    t.insert(inc.number, enc(inc).as_slice())?;
    Ok(())
}

fn index_alarms(txn: &WriteTransaction, inc: &Incident) -> Result<(), redb::Error> {
    let mut idx = txn.open_multimap_table(ALARM_INCIDENTS)?;
    for k in &inc.alarms {
        idx.insert(k.as_str(), inc.number)?;
    }
    Ok(())
}

/// Creates an incident (for correlation rules), inside `txn`: numbers it, indexes its alarms
/// and sets `correlated_incident` on the stored events it holds.
pub fn create_incident(
    txn: &WriteTransaction,
    spec: IncidentSpec,
    now: Timestamp,
) -> Result<Incident, redb::Error> {
    let number = next(txn, "next_incident")?;
    let inc = incident::create_incident(number, spec, now);
    save_incident(txn, &inc)?;
    index_alarms(txn, &inc)?;
    Store::mark_correlated(txn, &inc.events, &inc.id)?;
    metrics::counter!("weir_aggregator_incidents_created_total").increment(1);
    Ok(inc)
}

/// Adds events (and alarms) to incident `number` inside `txn`; `None` if it does not exist.
pub fn attach_events(
    txn: &WriteTransaction,
    number: u64,
    events: &[EventRef],
    alarms: &[String],
    by: &str,
    now: Timestamp,
) -> Result<Option<Incident>, redb::Error> {
    let Some(mut inc) = load_incident(txn, number)? else {
        return Ok(None);
    };
    let added = incident::attach_events(&mut inc, events, by, now);
    incident::attach_alarms(&mut inc, alarms, by, now);
    save_incident(txn, &inc)?;
    index_alarms(txn, &inc)?;
    Store::mark_correlated(txn, &added, &inc.id)?;
    Ok(Some(inc))
}

/// Changes incident `number` with `f` inside `txn` (correlation notes its explanation this
/// way, in the transaction that creates the incident); `None` if it does not exist.
pub fn update_incident_in(
    txn: &WriteTransaction,
    number: u64,
    f: impl FnOnce(&mut Incident) -> Result<(), IncidentError>,
) -> Result<Option<Result<Incident, IncidentError>>, redb::Error> {
    let Some(mut inc) = load_incident(txn, number)? else {
        return Ok(None);
    };
    if let Err(e) = f(&mut inc) {
        return Ok(Some(Err(e)));
    }
    save_incident(txn, &inc)?;
    Ok(Some(Ok(inc)))
}

/// Why an action was not done.
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    #[error("not found")]
    NotFound,
    #[error(transparent)]
    Alarm(#[from] AlarmTransitionError),
    #[error(transparent)]
    Incident(#[from] IncidentError),
    #[error("store: {0}")]
    Store(#[from] redb::Error),
}

impl From<redb::TransactionError> for ActionError {
    fn from(e: redb::TransactionError) -> Self {
        ActionError::Store(e.into())
    }
}
impl From<redb::CommitError> for ActionError {
    fn from(e: redb::CommitError) -> Self {
        ActionError::Store(e.into())
    }
}
impl From<redb::TableError> for ActionError {
    fn from(e: redb::TableError) -> Self {
        ActionError::Store(e.into())
    }
}
impl From<redb::StorageError> for ActionError {
    fn from(e: redb::StorageError) -> Self {
        ActionError::Store(e.into())
    }
}

/// An operator action on alarm `id`, in its own durable transaction.
pub fn alarm_action(
    db: &Database,
    id: u64,
    action: AlarmAction,
    by: &str,
    now: Timestamp,
) -> Result<(Alarm, Vec<String>), ActionError> {
    let txn = db.begin_write()?;
    let (a, resolved) = {
        let key = {
            let ids = txn.open_table(ALARM_IDS)?;
            let k = ids.get(id)?.map(|v| v.value().to_string());
            k.ok_or(ActionError::NotFound)?
        };
        let mut alarms = txn.open_table(ALARMS)?;
        let mut by_status = txn.open_table(list::BY_STATUS)?;
        let a: Alarm = match alarms.get(key.as_str())? {
            Some(v) => dec("alarm", v.value())?,
            None => return Err(ActionError::NotFound),
        };
        let before = a.status;
        let a = state::act(a, action, by, now)?;
        put_alarm(&mut alarms, &mut by_status, &key, Some(before), &a)?;
        drop((alarms, by_status));
        let resolved = if action == AlarmAction::Clear {
            auto_resolve_holding(&txn, &key, now)?
        } else {
            Vec::new()
        };
        (a, resolved)
    };
    txn.commit()?;
    for id in &resolved {
        tracing::info!(incident = %id, "auto-resolved: every alarm it holds has cleared");
    }
    Ok((a, resolved))
}

/// Changes incident `number` with `f` (a transition, a note, an assignment), in its own
/// durable transaction; nothing is written when `f` refuses.
pub fn incident_update(
    db: &Database,
    number: u64,
    f: impl FnOnce(&mut Incident) -> Result<(), IncidentError>,
) -> Result<Incident, ActionError> {
    let txn = db.begin_write()?;
    let Some(mut inc) = load_incident(&txn, number)? else {
        return Err(ActionError::NotFound);
    };
    f(&mut inc)?;
    save_incident(&txn, &inc)?;
    txn.commit()?;
    Ok(inc)
}

pub fn alarm(db: &Database, id: u64) -> Result<Option<Alarm>, redb::Error> {
    let txn = db.begin_read()?;
    let ids = txn.open_table(ALARM_IDS)?;
    let Some(key) = ids.get(id)?.map(|v| v.value().to_string()) else {
        return Ok(None);
    };
    let t = txn.open_table(ALARMS)?;
    let v = t.get(key.as_str())?;
    v.map(|v| dec("alarm", v.value())).transpose()
}

pub fn alarm_by_key(db: &Database, key: &str) -> Result<Option<Alarm>, redb::Error> {
    let txn = db.begin_read()?;
    let t = txn.open_table(ALARMS)?;
    let v = t.get(key)?;
    v.map(|v| dec("alarm", v.value())).transpose()
}

/// Incidents newest first with a number below `before`, that satisfy `keep`: up to `limit`,
/// and how many satisfy it in all.
pub fn incidents(
    db: &Database,
    limit: usize,
    before: Option<u64>,
    keep: impl Fn(&Incident) -> bool,
) -> Result<(Vec<Incident>, u64), redb::Error> {
    let txn = db.begin_read()?;
    let t = txn.open_table(INCIDENTS)?;
    let mut page = Vec::new();
    let mut total = 0;
    for item in t.iter()?.rev() {
        let (k, v) = item?;
        let inc: Incident = dec("incident", v.value())?;
        if !keep(&inc) {
            continue;
        }
        total += 1;
        if page.len() < limit && before.is_none_or(|b| k.value() < b) {
            page.push(inc);
        }
    }
    Ok((page, total))
}

pub fn incident(db: &Database, number: u64) -> Result<Option<Incident>, redb::Error> {
    let txn = db.begin_read()?;
    let t = txn.open_table(INCIDENTS)?;
    let v = t.get(number)?;
    v.map(|v| dec("incident", v.value())).transpose()
}

/// A persisted counter (`suppressed:<rule>`, `next_alarm`, ...).
pub fn counter(db: &Database, name: &str) -> Result<u64, redb::Error> {
    let txn = db.begin_read()?;
    let t = txn.open_table(COUNTERS)?;
    Ok(t.get(name)?.map_or(0, |v| v.value()))
}

/// What one [`expire`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Expired {
    /// Cleared alarms removed after `cleared_alarm_retention`.
    pub removed: u64,
    /// Clear marks forgotten after `clear_memory`.
    pub forgotten: u64,
    /// Clear marks evicted because `max_clear_marks` are kept (the marks removed alarms
    /// leave behind count too).
    pub evicted: u64,
}

/// Removes cleared alarms kept longer than the retention (leaving a clear mark behind) and
/// forgets clear marks older than `clear_memory`. Reads only cleared alarms and old marks.
pub fn expire(
    db: &Database,
    cfg: &ProcessingConfig,
    now: Timestamp,
) -> Result<Expired, redb::Error> {
    let txn = db.begin_write()?;
    let mut out = Expired::default();
    {
        let mut alarms = txn.open_table(ALARMS)?;
        let mut ids = txn.open_table(ALARM_IDS)?;
        let mut by_status = txn.open_table(list::BY_STATUS)?;
        let mut marks = Marks::open(&txn)?;
        let memory_us = cfg.clear_memory.0.as_micros().min(i64::MAX as u128) as i64;
        out.forgotten = marks.forget_until(now.as_microsecond().saturating_sub(memory_us))?;
        let mut gone = Vec::new();
        for k in list::cleared_keys(&by_status)? {
            let Some(v) = alarms.get(k.as_str())? else {
                continue;
            };
            let a: Alarm = dec("alarm", v.value())?;
            if state::expired(&a, now, cfg.cleared_alarm_retention.0) {
                gone.push((k, a));
            }
        }
        for (k, a) in gone {
            alarms.remove(k.as_str())?;
            ids.remove(a.id)?;
            list::unindex(&mut by_status, &a)?;
            if let Some(m) = state::mark_of(&a, now) {
                let old = marks.get(&k)?;
                out.evicted += marks.put(&k, old.as_ref(), &m, cfg.max_clear_marks)?;
            }
            out.removed += 1;
        }
    }
    txn.commit()?;
    Ok(out)
}

/// The shared handle: the current rules (swapped whole on reload) and where state lives.
#[derive(Debug)]
pub struct Engine {
    pub store: Arc<Store>,
    pub config: ProcessingConfig,
    processor: RwLock<Arc<Processor>>,
    /// The trap drop policy agents get (protocol v2), from the current definitions and
    /// transforms; every open session watches it and sends each new one.
    trap_policy: tokio::sync::watch::Sender<Arc<weir_common::trap_policy::TrapPolicy>>,
}

impl Engine {
    /// Loads the rules and creates the tables.
    pub fn new(store: Arc<Store>, config: ProcessingConfig) -> anyhow::Result<Engine> {
        let processor = Processor::load(&config)?;
        init(store.database())?;
        tracing::info!(
            transforms = processor.transforms.rules.len(),
            definitions = processor.definitions.len(),
            "event processing rules loaded"
        );
        let policy =
            super::trap_policy::compute_and_log(&processor.definitions, &processor.transforms);
        Ok(Engine {
            store,
            config,
            processor: RwLock::new(Arc::new(processor)),
            trap_policy: tokio::sync::watch::Sender::new(Arc::new(policy)),
        })
    }

    /// The rules now in force (cheap: an `Arc`).
    pub fn processor(&self) -> Arc<Processor> {
        self.processor
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The trap drop policy for agents, and its later changes.
    pub fn trap_policy(
        &self,
    ) -> tokio::sync::watch::Receiver<Arc<weir_common::trap_policy::TrapPolicy>> {
        self.trap_policy.subscribe()
    }

    /// Re-reads the transforms and definitions files. Alarm state is untouched; a file that
    /// fails validation changes nothing (the error says which file, line, rule and field).
    pub fn reload(&self) -> Result<(usize, usize), ConfigError> {
        match Processor::load(&self.config) {
            Ok(p) => {
                let counts = (p.transforms.rules.len(), p.definitions.len());
                let policy = super::trap_policy::compute_and_log(&p.definitions, &p.transforms);
                *self.processor.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(p);
                // Sessions send only a changed policy.
                self.trap_policy.send_if_modified(|old| {
                    let changed = old.version != policy.version;
                    if changed {
                        *old = Arc::new(policy);
                    }
                    changed
                });
                metrics::counter!("weir_aggregator_rule_reloads_total", "result" => "ok")
                    .increment(1);
                tracing::info!(
                    transforms = counts.0,
                    definitions = counts.1,
                    "reloaded transformation rules and event definitions"
                );
                Ok(counts)
            }
            Err(e) => {
                metrics::counter!("weir_aggregator_rule_reloads_total", "result" => "error")
                    .increment(1);
                tracing::warn!(error = %e, "rule reload failed; the previous rules stay in force. Fix the file and reload again");
                Err(e)
            }
        }
    }

    /// Removes expired alarms and clear marks now.
    pub fn expire(&self, now: Timestamp) -> Result<Expired, redb::Error> {
        expire(self.store.database(), &self.config, now)
    }
}

/// Expires cleared alarms every minute until `shutdown`.
pub async fn run_expiry(engine: Arc<Engine>, shutdown: tokio_util::sync::CancellationToken) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        let e = engine.clone();
        match tokio::task::spawn_blocking(move || e.expire(Timestamp::now())).await {
            Ok(Ok(x)) => {
                if x.removed + x.forgotten > 0 {
                    metrics::counter!("weir_aggregator_alarms_expired_total").increment(x.removed);
                    tracing::debug!(
                        removed = x.removed,
                        forgotten = x.forgotten,
                        "expired cleared alarms and old clears"
                    );
                }
                record_evictions(x.evicted);
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "cannot expire cleared alarms; check the disk under data_dir")
            }
            Err(e) => tracing::error!(error = %e, "alarm expiry task failed"),
        }
    }
}
