//! Which rules an event matches: the engine's hot path.
//!
//! The answer is by definition that of the plain evaluation — a rule matches when its
//! `events` list (if any) names the event and `Cond::eval` holds — and a property test holds
//! this module to it. What it adds is speed, with no change of meaning:
//!
//! - **Index.** Rules with an `events` list are found by the event's name in a hash map, which
//!   holds for each name the merged list of its rules and the rules without a list, in
//!   priority order; only the latter are tested against every event.
//! - **Severity floor.** A rule whose conditions require `severity >= X` at the top level is
//!   skipped on one comparison ([`Rule::min_severity`]).
//! - **One literal scan per field.** The literals of every `contains`, `contains_any` and
//!   `contains_all` filter on the same field go into one ASCII-case-insensitive Aho-Corasick
//!   automaton. The first such filter an event reaches scans the field once and records which
//!   literals occur in a bitset; every later literal filter on that field is a bit test instead
//!   of a regex search. The filters' regexes are `(?i)` alternations of escaped literals, and
//!   on ASCII text Unicode case folding of an ASCII literal is exactly ASCII case folding, so
//!   the scan answers the same; a value with non-ASCII bytes, and a literal that is empty or
//!   not ASCII, still goes through the filter's regex.
//! - **One regex pass per field.** Likewise the `regex` filters on one field form one
//!   `RegexSet` (same syntax, same "matches anywhere" semantics), run at most once per event
//!   when the first of them is reached.
//! - **One tag lookup per tag.** Other filters on `tags.X` read the value through a per-event
//!   cache (up to [`TAG_SLOTS`] distinct tags; the rest look up each time): ten rules testing
//!   `tags.vendor` search the event's tag map once.

use std::collections::HashMap;

use aho_corasick::{AhoCorasick, MatchKind};
use regex::RegexSet;
use weir_common::Severity;

use super::EventIn;
use super::rules::{Cond, Field, Fields, Filter, Op, RuleSet};

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// One field's literal scan or regex pass.
#[derive(Debug)]
struct Scan {
    field: Field,
    kind: ScanKind,
    /// Offset of this scan's patterns in the bitset, in bits.
    base: usize,
    len: usize,
}

#[derive(Debug)]
enum ScanKind {
    /// ASCII-case-insensitive literals; ASCII values only.
    Literals(AhoCorasick),
    /// The field's `regex` filters.
    Regexes(RegexSet),
}

/// A condition tree with the literal filters bound to their scan.
#[derive(Debug)]
enum Node {
    True,
    All(Vec<Node>),
    Any(Vec<Node>),
    None(Vec<Node>),
    /// A `contains*` filter answered by a scan: `bits` are its literals' positions in the
    /// bitset; `all` for `contains_all`. `filter` answers when the value is not ASCII.
    Literals {
        scan: usize,
        bits: Box<[u32]>,
        all: bool,
        filter: Filter,
    },
    /// A `regex` filter answered by its field's regex pass (bit `bit` of the bitset).
    Regex {
        scan: usize,
        bit: u32,
    },
    /// Any other filter; `slot` is its tag's place in the per-event tag cache.
    Filter {
        filter: Filter,
        slot: Option<u8>,
    },
}

/// Distinct `tags.X` names whose values are cached per event.
const TAG_SLOTS: usize = 16;

#[derive(Debug)]
struct Plan {
    min_severity: Option<Severity>,
    node: Node,
}

/// What a scan found for the current event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scanned {
    NotYet,
    /// The bitset holds the patterns found.
    Bits,
    /// The value has non-ASCII bytes: the filters' regexes decide.
    NotAscii,
    /// The event has no such field: no literal filter on it matches.
    Missing,
}

/// Compiled matching state for one rule set. See the module docs.
#[derive(Debug)]
pub(super) struct Matcher {
    /// Per event name: the rules naming it and the `generic` ones, merged (indices into the
    /// rule set, ascending).
    by_name: FastMap<Box<str>, Box<[u32]>>,
    /// Rules without one, ascending: tested against every event.
    generic: Vec<u32>,
    plans: Vec<Plan>,
    scans: Vec<Scan>,
    /// Per event: what each scan found, and the literals found (one bit each).
    scanned: Vec<Scanned>,
    bits: Vec<u64>,
    /// Tag names of the per-event tag cache, by slot.
    tags: Vec<Box<str>>,
}

impl Default for Matcher {
    fn default() -> Self {
        Matcher::new(&RuleSet::default())
    }
}

/// Literals and regexes per field, while building.
#[derive(Default)]
struct Lits {
    /// (field, regex pass?, patterns).
    fields: Vec<(Field, bool, Vec<String>)>,
    /// Scans that failed to build: their filters keep their own regexes.
    disabled: Vec<(Field, bool)>,
    /// Tags read by plain filters, by cache slot.
    tags: Vec<Box<str>>,
}

impl Lits {
    /// A plain filter, with its tag's cache slot when there is room.
    fn plain(&mut self, f: &Filter) -> Node {
        let slot = match &f.field {
            Field::Tags(t) => match self.tags.iter().position(|x| x == t) {
                Some(i) => u8::try_from(i).ok(),
                None if self.tags.len() < TAG_SLOTS => {
                    self.tags.push(t.clone());
                    u8::try_from(self.tags.len() - 1).ok()
                }
                None => None,
            },
            _ => None,
        };
        Node::Filter {
            filter: f.clone(),
            slot,
        }
    }

    fn scan_of(&mut self, field: &Field, regex: bool) -> Option<usize> {
        if self.disabled.iter().any(|(f, r)| f == field && *r == regex) {
            return None;
        }
        let i = self
            .fields
            .iter()
            .position(|(f, r, _)| f == field && *r == regex);
        Some(i.unwrap_or_else(|| {
            self.fields.push((field.clone(), regex, Vec::new()));
            self.fields.len() - 1
        }))
    }

    /// Bit positions (within the field's scan) of `items`, adding new ones.
    fn add(&mut self, field: &Field, regex: bool, items: &[String]) -> Option<(usize, Box<[u32]>)> {
        let scan = self.scan_of(field, regex)?;
        let pats = &mut self.fields[scan].2;
        let mut bits = Vec::with_capacity(items.len());
        for item in items {
            let id = pats.iter().position(|p| p == item).unwrap_or_else(|| {
                pats.push(item.clone());
                pats.len() - 1
            });
            bits.push(u32::try_from(id).unwrap_or(u32::MAX));
        }
        Some((scan, bits.into()))
    }
}

fn bind(cond: &Cond, lits: &mut Lits) -> Node {
    let all = |c: &[Cond], lits: &mut Lits| c.iter().map(|c| bind(c, lits)).collect();
    match cond {
        Cond::True => Node::True,
        Cond::All(c) => Node::All(all(c, lits)),
        Cond::Any(c) => Node::Any(all(c, lits)),
        Cond::None(c) => Node::None(all(c, lits)),
        Cond::Filter(f) => {
            let (items, is_all) = match &f.op {
                Op::ContainsAny { literals, .. } => (literals, false),
                Op::ContainsAll { literals, .. } => (literals, true),
                Op::Regex(r) => {
                    return match lits.add(&f.field, true, &[r.as_str().to_string()]) {
                        Some((scan, bits)) => Node::Regex { scan, bit: bits[0] },
                        None => lits.plain(f),
                    };
                }
                _ => return lits.plain(f),
            };
            // ASCII-case-insensitive scanning equals the regex only for non-empty ASCII
            // literals (see the module docs).
            if items.iter().any(|s| s.is_empty() || !s.is_ascii()) {
                return lits.plain(f);
            }
            let lower: Vec<String> = items.iter().map(|s| s.to_ascii_lowercase()).collect();
            match lits.add(&f.field, false, &lower) {
                Some((scan, bits)) => Node::Literals {
                    scan,
                    bits,
                    all: is_all,
                    filter: f.clone(),
                },
                None => lits.plain(f),
            }
        }
    }
}

fn rebase(node: &mut Node, bases: &[usize]) {
    let base = |scan: usize| u32::try_from(bases[scan]).unwrap_or(u32::MAX);
    match node {
        Node::All(c) | Node::Any(c) | Node::None(c) => c.iter_mut().for_each(|n| rebase(n, bases)),
        Node::Literals { scan, bits, .. } => {
            let b = base(*scan);
            bits.iter_mut().for_each(|x| *x = x.saturating_add(b));
        }
        Node::Regex { scan, bit } => *bit = bit.saturating_add(base(*scan)),
        Node::True | Node::Filter { .. } => {}
    }
}

impl Matcher {
    pub(super) fn new(rules: &RuleSet) -> Matcher {
        let mut disabled = Vec::new();
        loop {
            match Matcher::build(rules, disabled.clone()) {
                Ok(m) => return m,
                // Each retry disables at least one more scan: this ends.
                Err(failed) => disabled.extend(failed),
            }
        }
    }

    /// Compiles the plans and scans; the scans that fail to build (only past the automata's
    /// size limits) are returned, to be disabled.
    fn build(rules: &RuleSet, disabled: Vec<(Field, bool)>) -> Result<Matcher, Vec<(Field, bool)>> {
        let mut by_name: FastMap<Box<str>, Vec<u32>> = FastMap::default();
        let mut generic = Vec::new();
        let mut lits = Lits {
            fields: Vec::new(),
            disabled,
            tags: Vec::new(),
        };
        let mut plans = Vec::with_capacity(rules.rules.len());
        for (i, r) in rules.rules.iter().enumerate() {
            let i = u32::try_from(i).unwrap_or(u32::MAX);
            if r.events.is_empty() {
                generic.push(i);
            } else {
                for n in &r.events {
                    let v = by_name.entry(n.as_str().into()).or_default();
                    if !v.contains(&i) {
                        v.push(i);
                    }
                }
            }
            plans.push(Plan {
                min_severity: r.min_severity,
                node: bind(&r.cond, &mut lits),
            });
        }
        let mut scans = Vec::with_capacity(lits.fields.len());
        let mut failed = Vec::new();
        let mut base = 0;
        let tags = lits.tags;
        for (field, regex, pats) in lits.fields {
            let kind = if regex {
                RegexSet::new(&pats).map(ScanKind::Regexes).ok()
            } else {
                AhoCorasick::builder()
                    .ascii_case_insensitive(true)
                    .match_kind(MatchKind::Standard)
                    .build(&pats)
                    .map(ScanKind::Literals)
                    .ok()
            };
            match kind {
                Some(kind) => scans.push(Scan {
                    field,
                    kind,
                    base,
                    len: pats.len(),
                }),
                None => failed.push((field, regex)),
            }
            base += pats.len();
        }
        if !failed.is_empty() {
            return Err(failed);
        }
        // Merge each name's rules with the generic ones once, not per event.
        let by_name = by_name
            .into_iter()
            .map(|(name, named)| {
                let mut all: Vec<u32> = named.into_iter().chain(generic.iter().copied()).collect();
                all.sort_unstable();
                all.dedup();
                (name, all.into_boxed_slice())
            })
            .collect();
        // Bit positions are per scan so far: shift each scan to its place in the bitset.
        let bases: Vec<usize> = scans.iter().map(|s| s.base).collect();
        for p in &mut plans {
            rebase(&mut p.node, &bases);
        }
        Ok(Matcher {
            by_name,
            generic,
            plans,
            scanned: vec![Scanned::NotYet; scans.len()],
            bits: vec![0; base.div_ceil(64)],
            scans,
            tags,
        })
    }

    /// Indices of the rules `ev` matches, in priority order (ascending index).
    pub(super) fn matching(&mut self, ev: &EventIn) -> Vec<u32> {
        self.scanned.fill(Scanned::NotYet);
        let candidates: &[u32] = ev
            .name()
            .and_then(|n| self.by_name.get(n))
            .map_or(&self.generic, |v| &**v);
        let mut out = Vec::new();
        let mut cx = Cx {
            scans: &self.scans,
            scanned: &mut self.scanned,
            bits: &mut self.bits,
            ev,
            tag_names: &self.tags,
            tags_known: 0,
            tags: [None; TAG_SLOTS],
        };
        for &i in candidates {
            let plan = &self.plans[i as usize];
            if plan.min_severity.is_some_and(|m| ev.event.severity < m) {
                continue;
            }
            if cx.eval(&plan.node) {
                out.push(i);
            }
        }
        out
    }
}

/// One event's evaluation: the event and what the scans found so far.
struct Cx<'a> {
    scans: &'a [Scan],
    scanned: &'a mut [Scanned],
    bits: &'a mut [u64],
    ev: &'a EventIn,
    tag_names: &'a [Box<str>],
    /// Which slots of `tags` hold this event's value (bit per slot).
    tags_known: u16,
    tags: [Option<&'a str>; TAG_SLOTS],
}

impl<'a> Cx<'a> {
    fn eval(&mut self, node: &Node) -> bool {
        match node {
            Node::True => true,
            Node::All(c) => c.iter().all(|n| self.eval(n)),
            Node::Any(c) => c.iter().any(|n| self.eval(n)),
            Node::None(c) => !c.iter().any(|n| self.eval(n)),
            Node::Filter { filter, slot } => {
                let Some(slot) = slot else {
                    return filter.eval(self.ev);
                };
                let v = self.tag(usize::from(*slot));
                if filter.on_severity() {
                    filter.eval_severity(v.and_then(|v| v.parse().ok()))
                } else {
                    filter.eval_value(v)
                }
            }
            Node::Regex { scan, bit } => {
                self.scan(*scan) == Scanned::Bits
                    && self.bits[*bit as usize / 64] & (1 << (bit % 64)) != 0
            }
            Node::Literals {
                scan,
                bits,
                all,
                filter,
            } => match self.scan(*scan) {
                Scanned::Missing => false,
                Scanned::NotAscii => filter.eval(self.ev),
                _ => {
                    let set = |b: &u32| self.bits[*b as usize / 64] & (1 << (b % 64)) != 0;
                    if *all {
                        bits.iter().all(set)
                    } else {
                        bits.iter().any(set)
                    }
                }
            },
        }
    }

    /// The event's value of cached tag `slot`, looked up once per event.
    fn tag(&mut self, slot: usize) -> Option<&'a str> {
        if self.tags_known & (1 << slot) == 0 {
            self.tags_known |= 1 << slot;
            self.tags[slot] = self
                .ev
                .event
                .tags
                .get(&*self.tag_names[slot])
                .map(String::as_str);
        }
        self.tags[slot]
    }

    /// Runs scan `i` over its field, once per event.
    fn scan(&mut self, i: usize) -> Scanned {
        if self.scanned[i] != Scanned::NotYet {
            return self.scanned[i];
        }
        let s = &self.scans[i];
        let found = match (self.ev.get(&s.field), &s.kind) {
            (None, _) => Scanned::Missing,
            (Some(v), ScanKind::Literals(_)) if !v.is_ascii() => Scanned::NotAscii,
            (Some(v), kind) => {
                for b in s.base..s.base + s.len {
                    self.bits[b / 64] &= !(1 << (b % 64));
                }
                let mut set = |i: usize| {
                    let b = s.base + i;
                    self.bits[b / 64] |= 1 << (b % 64);
                };
                match kind {
                    ScanKind::Literals(ac) => ac
                        .find_overlapping_iter(v)
                        .for_each(|m| set(m.pattern().as_usize())),
                    ScanKind::Regexes(rs) => rs.matches(v).iter().for_each(set),
                }
                Scanned::Bits
            }
        };
        self.scanned[i] = found;
        found
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use jiff::Timestamp;
    use proptest::prelude::*;
    use serde_json::{Value, json};
    use weir_common::{Event, InputKind};

    use super::*;

    /// The plain evaluation the matcher must agree with: every rule, no index, no severity
    /// floor, no scan.
    fn plain(rules: &RuleSet, ev: &EventIn) -> Vec<u32> {
        (0u32..)
            .zip(&rules.rules)
            .filter(|(_, r)| {
                (r.events.is_empty() || ev.name().is_some_and(|n| r.events.iter().any(|e| e == n)))
                    && r.cond.eval(ev)
            })
            .map(|(i, _)| i)
            .collect()
    }

    // Words for messages and literals: case variants, a word inside another, non-ASCII text
    // (the Kelvin sign and long s fold to ASCII k and s under Unicode rules), and an empty
    // literal.
    const WORDS: [&str; 14] = [
        "link",
        "LINK",
        "Down",
        "down",
        "up",
        "linkdown",
        "fan",
        "FAN failure",
        "\u{212A}elvin",
        "kelvin",
        "\u{017F}ession",
        "session",
        "é",
        "",
    ];
    const FIELDS: [&str; 5] = [
        "message",
        "hostname",
        "tags.vendor",
        "tags.missing",
        "severity",
    ];
    const OPS: [&str; 10] = [
        "contains",
        "contains_any",
        "contains_all",
        "equals",
        "not_equals",
        "matches",
        "exists",
        ">=",
        "in",
        "regex",
    ];
    const REGEXES: [&str; 5] = ["(?i)li.k", "^down", "k", "(?i)s\\S+n", "fan|up$"];

    fn filter() -> impl Strategy<Value = Value> {
        (
            0..FIELDS.len(),
            0..OPS.len(),
            proptest::collection::vec(0..WORDS.len(), 1..4),
            0usize..5,
        )
            .prop_map(|(f, o, words, sev)| {
                let field = FIELDS[f];
                let op = OPS[o];
                let list: Vec<&str> = words.iter().map(|&w| WORDS[w]).collect();
                let sevs = ["info", "warning", "error", "critical", "debug"];
                let value = match op {
                    "in" if field == "severity" => json!([sevs[sev], sevs[(sev + 2) % 5]]),
                    "contains_any" | "contains_all" | "in" => json!(list),
                    "exists" => json!(words.len() > 1),
                    "regex" => json!(REGEXES[words[0] % REGEXES.len()]),
                    ">=" => json!(sevs[sev]),
                    "matches" => json!(format!("{}*", list[0])),
                    _ if field == "severity" => json!(sevs[sev]),
                    _ => json!(list[0]),
                };
                json!({"field": field, "op": op, "value": value})
            })
    }

    fn condition() -> impl Strategy<Value = Value> {
        filter().prop_recursive(3, 16, 4, |inner| {
            (0usize..3, proptest::collection::vec(inner, 1..4)).prop_map(
                |(o, filters)| json!({"operator": (["AND", "OR", "NOT"][o]), "filters": filters}),
            )
        })
    }

    fn rule() -> impl Strategy<Value = Value> {
        (condition(), proptest::collection::vec(0usize..3, 0..2)).prop_map(|(c, events)| {
            let names: Vec<String> = events.iter().map(|e| format!("EVT_{e}")).collect();
            json!({"conditions": c, "events": names})
        })
    }

    fn event() -> impl Strategy<Value = EventIn> {
        (
            proptest::collection::vec(0..WORDS.len(), 0..6),
            0..WORDS.len(),
            proptest::option::of(0..WORDS.len()),
            0usize..5,
            proptest::option::of(0usize..4),
        )
            .prop_map(|(msg, host, vendor, sev, tag)| {
                let msg: Vec<&str> = msg.iter().map(|&w| WORDS[w]).collect();
                let sev = [
                    Severity::Debug,
                    Severity::Info,
                    Severity::Warning,
                    Severity::Error,
                    Severity::Critical,
                ][sev];
                let mut e = Event::new(
                    InputKind::Syslog,
                    "syslog",
                    WORDS[host],
                    sev,
                    msg.join(" "),
                    Timestamp::UNIX_EPOCH,
                );
                e.tag = tag.map(|t| format!("EVT_{t}"));
                if let Some(v) = vendor {
                    e.tags.insert("vendor".into(), WORDS[v].into());
                }
                EventIn {
                    id: "s:a:1".into(),
                    site: "s".into(),
                    agent: "a".into(),
                    event: e,
                }
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// The index, severity floor and literal scans change nothing: the matcher picks
        /// exactly the rules the plain evaluation picks, on random rules and events.
        #[test]
        fn matcher_agrees_with_plain_evaluation(
            raw in proptest::collection::vec(rule(), 1..8),
            events in proptest::collection::vec(event(), 1..16),
        ) {
            let rules: Vec<Value> = raw
                .into_iter()
                .enumerate()
                .map(|(i, mut r)| {
                    r["name"] = json!(format!("r{i}"));
                    if r["events"].as_array().is_some_and(Vec::is_empty) {
                        r.as_object_mut().map(|o| o.remove("events"));
                    }
                    r
                })
                .collect();
            let text = serde_json::to_string(&rules).unwrap_or_default();
            // Some random rules are invalid (a severity filter with a bad value): skip those.
            let Ok(set) = RuleSet::parse(&text, Path::new("prop.json")) else {
                return Ok(());
            };
            let mut m = Matcher::new(&set);
            for ev in &events {
                prop_assert_eq!(m.matching(ev), plain(&set, ev), "event {:?}", ev.event);
            }
        }
    }

    #[test]
    fn literals_share_one_scan_per_field_and_non_ascii_falls_back() {
        let set = RuleSet::parse(
            r#"[{"name": "a", "conditions": {"field": "message", "op": "contains_any", "value": ["Link down", "fan"]}},
                {"name": "b", "conditions": {"field": "message", "op": "contains_all", "value": ["LINK", "DOWN"]}},
                {"name": "c", "conditions": {"field": "message", "op": "contains", "value": "kelvin"}},
                {"name": "d", "conditions": {"field": "message", "op": "contains", "value": "é"}}]"#,
            Path::new("t.json"),
        )
        .expect("rules");
        let mut m = Matcher::new(&set);
        assert_eq!(m.scans.len(), 1, "one scan for the message field");
        assert_eq!(m.scans[0].len, 5, "shared literals counted once");
        assert!(
            matches!(m.plans[3].node, Node::Filter { .. }),
            "non-ASCII literal"
        );
        let ev = |msg: &str| EventIn {
            id: "s:a:1".into(),
            site: "s".into(),
            agent: "a".into(),
            event: Event::new(
                InputKind::Syslog,
                "syslog",
                "h",
                Severity::Info,
                msg,
                Timestamp::UNIX_EPOCH,
            ),
        };
        assert_eq!(m.matching(&ev("eth0: LINK DOWN")), vec![0, 1]);
        assert_eq!(m.matching(&ev("down, then link")), vec![1]);
        // The Kelvin sign folds to k under the regex's Unicode rules: the regex decides.
        assert_eq!(m.matching(&ev("\u{212A}ELVIN")), vec![2]);
        assert_eq!(m.matching(&ev("café link down")), vec![0, 1, 3]);
    }
}
