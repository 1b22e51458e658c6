//! Which rules an event matches: the engine's hot path.
//!
//! The answer is by definition that of the plain evaluation — a rule matches when its
//! `events` list (if any) names the event and `Cond::eval` holds — and a property test holds
//! this module to it. What it adds is speed, with no change of meaning:
//!
//! - **Index.** Rules with an `events` list are found by the event's name in a hash map, which
//!   holds for each name the merged list of its rules and the rules without a list; only the
//!   latter are tested against every event. Each list is split into buckets by a *gate*: a
//!   top-level AND filter of the rule (an `equals`, `in`, `matches`, `contains*` or `regex`
//!   one, in that order of preference), which must hold for the rule to match. A bucket whose
//!   gate fails is skipped whole: forty rules on six hostname globs cost six glob tests and
//!   the programs of the rules whose glob matched.
//! - **Severity floor.** A rule whose conditions require `severity >= X` at the top level is
//!   skipped on one comparison ([`Rule::min_severity`](super::rules::Rule::min_severity)).
//! - **Each distinct filter once per event.** Filters are pure, so equal filters (same field,
//!   op and value) in different rules are one *predicate*, evaluated at most once per event
//!   and remembered: forty rules testing `hostname matches "db-*"` cost one glob test. The
//!   memo is stamped with an event counter, so starting the next event clears nothing.
//! - **One table per field for `equals`, `in` and string-test globs.** The first such
//!   filter an event reaches answers every one on its field (see [`Table`]): the value is
//!   read once, one hash lookup answers the `equals` and `in` filters, and only the globs
//!   whose pattern starts (a suffix glob: ends) with the value's first (last) byte are tested,
//!   without the generic filter evaluation around them. Six hostname-prefix gates cost one
//!   string test, not six trips through `Filter::eval`. Globs globset has to decide (`?`,
//!   classes, alternations) stay plain filters.
//! - **Flat programs.** Each rule's condition tree is compiled into a branch program: a list
//!   of `(predicate, next if true, next if false)` tests ending in accept or reject, evaluated
//!   in a loop with the tree's short-circuit order, no recursion and no allocation. Jumps
//!   only go to tests emitted earlier, so a program always ends.
//! - **One literal scan per field.** The literals of every `contains`, `contains_any` and
//!   `contains_all` filter on the same field go into one Aho-Corasick automaton of lowercase
//!   literals, run over the value ASCII-lowercased: ASCII-case-insensitive matching. The first
//!   such filter an event reaches scans the field once — a leftmost-first search with
//!   aho-corasick's packed (Teddy) searcher called directly, longest literal first,
//!   repeated from one byte past each match's start, each match also marking the literals
//!   that are its prefixes (most values contain no literal and cost one search) — and
//!   records which literals occur in a bitset;
//!   every literal filter on that field is then a bit test. (An ASCII-case-insensitive
//!   automaton would spare the lowercase copy, but aho-corasick then drops its packed SIMD
//!   prefilter, which is what makes the common no-literal case cheap.) The
//!   filters' regexes are `(?i)` alternations of escaped literals, and on ASCII text Unicode
//!   case folding of an ASCII literal is exactly ASCII case folding, so the scan answers the
//!   same; a value with non-ASCII bytes, and a literal that is empty or not ASCII, still goes
//!   through the filter's regex.
//! - **Regexes gated by required literals.** The runs of characters that every match of a
//!   `regex` filter must contain (see [`required_literals`]) join its field's scan; on an
//!   ASCII value that lacks one of them, the regex is not run: it cannot match. The regex
//!   crate's own prefilters look at prefixes only, while `(?i)interface \S+/5 changed state`
//!   is best told apart by its inner literal.
//! - **One tag lookup per tag.** Filters on `tags.X` read the value through a per-event
//!   cache (up to [`TAG_SLOTS`] distinct tags; the rest look up each time).

use std::collections::HashMap;
use std::sync::Arc;

use aho_corasick::{AhoCorasick, Input, MatchKind, Span, packed};
use regex::Regex;
use regex_syntax::hir::{Class, Hir, HirKind};
use weir_common::Severity;

use super::EventIn;
use super::rules::{CmpOp, CmpValue, Cond, Field, Fields, Filter, Glob, Op, RuleSet};

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// One field's literal scan.
#[derive(Debug)]
struct Scan {
    field: Field,
    /// Lowercase literals, longest first, leftmost-first (which gets aho-corasick's packed
    /// SIMD prefilter), run over the ASCII value lowercased.
    any: AhoCorasick,
    /// The same literals in the same order as a packed (Teddy) searcher, searched directly:
    /// the prefilter `any` runs, without the automaton's layers around it (about a fifth of
    /// a short value's search). Leftmost-first is the same answer either way. `None` where
    /// Teddy does not build: no SSSE3 (x86_64) or NEON (aarch64), other targets, or a literal
    /// set it refuses (e.g. more than 16 literals with a one-byte one, or an empty literal);
    /// `any` searches then, with the same answers.
    packed: Option<packed::Searcher>,
    /// Per literal of `any` (by its pattern id): the bits (within the scan) of it and of every
    /// literal that is a prefix of it.
    closure: Box<[Bits]>,
    /// Offset of this scan's literals in the bitset, in bits: a multiple of 64.
    base: usize,
    len: usize,
}

/// Bit positions of literals.
type Bits = Box<[u32]>;

/// A set of literal bits as `(word, mask)` pairs, one per bitset word it touches, ascending:
/// "any of them" is one AND per word, "all of them" one AND and compare (see [`words`]).
type Words = Box<[(u32, u64)]>;

/// A distinct filter of the rule set, evaluated at most once per event.
#[derive(Debug)]
enum Pred {
    /// A `contains*` filter answered by its field's scan: `words` are its literals' bits
    /// in the bitset; `all` for `contains_all`. `filter` answers when the value is not ASCII.
    Literals {
        scan: usize,
        words: Words,
        all: bool,
        filter: Filter,
    },
    /// A `regex` filter; `gate` is the scan and bits of its required literals (all of them
    /// occur where it matches), if it has any.
    Regex {
        field: Field,
        regex: Regex,
        gate: Option<(usize, Words)>,
    },
    /// An `equals`, `in` or string-test `matches` filter, answered by its field's table.
    Table(u32),
    /// A severity comparison on the event's own severity.
    Severity(Filter),
    /// Any other filter; `slot` is its tag's place in the per-event tag cache.
    Plain { filter: Filter, slot: Option<u8> },
}

/// One field's `equals`, `in` and string-test globs (exact, prefix, suffix: see
/// [`Glob`]), answered together: the field is read once, one hash lookup answers every
/// `equals` and `in`, and of the globs only those whose pattern starts (or, for a suffix,
/// ends) with the value's first (last) byte, ASCII-case-insensitively, are tested: no other
/// can match. Forty rules on six hostname prefixes cost one string test per event.
#[derive(Debug)]
struct Table {
    field: Field,
    /// The field's tag cache slot, if it is a cached tag.
    slot: Option<u8>,
    /// Every predicate the table answers.
    members: Box<[u32]>,
    /// Per value, the `equals` and `in` predicates it satisfies.
    values: FastMap<Box<str>, Box<[u32]>>,
    /// Exact and prefix globs by their pattern's first byte, suffix globs by its last byte,
    /// ASCII-lowercased (256 entries each, or none when the table has no such glob).
    first: Box<[Globs]>,
    last: Box<[Globs]>,
    /// Globs with an empty pattern or remainder (`*`, `""`): tested on every value.
    empty: Globs,
}

/// Globs of a table, each with its predicate.
type Globs = Box<[(u32, Glob)]>;

/// A table while building.
#[derive(Debug, Default)]
struct TableBuilder {
    members: Vec<u32>,
    values: FastMap<Box<str>, Vec<u32>>,
    globs: Vec<(u32, Glob)>,
}

impl TableBuilder {
    fn build(self, field: Field, slot: Option<u8>) -> Table {
        let mut first: Vec<Vec<(u32, Glob)>> = Vec::new();
        let mut last: Vec<Vec<(u32, Glob)>> = Vec::new();
        let mut empty = Vec::new();
        for (p, g) in self.globs {
            let (list, key) = match &g {
                Glob::Exact(s) | Glob::Prefix(s) => (&mut first, s.bytes().next()),
                Glob::Suffix(s) => (&mut last, s.bytes().next_back()),
                // Not a string test (never put in a table), but right on every value.
                Glob::Full(_) => {
                    empty.push((p, g));
                    continue;
                }
            };
            match key {
                Some(b) => {
                    if list.is_empty() {
                        list.resize_with(256, Vec::new);
                    }
                    list[usize::from(b.to_ascii_lowercase())].push((p, g));
                }
                None => empty.push((p, g)),
            }
        }
        let boxed = |l: Vec<Vec<(u32, Glob)>>| l.into_iter().map(Vec::into_boxed_slice).collect();
        Table {
            field,
            slot,
            members: self.members.into(),
            values: self
                .values
                .into_iter()
                .map(|(v, ps)| (v, ps.into()))
                .collect(),
            first: boxed(first),
            last: boxed(last),
            empty: empty.into(),
        }
    }
}

/// One step of a rule's branch program: test `pred`, go on at `on_true` or `on_false`
/// (an index into the program, or [`ACCEPT`] / [`REJECT`]).
#[derive(Debug, Clone, Copy)]
struct Test {
    pred: u32,
    on_true: u32,
    on_false: u32,
}

const ACCEPT: u32 = u32::MAX;
const REJECT: u32 = u32::MAX - 1;

/// Distinct `tags.X` names whose values are cached per event.
const TAG_SLOTS: usize = 16;

/// Shortest required literal worth a place in a scan: shorter ones rule out too little.
const MIN_GATE: usize = 3;
/// Required literals per regex at most.
const MAX_GATES: usize = 4;

/// Rules of one candidate list that share a gate (see the module docs), ascending.
#[derive(Debug)]
struct Bucket {
    gate: Option<u32>,
    /// When every rule of the bucket needs a literal of one scan (see [`need`]): that scan
    /// and the union of those literals. Once the scan has run on an ASCII value without any
    /// of them, no rule left in the bucket can match.
    need: Option<(usize, Words)>,
    rules: Box<[u32]>,
}

/// Splits `rules` (ascending) into buckets by their gates, each with its [`need`].
fn buckets(
    rules: &[u32],
    gates: &[Option<u32>],
    needs: &[Option<u32>],
    preds: &[Pred],
) -> Box<[Bucket]> {
    let mut at: FastMap<Option<u32>, usize> = FastMap::default();
    let mut out: Vec<(Option<u32>, Vec<u32>)> = Vec::new();
    for &r in rules {
        let gate = gates[r as usize];
        let i = *at.entry(gate).or_insert_with(|| {
            out.push((gate, Vec::new()));
            out.len() - 1
        });
        out[i].1.push(r);
    }
    out.into_iter()
        .map(|(gate, rules)| Bucket {
            gate,
            need: need(&rules, needs, preds),
            rules: rules.into(),
        })
        .collect()
}

/// The literals a bucket's rules need: when each rule's program has, at its top level, an
/// AND-ed literal filter or literal-gated regex (`needs`, see [`Builder::need`]) on the same
/// scan, any rule matching an ASCII value implies that one of the union of their literals
/// occurs in it (`contains_any`: one of its own; `contains_all` and a regex's required
/// literals: all of them). `None` when a rule has no such filter or they differ in scan.
fn need(rules: &[u32], needs: &[Option<u32>], preds: &[Pred]) -> Option<(usize, Words)> {
    let mut scan = None;
    let mut all: Vec<(u32, u64)> = Vec::new();
    for &r in rules {
        let (s, words) = match &preds[needs[r as usize]? as usize] {
            Pred::Literals { scan, words, .. } => (*scan, words),
            Pred::Regex {
                gate: Some((scan, words)),
                ..
            } => (*scan, words),
            _ => return None,
        };
        // No literal at all (`contains_all []`) needs nothing.
        if words.is_empty() || *scan.get_or_insert(s) != s {
            return None;
        }
        all.extend_from_slice(words);
    }
    all.sort_unstable_by_key(|&(w, _)| w);
    let mut out: Vec<(u32, u64)> = Vec::with_capacity(all.len());
    for (w, m) in all {
        match out.last_mut() {
            Some((last, mask)) if *last == w => *mask |= m,
            _ => out.push((w, m)),
        }
    }
    Some((scan?, out.into()))
}

#[derive(Debug)]
struct Plan {
    min_severity: Option<Severity>,
    /// Where the rule's program starts (or [`ACCEPT`] for a rule without conditions).
    entry: u32,
}

/// What a scan found for the current event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scanned {
    NotYet,
    /// The bitset holds the literals found.
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
    /// rule set), by gate.
    by_name: FastMap<Box<str>, Box<[Bucket]>>,
    /// Rules without one, by gate: tested against every event.
    generic: Box<[Bucket]>,
    plans: Vec<Plan>,
    /// Every rule's branch program, one after the other.
    program: Vec<Test>,
    preds: Vec<Pred>,
    scans: Vec<Scan>,
    tables: Vec<Table>,
    /// Tag names of the per-event tag cache, by slot.
    tags: Vec<Box<str>>,
    /// Per event: its number, each predicate's answer (`epoch << 1 | answer`, valid when the
    /// epoch is the current one), what each scan found and the literals found (one bit each).
    epoch: u64,
    memo: Vec<u64>,
    scanned: Vec<Scanned>,
    bits: Vec<u64>,
    /// The scanned value, lowercased (reused).
    lower: Vec<u8>,
}

impl Default for Matcher {
    fn default() -> Self {
        Matcher::new(&RuleSet::default())
    }
}

/// Predicates, programs and scan literals, while building.
#[derive(Default)]
struct Builder {
    preds: Vec<Pred>,
    /// A filter's field and text (`hostname matches "db-*"`) name its predicate: for one
    /// field, the text after the field name is the op (no spaces) and the value as JSON, and
    /// the op and value determine the compiled filter.
    known: FastMap<(Field, Arc<str>), u32>,
    program: Vec<Test>,
    /// Literals per scanned field, lowercase.
    fields: Vec<(Field, Vec<String>)>,
    /// Each literal's position in `fields`, per field (so adding one is not a linear search:
    /// rule files and dry-run requests can carry many).
    literal_ids: Vec<FastMap<String, u32>>,
    /// Fields whose scan failed to build: their filters go without.
    disabled: Vec<Field>,
    /// Tags read by plain filters and tables, by cache slot.
    tags: Vec<Box<str>>,
    /// Tables by field.
    tables: Vec<(Field, TableBuilder)>,
}

impl Builder {
    /// Emits `cond` with continuations `t` and `f`; returns its entry. Children are emitted
    /// last to first, so every jump goes to an earlier test (or ends).
    fn emit(&mut self, cond: &Cond, t: u32, f: u32) -> u32 {
        match cond {
            Cond::True => t,
            Cond::All(c) => c.iter().rev().fold(t, |next, c| self.emit(c, next, f)),
            Cond::Any(c) => c.iter().rev().fold(f, |next, c| self.emit(c, t, next)),
            Cond::None(c) => c.iter().rev().fold(t, |next, c| self.emit(c, f, next)),
            Cond::Filter(filter) => {
                let pred = self.pred(filter);
                self.program.push(Test {
                    pred,
                    on_true: t,
                    on_false: f,
                });
                // Four billion tests do not fit in memory before this saturates.
                u32::try_from(self.program.len() - 1).unwrap_or(REJECT)
            }
        }
    }

    /// A top-level AND filter of `cond` that must hold for it to match, if it has a selective
    /// one (see the module docs).
    fn gate(&mut self, cond: &Cond) -> Option<u32> {
        let conjuncts = match cond {
            Cond::All(c) => &c[..],
            Cond::Filter(_) => std::slice::from_ref(cond),
            _ => return None,
        };
        let rank = |f: &Filter| match f.op {
            Op::Equals(_) | Op::In(_) => Some(0),
            Op::Matches(_) => Some(1),
            Op::ContainsAny { .. } | Op::ContainsAll { .. } => Some(2),
            Op::Regex(_) => Some(3),
            _ => None,
        };
        let (_, f) = conjuncts
            .iter()
            .filter_map(|c| match c {
                Cond::Filter(f) => rank(f).map(|r| (r, f)),
                _ => None,
            })
            .min_by_key(|(r, _)| *r)?;
        Some(self.pred(f))
    }

    /// A top-level AND filter of `cond` (a rule's residual) that is a literal filter or a
    /// regex gated by required literals: the rule cannot match an ASCII value lacking
    /// every one of its literals (see [`need`]).
    fn need(&mut self, cond: &Cond) -> Option<u32> {
        let conjuncts = match cond {
            Cond::All(c) => &c[..],
            Cond::Filter(_) => std::slice::from_ref(cond),
            _ => return None,
        };
        conjuncts.iter().find_map(|c| match c {
            Cond::Filter(f) => {
                let p = self.pred(f);
                matches!(
                    self.preds[p as usize],
                    Pred::Literals { .. } | Pred::Regex { gate: Some(_), .. }
                )
                .then_some(p)
            }
            _ => None,
        })
    }

    /// What is left of `cond` to test once its bucket's `gate` holds and the event is at
    /// least `floor`: the top-level AND filters that are the gate or `severity >= X` with
    /// `X` at most the floor are dropped (the matcher checks both before the program).
    fn residual(&mut self, cond: &Cond, gate: Option<u32>, floor: Option<Severity>) -> Cond {
        let mut implied = |c: &Cond| match c {
            Cond::Filter(f) => {
                let below_floor = matches!(
                    (&f.field, &f.op, floor),
                    (Field::Severity, Op::Cmp(CmpOp::Ge, CmpValue::Severity(x)), Some(min)) if *x <= min
                );
                below_floor || gate.is_some_and(|g| self.pred(f) == g)
            }
            _ => false,
        };
        match cond {
            Cond::All(c) => {
                let rest: Vec<Cond> = c.iter().filter(|c| !implied(c)).cloned().collect();
                if rest.is_empty() {
                    Cond::True
                } else {
                    Cond::All(rest)
                }
            }
            Cond::Filter(_) if implied(cond) => Cond::True,
            other => other.clone(),
        }
    }

    /// The predicate of `f`, shared with every equal filter.
    fn pred(&mut self, f: &Filter) -> u32 {
        let key = (f.field.clone(), f.text.clone());
        if let Some(&p) = self.known.get(&key) {
            return p;
        }
        let p = u32::try_from(self.preds.len()).unwrap_or(u32::MAX);
        let pred = match self.table(f, p) {
            Some(t) => Pred::Table(t),
            None => self.compile(f),
        };
        self.preds.push(pred);
        self.known.insert(key, p);
        p
    }

    /// Adds `f` (predicate `p`) to its field's table if a table answers it.
    fn table(&mut self, f: &Filter, p: u32) -> Option<u32> {
        let values: &[String] = match &f.op {
            Op::Equals(v) => std::slice::from_ref(v),
            Op::In(list) => list,
            Op::Matches(Glob::Full(_)) => return None,
            Op::Matches(_) => &[],
            _ => return None,
        };
        let t = match self.tables.iter().position(|(x, _)| *x == f.field) {
            Some(t) => t,
            None => {
                self.tables.push((f.field.clone(), TableBuilder::default()));
                self.tables.len() - 1
            }
        };
        let table = &mut self.tables[t].1;
        table.members.push(p);
        for v in values {
            let ps = table.values.entry(v.as_str().into()).or_default();
            // `in` lists may repeat a value.
            if ps.last() != Some(&p) {
                ps.push(p);
            }
        }
        if let Op::Matches(g) = &f.op {
            table.globs.push((p, g.clone()));
        }
        u32::try_from(t).ok()
    }

    fn compile(&mut self, f: &Filter) -> Pred {
        let (items, all) = match &f.op {
            Op::ContainsAny { literals, .. } => (literals, false),
            Op::ContainsAll { literals, .. } => (literals, true),
            Op::Regex(r) => {
                let lits = required_literals(r.as_str());
                let gate = if lits.is_empty() {
                    None
                } else {
                    self.add(&f.field, &lits)
                        .map(|(scan, bits)| (scan, words(&bits)))
                };
                return Pred::Regex {
                    field: f.field.clone(),
                    regex: r.clone(),
                    gate,
                };
            }
            _ => return self.plain(f),
        };
        // ASCII-case-insensitive scanning equals the regex only for non-empty ASCII
        // literals (see the module docs).
        if items.iter().any(|s| s.is_empty() || !s.is_ascii()) {
            return self.plain(f);
        }
        let lower: Vec<String> = items.iter().map(|s| s.to_ascii_lowercase()).collect();
        match self.add(&f.field, &lower) {
            Some((scan, bits)) => Pred::Literals {
                scan,
                words: words(&bits),
                all,
                filter: f.clone(),
            },
            None => self.plain(f),
        }
    }

    /// A plain filter, with its tag's cache slot when there is room.
    fn plain(&mut self, f: &Filter) -> Pred {
        if f.field == Field::Severity && f.on_severity() {
            return Pred::Severity(f.clone());
        }
        Pred::Plain {
            filter: f.clone(),
            slot: self.slot(&f.field),
        }
    }

    /// The tag cache slot of `field`, when it is a tag and there is room.
    fn slot(&mut self, field: &Field) -> Option<u8> {
        match field {
            Field::Tags(t) => match self.tags.iter().position(|x| x == t) {
                Some(i) => u8::try_from(i).ok(),
                None if self.tags.len() < TAG_SLOTS => {
                    self.tags.push(t.clone());
                    u8::try_from(self.tags.len() - 1).ok()
                }
                None => None,
            },
            _ => None,
        }
    }

    /// Bit positions (within the field's scan) of `items`, adding new ones; `None` when the
    /// field's scan is disabled.
    fn add(&mut self, field: &Field, items: &[String]) -> Option<(usize, Box<[u32]>)> {
        if self.disabled.contains(field) {
            return None;
        }
        let scan = match self.fields.iter().position(|(f, _)| f == field) {
            Some(i) => i,
            None => {
                self.fields.push((field.clone(), Vec::new()));
                self.literal_ids.push(FastMap::default());
                self.fields.len() - 1
            }
        };
        let pats = &mut self.fields[scan].1;
        let ids = &mut self.literal_ids[scan];
        let mut bits = Vec::with_capacity(items.len());
        for item in items {
            let id = *ids.entry(item.clone()).or_insert_with(|| {
                pats.push(item.clone());
                u32::try_from(pats.len() - 1).unwrap_or(u32::MAX)
            });
            bits.push(id);
        }
        Some((scan, bits.into()))
    }
}

/// `bits` as [`Words`]. Bits relative to a scan give words relative to it: scans start on
/// a word boundary, so placing them in the bitset only moves the word indices.
fn words(bits: &[u32]) -> Words {
    let mut out: Vec<(u32, u64)> = Vec::with_capacity(bits.len());
    let mut sorted = bits.to_vec();
    sorted.sort_unstable();
    for b in sorted {
        let (w, m) = (b / 64, 1u64 << (b % 64));
        match out.last_mut() {
            Some((last, mask)) if *last == w => *mask |= m,
            _ => out.push((w, m)),
        }
    }
    out.into()
}

/// The order of `pats` for a leftmost-first automaton (longest first, so the literal
/// reported at a position is the longest there), and per position in that order, the
/// indices in `pats` of that literal and of every literal that is a prefix of it.
fn longest_first(pats: &[String]) -> (Vec<u32>, Box<[Bits]>) {
    let mut order: Vec<u32> = (0..u32::try_from(pats.len()).unwrap_or(u32::MAX)).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(pats[i as usize].len()));
    let ids: FastMap<&str, u32> = pats.iter().map(String::as_str).zip(0..).collect();
    let closure = order
        .iter()
        .map(|&i| {
            let p = &pats[i as usize];
            (1..=p.len())
                .filter(|&n| p.is_char_boundary(n))
                .filter_map(|n| ids.get(&p[..n]).copied())
                .collect()
        })
        .collect();
    (order, closure)
}

/// Runs of characters that every match of `pattern` contains, ASCII-lowercased, the longest
/// [`MAX_GATES`] of at least [`MIN_GATE`] characters: on ASCII text a regex cannot match
/// where one of them does not occur (ASCII-case-insensitively). A run is a sequence of
/// adjacent literal bytes and of classes whose ASCII members are one character or one letter
/// in both cases (what `(?i)` makes of a letter; its non-ASCII members such as the Kelvin
/// sign cannot occur in ASCII text). Anything else — repetitions, alternations, anchors,
/// wider classes — ends a run; that only makes it shorter, never wrong.
/// (`regex-syntax`'s own literal extraction gives prefixes and suffixes only.)
pub(super) fn required_literals(pattern: &str) -> Vec<String> {
    // The regex crate parses with these defaults, so this is the HIR it compiled.
    let Ok(hir) = regex_syntax::Parser::new().parse(pattern) else {
        return Vec::new();
    };
    let (mut run, mut runs) = (String::new(), Vec::new());
    walk(&hir, &mut run, &mut runs);
    flush(&mut run, &mut runs);
    runs.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
    runs.dedup();
    runs.truncate(MAX_GATES);
    runs
}

/// Ends the current run, keeping it if it is long enough.
fn flush(run: &mut String, runs: &mut Vec<String>) {
    if run.len() >= MIN_GATE {
        runs.push(std::mem::take(run));
    }
    run.clear();
}

fn walk(h: &Hir, run: &mut String, best: &mut Vec<String>) {
    match h.kind() {
        HirKind::Empty => {}
        HirKind::Literal(lit) => {
            for &b in lit.0.iter() {
                if b.is_ascii() {
                    run.push(char::from(b.to_ascii_lowercase()));
                } else {
                    flush(run, best);
                }
            }
        }
        HirKind::Class(c) => match one_ascii_char(c) {
            Some(ch) => run.push(ch),
            None => flush(run, best),
        },
        HirKind::Capture(c) => walk(&c.sub, run, best),
        HirKind::Concat(hs) => hs.iter().for_each(|h| walk(h, run, best)),
        HirKind::Repetition(r) => {
            flush(run, best);
            // Matched at least once: its own runs are required, not adjacent to anything.
            if r.min >= 1 {
                walk(&r.sub, run, best);
                flush(run, best);
            }
        }
        HirKind::Look(_) | HirKind::Alternation(_) => flush(run, best),
    }
}

/// The one ASCII character (lowercase) a class can match in ASCII text, counting a letter's
/// two cases as one.
fn one_ascii_char(c: &Class) -> Option<char> {
    let ranges: Vec<(u32, u32)> = match c {
        Class::Unicode(u) => u
            .ranges()
            .iter()
            .map(|r| (u32::from(r.start()), u32::from(r.end())))
            .collect(),
        Class::Bytes(b) => b
            .ranges()
            .iter()
            .map(|r| (u32::from(r.start()), u32::from(r.end())))
            .collect(),
    };
    let mut members = Vec::new();
    for (start, end) in ranges {
        for c in start..=end.min(0x7F) {
            members.push(u8::try_from(c).ok()?);
            if members.len() > 2 {
                return None;
            }
        }
    }
    match members[..] {
        [a] => Some(char::from(a.to_ascii_lowercase())),
        [a, b] if a != b && a.eq_ignore_ascii_case(&b) => Some(char::from(a.to_ascii_lowercase())),
        _ => None,
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

    /// Compiles the programs, predicates and scans; the fields whose scans fail to build
    /// (only past the automata's size limits) are returned, to be disabled.
    fn build(rules: &RuleSet, disabled: Vec<Field>) -> Result<Matcher, Vec<Field>> {
        let mut by_name: FastMap<Box<str>, Vec<u32>> = FastMap::default();
        let mut generic = Vec::new();
        let mut b = Builder {
            disabled,
            ..Builder::default()
        };
        let mut plans = Vec::with_capacity(rules.rules.len());
        let mut gates = Vec::with_capacity(rules.rules.len());
        let mut needs = Vec::with_capacity(rules.rules.len());
        for (i, r) in rules.rules.iter().enumerate() {
            let i = u32::try_from(i).unwrap_or(u32::MAX);
            if r.events.is_empty() {
                generic.push(i);
            } else {
                for n in &r.events {
                    let v = by_name.entry(n.as_str().into()).or_default();
                    // Rules come in order, so a repeat can only be this rule's own.
                    if v.last() != Some(&i) {
                        v.push(i);
                    }
                }
            }
            let gate = b.gate(&r.cond);
            let rest = b.residual(&r.cond, gate, r.min_severity);
            plans.push(Plan {
                min_severity: r.min_severity,
                entry: b.emit(&rest, ACCEPT, REJECT),
            });
            gates.push(gate);
            needs.push(b.need(&rest));
        }
        let tables = std::mem::take(&mut b.tables)
            .into_iter()
            .map(|(field, t)| {
                let slot = b.slot(&field);
                t.build(field, slot)
            })
            .collect();
        let mut scans = Vec::with_capacity(b.fields.len());
        let mut failed = Vec::new();
        let mut base = 0;
        for (field, pats) in b.fields {
            let (order, closure) = longest_first(&pats);
            let any = AhoCorasick::builder()
                .match_kind(MatchKind::LeftmostFirst)
                .build(order.iter().map(|&i| &pats[i as usize]));
            let packed = packed::Config::new()
                .match_kind(packed::MatchKind::LeftmostFirst)
                .builder()
                .extend(order.iter().map(|&i| &pats[i as usize]))
                .build();
            match any {
                Ok(any) => scans.push(Scan {
                    field,
                    any,
                    packed,
                    closure,
                    base,
                    len: pats.len(),
                }),
                Err(_) => failed.push(field),
            }
            // Each scan's bits start a word, so clearing them never touches another's.
            base += pats.len().next_multiple_of(64);
        }
        if !failed.is_empty() {
            return Err(failed);
        }
        // Words are per scan so far: shift each to its scan's place in the bitset.
        let mut preds = b.preds;
        let shift = |scan: usize, words: &mut Words| {
            let base = u32::try_from(scans[scan].base / 64).unwrap_or(u32::MAX);
            for (w, _) in words.iter_mut() {
                *w = w.saturating_add(base);
            }
        };
        for p in &mut preds {
            match p {
                Pred::Literals { scan, words, .. } => shift(*scan, words),
                Pred::Regex {
                    gate: Some((scan, words)),
                    ..
                } => shift(*scan, words),
                Pred::Regex { .. } | Pred::Plain { .. } | Pred::Table(_) | Pred::Severity(_) => {}
            }
        }
        // Merge each name's rules with the generic ones once, not per event.
        let by_name = by_name
            .into_iter()
            .map(|(name, named)| {
                let mut all: Vec<u32> = named.into_iter().chain(generic.iter().copied()).collect();
                all.sort_unstable();
                all.dedup();
                (name, buckets(&all, &gates, &needs, &preds))
            })
            .collect();
        let generic = buckets(&generic, &gates, &needs, &preds);
        Ok(Matcher {
            by_name,
            generic,
            plans,
            program: b.program,
            memo: vec![0; preds.len()],
            preds,
            scanned: vec![Scanned::NotYet; scans.len()],
            bits: vec![0; base.div_ceil(64)],
            scans,
            tables,
            tags: b.tags,
            epoch: 0,
            lower: Vec::new(),
        })
    }

    /// Indices of the rules `ev` matches, in priority order (ascending index).
    pub(super) fn matching(&mut self, ev: &EventIn) -> Vec<u32> {
        let mut out = Vec::new();
        self.matching_into(ev, &mut out);
        out
    }

    /// [`Matcher::matching`] into `out` (cleared first), so the hot path reuses one buffer.
    pub(super) fn matching_into(&mut self, ev: &EventIn, out: &mut Vec<u32>) {
        out.clear();
        self.epoch += 1;
        self.scanned.fill(Scanned::NotYet);
        let candidates: &[Bucket] = ev
            .name()
            .and_then(|n| self.by_name.get(n))
            .map_or(&self.generic, |v| &**v);
        let mut cx = Cx {
            program: &self.program,
            preds: &self.preds,
            scans: &self.scans,
            tables: &self.tables,
            epoch: self.epoch,
            memo: &mut self.memo,
            scanned: &mut self.scanned,
            bits: &mut self.bits,
            ev,
            tag_names: &self.tags,
            tags_known: 0,
            tags: [None; TAG_SLOTS],
            lower: &mut self.lower,
        };
        for b in candidates {
            if b.gate.is_some_and(|g| !cx.pred(g)) {
                continue;
            }
            // Checked for rules past their severity floor until the scan has run, then once:
            // the bucket ends or the check does.
            let mut need = b.need.as_ref();
            for &i in &b.rules {
                let plan = &self.plans[i as usize];
                if plan.min_severity.is_some_and(|m| ev.event.severity < m) {
                    continue;
                }
                if let Some((scan, words)) = need
                    && cx.scanned[*scan] == Scanned::Bits
                {
                    if !cx.any(words) {
                        break;
                    }
                    need = None;
                }
                if cx.run(plan.entry) {
                    out.push(i);
                }
            }
        }
        // Buckets interleave: back to priority order.
        out.sort_unstable();
    }
}

/// One event's evaluation: the event and what is known about it so far.
struct Cx<'a> {
    program: &'a [Test],
    preds: &'a [Pred],
    scans: &'a [Scan],
    tables: &'a [Table],
    epoch: u64,
    memo: &'a mut [u64],
    scanned: &'a mut [Scanned],
    bits: &'a mut [u64],
    ev: &'a EventIn,
    tag_names: &'a [Box<str>],
    /// Which slots of `tags` hold this event's value (bit per slot).
    tags_known: u16,
    tags: [Option<&'a str>; TAG_SLOTS],
    lower: &'a mut Vec<u8>,
}

/// Up to this many tags, an event's tags are searched linearly ([`Cx::tag`]).
const LINEAR_TAGS: usize = 16;

impl<'a> Cx<'a> {
    /// Runs a rule's program from `entry`.
    fn run(&mut self, entry: u32) -> bool {
        let mut pc = entry;
        while pc < REJECT {
            let t = self.program[pc as usize];
            pc = if self.pred(t.pred) {
                t.on_true
            } else {
                t.on_false
            };
        }
        pc == ACCEPT
    }

    /// Predicate `p`'s answer, computed once per event. About half the calls are answered by
    /// the memo: that check is inlined into the program loop, the evaluation is not (it
    /// would cost every call its register saves).
    #[inline(always)]
    fn pred(&mut self, p: u32) -> bool {
        let m = self.memo[p as usize];
        if m >> 1 == self.epoch {
            return m & 1 == 1;
        }
        self.compute(p)
    }

    /// The cheap and common evaluations, inlined into the program loop too: a literal
    /// filter, and a regex whose required literals are not all there, on a field already
    /// scanned are a few word tests. The first of an event's literal filters runs the scan,
    /// through [`Cx::compute_slow`] with everything else.
    #[inline(always)]
    fn compute(&mut self, p: u32) -> bool {
        let v = match &self.preds[p as usize] {
            Pred::Literals {
                scan, words, all, ..
            } if self.scanned[*scan] == Scanned::Bits => {
                if *all {
                    self.all(words)
                } else {
                    self.any(words)
                }
            }
            Pred::Regex {
                gate: Some((scan, words)),
                ..
            } if self.scanned[*scan] == Scanned::Bits && !self.all(words) => false,
            _ => return self.compute_slow(p),
        };
        self.memo[p as usize] = self.epoch << 1 | u64::from(v);
        v
    }

    #[inline(never)]
    fn compute_slow(&mut self, p: u32) -> bool {
        if let Pred::Table(t) = self.preds[p as usize] {
            self.table(t as usize);
            return self.memo[p as usize] & 1 == 1;
        }
        let v = self.eval(&self.preds[p as usize]);
        self.memo[p as usize] = self.epoch << 1 | u64::from(v);
        v
    }

    /// Whether any of `words`' bits is set.
    fn any(&self, words: &[(u32, u64)]) -> bool {
        words.iter().any(|&(w, m)| self.bits[w as usize] & m != 0)
    }

    /// Whether all of `words`' bits are set.
    fn all(&self, words: &[(u32, u64)]) -> bool {
        words.iter().all(|&(w, m)| self.bits[w as usize] & m == m)
    }

    /// Answers every predicate of table `t` (see [`Table`]).
    fn table(&mut self, t: usize) {
        let (tables, ev) = (self.tables, self.ev);
        let table = &tables[t];
        let no = self.epoch << 1;
        for &p in &table.members {
            self.memo[p as usize] = no;
        }
        let v = match table.slot {
            Some(slot) => self.tag(usize::from(slot)),
            None => ev.get(&table.field),
        };
        let Some(v) = v else {
            return;
        };
        let yes = no | 1;
        if let Some(ps) = table.values.get(v) {
            for &p in ps {
                self.memo[p as usize] = yes;
            }
        }
        let mut test = |globs: &[(u32, Glob)]| {
            for (p, g) in globs {
                if g.is_match(v) {
                    self.memo[*p as usize] = yes;
                }
            }
        };
        test(&table.empty);
        let bytes = v.as_bytes();
        if let (Some(f), Some(l)) = (bytes.first(), bytes.last()) {
            if !table.first.is_empty() {
                test(&table.first[usize::from(f.to_ascii_lowercase())]);
            }
            if !table.last.is_empty() {
                test(&table.last[usize::from(l.to_ascii_lowercase())]);
            }
        }
    }

    fn eval(&mut self, pred: &Pred) -> bool {
        match pred {
            // Answered by `table`, never here.
            Pred::Table(_) => false,
            Pred::Severity(filter) => filter.eval_severity(Some(self.ev.event.severity)),
            Pred::Plain { filter, slot } => {
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
            Pred::Regex { field, regex, gate } => {
                if let Some((scan, words)) = gate {
                    match self.scan(*scan) {
                        Scanned::Missing => return false,
                        Scanned::Bits if !self.all(words) => return false,
                        _ => {}
                    }
                }
                self.ev.get(field).is_some_and(|v| regex.is_match(v))
            }
            Pred::Literals {
                scan,
                words,
                all,
                filter,
            } => match self.scan(*scan) {
                Scanned::Missing => false,
                Scanned::NotAscii => filter.eval(self.ev),
                _ => {
                    if *all {
                        self.all(words)
                    } else {
                        self.any(words)
                    }
                }
            },
        }
    }

    /// The event's value of cached tag `slot`, looked up once per event.
    fn tag(&mut self, slot: usize) -> Option<&'a str> {
        if self.tags_known & (1 << slot) == 0 {
            self.tags_known |= 1 << slot;
            // Most events carry a handful of tags: a linear pass that compares lengths first
            // is cheaper than the B-tree search, which calls `memcmp` per key it passes. A
            // trap with many varbinds takes the search.
            let name = &*self.tag_names[slot];
            let tags = &self.ev.event.tags;
            self.tags[slot] = if tags.len() <= LINEAR_TAGS {
                tags.iter()
                    .find(|(k, _)| k.as_bytes() == name.as_bytes())
                    .map(|(_, v)| v.as_str())
            } else {
                tags.get(name).map(String::as_str)
            };
        }
        self.tags[slot]
    }

    /// Runs scan `i` over its field, once per event. Literal and regex predicates ask about
    /// ten times per event: the "already scanned" answer is inlined into them, the scan is
    /// not.
    #[inline(always)]
    fn scan(&mut self, i: usize) -> Scanned {
        match self.scanned[i] {
            Scanned::NotYet => self.scan_value(i),
            found => found,
        }
    }

    #[inline(never)]
    fn scan_value(&mut self, i: usize) -> Scanned {
        let s = &self.scans[i];
        let found = match self.ev.get(&s.field) {
            None => Scanned::Missing,
            Some(v) => match classify(v.as_bytes()) {
                Bytes::NotAscii => Scanned::NotAscii,
                class => {
                    // Scans start on a word boundary: clear whole words, not bit by bit.
                    self.bits[s.base / 64..(s.base + s.len).div_ceil(64)].fill(0);
                    // A value without ASCII capitals is searched as it is. Otherwise copy,
                    // then lowercase in place: a loop the compiler vectorises, unlike a
                    // byte-by-byte `extend` through a mapping iterator.
                    let raw = v.as_bytes();
                    let hay: &[u8] = if class == Bytes::Upper {
                        self.lower.clear();
                        self.lower.extend_from_slice(raw);
                        self.lower.make_ascii_lowercase();
                        &self.lower[..]
                    } else {
                        raw
                    };
                    // Every occurrence, one start position at a time: the leftmost-first
                    // search reports the longest literal starting at the leftmost position
                    // that has one; the others starting there are its prefixes (both are the
                    // text from there), set through its closure; the next search starts one
                    // byte later. Each search runs the prefilter, so values without
                    // literals cost one.
                    let mut at = 0;
                    while let Some((pattern, start)) = s.find(hay, at) {
                        for &bit in &s.closure[pattern] {
                            let b = s.base + bit as usize;
                            self.bits[b / 64] |= 1 << (b % 64);
                        }
                        at = start + 1;
                    }
                    Scanned::Bits
                }
            },
        };
        self.scanned[i] = found;
        found
    }
}

impl Scan {
    /// The leftmost-first match in `hay[at..]`: its literal (by position in the search
    /// order) and where it starts.
    #[inline(always)]
    fn find(&self, hay: &[u8], at: usize) -> Option<(usize, usize)> {
        match &self.packed {
            Some(p) => p
                .find_in(hay, Span::from(at..hay.len()))
                .map(|m| (m.pattern().as_usize(), m.start())),
            None => self.find_slow(hay, at),
        }
    }

    fn find_slow(&self, hay: &[u8], at: usize) -> Option<(usize, usize)> {
        self.any
            .find(Input::new(hay).span(at..hay.len()))
            .map(|m| (m.pattern().as_usize(), m.start()))
    }
}

/// What a value's bytes are, for the scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bytes {
    /// Some byte is not ASCII: the filters' regexes decide.
    NotAscii,
    /// ASCII with capitals: searched lowercased.
    Upper,
    /// ASCII without capitals: searched as it is.
    Lower,
}

/// Classifies `v` a word (8 bytes) at a time, the last one zero-padded (a few plain integer
/// operations per word: the 16-byte blocks before took the whole scan to ~694 instructions
/// per event on the normal day, words to ~650): OR each word into `high`, and for capitals
/// add to each byte so that its top bit says "at least `A`", resp. "at least `[`", and keep
/// the first without the second. On ASCII bytes (below 0x80) neither sum
/// carries into the next byte; a byte at or above 0x80 makes the answer `NotAscii`
/// whatever the sums did.
fn classify(v: &[u8]) -> Bytes {
    const ONES: u64 = u64::from_le_bytes([1; 8]);
    const TOP: u64 = ONES * 0x80;
    fn word(b: [u8; 8], high: &mut u64, upper: &mut u64) {
        let x = u64::from_le_bytes(b);
        *high |= x;
        *upper |= x.wrapping_add(ONES * (0x80 - u64::from(b'A')))
            & !x.wrapping_add(ONES * (0x80 - u64::from(b'Z') - 1));
    }
    let (mut high, mut upper) = (0u64, 0u64);
    let mut words = v.chunks_exact(8);
    for b in &mut words {
        if let Ok(b) = <[u8; 8]>::try_from(b) {
            word(b, &mut high, &mut upper);
        }
    }
    let rest = words.remainder();
    let mut last = [0u8; 8];
    last[..rest.len()].copy_from_slice(rest);
    word(last, &mut high, &mut upper);
    if high & TOP != 0 {
        Bytes::NotAscii
    } else if upper & TOP != 0 {
        Bytes::Upper
    } else {
        Bytes::Lower
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
    const WORDS: [&str; 16] = [
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
        "FAN fail",
        "link down",
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
    // With and without a required literal (`down`, `link down`, `fan fail`, `kelvin` with the
    // Kelvin sign under `(?i)`, `session` inside a repetition, `ink` past a class).
    const REGEXES: [&str; 10] = [
        "(?i)li.k",
        "^down",
        "k",
        "(?i)s\\S+n",
        "fan|up$",
        "(?i)link down",
        "FAN fail(ure)?",
        "(?i)\u{212A}elvin",
        "(se(ssion))+",
        "[lL]ink d",
    ];

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

    /// Rules sharing one hostname gate, each with a literal filter or a regex (with required
    /// literals) AND-ed at the top level, so their bucket gets a [`Bucket::need`], in random
    /// order with other filters around it.
    fn needy_rules() -> impl Strategy<Value = Vec<Value>> {
        let needy =
            (0usize..3, proptest::collection::vec(0..WORDS.len(), 1..4)).prop_map(|(op, words)| {
                let list: Vec<&str> = words.iter().map(|&w| WORDS[w]).collect();
                match op {
                    0 => json!({"field": "message", "op": "contains_any", "value": list}),
                    1 => json!({"field": "message", "op": "contains_all", "value": list}),
                    _ => json!({"field": "message", "op": "regex",
                                "value": REGEXES[words[0] % REGEXES.len()]}),
                }
            });
        let rule = (needy, proptest::option::of(filter()), any::<bool>()).prop_map(
            |(needy, other, first)| {
                let mut filters =
                    vec![json!({"field": "hostname", "op": "matches", "value": "link*"})];
                match (other, first) {
                    (Some(o), true) => filters.extend([o, needy]),
                    (Some(o), false) => filters.extend([needy, o]),
                    (None, _) => filters.push(needy),
                }
                json!({"conditions": {"operator": "AND", "filters": filters}})
            },
        );
        proptest::collection::vec(rule, 1..6)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// A bucket whose rules all need literals is skipped once its scan found none of them,
        /// and that changes nothing: the plain evaluation agrees.
        #[test]
        fn buckets_skipped_on_missing_literals_agree_with_plain_evaluation(
            raw in needy_rules(),
            events in proptest::collection::vec(event(), 1..16),
        ) {
            let rules: Vec<Value> = raw
                .into_iter()
                .enumerate()
                .map(|(i, mut r)| {
                    r["name"] = json!(format!("r{i}"));
                    r
                })
                .collect();
            let text = serde_json::to_string(&rules).unwrap_or_default();
            let Ok(set) = RuleSet::parse(&text, Path::new("prop.json")) else {
                return Ok(());
            };
            let mut m = Matcher::new(&set);
            for ev in &events {
                let mut ev = ev.clone();
                // Mostly hosts that pass the gate, so the buckets' rules run.
                if ev.event.hostname.len() % 4 != 0 {
                    ev.event.hostname = "linkhost".into();
                }
                prop_assert_eq!(m.matching(&ev), plain(&set, &ev), "event {:?}", ev.event);
            }
        }
    }

    proptest! {
        /// The word-at-a-time classification agrees with the byte-by-byte definition, on
        /// any bytes and on ASCII text around the capitals' edges (`@`, `A`, `Z`, `[`).
        #[test]
        fn classify_agrees_with_byte_by_byte(
            any in proptest::collection::vec(any::<u8>(), 0..70),
            ascii in proptest::collection::vec(
                prop_oneof![Just(b'@'), Just(b'A'), Just(b'Z'), Just(b'['), Just(b'a'), 0u8..0x80],
                0..40,
            ),
        ) {
            let plain = |v: &[u8]| {
                if !v.is_ascii() {
                    Bytes::NotAscii
                } else if v.iter().any(u8::is_ascii_uppercase) {
                    Bytes::Upper
                } else {
                    Bytes::Lower
                }
            };
            prop_assert_eq!(classify(&any), plain(&any));
            prop_assert_eq!(classify(&ascii), plain(&ascii));
        }
    }

    proptest! {
        /// The word masks answer "any" and "all" exactly as testing the bits one by one did,
        /// across word boundaries and with repeated bits.
        #[test]
        fn word_masks_agree_with_bit_by_bit_tests(
            bits in proptest::collection::vec(0u32..200, 0..8),
            set in proptest::collection::vec(0u32..200, 0..40),
        ) {
            let mut state = vec![0u64; 4];
            for b in &set {
                state[*b as usize / 64] |= 1 << (b % 64);
            }
            let bit = |b: &u32| state[*b as usize / 64] & (1 << (b % 64)) != 0;
            let ws = words(&bits);
            let mut memo = Vec::new();
            let mut scanned = Vec::new();
            let mut lower = Vec::new();
            let ev = syslog_event("x");
            let cx = Cx {
                program: &[],
                preds: &[],
                scans: &[],
                tables: &[],
                epoch: 1,
                memo: &mut memo,
                scanned: &mut scanned,
                bits: &mut state.clone(),
                ev: &ev,
                tag_names: &[],
                tags_known: 0,
                tags: [None; TAG_SLOTS],
                lower: &mut lower,
            };
            prop_assert_eq!(cx.any(&ws), bits.iter().any(bit));
            prop_assert_eq!(cx.all(&ws), bits.iter().all(bit));
            prop_assert!(ws.windows(2).all(|w| w[0].0 < w[1].0));
        }
    }

    /// An info syslog event from host `h` with `msg`.
    fn syslog_event(msg: &str) -> EventIn {
        event_at("h", Severity::Info, msg)
    }

    /// A syslog event from `host` at `severity`.
    fn event_at(host: &str, severity: Severity, msg: &str) -> EventIn {
        EventIn {
            id: "s:a:1".into(),
            site: "s".into(),
            agent: "a".into(),
            event: Event::new(
                InputKind::Syslog,
                "syslog",
                host,
                severity,
                msg,
                Timestamp::UNIX_EPOCH,
            ),
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
        // Rule d's only filter is its bucket's gate.
        let gate = m
            .generic
            .iter()
            .find(|b| b.rules.contains(&3))
            .and_then(|b| b.gate)
            .expect("rule d is gated");
        assert!(
            matches!(m.preds[gate as usize], Pred::Plain { .. }),
            "non-ASCII literal"
        );
        assert_eq!(m.matching(&syslog_event("eth0: LINK DOWN")), vec![0, 1]);
        assert_eq!(m.matching(&syslog_event("down, then link")), vec![1]);
        // The Kelvin sign folds to k under the regex's Unicode rules: the regex decides.
        assert_eq!(m.matching(&syslog_event("\u{212A}ELVIN")), vec![2]);
        assert_eq!(m.matching(&syslog_event("café link down")), vec![0, 1, 3]);
    }

    /// The overlapping search resumes at the leftmost literal, not after it: literals that
    /// overlap it or start inside it are still found.
    #[test]
    fn literals_inside_the_first_one_are_found() {
        let set = RuleSet::parse(
            r#"[{"name": "a", "conditions": {"field": "message", "op": "contains", "value": "linkdown"}},
                {"name": "b", "conditions": {"field": "message", "op": "contains", "value": "down"}},
                {"name": "c", "conditions": {"field": "message", "op": "contains", "value": "kdo"}},
                {"name": "d", "conditions": {"field": "hostname", "op": "contains", "value": "db"}}]"#,
            Path::new("t.json"),
        )
        .expect("rules");
        let mut m = Matcher::new(&set);
        assert_eq!(m.scans.len(), 2, "message and hostname scans");
        assert_eq!(m.matching(&syslog_event("eth0 LinkDown")), vec![0, 1, 2]);
        assert_eq!(m.matching(&syslog_event("down")), vec![1]);
        // The next event clears the message scan's bits and leaves none behind.
        assert!(m.matching(&syslog_event("up")).is_empty());
    }

    /// Literals that start where another does (its prefixes) and literals that start inside
    /// another are all found: the search reports the longest at each start and resumes one
    /// byte later.
    #[test]
    fn prefixes_and_overlaps_of_a_found_literal_are_found() {
        let lits = [
            "fan",
            "fan fail",
            "fan failure",
            "/27 changed state to ",
            "changed state to down",
            "state",
        ];
        let rules: Vec<Value> = lits
            .iter()
            .enumerate()
            .map(|(i, l)| {
                json!({"name": format!("l{i}"),
                "conditions": {"field": "message", "op": "contains", "value": l}})
            })
            .collect();
        let set =
            RuleSet::parse(&Value::Array(rules).to_string(), Path::new("t.json")).expect("rules");
        let mut m = Matcher::new(&set);
        // Where Teddy can run, the scan searches with it (and the property test above
        // compares it with the automaton).
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("ssse3") {
            assert!(m.scans[0].packed.is_some(), "packed searcher built");
        }
        #[cfg(target_arch = "aarch64")]
        assert!(m.scans[0].packed.is_some(), "packed searcher built");
        assert_eq!(m.matching(&syslog_event("FAN FAILURE")), vec![0, 1, 2]);
        assert_eq!(m.matching(&syslog_event("fan fai")), vec![0]);
        assert_eq!(
            m.matching(&syslog_event("Gi0/27 changed state to down")),
            vec![3, 4, 5]
        );
        assert_eq!(
            m.matching(&syslog_event("Gi0/28 changed state to up")),
            vec![5]
        );
        assert_eq!(m.matching(&syslog_event("fanfan")), vec![0]);
    }

    fn every_match(
        s: &Scan,
        hay: &[u8],
        find: impl Fn(&Scan, &[u8], usize) -> Option<(usize, usize)>,
    ) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        let mut at = 0;
        while let Some((p, start)) = find(s, hay, at) {
            out.push((p, start));
            at = start + 1;
        }
        out
    }

    proptest! {
        /// The packed searcher the scan uses finds what the automaton finds, from every
        /// start: same literal, same place. Short and long values (Teddy searches only
        /// from its minimum length; shorter rests take Rabin-Karp). Up to 16 literals, so
        /// Teddy builds for every case where the CPU has it (the test above asserts it
        /// does); where it does not, `find` is the automaton and the comparison still holds.
        #[test]
        fn packed_search_agrees_with_the_automaton(
            lits in prop::collection::vec("[a-d/ ]{1,6}", 1..=16),
            hay in "[a-d/ ]{0,120}",
        ) {
            let rule = json!([{"name": "l", "conditions":
                {"field": "message", "op": "contains_any", "value": lits}}]);
            let set = RuleSet::parse(&rule.to_string(), Path::new("t.json")).expect("rules");
            let m = Matcher::new(&set);
            let s = &m.scans[0];
            prop_assert_eq!(
                every_match(s, hay.as_bytes(), Scan::find),
                every_match(s, hay.as_bytes(), Scan::find_slow)
            );
        }
    }

    /// A rule file (or dry-run request) with many literals: each distinct one is kept once,
    /// and the last still matches (the builder looks literals up, not through a list).
    #[test]
    fn many_literals_are_deduplicated_and_all_match() {
        let words: Vec<String> = (0..20_000).map(|i| format!("word{}", i % 10_000)).collect();
        let rule = serde_json::json!([{"name": "many", "conditions":
            {"field": "message", "op": "contains_any", "value": words}}]);
        let set = RuleSet::parse(&rule.to_string(), Path::new("t.json")).expect("rules");
        let mut m = Matcher::new(&set);
        assert_eq!(m.scans[0].len, 10_000, "repeated literals counted once");
        assert_eq!(m.matching(&syslog_event("saw word9999 here")), vec![0]);
        assert!(m.matching(&syslog_event("saw nothing here")).is_empty());
    }

    #[test]
    fn required_literals_are_the_runs_every_match_contains() {
        let lit = |p: &str| required_literals(p);
        assert_eq!(
            lit(r"(?i)interface \S+/5 changed state to (down|up)"),
            ["/5 changed state to ", "interface "]
        );
        assert_eq!(lit("FAN fail(ure)?"), ["fan fail"]);
        assert_eq!(lit("^down$"), ["down"]);
        // A repetition's body is required on its own; the Kelvin sign's class is `k` in ASCII.
        assert_eq!(lit("xy(session)+yz"), ["session"]);
        assert_eq!(lit("(?i)\u{212A}elvin"), ["kelvin"]);
        assert_eq!(
            lit("abcd.abc.abcd.abcde.abcdef.xyz"),
            ["abcdef", "abcde", "abcd", "abc"]
        );
        // No required run of three: nothing to gate on.
        let none: [&str; 0] = [];
        assert_eq!(lit("fan|up"), none);
        assert_eq!(lit("(?i)li.k"), none);
        assert_eq!(lit("[a-z]+"), none);
        assert_eq!(lit("(abc)?"), none);
        assert_eq!(lit("é+"), none);
    }

    fn error_event(host: &str, msg: &str) -> EventIn {
        event_at(host, Severity::Error, msg)
    }

    #[test]
    fn equal_filters_are_one_predicate_and_regexes_are_gated() {
        let mut rules = Vec::new();
        for i in 0..20 {
            rules.push(format!(
                r#"{{"name": "g{i}", "conditions": {{"operator": "AND", "filters": [
                    {{"field": "hostname", "op": "matches", "value": "db-*"}},
                    {{"field": "message", "op": "regex", "value": "(?i)interface \\S+/{} changed"}}]}}}}"#,
                i % 4
            ));
        }
        let set =
            RuleSet::parse(&format!("[{}]", rules.join(",")), Path::new("t.json")).expect("rules");
        let mut m = Matcher::new(&set);
        assert_eq!(m.preds.len(), 5, "one glob and four regexes");
        assert_eq!(
            m.program.len(),
            20,
            "one test per rule: the glob is the bucket's gate"
        );
        assert_eq!(
            m.scans.len(),
            1,
            "the regexes' literals share the message scan"
        );
        assert_eq!(m.scans[0].len, 5, "`interface ` and four `/N changed`");
        let hit: Vec<u32> = (1..20).step_by(4).collect();
        assert_eq!(
            m.matching(&error_event(
                "db-1",
                "Interface Gi0/1 changed state to down"
            )),
            hit
        );
        assert_eq!(
            m.matching(&error_event("web-1", "Interface Gi0/1 changed")),
            Vec::<u32>::new()
        );
        assert_eq!(
            m.matching(&error_event("db-1", "Interface Gi0/7 changed")),
            Vec::<u32>::new()
        );
        // Non-ASCII: the gate does not apply, the regexes decide.
        assert_eq!(
            m.matching(&error_event("db-1", "ünterface: Interface Gi0/3 changed")),
            (3..20).step_by(4).collect::<Vec<u32>>()
        );
    }

    /// Glob pieces: literals in both cases, separators, and every kind of wildcard, so
    /// patterns come out as exact, prefix, suffix and full (globset) globs.
    const GLOB_PIECES: [&str; 14] = [
        "a", "A", "b", "db", "DB-", "-", ".", "/", "*", "?", "[a-c]", "[!a]", "{a,b}", "\\*",
    ];
    /// Hostname pieces (none: the empty hostname).
    const HOST_PIECES: [&str; 10] = ["a", "A", "b", "B", "db", "DB-", "-", ".", "/", "*"];

    fn glob_rules(pats: &[String]) -> RuleSet {
        let rules: Vec<Value> = pats
            .iter()
            .enumerate()
            .map(|(i, p)| {
                json!({"name": format!("g{i}"),
                       "conditions": {"field": "hostname", "op": "matches", "value": p}})
            })
            .collect();
        RuleSet::parse(&Value::Array(rules).to_string(), Path::new("globs.json")).expect("globs")
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// The hostname table (first- and last-byte lookup) answers every glob as globset
        /// does, on ASCII hostnames: `*`, `?`, classes, alternations, escapes, case and the
        /// empty hostname.
        #[test]
        fn glob_tables_agree_with_globset(
            pats in proptest::collection::vec(proptest::collection::vec(0..GLOB_PIECES.len(), 0..4), 1..12),
            hosts in proptest::collection::vec(proptest::collection::vec(0..HOST_PIECES.len(), 0..5), 1..12),
        ) {
            let pats: Vec<String> = pats
                .iter()
                .map(|p| p.iter().map(|&i| GLOB_PIECES[i]).collect())
                .collect();
            let set = glob_rules(&pats);
            let globs: Vec<globset::GlobMatcher> = pats
                .iter()
                .map(|p| {
                    globset::GlobBuilder::new(p)
                        .case_insensitive(true)
                        .literal_separator(false)
                        .build()
                        .map(|g| g.compile_matcher())
                })
                .collect::<Result<_, _>>()
                .expect("the pieces make valid globs");
            let mut m = Matcher::new(&set);
            for h in &hosts {
                let host: String = h.iter().map(|&i| HOST_PIECES[i]).collect();
                let want: Vec<u32> = (0u32..)
                    .zip(&globs)
                    .filter(|(_, g)| g.is_match(&host))
                    .map(|(i, _)| i)
                    .collect();
                prop_assert_eq!(m.matching(&event_at(&host, Severity::Info, "m")), want, "host {:?}", host);
            }
        }

        /// With non-ASCII text (where the string tests fold ASCII case only, as the plain
        /// evaluation does), the table still agrees with the plain evaluation.
        #[test]
        fn glob_tables_agree_with_plain_evaluation(
            pats in proptest::collection::vec((0usize..3, 0..WORDS.len()), 1..12),
            hosts in proptest::collection::vec(0..WORDS.len(), 1..12),
        ) {
            let pats: Vec<String> = pats
                .iter()
                .map(|&(shape, w)| match shape {
                    0 => WORDS[w].to_string(),
                    1 => format!("{}*", WORDS[w]),
                    _ => format!("*{}", WORDS[w]),
                })
                .collect();
            let set = glob_rules(&pats);
            let mut m = Matcher::new(&set);
            for &h in &hosts {
                let ev = event_at(WORDS[h], Severity::Info, "m");
                prop_assert_eq!(m.matching(&ev), plain(&set, &ev), "host {:?}", WORDS[h]);
            }
        }
    }

    /// A rule's program leaves out its bucket's gate and the `severity >=` filters its
    /// severity floor implies, and keeps the rest (`severity equals` is not implied by a
    /// floor).
    #[test]
    fn programs_leave_out_the_gate_and_implied_severity_floors() {
        let set = RuleSet::parse(
            r#"[{"name": "a", "conditions": {"operator": "AND", "filters": [
                    {"field": "hostname", "op": "matches", "value": "db-*"},
                    {"field": "severity", "op": ">=", "value": "warning"},
                    {"field": "message", "op": "contains", "value": "down"}]}},
                {"name": "b", "conditions": {"operator": "AND", "filters": [
                    {"field": "severity", "op": ">=", "value": "warning"},
                    {"field": "severity", "op": "equals", "value": "error"}]}},
                {"name": "c", "conditions": {"field": "hostname", "op": "matches", "value": "db-*"}}]"#,
            Path::new("t.json"),
        )
        .expect("rules");
        let mut m = Matcher::new(&set);
        assert_eq!(m.program.len(), 2, "a: contains; b: equals; c: nothing");
        assert_eq!(m.plans[2].entry, ACCEPT);
        let ev = |h: &str, s: Severity, msg: &str| event_at(h, s, msg);
        assert_eq!(
            m.matching(&ev("db-1", Severity::Warning, "down")),
            vec![0, 2]
        );
        assert_eq!(m.matching(&ev("db-1", Severity::Info, "down")), vec![2]);
        assert_eq!(m.matching(&ev("web-1", Severity::Error, "down")), vec![1]);
        assert_eq!(m.matching(&ev("db-1", Severity::Critical, "up")), vec![2]);
    }

    /// Tags are found whether the event has few (searched linearly) or many (B-tree).
    #[test]
    fn tags_are_found_among_few_and_many() {
        let set = RuleSet::parse(
            r#"[{"name": "a", "conditions": {"field": "tags.vendor", "op": "equals", "value": "cisco"}},
                {"name": "b", "conditions": {"field": "tags.z9", "op": "exists"}}]"#,
            Path::new("t.json"),
        )
        .expect("rules");
        let mut m = Matcher::new(&set);
        for extra in [0, LINEAR_TAGS, 3 * LINEAR_TAGS] {
            let mut ev = syslog_event("m");
            for i in 0..extra {
                ev.event.tags.insert(format!("k{i:03}"), "v".into());
            }
            ev.event.tags.insert("vendor".into(), "cisco".into());
            assert_eq!(m.matching(&ev), vec![0], "{extra} other tags");
            ev.event.tags.insert("z9".into(), "1".into());
            ev.event.tags.insert("vendor".into(), "juniper".into());
            assert_eq!(m.matching(&ev), vec![1], "{extra} other tags");
        }
    }

    /// Globs, `equals` and `in` on one field share one table; only the globs whose first
    /// (or last) byte fits are tested, and a missing field answers no.
    #[test]
    fn one_table_per_field_answers_equals_in_and_globs() {
        let set = RuleSet::parse(
            r#"[{"name": "a", "conditions": {"field": "hostname", "op": "matches", "value": "db-*"}},
                {"name": "b", "conditions": {"field": "hostname", "op": "matches", "value": "*.EXAMPLE.com"}},
                {"name": "c", "conditions": {"field": "hostname", "op": "matches", "value": "Core1"}},
                {"name": "d", "conditions": {"field": "hostname", "op": "matches", "value": "*"}},
                {"name": "e", "conditions": {"field": "hostname", "op": "matches", "value": ""}},
                {"name": "f", "conditions": {"field": "hostname", "op": "in", "value": ["core1", "db-1", "db-1"]}},
                {"name": "g", "conditions": {"field": "hostname", "op": "equals", "value": "db-1"}},
                {"name": "h", "conditions": {"field": "hostname", "op": "matches", "value": "d?-*"}},
                {"name": "i", "conditions": {"field": "tags.vendor", "op": "equals", "value": "cisco"}}]"#,
            Path::new("t.json"),
        )
        .expect("rules");
        let mut m = Matcher::new(&set);
        assert_eq!(m.tables.len(), 2, "hostname and tags.vendor");
        assert_eq!(m.tables[0].members.len(), 7, "all but the full glob `d?-*`");
        assert!(matches!(m.preds[7], Pred::Plain { .. }), "a full glob");
        let host = |m: &mut Matcher, h: &str| m.matching(&event_at(h, Severity::Info, "m"));
        assert_eq!(host(&mut m, "DB-1"), vec![0, 3, 7]);
        assert_eq!(host(&mut m, "db-1"), vec![0, 3, 5, 6, 7]);
        assert_eq!(host(&mut m, "www.example.COM"), vec![1, 3]);
        assert_eq!(host(&mut m, "core1"), vec![2, 3, 5]);
        assert_eq!(host(&mut m, ""), vec![3, 4]);
        let mut ev = event_at("x", Severity::Info, "m");
        ev.event.tags.insert("vendor".into(), "cisco".into());
        assert_eq!(m.matching(&ev), vec![3, 8]);
    }
}
