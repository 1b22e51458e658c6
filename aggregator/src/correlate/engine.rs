//! The correlation state machine: reorder buffer, per-rule group windows, inhibit timers,
//! delayed-action holds, stateful synthetic incidents and site outages. See the module docs of
//! [`super`] for the invariants.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use weir_common::Severity;

use super::matcher::Matcher;
use super::reorder::Reorder;
use super::rules::{CopySel, FIELD_NAMES, Fields, Rule, RuleSet};
use super::throttle::{AggSnapshot, Notification, NotifyDecision, Throttler};
use super::{
    ClearDecision, Decision, EventIn, Explanation, IncidentDecision, StatefulKey, TriggerHandling,
};

/// Engine limits and defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineConfig {
    /// How long to wait for out-of-order events before correlating in event-time order.
    pub allowed_lateness: Duration,
    /// Live groups per rule; the least recently active are evicted beyond it (counted).
    pub max_groups_per_rule: usize,
    /// Events waiting in the reorder buffer; beyond it the oldest are correlated early (counted).
    /// Also the most delayed-action holds: beyond it the soonest-ending are released (counted).
    pub max_pending: usize,
    /// Aggregate (throttle) keys per aggregate rule; the oldest are evicted beyond it (counted).
    pub max_aggregate_keys: usize,
    /// Open stateful synthetic incidents remembered; the oldest are forgotten beyond it (counted).
    pub max_stateful: usize,
    /// Node of synthetic incidents whose rules set none (seed 003 `opevents_correlation_node`).
    pub default_node: String,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            allowed_lateness: Duration::from_secs(10),
            max_groups_per_rule: 10_000,
            max_pending: 100_000,
            max_aggregate_keys: 100_000,
            max_stateful: 100_000,
            default_node: "global".into(),
        }
    }
}

/// Counters the caller exports as metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    pub events: u64,
    /// Events that matched at least one rule.
    pub matched: u64,
    /// Events older than the watermark on arrival.
    pub late: u64,
    /// Events correlated before their lateness ran out because the reorder buffer was full.
    pub reorder_overflow: u64,
    /// Groups evicted by the per-rule cap.
    pub groups_evicted: u64,
    /// Stateful incidents forgotten by the cap.
    pub stateful_evicted: u64,
    /// Aggregate keys evicted by the cap.
    pub aggregate_evicted: u64,
    pub fired: u64,
    pub site_inhibited: u64,
    /// Delayed-action holds ended early because `max_pending` holds existed.
    #[serde(default)]
    pub holds_released_early: u64,
}

const SWEEP_EVERY: i64 = 30 * 1_000_000;
/// Sites whose outage history is kept (each keeps its last 32 outages).
const MAX_SITES: usize = 10_000;

#[derive(Debug, Clone)]
struct Trigger {
    time: i64,
    seq: u64,
    late: bool,
    /// The delayed-action hold to cancel when this trigger is consumed.
    hold: Option<i64>,
    ev: Arc<EventIn>,
}

impl Trigger {
    /// Events this record stands for toward a rule's `count` (its dedup count, at least 1).
    fn weight(&self) -> u64 {
        self.ev.event.count.max(1)
    }
}

#[derive(Debug)]
struct Group {
    /// Unconsumed triggers, sorted by (time, id).
    triggers: VecDeque<Trigger>,
    /// (fired at, until): event times during which the group is inhibited.
    inhibit: Option<(i64, i64)>,
    /// Latest event time seen, for eviction.
    last: i64,
}

impl Group {
    fn new() -> Group {
        Group {
            triggers: VecDeque::with_capacity(1),
            inhibit: None,
            last: 0,
        }
    }
}

/// Group tables hash with foldhash: keys are short, built per event, and come from event
/// fields, so the hasher is fast but randomly seeded (SipHash was a tenth of the hot path).
type Groups = hashbrown::HashMap<String, Group, foldhash::fast::RandomState>;

#[derive(Debug, Default)]
struct RuleState {
    groups: Groups,
}

#[derive(Debug)]
struct Pending {
    ct: i64,
    seq: u64,
    ev: Arc<EventIn>,
    matched: Vec<u32>,
}

impl PartialEq for Pending {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o).is_eq()
    }
}
impl Eq for Pending {}
impl PartialOrd for Pending {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Pending {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.ct, &self.ev.id, self.seq).cmp(&(o.ct, &o.ev.id, o.seq))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct OpenState {
    rule: String,
    state: String,
    since: i64,
}

/// The correlation engine. See the module docs.
#[derive(Debug)]
pub struct Engine {
    config: EngineConfig,
    lateness: i64,
    rules: RuleSet,
    /// Which rules an event matches (index, severity floors, literal scans).
    matcher: Matcher,
    states: Vec<RuleState>,
    pending: Reorder<Pending>,
    /// (until, seq, rule) → event id.
    held: BTreeMap<(i64, u64, Arc<str>), Arc<str>>,
    stateful: HashMap<StatefulKey, OpenState>,
    /// Site → outage intervals (since, until), oldest first.
    sites: HashMap<String, Vec<Outage>>,
    /// Event time up to which everything has been correlated.
    watermark: i64,
    seq: u64,
    last_sweep: i64,
    /// Reused for each event's group key, so a group that exists costs no allocation.
    key_buf: String,
    /// The matcher's answer for the event being pushed (reused: most events match nothing,
    /// and a matched one copies out only what it keeps).
    matched_buf: Vec<u32>,
    throttle: Throttler,
    stats: Stats,
}

fn us(t: Timestamp) -> i64 {
    t.as_microsecond()
}

fn ts(u: i64) -> Timestamp {
    Timestamp::from_microsecond(u).unwrap_or(if u < 0 {
        Timestamp::MIN
    } else {
        Timestamp::MAX
    })
}

fn dropped(reason: &'static str, n: u64) {
    metrics::counter!("weir_aggregator_correlation_dropped_total", "reason" => reason).increment(n);
}

/// A site outage: (since, until) in event-time microseconds; `None` while it lasts.
type Outage = (i64, Option<i64>);

/// Outcome of [`Engine::reload`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadReport {
    /// Rules whose definition did not change: their windows are kept.
    pub kept: Vec<String>,
    /// New or changed rules: they start empty.
    pub reset: Vec<String>,
    /// Rules no longer present: their state is dropped.
    pub removed: Vec<String>,
}

impl Engine {
    pub fn new(rules: RuleSet, config: EngineConfig) -> Engine {
        let lateness = i64::try_from(config.allowed_lateness.as_micros()).unwrap_or(i64::MAX / 4);
        let mut e = Engine {
            throttle: Throttler::new(config.max_aggregate_keys),
            config,
            lateness,
            rules: RuleSet::default(),
            matcher: Matcher::default(),
            states: Vec::new(),
            pending: Reorder::default(),
            held: BTreeMap::new(),
            stateful: HashMap::new(),
            sites: HashMap::new(),
            watermark: i64::MIN / 2,
            seq: 0,
            last_sweep: i64::MIN / 2,
            key_buf: String::new(),
            matched_buf: Vec::new(),
            stats: Stats::default(),
        };
        e.install(rules);
        e
    }

    fn install(&mut self, rules: RuleSet) {
        self.matcher = Matcher::new(&rules);
        self.states = rules.rules.iter().map(|_| RuleState::default()).collect();
        self.throttle.install(&rules.aggregates);
        self.rules = rules;
    }

    pub fn rules(&self) -> &RuleSet {
        &self.rules
    }

    pub fn stats(&self) -> Stats {
        let mut s = self.stats.clone();
        s.aggregate_evicted = self.throttle.evicted;
        s
    }

    /// Live groups across all rules, and events waiting in the reorder buffer.
    pub fn live(&self) -> (usize, usize) {
        (
            self.states.iter().map(|s| s.groups.len()).sum(),
            self.pending.len(),
        )
    }

    /// Approximate heap bytes of the window state: group tables, keys, trigger queues and the
    /// reorder buffer. The events themselves are shared (`Arc`) with the caller and not counted.
    pub fn state_bytes(&self) -> usize {
        use std::mem::size_of;
        let mut n = 0;
        for st in &self.states {
            // hashbrown: one control byte per bucket besides the entry.
            n += st.groups.capacity() * (size_of::<(String, Group)>() + 1);
            for (k, g) in &st.groups {
                n += k.capacity() + g.triggers.capacity() * size_of::<Trigger>();
            }
        }
        n += self.pending.capacity() * size_of::<Pending>();
        n += self
            .pending
            .iter()
            .map(|p| p.matched.capacity() * size_of::<u32>())
            .sum::<usize>();
        n += self.held.len() * (size_of::<(i64, u64, Arc<str>)>() + size_of::<Arc<str>>() + 48);
        n
    }

    /// Indices of the rules `ev` matches, in priority order.
    fn matching(&mut self, ev: &EventIn) -> Vec<u32> {
        self.matcher.matching(ev)
    }

    fn set_clock(&mut self, now: i64) {
        self.watermark = self.watermark.max(now.saturating_sub(self.lateness));
    }

    /// Takes one event that arrived at clock `now`.
    pub fn push(&mut self, ev: Arc<EventIn>, now: Timestamp) -> Vec<Decision> {
        let now = us(now);
        let mut out = Vec::new();
        self.stats.events += 1;
        let before = self.watermark;
        self.set_clock(now);
        let mut matched = std::mem::take(&mut self.matched_buf);
        self.matcher.matching_into(&ev, &mut matched);
        if !matched.is_empty() {
            self.stats.matched += 1;
            self.seq += 1;
            let seq = self.seq;
            let ct = us(ev.event.event_time).min(now);
            for &i in &matched {
                let rule = &self.rules.rules[i as usize];
                if rule.suppress_individual {
                    out.push(Decision::SuppressEvent {
                        event_id: ev.id.clone(),
                        rule: rule.name.clone(),
                    });
                }
                if let Some(d) = rule.delayed_action {
                    let until = ct.saturating_add(d);
                    self.held
                        .insert((until, seq, rule.name.clone()), ev.id.clone());
                    out.push(Decision::HoldEvent {
                        event_id: ev.id.clone(),
                        rule: rule.name.clone(),
                        until: ts(until),
                    });
                }
            }
            // Bounded like the reorder buffer: beyond it the holds that end soonest end now
            // (their events' actions run early; nothing is lost).
            while self.held.len() > self.config.max_pending {
                let Some(((_, _, rule), event_id)) = self.held.pop_first() else {
                    break;
                };
                self.stats.holds_released_early += 1;
                dropped("hold_overflow", 1);
                out.push(Decision::ReleaseEvent { event_id, rule });
            }
            if ct < before {
                // Late: everything up to `before` has been correlated already; join the
                // retained triggers now.
                self.stats.late += 1;
                self.correlate(ct, seq, &ev, &matched, true, now, &mut out);
            } else {
                self.pending.push(Pending {
                    ct,
                    seq,
                    ev,
                    matched: matched.clone(),
                });
                while self.pending.len() > self.config.max_pending {
                    self.stats.reorder_overflow += 1;
                    dropped("reorder_overflow", 1);
                    if let Some(p) = self.pending.pop() {
                        self.watermark = self.watermark.max(p.ct);
                        self.correlate(p.ct, p.seq, &p.ev, &p.matched, false, now, &mut out);
                    }
                }
            }
        }
        self.matched_buf = matched;
        self.release(now, &mut out);
        out
    }

    /// Moves the clock: correlates buffered events the watermark has passed, ends holds.
    pub fn advance(&mut self, now: Timestamp) -> Vec<Decision> {
        let now = us(now);
        self.set_clock(now);
        let mut out = Vec::new();
        self.release(now, &mut out);
        out
    }

    /// Resolves everything: correlates the whole buffer and ends every hold, as if the clock
    /// ran out. `now` is only what decisions report as their time (dry-run's last arrival).
    pub fn finish(&mut self, now: Timestamp) -> Vec<Decision> {
        let mut out = Vec::new();
        self.watermark = i64::MAX / 4;
        self.release(us(now), &mut out);
        out
    }

    fn release(&mut self, now: i64, out: &mut Vec<Decision>) {
        while self.pending.peek().is_some_and(|p| p.ct <= self.watermark) {
            let Some(p) = self.pending.pop() else {
                break;
            };
            self.correlate(p.ct, p.seq, &p.ev, &p.matched, false, now, out);
        }
        while let Some(entry) = self.held.first_entry() {
            if entry.key().0 > self.watermark {
                break;
            }
            let ((_, _, rule), event_id) = entry.remove_entry();
            out.push(Decision::ReleaseEvent { event_id, rule });
        }
        if self.watermark - self.last_sweep >= SWEEP_EVERY {
            self.last_sweep = self.watermark;
            self.sweep();
        }
    }

    /// Drops expired triggers and empty groups, so memory follows live windows only.
    fn sweep(&mut self) {
        let wm = self.watermark;
        for (rule, st) in self.rules.rules.iter().zip(&mut self.states) {
            let horizon = wm.saturating_sub(rule.window);
            st.groups.retain(|_, g| {
                while g.triggers.front().is_some_and(|t| t.time < horizon) {
                    g.triggers.pop_front();
                }
                if g.inhibit.is_some_and(|(_, until)| until <= wm) {
                    g.inhibit = None;
                }
                !g.triggers.is_empty() || g.inhibit.is_some()
            });
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn correlate(
        &mut self,
        ct: i64,
        seq: u64,
        ev: &Arc<EventIn>,
        matched: &[u32],
        late: bool,
        now: i64,
        out: &mut Vec<Decision>,
    ) {
        for &i in matched {
            self.correlate_rule(i as usize, ct, seq, ev, late, now, out);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn correlate_rule(
        &mut self,
        ri: usize,
        ct: i64,
        seq: u64,
        ev: &Arc<EventIn>,
        late: bool,
        now: i64,
        out: &mut Vec<Decision>,
    ) {
        let mut key = std::mem::take(&mut self.key_buf);
        group_key_into(&self.rules.rules[ri], ev, &mut key);
        self.correlate_group(ri, &key, ct, seq, ev, late, now, out);
        self.key_buf = key;
    }

    /// [`Engine::correlate_rule`] for the group `key`.
    #[allow(clippy::too_many_arguments)]
    fn correlate_group(
        &mut self,
        ri: usize,
        key: &str,
        ct: i64,
        seq: u64,
        ev: &Arc<EventIn>,
        late: bool,
        now: i64,
        out: &mut Vec<Decision>,
    ) {
        let rule = self.rules.rules[ri].clone();
        let st = &mut self.states[ri];
        // One hash of the key finds or adds the group; only a full map looks twice.
        if st.groups.len() >= self.config.max_groups_per_rule && !st.groups.contains_key(key) {
            let n = evict(&mut st.groups);
            self.stats.groups_evicted += n;
            dropped("group_evicted", n);
        }
        // A new group starts with room for one trigger, not the four a first `insert` would
        // reserve: most groups (one per host) never see a second event in their window, and
        // the deque's growth path cost more than the allocation itself.
        let g = st.groups.entry_ref(key).or_insert_with(Group::new);
        g.last = g.last.max(ct);
        let hold = rule.delayed_action.map(|d| ct.saturating_add(d));
        if let Some((from, until)) = g.inhibit {
            if ct >= from && ct < until {
                let (event_id, rule_name) = (ev.id.clone(), rule.name.clone());
                let group_key = key.to_string();
                if rule.auto_acknowledge {
                    if let Some(h) = hold {
                        self.held.remove(&(h, seq, rule.name.clone()));
                    }
                    out.push(Decision::AcknowledgeEvent {
                        event_id,
                        rule: rule_name,
                        group_key,
                    });
                } else {
                    out.push(Decision::Inhibited {
                        event_id,
                        rule: rule_name,
                        group_key,
                        until: ts(until),
                    });
                }
                return;
            }
            if ct >= until {
                // Seed 003: after the inhibit period correlation resumes from scratch.
                g.inhibit = None;
                while g.triggers.front().is_some_and(|t| t.time < until) {
                    g.triggers.pop_front();
                }
            }
        }
        let horizon = self.watermark.min(ct).saturating_sub(rule.window);
        while g.triggers.front().is_some_and(|t| t.time < horizon) {
            g.triggers.pop_front();
        }
        let pos = g
            .triggers
            .partition_point(|t| (t.time, &*t.ev.id) <= (ct, &*ev.id));
        g.triggers.insert(
            pos,
            Trigger {
                time: ct,
                seq,
                late,
                hold,
                ev: ev.clone(),
            },
        );
        // The earliest window that contains the new trigger and holds `count` events. A
        // record weighs its first-stage dedup count at arrival: one record of count 5 is 5
        // events toward `count`.
        let n = u64::from(rule.count);
        let mut start = g
            .triggers
            .partition_point(|t| t.time < ct.saturating_sub(rule.window));
        let mut weight: u64 = g.triggers.range(start..pos).map(Trigger::weight).sum();
        let mut fire = None;
        for end in pos..g.triggers.len() {
            weight = weight.saturating_add(g.triggers[end].weight());
            let limit = g.triggers[end].time.saturating_sub(rule.window);
            while g.triggers[start].time < limit {
                weight -= g.triggers[start].weight();
                start += 1;
            }
            if start > pos {
                break;
            }
            if weight >= n {
                fire = Some((start, end));
                break;
            }
        }
        let Some((start, end)) = fire else { return };
        let consumed: Vec<Trigger> = g.triggers.drain(start..=end).collect();
        let fired_at = consumed.last().map_or(ct, |t| t.time);
        if rule.inhibit > 0 {
            g.inhibit = Some((fired_at, fired_at.saturating_add(rule.inhibit)));
        }
        let group_key = key.to_string();
        let group_values = group_values(&rule, ev);
        for t in &consumed {
            if let Some(h) = t.hold {
                self.held.remove(&(h, t.seq, rule.name.clone()));
            }
        }
        self.stats.fired += 1;
        self.fire(&rule, group_key, group_values, consumed, late, now, out);
    }

    #[allow(clippy::too_many_arguments)]
    fn fire(
        &mut self,
        rule: &Rule,
        group_key: String,
        group: Vec<(String, String)>,
        triggers: Vec<Trigger>,
        late: bool,
        now: i64,
        out: &mut Vec<Decision>,
    ) {
        let event_ids =
            || -> Vec<String> { triggers.iter().map(|t| t.ev.id.to_string()).collect() };
        let (first, last) = (
            triggers.first().map_or(now, |t| t.time),
            triggers.last().map_or(now, |t| t.time),
        );
        let late = late || triggers.iter().any(|t| t.late && t.time == last);
        let occurrences: u64 = triggers.iter().map(Trigger::weight).sum();
        let window = |group_key: &str| FiredWindow {
            group_key: group_key.to_string(),
            records: triggers.len(),
            occurrences,
            first,
            last,
            window: rule.window,
            count: rule.count,
        };
        if rule.site_inhibit {
            let down: BTreeSet<&str> = triggers
                .iter()
                .filter(|t| self.site_down_at(&t.ev.site, t.time))
                .map(|t| t.ev.site.as_str())
                .collect();
            let all_down = triggers
                .iter()
                .all(|t| self.site_down_at(&t.ev.site, t.time));
            if all_down && !down.is_empty() {
                self.stats.site_inhibited += 1;
                let w = window(&group_key);
                out.push(Decision::SiteInhibited {
                    rule: rule.name.to_string(),
                    explanation: format!(
                        "rule {:?} fired {} on {}, but every trigger came from an unreachable site ({}); the site-unreachable incident covers it",
                        rule.name,
                        w.group_text(),
                        w.window_text(),
                        down.iter().copied().collect::<Vec<_>>().join(", ")
                    ),
                    sites: down.into_iter().map(String::from).collect(),
                    group_key,
                    event_ids: event_ids(),
                });
                return;
            }
        }
        // A firing that opens no incident (an opposite rule with nothing to clear, a stateful
        // rule already in its state, a rule that only inhibits) needs four properties, not the
        // whole map: they are resolved by name, and the map is built only for an incident.
        let (stateful, node) = self.stateful_of(rule, &group, &triggers);
        if let Some((key, state)) = &stateful {
            if is_clearing(state) {
                if let Some(open) = self.stateful.remove(key) {
                    let w = window(&group_key);
                    out.push(Decision::ClearIncident(Box::new(ClearDecision {
                        rule: rule.name.to_string(),
                        rule_version: rule.version.to_string(),
                        explanation: format!(
                            "rule {:?} fired {} on {}: state {state:?} clears {:?} (opened by rule {:?}) for node {:?} element {:?}",
                            rule.name,
                            w.group_text(),
                            w.window_text(),
                            key.stateful,
                            open.rule,
                            key.node,
                            key.element
                        ),
                        opened_by: open.rule,
                        key: key.clone(),
                        state: state.clone(),
                        window: (ts(first), ts(last)),
                        decided_at: ts(now),
                        event_ids: event_ids(),
                        late,
                    })));
                }
                return;
            }
            if self.stateful.get(key).is_some_and(|o| &o.state == state) {
                out.push(Decision::Deduplicated {
                    rule: rule.name.to_string(),
                    key: key.clone(),
                    state: state.clone(),
                    event_ids: event_ids(),
                });
                return;
            }
            if self.stateful.len() >= self.config.max_stateful
                && !self.stateful.contains_key(key)
                && let Some(oldest) = self
                    .stateful
                    .iter()
                    .min_by_key(|(k, o)| (o.since, (*k).clone()))
                    .map(|(k, _)| k.clone())
            {
                self.stateful.remove(&oldest);
                self.stats.stateful_evicted += 1;
                dropped("stateful_evicted", 1);
            }
            self.stateful.insert(
                key.clone(),
                OpenState {
                    rule: rule.name.to_string(),
                    state: state.clone(),
                    since: last,
                },
            );
        }
        if !rule.create_incident {
            return;
        }
        let (properties, map_node) = self.synthesize(rule, &group, &triggers);
        debug_assert_eq!(map_node, node);
        debug_assert_eq!(stateful_from_map(&properties, &node), stateful);
        let highest = triggers
            .iter()
            .map(|t| t.ev.event.severity)
            .max()
            .unwrap_or(Severity::Info);
        let severity = rule
            .incident_severity
            .or_else(|| properties.get("severity").and_then(|s| s.parse().ok()))
            .unwrap_or(highest);
        // Sorted and distinct. A window holds a handful of triggers: sorting their borrowed
        // values in a vector is cheaper than building a tree set of them.
        let distinct = |f: fn(&EventIn) -> &str| -> Vec<String> {
            let mut values: Vec<&str> = triggers.iter().map(|t| f(&t.ev)).collect();
            values.sort_unstable();
            values.dedup();
            values.into_iter().map(String::from).collect()
        };
        let hosts = distinct(|e| e.event.hostname.as_str());
        let sites = distinct(|e| e.site.as_str());
        let triggers_handling = if rule.auto_acknowledge {
            TriggerHandling::Acknowledged
        } else if rule.delayed_action.is_some() {
            TriggerHandling::Superseded
        } else {
            TriggerHandling::Plain
        };
        let explanation = Explanation::fired(Fired {
            rule: rule.name.clone(),
            priority: rule.priority,
            version: rule.version.clone(),
            describe: rule.describe.clone(),
            window: window(&group_key),
            late,
            handling: triggers_handling,
        });
        out.push(Decision::OpenIncident(Box::new(IncidentDecision {
            rule: rule.name.clone(),
            rule_version: rule.version.clone(),
            priority: rule.priority,
            group_key,
            group,
            severity,
            contact_list: rule.contact_list.clone(),
            window: (ts(first), ts(last)),
            decided_at: ts(now),
            event_ids: event_ids(),
            hosts,
            sites,
            node,
            properties,
            stateful,
            triggers: triggers_handling,
            suppress_individual: rule.suppress_individual,
            late,
            delay_secs: (now - last).max(0) / 1_000_000,
            explanation,
        })));
    }

    /// The stateful key and state, and the node, that [`Engine::synthesize`]'s map gives a
    /// firing, without building it: `stateful`, `state`, `element` and `node` each resolved
    /// through the same steps by name ([`resolve`]), then step 8.
    fn stateful_of(
        &self,
        rule: &Rule,
        group: &[(String, String)],
        triggers: &[Trigger],
    ) -> (Option<(StatefulKey, String)>, String) {
        let highest = highest_trigger(triggers);
        let one = |name: &str| resolve(rule, group, triggers, highest, name);
        let node = match one("node") {
            (v, true) => v.unwrap_or_default().to_string(),
            (_, false) => self.config.default_node.clone(),
        };
        let (Some(stateful), true) = one("stateful") else {
            return (None, node);
        };
        let element = match one("element") {
            (_, false) if !group.is_empty() => {
                let values: Vec<&str> = group.iter().map(|(_, v)| v.as_str()).collect();
                values.join(",")
            }
            (v, _) => v.unwrap_or_default().to_string(),
        };
        let state = one("state").0.unwrap_or("down").to_string();
        let key = StatefulKey {
            node: node.clone(),
            stateful: stateful.to_string(),
            element,
        };
        (Some((key, state)), node)
    }

    /// Seed 003's content steps 1–8: copy_present, copy_first, copy_last, copy_highest,
    /// copy_groupby, enrich, then the stateful/node/element adjustments.
    ///
    /// The steps write properties in order, a later write of a name replacing an earlier one
    /// and an `enrich` to null removing it. The writes are collected in a list, stably sorted
    /// and reduced to each name's last write, and the map is bulk-built from that: seed 003's
    /// default `copy_last` copies every property of the last trigger, and one B-tree insert
    /// per property was a tenth of the engine's time in an outage storm.
    fn synthesize(
        &self,
        rule: &Rule,
        group: &[(String, String)],
        triggers: &[Trigger],
    ) -> (BTreeMap<String, String>, String) {
        // Room for seed 003's default: every property of the last trigger (its fields and tags).
        let room = rule.copies.present.len()
            + rule.enrich.len()
            + triggers
                .last()
                .map_or(0, |t| FIELD_NAMES.len() + t.ev.event.tags.len());
        let mut writes: Vec<(String, Option<String>)> = Vec::with_capacity(room);
        // Step 8 only asks whether these three were set explicitly.
        let mut explicit = Explicit::default();
        for name in &rule.copies.present {
            if let Some(v) = triggers.iter().find_map(|t| t.ev.property(name)) {
                writes.push((name.clone(), Some(v.to_string())));
                explicit.mark(name);
            }
        }
        for (sels, src) in copy_sources(rule, triggers, highest_trigger(triggers)) {
            let Some(src) = src else { continue };
            for sel in sels {
                match sel {
                    CopySel::Name(n) => {
                        if let Some(v) = src.ev.property(n) {
                            writes.push((n.clone(), Some(v.to_string())));
                        }
                        explicit.mark(n);
                    }
                    CopySel::Regex(r) => {
                        // The empty pattern (seed 003's default `copy_last`) matches every
                        // name: no need to ask the regex for each.
                        let all = r.as_str().is_empty();
                        for (k, v) in src.ev.properties() {
                            if all || r.is_match(&k) {
                                writes.push((k.into_owned(), Some(v.to_string())));
                            }
                        }
                    }
                }
            }
        }
        for (target, (_, value)) in rule.copies.groupby.iter().zip(group) {
            if let Some(t) = target {
                writes.push((t.clone(), Some(value.clone())));
                explicit.mark(t);
            }
        }
        for (k, v) in &rule.enrich {
            writes.push((k.clone(), v.clone()));
            explicit.mark(k);
        }
        // Stable: each name's writes stay in step order, its last write last. The properties
        // of a trigger come in name order, so the common case is sorted already.
        writes.sort_by(|a, b| a.0.cmp(&b.0));
        // Keep one entry per name, holding its last write (`dedup_by` keeps the first of a run
        // and hands it each later one).
        writes.dedup_by(|later, kept| {
            let same = later.0 == kept.0;
            if same {
                std::mem::swap(&mut later.1, &mut kept.1);
            }
            same
        });
        // Sorted and distinct, so `from_iter`'s own sort finds one run and the tree is built
        // without searching it. An `enrich` to null removes the name.
        let mut props: BTreeMap<String, String> = writes
            .into_iter()
            .filter_map(|(k, v)| Some((k, v?)))
            .collect();
        // Step 8: stateful only when set explicitly; node from an explicit setting or the
        // default node; element from the groupby values when not set.
        if !explicit.stateful {
            props.remove("stateful");
        }
        let node = if explicit.node {
            props.get("node").cloned().unwrap_or_default()
        } else {
            self.config.default_node.clone()
        };
        props.insert("node".into(), node.clone());
        if props.contains_key("stateful") && !explicit.element && !group.is_empty() {
            let element: Vec<&str> = group.iter().map(|(_, v)| v.as_str()).collect();
            props.insert("element".into(), element.join(","));
        }
        (props, node)
    }

    // ---- site outages -----------------------------------------------------------------------

    /// The aggregator saw `site` unreachable since `since`. Incidents whose triggers all come
    /// from unreachable sites (at their event times) are then `SiteInhibited`.
    pub fn site_down(&mut self, site: &str, since: Timestamp) {
        if !self.sites.contains_key(site) && self.sites.len() >= MAX_SITES {
            // Bounded: forget the histories of sites that are reachable now.
            let before = self.sites.len();
            self.sites
                .retain(|_, v| v.last().is_some_and(|(_, until)| until.is_none()));
            dropped("site_history_evicted", (before - self.sites.len()) as u64);
            if self.sites.len() >= MAX_SITES {
                dropped("site_limit", 1);
                return;
            }
        }
        let v = self.sites.entry(site.to_string()).or_default();
        if v.last().is_some_and(|(_, until)| until.is_none()) {
            return;
        }
        v.push((us(since), None));
        if v.len() > 32 {
            v.remove(0);
        }
    }

    /// `site` is reachable again since `at`.
    pub fn site_up(&mut self, site: &str, at: Timestamp) {
        if let Some(last) = self.sites.get_mut(site).and_then(|v| v.last_mut())
            && last.1.is_none()
        {
            last.1 = Some(us(at));
        }
    }

    fn site_down_at(&self, site: &str, t: i64) -> bool {
        self.sites.get(site).is_some_and(|v| {
            v.iter()
                .any(|&(since, until)| since <= t && until.is_none_or(|u| t < u))
        })
    }

    // ---- notifications ----------------------------------------------------------------------

    /// Seed 004: whether a notification should go out, or is throttled into an aggregate.
    pub fn notify(&mut self, n: &Notification) -> NotifyDecision {
        self.throttle.notify(n)
    }

    // ---- reload and snapshots ---------------------------------------------------------------

    /// Installs a new rule set. Rules whose normalised definition (name and version hash) is
    /// unchanged keep their windows and inhibit timers; others start empty. Holds of rules that
    /// changed or went away are released in the returned decisions.
    pub fn reload(&mut self, rules: RuleSet) -> (ReloadReport, Vec<Decision>) {
        let mut old: HashMap<(Arc<str>, Arc<str>), RuleState> = self
            .rules
            .rules
            .iter()
            .map(|r| (r.name.clone(), r.version.clone()))
            .zip(std::mem::take(&mut self.states))
            .collect();
        let old_names: BTreeSet<String> = self
            .rules
            .rules
            .iter()
            .map(|r| r.name.to_string())
            .collect();
        let mut report = ReloadReport::default();
        let states: Vec<RuleState> = rules
            .rules
            .iter()
            .map(|r| match old.remove(&(r.name.clone(), r.version.clone())) {
                Some(s) => {
                    report.kept.push(r.name.to_string());
                    s
                }
                None => {
                    report.reset.push(r.name.to_string());
                    RuleState::default()
                }
            })
            .collect();
        let new_names: BTreeSet<String> = rules.rules.iter().map(|r| r.name.to_string()).collect();
        report.removed = old_names.difference(&new_names).cloned().collect();
        let kept: BTreeSet<&str> = report.kept.iter().map(String::as_str).collect();
        let mut out = Vec::new();
        self.held.retain(|(_, _, rule), id| {
            let keep = kept.contains(&**rule);
            if !keep {
                out.push(Decision::ReleaseEvent {
                    event_id: id.clone(),
                    rule: rule.clone(),
                });
            }
            keep
        });
        self.install(rules);
        self.states = states;
        for mut p in self.pending.take() {
            p.matched = self.matching(&p.ev);
            if !p.matched.is_empty() {
                self.pending.push(p);
            }
        }
        (report, out)
    }

    /// The engine's state (windows, buffer, holds, stateful incidents, outages, throttles) as
    /// a serialisable value, to persist and hand to [`Engine::restore`] after a restart.
    pub fn snapshot(&self) -> Snapshot {
        let trig = |t: &Trigger| TriggerSnap {
            time: t.time,
            seq: t.seq,
            late: t.late,
            hold: t.hold,
            event: (*t.ev).clone(),
        };
        Snapshot {
            format: SNAPSHOT_FORMAT,
            watermark: self.watermark,
            seq: self.seq,
            rules: self
                .rules
                .rules
                .iter()
                .zip(&self.states)
                .map(|(r, s)| RuleSnap {
                    name: r.name.to_string(),
                    version: r.version.to_string(),
                    groups: s
                        .groups
                        .iter()
                        .map(|(k, g)| GroupSnap {
                            key: k.clone(),
                            inhibit: g.inhibit,
                            last: g.last,
                            triggers: g.triggers.iter().map(trig).collect(),
                        })
                        .collect(),
                })
                .collect(),
            pending: self
                .pending
                .iter()
                .map(|p| PendingSnap {
                    ct: p.ct,
                    seq: p.seq,
                    event: (*p.ev).clone(),
                })
                .collect(),
            held: self
                .held
                .iter()
                .map(|((until, seq, rule), id)| (*until, *seq, rule.to_string(), id.to_string()))
                .collect(),
            stateful: self
                .stateful
                .iter()
                .map(|(k, o)| (k.clone(), o.rule.clone(), o.state.clone(), o.since))
                .collect(),
            sites: self.sites.clone().into_iter().collect(),
            aggregates: self.throttle.snapshot(),
            stats: self.stats.clone(),
        }
    }

    /// Rebuilds an engine from a snapshot. State of rules whose name and version match the
    /// snapshot is restored; other rules start empty (as after a reload).
    pub fn restore(rules: RuleSet, config: EngineConfig, snap: Snapshot) -> Engine {
        let mut e = Engine::new(rules, config);
        if snap.format != SNAPSHOT_FORMAT {
            return e;
        }
        e.watermark = snap.watermark;
        e.last_sweep = snap.watermark;
        e.seq = snap.seq;
        e.stats = snap.stats;
        let mut by_rule: HashMap<(String, String), RuleSnap> = snap
            .rules
            .into_iter()
            .map(|r| ((r.name.clone(), r.version.clone()), r))
            .collect();
        let mut kept = BTreeSet::new();
        for (r, st) in e.rules.rules.iter().zip(&mut e.states) {
            let Some(rs) = by_rule.remove(&(r.name.to_string(), r.version.to_string())) else {
                continue;
            };
            kept.insert(r.name.to_string());
            let mut key = String::new();
            for g in rs.groups {
                let triggers: VecDeque<Trigger> = g
                    .triggers
                    .into_iter()
                    .map(|t| Trigger {
                        time: t.time,
                        seq: t.seq,
                        late: t.late,
                        hold: t.hold,
                        ev: Arc::new(t.event),
                    })
                    .collect();
                // Keys are recomputed from a trigger where there is one, so a snapshot taken
                // before group keys escaped `,` and `\` still finds its groups.
                let key = match triggers.front() {
                    Some(t) => {
                        group_key_into(r, &t.ev, &mut key);
                        key.clone()
                    }
                    None => g.key,
                };
                st.groups.insert(
                    key,
                    Group {
                        triggers,
                        inhibit: g.inhibit,
                        last: g.last,
                    },
                );
            }
        }
        for (until, seq, rule, id) in snap.held {
            if let Some(r) = e
                .rules
                .rules
                .iter()
                .find(|r| *r.name == *rule && kept.contains(&rule))
            {
                e.held.insert((until, seq, r.name.clone()), id.into());
            }
        }
        for p in snap.pending {
            let ev = Arc::new(p.event);
            let matched = e.matching(&ev);
            if !matched.is_empty() {
                e.pending.push(Pending {
                    ct: p.ct,
                    seq: p.seq,
                    ev,
                    matched,
                });
            }
        }
        for (k, rule, state, since) in snap.stateful {
            e.stateful.insert(k, OpenState { rule, state, since });
        }
        e.sites = snap.sites.into_iter().collect();
        e.throttle.restore(snap.aggregates);
        e
    }
}

/// Which of the properties seed 003's step 8 asks about were set explicitly by a copy or
/// enrich directive.
#[derive(Debug, Default)]
struct Explicit {
    stateful: bool,
    node: bool,
    element: bool,
}

impl Explicit {
    fn mark(&mut self, name: &str) {
        match name {
            "stateful" => self.stateful = true,
            "node" => self.node = true,
            "element" => self.element = true,
            _ => {}
        }
    }
}

/// What an incident's [`Explanation`] says, kept as values until someone reads it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Fired {
    rule: Arc<str>,
    priority: i64,
    version: Arc<str>,
    /// What the rule matches ([`Rule::describe`]).
    describe: Arc<str>,
    window: FiredWindow,
    late: bool,
    handling: TriggerHandling,
}

impl fmt::Display for Fired {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "rule {:?} (priority {}, version {}) fired {}: {} matching {}{}{}",
            self.rule,
            self.priority,
            self.version,
            self.window.group_text(),
            self.window.window_text(),
            self.describe,
            if self.late {
                "; created late: the completing event arrived after the allowed lateness"
            } else {
                ""
            },
            match self.handling {
                TriggerHandling::Plain => "",
                TriggerHandling::Superseded => "; supersedes its held triggers",
                TriggerHandling::Acknowledged => "; acknowledges its triggers",
            }
        )
    }
}

/// The window a rule fired on, for explanations.
#[derive(Debug, Clone, PartialEq)]
struct FiredWindow {
    group_key: String,
    /// Trigger records, and the events they stand for (their dedup counts).
    records: usize,
    occurrences: u64,
    /// Event times of the first and last trigger, the rule's window (microseconds).
    first: i64,
    last: i64,
    window: i64,
    count: u32,
}

impl FiredWindow {
    /// `for group hostname=db-1`, or `across all sites and hosts`.
    fn group_text(&self) -> GroupText<'_> {
        GroupText(self)
    }

    /// `2 matching event(s) between T1 and T2 (window 300 s, count 2)`.
    fn window_text(&self) -> WindowText<'_> {
        WindowText(self)
    }
}

struct GroupText<'a>(&'a FiredWindow);

impl fmt::Display for GroupText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.group_key.is_empty() {
            f.write_str("across all sites and hosts")
        } else {
            write!(f, "for group {}", self.0.group_key)
        }
    }
}

struct WindowText<'a>(&'a FiredWindow);

impl fmt::Display for WindowText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let w = self.0;
        if w.occurrences == w.records as u64 {
            write!(f, "{} matching event(s)", w.records)?;
        } else {
            write!(
                f,
                "{} matching event(s) ({} deduplicated records)",
                w.occurrences, w.records
            )?;
        }
        write!(
            f,
            " between {} and {} (window {} s, count {})",
            ts(w.first),
            ts(w.last),
            w.window / 1_000_000,
            w.count
        )
    }
}

/// Bumped when [`Snapshot`] changes shape; a snapshot of another format is ignored.
pub const SNAPSHOT_FORMAT: u32 = 1;

/// Serialisable engine state (see [`Engine::snapshot`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub format: u32,
    pub watermark: i64,
    pub seq: u64,
    rules: Vec<RuleSnap>,
    pending: Vec<PendingSnap>,
    held: Vec<(i64, u64, String, String)>,
    stateful: Vec<(StatefulKey, String, String, i64)>,
    sites: Vec<(String, Vec<Outage>)>,
    aggregates: Vec<AggSnapshot>,
    pub stats: Stats,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct RuleSnap {
    name: String,
    version: String,
    groups: Vec<GroupSnap>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct GroupSnap {
    key: String,
    inhibit: Option<(i64, i64)>,
    last: i64,
    triggers: Vec<TriggerSnap>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct TriggerSnap {
    time: i64,
    seq: u64,
    late: bool,
    hold: Option<i64>,
    event: EventIn,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct PendingSnap {
    ct: i64,
    seq: u64,
    event: EventIn,
}

/// Seed 003's `copy_highest` source: the most severe trigger, the earliest of equals.
fn highest_trigger(triggers: &[Trigger]) -> Option<&Trigger> {
    triggers
        .iter()
        .enumerate()
        .max_by_key(|(i, t)| (t.ev.event.severity, Reverse(*i)))
        .map(|(_, t)| t)
}

/// Seed 003's `copy_first`, `copy_last` and `copy_highest` selectors, each with the trigger
/// it copies from (none when there are no triggers).
fn copy_sources<'a>(
    rule: &'a Rule,
    triggers: &'a [Trigger],
    highest: Option<&'a Trigger>,
) -> [(&'a [CopySel], Option<&'a Trigger>); 3] {
    [
        (&rule.copies.first, triggers.first()),
        (&rule.copies.last, triggers.last()),
        (&rule.copies.highest, highest),
    ]
}

/// One property after seed 003's steps 1–7, as [`Engine::synthesize`] writes it (the last
/// write wins, an `enrich` to null removes it), and whether a copy or enrich directive set it
/// explicitly (what step 8 asks of `stateful`, `node` and `element`).
fn resolve<'a>(
    rule: &'a Rule,
    group: &'a [(String, String)],
    triggers: &'a [Trigger],
    highest: Option<&'a Trigger>,
    name: &str,
) -> (Option<&'a str>, bool) {
    let (mut value, mut explicit) = (None, false);
    if rule.copies.present.iter().any(|n| n == name)
        && let Some(v) = triggers.iter().find_map(|t| t.ev.property(name))
    {
        value = Some(v);
        explicit = true;
    }
    for (sels, src) in copy_sources(rule, triggers, highest) {
        let Some(src) = src else { continue };
        for sel in sels {
            match sel {
                CopySel::Name(n) if n == name => {
                    if let Some(v) = src.ev.property(n) {
                        value = Some(v);
                    }
                    explicit = true;
                }
                CopySel::Name(_) => {}
                CopySel::Regex(r) => {
                    if (r.as_str().is_empty() || r.is_match(name))
                        && let Some(v) = src.ev.listed_property(name)
                    {
                        value = Some(v);
                    }
                }
            }
        }
    }
    for (target, (_, v)) in rule.copies.groupby.iter().zip(group) {
        if target.as_deref() == Some(name) {
            value = Some(v.as_str());
            explicit = true;
        }
    }
    for (k, v) in &rule.enrich {
        if k == name {
            value = v.as_deref();
            explicit = true;
        }
    }
    (value, explicit)
}

/// The stateful key and state as read from a synthesised property map (the definition
/// [`Engine::stateful_of`] is held to).
fn stateful_from_map(
    properties: &BTreeMap<String, String>,
    node: &str,
) -> Option<(StatefulKey, String)> {
    properties.get("stateful").map(|s| {
        (
            StatefulKey {
                node: node.to_string(),
                stateful: s.clone(),
                element: properties.get("element").cloned().unwrap_or_default(),
            },
            properties
                .get("state")
                .cloned()
                .unwrap_or_else(|| "down".into()),
        )
    })
}

fn is_clearing(state: &str) -> bool {
    matches!(
        state.to_ascii_lowercase().as_str(),
        "up" | "ok" | "closed" | "clear" | "cleared" | "normal" | "resolved"
    )
}

fn group_values(rule: &Rule, ev: &EventIn) -> Vec<(String, String)> {
    rule.group_by
        .iter()
        .zip(&rule.group_names)
        .map(|(f, n)| (n.clone(), ev.get(f).unwrap_or("").to_string()))
        .collect()
}

/// `name=value,name=value` into `key`; empty for a rule without `group_by`.
///
/// The key names the group, so two distinct lists of values must never give one key: a
/// `,` or `\` inside a value is escaped with a `\` (`a=x\,b=y` is the one value `x,b=y`).
/// The names are the rule's, fixed and in order, so after the escaping a key reads back one
/// way only. Values without either character, nearly all of them, appear as they are.
fn group_key_into(rule: &Rule, ev: &EventIn, key: &mut String) {
    key.clear();
    for (i, (f, n)) in rule.group_by.iter().zip(&rule.group_names).enumerate() {
        if i > 0 {
            key.push(',');
        }
        key.push_str(n);
        key.push('=');
        let v = ev.get(f).unwrap_or("");
        if v.contains([',', '\\']) {
            for c in v.chars() {
                if c == ',' || c == '\\' {
                    key.push('\\');
                }
                key.push(c);
            }
        } else {
            key.push_str(v);
        }
    }
}

/// Evicts the least recently active tenth of the groups (at least one); returns how many.
fn evict(groups: &mut Groups) -> u64 {
    let n = (groups.len() / 10).max(1);
    let mut by_age: Vec<(i64, String)> = groups.iter().map(|(k, g)| (g.last, k.clone())).collect();
    by_age.select_nth_unstable(n - 1);
    for (_, k) in by_age.into_iter().take(n) {
        groups.remove(&k);
    }
    n as u64
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use proptest::prelude::*;
    use weir_common::{Event, InputKind};

    use super::*;

    /// Names the directives and events below draw from: step 8's four, plain fields, tags.
    const NAMES: [&str; 9] = [
        "stateful",
        "state",
        "element",
        "node",
        "hostname",
        "severity",
        "tags.customer",
        "tags.stateful",
        "priority",
    ];
    const REGEXES: [&str; 4] = ["//", "/^tags\\./", "/^s/", "/node|element/"];
    const TAGS: [&str; 4] = ["customer", "stateful", "state", "element"];

    fn sels(picks: &[usize]) -> String {
        let all: Vec<String> = picks
            .iter()
            .map(|&i| match NAMES.get(i) {
                Some(n) => format!("{n:?}"),
                None => format!("{:?}", REGEXES[i % REGEXES.len()]),
            })
            .collect();
        format!("[{}]", all.join(", "))
    }

    fn event(i: usize, sev: usize, tags: &[(usize, usize)]) -> Arc<EventIn> {
        let sevs = [Severity::Info, Severity::Warning, Severity::Critical];
        let mut event = Event::new(
            InputKind::Syslog,
            "syslog",
            format!("host-{}", i % 2),
            sevs[sev % 3],
            "msg",
            Timestamp::from_second(1_800_000_000 + i as i64).unwrap_or(Timestamp::UNIX_EPOCH),
        );
        event.tag = Some("X".into());
        event.tags = tags
            .iter()
            .map(|&(k, v)| (TAGS[k % TAGS.len()].to_string(), format!("v{v}")))
            .collect();
        Arc::new(EventIn {
            id: format!("e{i}").into(),
            site: "site-a".into(),
            agent: "agent-1".into(),
            event,
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// `listed_property` gives what `properties` lists under a name, for every name.
        #[test]
        fn listed_property_is_what_properties_lists(
            tags in proptest::collection::vec((0usize..4, 0usize..3), 0..4),
        ) {
            let ev = event(0, 1, &tags);
            let mut names: Vec<String> = NAMES.iter().map(|n| n.to_string()).collect();
            names.extend(["tag", "message", "site", "agent", "id", "fields.x", "tags.state"].map(String::from));
            names.extend(ev.properties().map(|(k, _)| k.into_owned()));
            for name in names {
                let listed = ev.properties().find(|(k, _)| *k == name).map(|(_, v)| v);
                prop_assert_eq!(ev.listed_property(&name), listed, "{}", name);
            }
        }

        /// `stateful_of` resolves the stateful key, state and node as the synthesised map
        /// gives them, whatever the copy and enrich directives.
        #[test]
        fn stateful_of_is_the_map_s(
            first in proptest::collection::vec(0usize..13, 0..3),
            last in proptest::option::of(proptest::collection::vec(0usize..13, 0..3)),
            highest in proptest::collection::vec(0usize..13, 0..3),
            present in proptest::collection::vec(0usize..9, 0..3),
            groupby in proptest::collection::vec(proptest::option::of(0usize..9), 0..3),
            enrich in proptest::collection::vec((0usize..9, proptest::option::of(0usize..3)), 0..4),
            grouped in 0usize..3,
            evs in proptest::collection::vec(
                (0usize..3, proptest::collection::vec((0usize..4, 0usize..3), 0..4)), 1..4),
        ) {
            let group_by = ["", "\"hostname\"", "\"hostname\", \"tags.customer\""][grouped];
            let mut text = format!(
                r#"[{{"name": "R", "events": ["X"], "count": 1, "group_by": [{group_by}]"#
            );
            text.push_str(&format!(r#", "copy_first": {}, "copy_highest": {}"#, sels(&first), sels(&highest)));
            if let Some(last) = &last {
                text.push_str(&format!(r#", "copy_last": {}"#, sels(last)));
            }
            let present: Vec<usize> = present.into_iter().collect();
            text.push_str(&format!(r#", "copy_present": {}"#, sels(&present)));
            let targets: Vec<String> = groupby
                .iter()
                .take(grouped)
                .map(|t| t.map_or("null".into(), |i| format!("{:?}", NAMES[i])))
                .collect();
            text.push_str(&format!(r#", "copy_groupby": [{}]"#, targets.join(", ")));
            let enrich: Vec<String> = enrich
                .iter()
                .map(|(k, v)| format!("{:?}: {}", NAMES[*k], v.map_or("null".into(), |v| format!("\"up{v}\""))))
                .collect();
            text.push_str(&format!(r#", "enrich": {{{}}}}}]"#, enrich.join(", ")));
            let rules = RuleSet::parse(&text, Path::new("rules.json"))
                .unwrap_or_else(|e| panic!("{e}: {text}"));
            let engine = Engine::new(rules, EngineConfig::default());
            let rule = engine.rules.rules[0].clone();
            let triggers: Vec<Trigger> = evs
                .iter()
                .enumerate()
                .map(|(i, (sev, tags))| Trigger {
                    time: i as i64,
                    seq: i as u64,
                    late: false,
                    hold: None,
                    ev: event(i, *sev, tags),
                })
                .collect();
            let group = group_values(&rule, &triggers[triggers.len() - 1].ev);
            let (props, node) = engine.synthesize(&rule, &group, &triggers);
            let want = (stateful_from_map(&props, &node), node);
            prop_assert_eq!(engine.stateful_of(&rule, &group, &triggers), want, "{}", text);
        }
    }
}
