//! Live correlation: the pure engine of [`crate::correlate`] run beside the store writer.
//!
//! ```text
//! store writer ──commit──▶ bounded queue ──▶ correlation thread ──decisions──▶ redb txn
//!                                               ▲   tick (1 s): advance, site outages
//!                                               └── snapshot every snapshot_interval
//! ```
//!
//! - **Feeding.** After each commit the writer hands the freshly stored events (their
//!   postcard bytes, moved, not copied) to a bounded queue of `queue_batches` commit groups.
//!   When the queue is full the writer waits at most `queue_wait` per commit (ingest slows
//!   down, boundedly), then counts the events it could not hand over in
//!   `weir_aggregator_correlation_dropped_total{reason="queue_full"}` and logs: they stay
//!   stored, only correlation misses them. Events processing did not store because their
//!   definition says `donotpersist` are fed too ([`Correlator::feed_with`]): they correlate
//!   and count in incidents, which list them by id (and remember their site, time and count
//!   for the last `MAX_UNSTORED` of them).
//! - **Clock.** Events are pushed with their commit time (their `stored_at`), so a dry run over
//!   stored events replays the same clock. Ticks advance with the clock of the last commit
//!   while events flow, and with the wall clock when the queue is idle.
//! - **Effects**, one write transaction per batch of decisions: `OpenIncident` creates an
//!   incident (`alarm::persist::create_incident`, which sets the events' `correlated_incident`
//!   and its index) with the explanation (rule, version, conditions, events, window, group) and
//!   a note holding the engine's explanation and the `late` flag; `ClearIncident` resolves the
//!   stateful incident ("cleared by rule X"); `Deduplicated` attaches its events to the open
//!   stateful incident; `SuppressEvent` tags the stored event `weir.suppressed_by=<rule>`,
//!   which hides it from default views (`hidden=include` shows it); `SiteInhibited` attaches
//!   its events to the site-unreachable incident (the open one, or the last one of the site
//!   when its events arrive after it reconnected); `HoldEvent`, `ReleaseEvent`,
//!   `AcknowledgeEvent` and combination incidents (`delayed_action`, `auto_acknowledge`) act
//!   on the trigger events, their alarms and incidents as [`triggers`] describes; the rest
//!   are counted.
//! - **Snapshots** of the engine go into the `correlation_state` table every
//!   `snapshot_interval` and at shutdown, and are restored at start: windows open before a
//!   restart complete after it. `correlation_open` maps stateful keys and unreachable sites to
//!   their incident numbers.
//! - **Sites.** Every tick the registry is read: a site whose agents have all been
//!   disconnected for `site_unreachable_after` gets `site_down` and a `site-unreachable`
//!   incident; when one of its agents reconnects, `site_up` and the incident is resolved.
//!   Only agents seen since this aggregator started are known.
//! - **Bounded.** Besides the engine's own caps, the thread remembers at most `MAX_SITES`
//!   unreachable sites (more are counted, `reason="site_limit"`, and get no incident) and
//!   recent site incidents, `MAX_UNSTORED` unstored events, `MAX_ALARM_KEYS` alarm keys of
//!   recent events and [`triggers::MAX_LAST_INCIDENTS`] last incidents per rule and group;
//!   evictions are counted in `weir_aggregator_correlation_evictions_total{map}`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use jiff::Timestamp;
use redb::{ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use weir_common::Severity;
use weir_common::config::ConfigError;

use crate::alarm::incident::{self, EventRef, Explanation, IncidentAction, IncidentSpec};
use crate::alarm::persist;
use crate::correlate::{
    CorrelationConfig, Decision, Engine, EventIn, IncidentDecision, ReloadReport, RuleError,
    RuleSet, Snapshot, StatefulKey, TriggerHandling,
};
use crate::registry::Registry;
use crate::store::{Store, StoredEvent};

const STATE: TableDefinition<&str, &[u8]> = TableDefinition::new("correlation_state");
const OPEN: TableDefinition<&str, u64> = TableDefinition::new("correlation_open");
const SNAPSHOT_KEY: &str = "engine";

/// The tag set on events a `suppress_individual` rule suppressed (value: the rule); such
/// events are hidden from default views.
pub use crate::store::SUPPRESSED_TAG;
/// Says which rules use what the engine decides but live processing does not apply yet:
/// aggregate (throttle) rules for notifications. Dry-runs show those decisions.
fn warn_unapplied(rules: &RuleSet) {
    if !rules.aggregates.is_empty() {
        tracing::warn!(
            aggregates = rules.aggregates.len(),
            "aggregate (throttle) rules are checked and dry-run, but Weir sends no \
             notifications yet, so they have no live effect"
        );
    }
}

/// Rule name of the built-in site-unreachable incidents.
pub const SITE_RULE: &str = "site-unreachable";
const TICK: Duration = Duration::from_secs(1);
/// Sites unreachable at once (and sites whose last site incident is remembered).
const MAX_SITES: usize = 10_000;
/// Events not stored (`donotpersist`) whose site, time and count incidents can still take in.
const MAX_UNSTORED: usize = 65_536;
/// Events whose alarm (reduction key) is remembered, for trigger takeovers.
const MAX_ALARM_KEYS: usize = 65_536;

mod triggers;
pub use triggers::{HELD_TAG, HELD_UNTIL_TAG};

/// Loads a rule file for the config check: errors name the file, rule and field.
pub fn load_rules(rules: &Path, config: &Path) -> Result<RuleSet, ConfigError> {
    RuleSet::load(rules).map_err(|e| rule_config_error(e, config))
}

fn rule_config_error(e: RuleError, config: &Path) -> ConfigError {
    match e {
        RuleError::Read { path, message } => ConfigError::Check {
            path: config.to_path_buf(),
            field: "correlation.rules".into(),
            message: format!("cannot read {}: {message}", path.display()),
        },
        RuleError::Syntax {
            path,
            line,
            column,
            message,
        } => ConfigError::Invalid {
            path,
            line,
            column,
            message,
        },
        RuleError::Invalid {
            path,
            rule,
            field,
            message,
        } => ConfigError::Check {
            path,
            field: format!("rule {rule:?}: {field}"),
            message,
        },
    }
}

enum Msg {
    /// Postcard [`StoredEvent`]s just committed, those processing did not store
    /// (`donotpersist`), and the commit's clock.
    Committed {
        events: Vec<Bytes>,
        unstored: Vec<Vec<u8>>,
        alarm_keys: Vec<(String, String)>,
        now: Timestamp,
    },
    Reload {
        rules: RuleSet,
        reply: mpsc::Sender<ReloadReport>,
    },
    Stop,
}

/// Why `PUT /api/v1/rules` refused.
#[derive(Debug, thiserror::Error)]
pub enum ReplaceError {
    #[error("correlation has no rule file: set [correlation] rules in the config first")]
    NoFile,
    #[error(transparent)]
    Invalid(#[from] RuleError),
    #[error("cannot write the rule file: {0}")]
    Write(String),
    #[error("the correlation engine has stopped")]
    Stopped,
}

/// The handle shared by the writer, the API and the reload hooks.
#[derive(Debug)]
pub struct Correlator {
    tx: SyncSender<Msg>,
    config: CorrelationConfig,
    rules: RwLock<Arc<RuleSet>>,
    /// Serialises rule changes (file write + reload).
    changing: Mutex<()>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Correlator {
    /// Loads the rules, restores the engine's snapshot and starts the correlation thread.
    pub fn start(
        store: Arc<Store>,
        registry: Arc<Registry>,
        config: CorrelationConfig,
    ) -> anyhow::Result<Arc<Correlator>> {
        let rules = match &config.rules {
            Some(p) => RuleSet::load(p)?,
            None => RuleSet::default(),
        };
        {
            let txn = store.database().begin_write()?;
            txn.open_table(STATE)?;
            txn.open_table(OPEN)?;
            txn.commit()?;
        }
        let engine = match load_snapshot(&store)? {
            Some(snap) => {
                tracing::info!(
                    watermark = snap.watermark,
                    "correlation state restored from the store"
                );
                Engine::restore(rules.clone(), config.engine(), snap)
            }
            None => Engine::new(rules.clone(), config.engine()),
        };
        let down = open_sites(&store)?;
        if config.rules.is_some() {
            tracing::info!(rules = rules.rules.len(), "correlation rules loaded");
            warn_unapplied(&rules);
        }
        let (tx, rx) = mpsc::sync_channel(config.queue_batches);
        let worker = Worker {
            store,
            registry,
            engine,
            config: config.clone(),
            site_incidents: {
                let mut b = triggers::Bounded::new(MAX_SITES, "site_incidents");
                for (site, n) in &down {
                    b.insert(site.clone(), *n);
                }
                b
            },
            down,
            unstored: triggers::Bounded::new(MAX_UNSTORED, "unstored_events"),
            alarm_keys: triggers::Bounded::new(MAX_ALARM_KEYS, "alarm_keys"),
            last_incident: triggers::Bounded::new(triggers::MAX_LAST_INCIDENTS, "last_incidents"),
            enabled: config.rules.is_some(),
        };
        let thread = std::thread::Builder::new()
            .name("correlation".into())
            .spawn(move || worker.run(rx))?;
        Ok(Arc::new(Correlator {
            tx,
            config,
            rules: RwLock::new(Arc::new(rules)),
            changing: Mutex::new(()),
            thread: Mutex::new(Some(thread)),
        }))
    }

    /// Whether a rule file is configured (without one, events are not fed).
    pub fn enabled(&self) -> bool {
        self.config.rules.is_some()
    }

    pub fn rules_file(&self) -> Option<&Path> {
        self.config.rules.as_deref()
    }

    pub fn config(&self) -> &CorrelationConfig {
        &self.config
    }

    /// The rules in force.
    pub fn rules(&self) -> Arc<RuleSet> {
        self.rules.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Hands committed events (postcard [`StoredEvent`] bytes) to the engine; waits at most
    /// `queue_wait` for room, then counts them as dropped (they stay stored).
    pub fn feed(&self, events: Vec<Vec<u8>>, now: Timestamp) {
        let events = events.into_iter().map(Bytes::from).collect();
        self.feed_with(events, Vec::new(), Vec::new(), now);
    }

    /// As [`Correlator::feed`], plus `unstored`: events of the same commit that processing
    /// did not store (`donotpersist`: "not stored but still correlated"), encoded as
    /// [`StoredEvent`] with their sequence; and `alarm_keys`: (event id, reduction key) of the
    /// alarms the commit's problems raised, so combination rules can take them over.
    pub fn feed_with(
        &self,
        events: Vec<Bytes>,
        unstored: Vec<Vec<u8>>,
        alarm_keys: Vec<(String, String)>,
        now: Timestamp,
    ) {
        if (events.is_empty() && unstored.is_empty()) || !self.enabled() {
            return;
        }
        let n = (events.len() + unstored.len()) as u64;
        let deadline = Instant::now() + self.config.queue_wait.0;
        let mut msg = Msg::Committed {
            events,
            unstored,
            alarm_keys,
            now,
        };
        loop {
            match self.tx.try_send(msg) {
                Ok(()) => return,
                Err(TrySendError::Full(m)) if Instant::now() < deadline => {
                    msg = m;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(TrySendError::Full(_)) => {
                    metrics::counter!("weir_aggregator_correlation_dropped_total", "reason" => "queue_full").increment(n);
                    weir_common::warn_limited!(
                        "correlation_queue_full",
                        events = n,
                        "the correlation engine is behind: events were stored but not correlated. Simplify rules or raise [correlation] queue_batches"
                    );
                    return;
                }
                Err(TrySendError::Disconnected(_)) => {
                    metrics::counter!("weir_aggregator_correlation_dropped_total", "reason" => "stopped").increment(n);
                    return;
                }
            }
        }
    }

    /// Re-reads the rule file and reloads (SIGHUP, `POST /api/v1/config/reload`). Rules whose
    /// definition did not change keep their windows. An invalid file changes nothing.
    pub fn reload_rules(&self) -> Result<ReloadReport, RuleError> {
        let Some(path) = self.config.rules.clone() else {
            return Ok(ReloadReport::default());
        };
        let _guard = self.changing.lock().unwrap_or_else(|p| p.into_inner());
        let rules = RuleSet::load(&path).inspect_err(|e| {
            metrics::counter!("weir_aggregator_correlation_reloads_total", "result" => "error")
                .increment(1);
            tracing::warn!(error = %e, "correlation rule reload failed; the previous rules stay in force. Fix the file and reload again");
        })?;
        self.install(rules).map_err(|_| RuleError::Read {
            path,
            message: "the correlation engine has stopped".into(),
        })
    }

    /// Validates `text` (JSON rules), writes it to the rule file atomically and reloads.
    pub fn replace_rules(&self, text: &str) -> Result<ReloadReport, ReplaceError> {
        let path = self.config.rules.clone().ok_or(ReplaceError::NoFile)?;
        let _guard = self.changing.lock().unwrap_or_else(|p| p.into_inner());
        let raw = crate::correlate::rules::parse_file(text, &path.with_extension("json"))?;
        let rules = RuleSet::compile(raw.clone(), &path)?;
        let is_toml = path.extension().is_some_and(|e| e == "toml");
        let body = if is_toml {
            toml::to_string(&raw).map_err(|e| ReplaceError::Write(e.to_string()))?
        } else {
            serde_json::to_string_pretty(&raw).map_err(|e| ReplaceError::Write(e.to_string()))?
        };
        write_atomically(&path, body.as_bytes())
            .map_err(|e| ReplaceError::Write(format!("{}: {e}", path.display())))?;
        self.install(rules).map_err(|()| ReplaceError::Stopped)
    }

    fn install(&self, rules: RuleSet) -> Result<ReloadReport, ()> {
        warn_unapplied(&rules);
        let (reply, rx) = mpsc::channel();
        let shared = Arc::new(rules.clone());
        self.tx.send(Msg::Reload { rules, reply }).map_err(|_| ())?;
        let report = rx.recv().map_err(|_| ())?;
        *self.rules.write().unwrap_or_else(|p| p.into_inner()) = shared;
        metrics::counter!("weir_aggregator_correlation_reloads_total", "result" => "ok")
            .increment(1);
        tracing::info!(
            kept = report.kept.len(),
            reset = report.reset.len(),
            removed = report.removed.len(),
            "correlation rules reloaded"
        );
        Ok(report)
    }

    /// Saves a last snapshot and stops the thread (after the store writer has stopped).
    pub fn stop(&self) {
        let _ = self.tx.send(Msg::Stop);
        if let Some(t) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = t.join();
        }
    }
}

impl Drop for Correlator {
    /// The thread holds the store open: it stops (saving its state) with the last handle.
    fn drop(&mut self) {
        self.stop();
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp: PathBuf = path.with_extension("tmp-write");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

fn load_snapshot(store: &Store) -> anyhow::Result<Option<Snapshot>> {
    let txn = store.database().begin_read()?;
    let Ok(t) = txn.open_table(STATE) else {
        return Ok(None);
    };
    let Some(v) = t.get(SNAPSHOT_KEY)? else {
        return Ok(None);
    };
    match serde_json::from_slice::<Snapshot>(v.value()) {
        Ok(s) => Ok(Some(s)),
        Err(e) => {
            tracing::warn!(error = %e, "the saved correlation state cannot be read (older format?); open windows start empty");
            Ok(None)
        }
    }
}

fn open_sites(store: &Store) -> anyhow::Result<BTreeMap<String, u64>> {
    let txn = store.database().begin_read()?;
    let t = txn.open_table(OPEN)?;
    let mut out = BTreeMap::new();
    for item in t.range("site:"..)? {
        let (k, v) = item?;
        let Some(site) = k.value().strip_prefix("site:").map(str::to_string) else {
            break;
        };
        out.insert(site, v.value());
    }
    Ok(out)
}

fn stateful_key(k: &StatefulKey) -> String {
    format!("stateful:{}\u{1f}{}\u{1f}{}", k.node, k.stateful, k.element)
}

struct Worker {
    store: Arc<Store>,
    registry: Arc<Registry>,
    engine: Engine,
    config: CorrelationConfig,
    /// Unreachable sites and their incident numbers (at most `MAX_SITES`).
    down: BTreeMap<String, u64>,
    /// The last site-unreachable incident of each site, also after it reconnected: events
    /// from the outage that arrive afterwards are attached to it.
    site_incidents: triggers::Bounded<String, u64>,
    /// Events that were not stored (`donotpersist`), as incidents take them in.
    unstored: triggers::Bounded<String, EventRef>,
    /// Event id → reduction key of the alarm its problem raised (recent events).
    alarm_keys: triggers::Bounded<String, String>,
    /// (rule, group) → the last incident the rule opened for the group, for triggers an
    /// `auto_acknowledge` rule acknowledges while it is inhibited.
    last_incident: triggers::Bounded<(String, String), u64>,
    enabled: bool,
}

impl Worker {
    fn run(mut self, rx: mpsc::Receiver<Msg>) {
        let mut clock = Timestamp::now();
        let mut last_tick = Instant::now();
        let mut last_snapshot = Instant::now();
        loop {
            let msg = rx.recv_timeout(TICK);
            let idle = matches!(msg, Err(RecvTimeoutError::Timeout));
            match msg {
                Ok(Msg::Committed {
                    events,
                    unstored,
                    alarm_keys,
                    now,
                }) => {
                    for (id, key) in alarm_keys {
                        self.alarm_keys.insert(id, key);
                    }
                    clock = clock.max(now);
                    let lag = Timestamp::now().duration_since(now).as_secs_f64();
                    metrics::gauge!("weir_aggregator_correlation_lag_seconds").set(lag);
                    metrics::counter!("weir_aggregator_correlation_events_total")
                        .increment((events.len() + unstored.len()) as u64);
                    let mut out = Vec::new();
                    let n_stored = events.len();
                    let unstored = unstored.into_iter().map(Bytes::from);
                    for (i, bytes) in events.into_iter().chain(unstored).enumerate() {
                        let s = match postcard::from_bytes::<StoredEvent>(&bytes) {
                            Ok(s) => s,
                            Err(e) => {
                                metrics::counter!("weir_aggregator_correlation_dropped_total", "reason" => "undecodable").increment(1);
                                weir_common::warn_limited!("correlation_undecodable", error = %e, "an event could not be decoded for correlation and was skipped (a stored one stays stored)");
                                continue;
                            }
                        };
                        if i >= n_stored {
                            self.unstored.insert(
                                s.id(),
                                EventRef {
                                    id: s.id(),
                                    site: s.site.clone(),
                                    event_time: s.event.event_time,
                                    count: s.event.count.max(1),
                                },
                            );
                        }
                        out.extend(self.engine.push(Arc::new(EventIn::from_owned(s)), clock));
                    }
                    self.apply(out, clock);
                }
                Ok(Msg::Reload { rules, reply }) => {
                    let (report, out) = self.engine.reload(rules);
                    self.apply(out, clock);
                    let _ = reply.send(report);
                }
                Ok(Msg::Stop) | Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {}
            }
            if idle || last_tick.elapsed() >= TICK {
                last_tick = Instant::now();
                if idle {
                    clock = clock.max(Timestamp::now());
                }
                let out = self.engine.advance(clock);
                self.apply(out, clock);
                if self.enabled {
                    self.check_sites(Timestamp::now());
                }
                let (groups, pending) = self.engine.live();
                metrics::gauge!("weir_aggregator_correlation_live_groups").set(groups as f64);
                metrics::gauge!("weir_aggregator_correlation_pending_events").set(pending as f64);
            }
            if last_snapshot.elapsed() >= self.config.snapshot_interval.0 {
                last_snapshot = Instant::now();
                self.save_snapshot();
            }
        }
        self.save_snapshot();
        tracing::debug!("correlation stopped");
    }

    fn save_snapshot(&self) {
        let saved = (|| -> anyhow::Result<usize> {
            let bytes = serde_json::to_vec(&self.engine.snapshot())?;
            let txn = self.store.database().begin_write()?;
            txn.open_table(STATE)?
                .insert(SNAPSHOT_KEY, bytes.as_slice())?;
            txn.commit()?;
            Ok(bytes.len())
        })();
        match saved {
            Ok(n) => metrics::gauge!("weir_aggregator_correlation_snapshot_bytes").set(n as f64),
            Err(e) => {
                metrics::counter!("weir_aggregator_correlation_snapshot_errors_total").increment(1);
                weir_common::warn_limited!("correlation_snapshot", error = %e, "cannot save the correlation state; a restart now would forget open windows. Check the disk under data_dir");
            }
        }
    }

    /// Events as an incident takes them in (an event no longer stored keeps its id).
    fn refs(&self, ids: &[String], fallback: Timestamp) -> Vec<EventRef> {
        ids.iter()
            .map(|id| {
                if let Ok(Some(s)) = self.store.get_by_id(id) {
                    return EventRef {
                        id: id.clone(),
                        site: s.site,
                        event_time: s.event.event_time,
                        count: s.event.count.max(1),
                    };
                }
                if let Some(r) = self.unstored.get(id.as_str()) {
                    return r.clone();
                }
                EventRef {
                    id: id.clone(),
                    site: weir_common::parse_event_id(id)
                        .map(|(site, _, _)| site.to_string())
                        .unwrap_or_default(),
                    event_time: fallback,
                    count: 1,
                }
            })
            .collect()
    }

    fn apply(&mut self, decisions: Vec<Decision>, now: Timestamp) {
        if decisions.is_empty() {
            return;
        }
        for d in &decisions {
            metrics::counter!("weir_aggregator_correlation_decisions_total", "kind" => d.kind())
                .increment(1);
        }
        let mut resolve = Vec::new();
        let mut takeovers: Vec<triggers::Takeover> = Vec::new();
        // Incidents opened in this transaction, by event: not yet visible to store reads.
        let mut opened: HashMap<String, Vec<u64>> = HashMap::new();
        let prior = |store: &Store, opened: &HashMap<String, Vec<u64>>, ids: &[String]| {
            let mut set = triggers::incidents_of(store, ids);
            set.extend(ids.iter().filter_map(|id| opened.get(id)).flatten());
            set
        };
        let done = (|| -> Result<(), redb::Error> {
            let txn = self.store.database().begin_write()?;
            for d in decisions {
                match d {
                    Decision::OpenIncident(d) => {
                        let combines = d.triggers != TriggerHandling::Plain;
                        // Read before the new incident re-points the triggers.
                        let prior_incidents = if d.triggers == TriggerHandling::Acknowledged {
                            prior(&self.store, &opened, &d.event_ids)
                        } else {
                            Default::default()
                        };
                        let n = self.open(&txn, &d, now)?;
                        for id in &d.event_ids {
                            opened.entry(id.clone()).or_default().push(n);
                        }
                        self.last_incident
                            .insert((d.rule.to_string(), d.group_key.clone()), n);
                        if combines {
                            triggers::supersede(&txn, &d.event_ids, &d.rule)?;
                            takeovers.push(triggers::Takeover {
                                rule: d.rule.to_string(),
                                incident: Some(n),
                                event_ids: d.event_ids.clone(),
                                acknowledge: d.triggers == TriggerHandling::Acknowledged,
                                prior_incidents,
                            });
                        }
                    }
                    Decision::ClearIncident(c) => {
                        let n = txn
                            .open_table(OPEN)?
                            .remove(stateful_key(&c.key).as_str())?
                            .map(|v| v.value());
                        if let Some(n) = n {
                            resolve.push((
                                n,
                                c.rule.clone(),
                                format!("cleared by rule {:?}: {}", c.rule, c.explanation),
                            ));
                        }
                    }
                    Decision::Deduplicated {
                        rule,
                        key,
                        event_ids,
                        ..
                    } => {
                        let n = txn
                            .open_table(OPEN)?
                            .get(stateful_key(&key).as_str())?
                            .map(|v| v.value());
                        if let Some(n) = n {
                            let refs = self.refs(&event_ids, now);
                            persist::attach_events(
                                &txn,
                                n,
                                &refs,
                                &[],
                                &format!("rule:{rule}"),
                                now,
                            )?;
                        }
                    }
                    Decision::SuppressEvent { event_id, rule } => {
                        Store::update_event(&txn, &event_id, |s| {
                            s.event
                                .tags
                                .insert(SUPPRESSED_TAG.to_string(), rule.to_string());
                        })?;
                    }
                    Decision::SiteInhibited {
                        rule,
                        sites,
                        event_ids,
                        ..
                    } => {
                        metrics::counter!("weir_aggregator_correlation_inhibited_total", "reason" => "site_unreachable").increment(1);
                        let site_incident = sites
                            .iter()
                            .find_map(|s| self.down.get(s).or_else(|| self.site_incidents.get(s)))
                            .copied();
                        if let Some(n) = site_incident {
                            let refs = self.refs(&event_ids, now);
                            persist::attach_events(
                                &txn,
                                n,
                                &refs,
                                &[],
                                &format!("rule:{rule}"),
                                now,
                            )?;
                        }
                    }
                    Decision::Inhibited { .. } => {
                        metrics::counter!("weir_aggregator_correlation_inhibited_total", "reason" => "rule_inhibit").increment(1);
                    }
                    Decision::HoldEvent {
                        event_id,
                        rule,
                        until,
                    } => triggers::hold(&txn, &event_id, &rule, until)?,
                    Decision::ReleaseEvent { event_id, .. } => {
                        triggers::release(&txn, &event_id)?;
                    }
                    Decision::AcknowledgeEvent {
                        event_id,
                        rule,
                        group_key,
                    } => {
                        let (ids, rule) = ([event_id.to_string()], rule.to_string());
                        let prior_incidents = prior(&self.store, &opened, &ids);
                        let last = self.last_incident.get(&(rule.clone(), group_key)).copied();
                        if let Some(n) = last {
                            let refs = self.refs(&ids, now);
                            persist::attach_events(
                                &txn,
                                n,
                                &refs,
                                &[],
                                &format!("rule:{rule}"),
                                now,
                            )?;
                        }
                        triggers::supersede(&txn, &ids, &rule)?;
                        takeovers.push(triggers::Takeover {
                            rule,
                            incident: last,
                            event_ids: ids.into(),
                            acknowledge: true,
                            prior_incidents,
                        });
                    }
                }
            }
            txn.commit()?;
            Ok(())
        })();
        if let Err(e) = done {
            metrics::counter!("weir_aggregator_correlation_dropped_total", "reason" => "store_error").increment(1);
            weir_common::warn_limited!("correlation_apply", error = %e, "cannot write correlation decisions to the store; incidents were not created. Check the disk under data_dir");
            return;
        }
        for (n, rule, reason) in resolve {
            self.resolve(n, &format!("rule:{rule}"), &reason, now);
        }
        triggers::take_over(&self.store, &takeovers, &self.alarm_keys, now);
    }

    fn resolve(&self, number: u64, by: &str, reason: &str, now: Timestamp) {
        let r = persist::incident_update(self.store.database(), number, |inc| {
            incident::transition(inc, IncidentAction::Resolve, by, Some(reason), now)
        });
        match r {
            Ok(inc) => tracing::info!(incident = %inc.id, by, "incident resolved by correlation"),
            Err(e) => {
                tracing::info!(incident = number, error = %e, "correlation did not resolve the incident (already resolved or closed?)")
            }
        }
    }

    /// Creates the incident `d` asks for; returns its number.
    fn open(
        &self,
        txn: &WriteTransaction,
        d: &IncidentDecision,
        now: Timestamp,
    ) -> Result<u64, redb::Error> {
        let conditions = self
            .engine
            .rules()
            .rules
            .iter()
            .find(|r| *r.name == *d.rule)
            .map(|r| vec![r.describe.to_string()])
            .unwrap_or_default();
        let spec = IncidentSpec {
            title: d.rule.to_string(),
            severity: d.severity,
            contact_list: d.contact_list.clone(),
            explanation: Explanation {
                rule: d.rule.to_string(),
                rule_version: d.rule_version.to_string(),
                conditions,
                event_ids: d.event_ids.clone(),
                window_start: Some(d.window.0),
                window_end: Some(d.window.1),
                group_key: d.group_key.clone(),
            },
            events: self.refs(&d.event_ids, d.window.1),
            alarms: Vec::new(),
            auto_resolve: false,
            actor: format!("rule:{}", d.rule),
        };
        let inc = persist::create_incident(txn, spec, now)?;
        let mut note = format!(
            "correlation: {} (late: {}, decided {}s after the window closed)",
            d.explanation, d.late, d.delay_secs
        );
        if note.len() > incident::MAX_NOTE_BYTES {
            let mut cut = incident::MAX_NOTE_BYTES - 3;
            while !note.is_char_boundary(cut) {
                cut -= 1;
            }
            note.truncate(cut);
            note.push_str("...");
        }
        let by = format!("rule:{}", d.rule);
        persist::update_incident_in(txn, inc.number, |i| incident::add_note(i, &note, &by, now))?;
        if let Some((key, _)) = &d.stateful {
            txn.open_table(OPEN)?
                .insert(stateful_key(key).as_str(), inc.number)?;
        }
        metrics::counter!("weir_aggregator_correlation_incidents_opened_total").increment(1);
        if d.late {
            metrics::counter!("weir_aggregator_correlation_late_incidents_total").increment(1);
        }
        tracing::info!(incident = %inc.id, rule = %d.rule, group = %d.group_key, late = d.late, "incident opened by correlation");
        Ok(inc.number)
    }

    /// Site outages from the registry (see the module docs).
    fn check_sites(&mut self, now: Timestamp) {
        let mut sites: HashMap<String, (bool, Option<Timestamp>)> = HashMap::new();
        for a in self.registry.snapshot().into_values() {
            let e = sites.entry(a.site).or_default();
            e.0 |= a.sessions > 0;
            e.1 = e.1.max(a.last_seen);
        }
        let after = jiff::SignedDuration::try_from(self.config.site_unreachable_after.0)
            .unwrap_or(jiff::SignedDuration::MAX);
        for (site, (up, last)) in sites {
            if up {
                if let Some(n) = self.down.remove(&site) {
                    self.engine.site_up(&site, now);
                    let removed = (|| -> Result<(), redb::Error> {
                        let txn = self.store.database().begin_write()?;
                        txn.open_table(OPEN)?
                            .remove(format!("site:{site}").as_str())?;
                        txn.commit()?;
                        Ok(())
                    })();
                    if let Err(e) = removed {
                        tracing::warn!(error = %e, site, "cannot record that the site is reachable again");
                    }
                    self.resolve(
                        n,
                        "correlation",
                        &format!("site {site} reachable again: an agent reconnected"),
                        now,
                    );
                }
                continue;
            }
            let Some(last) = last else { continue };
            if self.down.contains_key(&site) || now.duration_since(last) < after {
                continue;
            }
            if self.down.len() >= MAX_SITES {
                metrics::counter!("weir_aggregator_correlation_dropped_total", "reason" => "site_limit").increment(1);
                weir_common::warn_limited!(
                    "correlation_site_limit",
                    site,
                    "too many sites are unreachable at once: this one gets no site-unreachable incident and does not inhibit its incidents. Check the aggregator's network"
                );
                continue;
            }
            self.engine.site_down(&site, last);
            match self.open_site_incident(&site, last, now) {
                Ok(n) => {
                    self.site_incidents.insert(site.clone(), n);
                    self.down.insert(site, n);
                }
                Err(e) => {
                    weir_common::warn_limited!("correlation_site", error = %e, "cannot create the site-unreachable incident. Check the disk under data_dir");
                }
            }
        }
    }

    fn open_site_incident(
        &self,
        site: &str,
        since: Timestamp,
        now: Timestamp,
    ) -> Result<u64, redb::Error> {
        let spec = IncidentSpec {
            title: format!("Site {site} unreachable"),
            severity: Severity::Critical,
            contact_list: None,
            explanation: Explanation {
                rule: SITE_RULE.into(),
                rule_version: "builtin".into(),
                conditions: vec![format!(
                    "every agent of site {site} disconnected for longer than {}",
                    self.config.site_unreachable_after
                )],
                event_ids: Vec::new(),
                window_start: Some(since),
                window_end: Some(now),
                group_key: format!("site={site}"),
            },
            events: Vec::new(),
            alarms: Vec::new(),
            auto_resolve: false,
            actor: "correlation".into(),
        };
        let txn = self.store.database().begin_write()?;
        let inc = persist::create_incident(&txn, spec, now)?;
        txn.open_table(OPEN)?
            .insert(format!("site:{site}").as_str(), inc.number)?;
        txn.commit()?;
        metrics::counter!("weir_aggregator_correlation_incidents_opened_total").increment(1);
        tracing::warn!(incident = %inc.id, site, since = %since, "site unreachable: none of its agents has been connected since; its incidents are inhibited until one reconnects");
        Ok(inc.number)
    }
}

#[cfg(test)]
pub(crate) mod tests;
