//! Alarms, incidents and their counters in the aggregator's redb file, beside the events.
//!
//! The functions taking a `&WriteTransaction` run inside the store writer's transaction (see
//! [`crate::store::Store::commit_with`]), so an event and the alarm it raises are committed
//! together or not at all. The logic is in [`super::state`] and [`super::incident`]; this
//! module only loads a value, calls it, and writes the result back.
//!
//! # Tables (values postcard)
//! - `alarms`: reduction key → [`Alarm`]; `alarm_ids`: alarm id → reduction key.
//! - `alarm_clear_marks`: reduction key → [`ClearMark`] (clears without an alarm).
//! - `incidents`: incident number → [`Incident`]; `alarm_incidents`: reduction key →
//!   incident numbers holding it (multimap), for auto-resolve.
//! - `alarm_counters`: `next_alarm`, `next_incident`, `suppressed:<rule>` → u64.

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
use super::state::{
    self, Alarm, AlarmAction, AlarmStatus, AlarmTransitionError, Change, ClearMark,
};
use super::{NotStored, Outcome, ProcessingConfig, Processor};
use crate::store::Store;

const ALARMS: TableDefinition<&str, &[u8]> = TableDefinition::new("alarms");
const ALARM_IDS: TableDefinition<u64, &str> = TableDefinition::new("alarm_ids");
const CLEAR_MARKS: TableDefinition<&str, &[u8]> = TableDefinition::new("alarm_clear_marks");
const INCIDENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("incidents");
const ALARM_INCIDENTS: MultimapTableDefinition<&str, u64> =
    MultimapTableDefinition::new("alarm_incidents");
const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("alarm_counters");

fn enc<T: Serialize>(v: &T) -> Vec<u8> {
    postcard::to_allocvec(v).expect("postcard encoding into a Vec")
}

fn dec<T: DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, redb::Error> {
    postcard::from_bytes(bytes)
        .map_err(|e| redb::StorageError::Corrupted(format!("{what}: {e}")).into())
}

/// Creates the tables (at startup, so readers never find them missing).
pub fn init(db: &Database) -> Result<(), redb::Error> {
    let txn = db.begin_write()?;
    {
        txn.open_table(ALARMS)?;
        txn.open_table(ALARM_IDS)?;
        txn.open_table(CLEAR_MARKS)?;
        txn.open_table(INCIDENTS)?;
        txn.open_multimap_table(ALARM_INCIDENTS)?;
        txn.open_table(COUNTERS)?;
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
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Applied {
    pub opened: u64,
    pub reopened: u64,
    pub cleared: u64,
    pub updated: u64,
    pub clears_remembered: u64,
    /// Problems refused because `max_alarms` alarms exist.
    pub over_limit: u64,
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
        let mut marks = txn.open_table(CLEAR_MARKS)?;
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
                        let (a, change) = state::clear(a, c, now);
                        alarms.insert(c.key.as_str(), enc(&a).as_slice())?;
                        if change == Change::Cleared {
                            out.cleared += 1;
                            cleared_keys.push(c.key.clone());
                        }
                    }
                    None => {
                        let mark = marks
                            .get(c.key.as_str())?
                            .map(|v| dec::<ClearMark>("clear mark", v.value()))
                            .transpose()?;
                        let mark = state::remember(mark, c, now);
                        marks.insert(c.key.as_str(), enc(&mark).as_slice())?;
                        out.clears_remembered += 1;
                    }
                }
            }
            let Some(p) = &o.problem else { continue };
            let existing = alarms
                .get(p.key.as_str())?
                .map(|v| dec::<Alarm>("alarm", v.value()))
                .transpose()?;
            let mark = if existing.is_none() {
                if alarms.len()? >= cfg.max_alarms {
                    out.over_limit += 1;
                    continue;
                }
                marks
                    .remove(p.key.as_str())?
                    .map(|v| dec::<ClearMark>("clear mark", v.value()))
                    .transpose()?
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
            alarms.insert(p.key.as_str(), enc(&a).as_slice())?;
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
        let a: Alarm = match alarms.get(key.as_str())? {
            Some(v) => dec("alarm", v.value())?,
            None => return Err(ActionError::NotFound),
        };
        let a = state::act(a, action, by, now)?;
        alarms.insert(key.as_str(), enc(&a).as_slice())?;
        drop(alarms);
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

/// Every alarm (at most `max_alarms`), newest id first.
pub fn alarms(db: &Database) -> Result<Vec<Alarm>, redb::Error> {
    let txn = db.begin_read()?;
    let t = txn.open_table(ALARMS)?;
    let mut v = Vec::new();
    for item in t.iter()? {
        let (_, a) = item?;
        v.push(dec::<Alarm>("alarm", a.value())?);
    }
    v.sort_by_key(|a| std::cmp::Reverse(a.id));
    Ok(v)
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

/// Removes cleared alarms kept longer than the retention (leaving a clear mark behind) and
/// forgets clear marks older than `clear_memory`. Returns (alarms removed, marks forgotten).
pub fn expire(
    db: &Database,
    cfg: &ProcessingConfig,
    now: Timestamp,
) -> Result<(u64, u64), redb::Error> {
    let txn = db.begin_write()?;
    let mut removed = 0;
    let mut forgotten = 0;
    {
        let mut alarms = txn.open_table(ALARMS)?;
        let mut ids = txn.open_table(ALARM_IDS)?;
        let mut marks = txn.open_table(CLEAR_MARKS)?;
        let mut gone = Vec::new();
        for item in alarms.iter()? {
            let (k, v) = item?;
            let a: Alarm = dec("alarm", v.value())?;
            if state::expired(&a, now, cfg.cleared_alarm_retention.0) {
                gone.push((k.value().to_string(), a));
            }
        }
        for (k, a) in gone {
            alarms.remove(k.as_str())?;
            ids.remove(a.id)?;
            if let Some(m) = state::mark_of(&a, now) {
                marks.insert(k.as_str(), enc(&m).as_slice())?;
            }
            removed += 1;
        }
        let memory_us = cfg.clear_memory.0.as_micros() as i64;
        let mut old = Vec::new();
        for item in marks.iter()? {
            let (k, v) = item?;
            let m: ClearMark = dec("clear mark", v.value())?;
            if now
                .as_microsecond()
                .saturating_sub(m.recorded_at.as_microsecond())
                >= memory_us
            {
                old.push(k.value().to_string());
            }
        }
        for k in old {
            marks.remove(k.as_str())?;
            forgotten += 1;
        }
    }
    txn.commit()?;
    Ok((removed, forgotten))
}

/// The shared handle: the current rules (swapped whole on reload) and where state lives.
#[derive(Debug)]
pub struct Engine {
    pub store: Arc<Store>,
    pub config: ProcessingConfig,
    processor: RwLock<Arc<Processor>>,
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
        Ok(Engine {
            store,
            config,
            processor: RwLock::new(Arc::new(processor)),
        })
    }

    /// The rules now in force (cheap: an `Arc`).
    pub fn processor(&self) -> Arc<Processor> {
        self.processor
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Re-reads the transforms and definitions files. Alarm state is untouched; a file that
    /// fails validation changes nothing (the error says which file, line, rule and field).
    pub fn reload(&self) -> Result<(usize, usize), ConfigError> {
        match Processor::load(&self.config) {
            Ok(p) => {
                let counts = (p.transforms.rules.len(), p.definitions.len());
                *self.processor.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(p);
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
    pub fn expire(&self, now: Timestamp) -> Result<(u64, u64), redb::Error> {
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
            Ok(Ok((removed, forgotten))) => {
                if removed + forgotten > 0 {
                    metrics::counter!("weir_aggregator_alarms_expired_total").increment(removed);
                    tracing::debug!(removed, forgotten, "expired cleared alarms and old clears");
                }
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "cannot expire cleared alarms; check the disk under data_dir")
            }
            Err(e) => tracing::error!(error = %e, "alarm expiry task failed"),
        }
    }
}
