//! Correlation rules: the raw model as operators write it (seed 000's JSON format, seed 003's
//! synthesis directives, seed 004's aggregate rules; JSON or TOML), and the compiled form the
//! engine runs. Everything that can be checked is checked here, once: field names resolve to
//! [`Field`]s, globs and regexes are compiled, and every error names the file, the rule and the
//! field (`rules.json: rule "Database Connectivity Failure": conditions.filters[1].value: ...`).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use regex::Regex;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use weir_common::Severity;

/// A rule file that could not be loaded, with the file, rule and field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error("cannot read rule file {path}: {message}")]
    Read { path: PathBuf, message: String },
    /// Syntax or type error, with its position.
    #[error("{path}:{line}:{column}: {message}")]
    Syntax {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    /// A rule that parsed but makes no sense.
    #[error("{path}: rule {rule:?}: {field}: {message}")]
    Invalid {
        path: PathBuf,
        rule: String,
        field: String,
        message: String,
    },
}

// ---------------------------------------------------------------------------------------------
// Raw model (what operators write)
// ---------------------------------------------------------------------------------------------

/// A rule file: either a bare list of correlation rules, a single rule (seed 000's example as
/// written), or an object with `rules` and `aggregates` lists (TOML: `[[rules]]`,
/// `[[aggregates]]`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRuleFile {
    /// Correlation and synthesis rules (seed 000 / seed 003).
    #[serde(default)]
    pub rules: Vec<RawRule>,
    /// Aggregate (notification throttle) rules (seed 004).
    #[serde(default)]
    pub aggregates: Vec<RawAggregate>,
}

/// One correlation rule. Seed 000's keys and seed 003's directives in one model; where both
/// spell the same thing (`window_minutes` / `window`, `min_event_count` / `count`) only one may
/// be given.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    /// Unique name; also the name of the incident (synthetic event) the rule creates.
    pub name: String,
    /// Evaluation order: lower first (seed 000). Default 100.
    #[serde(default = "default_priority")]
    pub priority: i64,
    /// Disabled rules are loaded and validated but never evaluated.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Free text for operators.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Which events the rule considers (seed 000): a filter tree.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conditions: Option<RawCondition>,
    /// Seed 003 shorthand: event names (`tag`, else `event_type`) the rule considers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<String>,
    /// Correlation window in minutes (seed 000). Default 5 minutes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_minutes: Option<u64>,
    /// Correlation window in seconds (seed 003).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<Seconds>,
    /// Events needed in the window to fire (seed 000). Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_event_count: Option<u32>,
    /// Seed 003 spelling of `min_event_count`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
    /// Count separately per combination of these fields' values (e.g. `site`,
    /// `tags.customer`, `node.name`). Empty: one global group across all sites.
    #[serde(default, alias = "groupby", skip_serializing_if = "Vec::is_empty")]
    pub group_by: Vec<String>,
    /// Seconds during which the rule, for one group, does not fire again after firing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inhibit: Option<Seconds>,
    /// Seconds to hold the actions of every matching event, so a combination can supersede them.
    #[serde(
        default,
        alias = "delayedaction",
        skip_serializing_if = "Option::is_none"
    )]
    pub delayed_action: Option<Seconds>,
    /// Acknowledge and close the triggers when the rule fires (and triggers arriving while
    /// the rule is inhibited).
    #[serde(default, alias = "autoacknowledge", skip_serializing_if = "is_false")]
    pub auto_acknowledge: bool,
    /// Static properties set on the incident (`null` removes one).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub enrich: BTreeMap<String, serde_json::Value>,
    /// Properties copied from the earliest trigger (names, or `/regex/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copy_first: Option<Vec<String>>,
    /// Properties copied from the latest trigger (names, or `/regex/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copy_last: Option<Vec<String>>,
    /// Properties copied from the most severe trigger (names, or `/regex/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copy_highest: Option<Vec<String>>,
    /// Properties taken from the first trigger that has them (names only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copy_present: Option<Vec<String>>,
    /// Target property names for the `group_by` values, in `group_by` order (`null` skips one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copy_groupby: Option<Vec<Option<String>>>,
    /// Suppress the incident while every trigger's site is unreachable. Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site_inhibit: Option<bool>,
    /// What happens when the rule fires (seed 000).
    #[serde(default)]
    pub action: RawAction,
}

/// Seed 000's `action` object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAction {
    /// Open an incident when the rule fires. Default true.
    #[serde(default = "yes")]
    pub create_incident: bool,
    /// Severity of the incident (any spelling `Severity` accepts). Default: the most severe
    /// trigger's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incident_severity: Option<String>,
    /// Who is notified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contact_list: Option<String>,
    /// Matching events raise no alarm of their own: only the incident does.
    #[serde(default)]
    pub suppress_individual: bool,
}

impl Default for RawAction {
    fn default() -> Self {
        RawAction {
            create_incident: true,
            incident_severity: None,
            contact_list: None,
            suppress_individual: false,
        }
    }
}

/// A condition node: either a group (`operator` AND / OR / NOT with `filters`) or a filter
/// (`field`, `op`, `value`). NOT matches when none of its `filters` match.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCondition {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filters: Option<Vec<RawCondition>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub op: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<serde_json::Value>,
}

/// A seed 004 aggregate rule, applied to notifications.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAggregate {
    /// Unique name.
    pub name: String,
    /// Evaluation order: the first matching aggregate (lowest priority) applies. Default 100.
    #[serde(default = "default_priority")]
    pub priority: i64,
    /// Disabled aggregates are validated but never applied.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Which notifications the rule applies to; absent: all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<RawCondition>,
    /// Fields grouping notifications (a list, or a space separated string).
    #[serde(default)]
    pub fields: FieldList,
    /// Fields whose change bypasses the throttle.
    #[serde(default)]
    pub watch: FieldList,
    /// Seconds before the next notification for a group; -1: never again.
    pub throttle: i64,
    /// Re-opens notified within one throttle period at most. Default 3.
    #[serde(default = "default_flapping")]
    pub flapping: u32,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

/// A list of field names, written as a list or a space separated string (seed 004's UI).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(from = "FieldListRepr", into = "Vec<String>")]
pub struct FieldList(pub Vec<String>);

#[derive(Deserialize)]
#[serde(untagged)]
enum FieldListRepr {
    List(Vec<String>),
    Text(String),
}

impl From<FieldListRepr> for FieldList {
    fn from(r: FieldListRepr) -> Self {
        match r {
            FieldListRepr::List(v) => FieldList(v),
            FieldListRepr::Text(s) => FieldList(s.split_whitespace().map(String::from).collect()),
        }
    }
}

impl From<FieldList> for Vec<String> {
    fn from(f: FieldList) -> Self {
        f.0
    }
}

/// Seconds, written as a number or a numeric string (seed 003 writes `window => '60'`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "SecondsRepr", into = "u64")]
pub struct Seconds(pub u64);

#[derive(Deserialize)]
#[serde(untagged)]
enum SecondsRepr {
    Number(u64),
    Text(String),
}

impl TryFrom<SecondsRepr> for Seconds {
    type Error = String;
    fn try_from(r: SecondsRepr) -> Result<Self, String> {
        match r {
            SecondsRepr::Number(n) => Ok(Seconds(n)),
            SecondsRepr::Text(s) => s
                .trim()
                .parse()
                .map(Seconds)
                .map_err(|_| format!("expected a whole number of seconds, got {s:?}")),
        }
    }
}

impl From<Seconds> for u64 {
    fn from(s: Seconds) -> u64 {
        s.0
    }
}

fn default_priority() -> i64 {
    100
}
fn default_flapping() -> u32 {
    3
}
fn yes() -> bool {
    true
}
fn is_false(b: &bool) -> bool {
    !*b
}

// ---------------------------------------------------------------------------------------------
// Fields
// ---------------------------------------------------------------------------------------------

/// An event field a rule can test, group by or copy. Names resolve once at load time.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Field {
    Source,
    Hostname,
    Severity,
    Message,
    EventType,
    Tag,
    /// The event's name: `tag`, else `event_type` (what seed 003's `events` lists).
    Name,
    Input,
    Site,
    Agent,
    Peer,
    Id,
    /// `tags.X` (also written `fields.X` or `node.X`).
    Tags(Box<str>),
}

/// The plain field names, for error messages and `/regex/` copies.
pub const FIELD_NAMES: [&str; 12] = [
    "source",
    "hostname",
    "severity",
    "message",
    "event_type",
    "tag",
    "name",
    "input",
    "site",
    "agent",
    "peer",
    "id",
];

impl Field {
    /// Resolves a field name. Accepts the event's own names, `tags.X` / `fields.X`, and seed
    /// 003's `node.X` (`node.name` is the hostname, other node properties are tags) and
    /// `event.X` prefixes.
    pub fn parse(name: &str) -> Result<Field, String> {
        let n = name.trim();
        if let Some(rest) = n
            .strip_prefix("tags.")
            .or_else(|| n.strip_prefix("fields."))
        {
            if rest.is_empty() {
                return Err(format!("{name:?}: missing the tag name after the dot"));
            }
            return Ok(Field::Tags(rest.into()));
        }
        if let Some(rest) = n.strip_prefix("node.") {
            return Ok(match rest {
                "name" | "host" | "hostname" => Field::Hostname,
                "" => return Err(format!("{name:?}: missing the property after the dot")),
                other => Field::Tags(other.into()),
            });
        }
        let n = n.strip_prefix("event.").unwrap_or(n);
        Ok(match n {
            "source" => Field::Source,
            "hostname" | "host" | "node" => Field::Hostname,
            "severity" => Field::Severity,
            "message" => Field::Message,
            "event_type" => Field::EventType,
            "tag" => Field::Tag,
            "name" | "event" => Field::Name,
            "input" => Field::Input,
            "site" => Field::Site,
            "agent" => Field::Agent,
            "peer" => Field::Peer,
            "id" => Field::Id,
            _ => {
                return Err(format!(
                    "unknown field {name:?}: expected one of {}, or tags.NAME / fields.NAME / node.NAME",
                    FIELD_NAMES.join(", ")
                ));
            }
        })
    }

    /// The canonical property name (`hostname`, `tags.customer`).
    pub fn name(&self) -> String {
        match self {
            Field::Tags(t) => format!("tags.{t}"),
            other => FIELD_NAMES[other.index()].to_string(),
        }
    }

    /// The canonical name of a plain (non-tag) field, without allocating.
    pub fn plain_name(&self) -> Option<&'static str> {
        match self {
            Field::Tags(_) => None,
            other => Some(FIELD_NAMES[other.index()]),
        }
    }

    fn index(&self) -> usize {
        match self {
            Field::Source => 0,
            Field::Hostname => 1,
            Field::Severity => 2,
            Field::Message => 3,
            Field::EventType => 4,
            Field::Tag => 5,
            Field::Name => 6,
            Field::Input => 7,
            Field::Site => 8,
            Field::Agent => 9,
            Field::Peer => 10,
            Field::Id => 11,
            Field::Tags(_) => 12,
        }
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// Something with fields a condition can test: an event, or a notification.
pub trait Fields {
    fn get(&self, field: &Field) -> Option<&str>;

    /// The field as a severity; events answer for `severity` without parsing text.
    fn severity(&self, field: &Field) -> Option<Severity> {
        self.get(field).and_then(|v| v.parse().ok())
    }
}

// ---------------------------------------------------------------------------------------------
// Conditions
// ---------------------------------------------------------------------------------------------

/// A compiled condition tree.
#[derive(Debug, Clone)]
pub enum Cond {
    True,
    All(Vec<Cond>),
    Any(Vec<Cond>),
    /// None of these match.
    None(Vec<Cond>),
    Filter(Filter),
}

/// One compiled filter.
#[derive(Debug, Clone)]
pub struct Filter {
    pub field: Field,
    pub op: Op,
    /// `hostname matches "db-*"`, for explanations.
    pub text: Arc<str>,
}

/// A compiled filter operator.
#[derive(Debug, Clone)]
pub enum Op {
    Equals(String),
    NotEquals(String),
    SeverityEq(Severity, bool),
    /// Glob, ASCII case-insensitive.
    Matches(Glob),
    Regex(Regex),
    /// `contains`, `contains_any`: one case-insensitive literal alternation. The literals
    /// are kept for the engine's one-pass scan (`super::matcher`).
    ContainsAny {
        regex: Regex,
        literals: Vec<String>,
    },
    /// `contains_all`: one case-insensitive literal regex per item.
    ContainsAll {
        regexes: Vec<Regex>,
        literals: Vec<String>,
    },
    In(Vec<String>),
    Exists(bool),
    Cmp(CmpOp, CmpValue),
}

/// A compiled glob. The common shapes (`db-*`, `*.example.com`, a literal) are plain
/// ASCII-case-insensitive string tests, their text kept ASCII-lowercased so a test lowercases
/// only the value's bytes; the rest go through globset.
#[derive(Debug, Clone)]
pub enum Glob {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Full(globset::GlobMatcher),
}

impl Glob {
    fn new(pattern: &str) -> Result<Glob, String> {
        let full = globset::GlobBuilder::new(pattern)
            .case_insensitive(true)
            .literal_separator(false)
            .build()
            .map_err(|e| format!("bad glob {pattern:?}: {e}"))?
            .compile_matcher();
        let meta = |s: &str| s.contains(['*', '?', '[', ']', '{', '}', '\\']);
        Ok(if !meta(pattern) {
            Glob::Exact(pattern.to_ascii_lowercase())
        } else if let Some(p) = pattern.strip_suffix('*').filter(|p| !meta(p)) {
            Glob::Prefix(p.to_ascii_lowercase())
        } else if let Some(p) = pattern.strip_prefix('*').filter(|p| !meta(p)) {
            Glob::Suffix(p.to_ascii_lowercase())
        } else {
            Glob::Full(full)
        })
    }

    pub fn is_match(&self, v: &str) -> bool {
        // `eq_ignore_ascii_case` with `p` already lowercase: only `v`'s bytes need folding.
        fn eq(v: &[u8], p: &str) -> bool {
            v.len() == p.len()
                && v.iter()
                    .zip(p.as_bytes())
                    .all(|(a, b)| a.to_ascii_lowercase() == *b)
        }
        let v = v.as_bytes();
        match self {
            Glob::Exact(p) => eq(v, p),
            Glob::Prefix(p) => v.len() >= p.len() && eq(&v[..p.len()], p),
            Glob::Suffix(p) => v.len() >= p.len() && eq(&v[v.len() - p.len()..], p),
            Glob::Full(g) => std::str::from_utf8(v).is_ok_and(|s| g.is_match(s)),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Ge,
    Gt,
    Le,
    Lt,
}

#[derive(Debug, Clone)]
pub enum CmpValue {
    Severity(Severity),
    Number(f64),
    Text(String),
}

impl Cond {
    /// Whether `x` satisfies the condition.
    pub fn eval<F: Fields + ?Sized>(&self, x: &F) -> bool {
        match self {
            Cond::True => true,
            Cond::All(c) => c.iter().all(|c| c.eval(x)),
            Cond::Any(c) => c.iter().any(|c| c.eval(x)),
            Cond::None(c) => !c.iter().any(|c| c.eval(x)),
            Cond::Filter(f) => f.eval(x),
        }
    }

    /// Rough cost, so cheap tests run first in AND / OR groups.
    fn cost(&self) -> u32 {
        match self {
            Cond::True => 0,
            Cond::All(c) | Cond::Any(c) | Cond::None(c) => c.iter().map(Cond::cost).sum(),
            Cond::Filter(f) => match f.op {
                Op::Exists(_) | Op::SeverityEq(..) | Op::Cmp(..) => 1,
                Op::Equals(_) | Op::NotEquals(_) | Op::In(_) => 2,
                Op::Matches(_) => 4,
                Op::ContainsAny { .. } | Op::ContainsAll { .. } | Op::Regex(_) => 6,
            },
        }
    }

    /// A one-line description for explanations.
    pub fn describe(&self) -> String {
        match self {
            Cond::True => "any event".into(),
            Cond::All(c) => join(c, " AND "),
            Cond::Any(c) => join(c, " OR "),
            Cond::None(c) => format!("NOT ({})", join(c, " OR ")),
            Cond::Filter(f) => f.text.to_string(),
        }
    }
}

fn join(c: &[Cond], sep: &str) -> String {
    let parts: Vec<String> = c
        .iter()
        .map(|c| match c {
            Cond::Filter(_) | Cond::None(_) => c.describe(),
            _ => format!("({})", c.describe()),
        })
        .collect();
    parts.join(sep)
}

impl Filter {
    /// Whether `x` satisfies the filter.
    pub fn eval<F: Fields + ?Sized>(&self, x: &F) -> bool {
        if self.on_severity() {
            self.eval_severity(x.severity(&self.field))
        } else {
            self.eval_value(x.get(&self.field))
        }
    }

    /// Whether the filter compares severities (then [`Filter::eval_severity`] answers it),
    /// else [`Filter::eval_value`] does.
    pub fn on_severity(&self) -> bool {
        matches!(
            self.op,
            Op::SeverityEq(..) | Op::Cmp(_, CmpValue::Severity(_))
        )
    }

    /// A severity filter on the field's value as a severity.
    pub fn eval_severity(&self, v: Option<Severity>) -> bool {
        match &self.op {
            Op::SeverityEq(s, eq) => v.is_some_and(|v| (v == *s) == *eq),
            Op::Cmp(op, CmpValue::Severity(s)) => v.is_some_and(|v| cmp_holds(*op, v.cmp(s))),
            _ => false,
        }
    }

    /// Any other filter on the field's value (`None`: the field is missing).
    pub fn eval_value(&self, v: Option<&str>) -> bool {
        match &self.op {
            Op::Exists(want) => v.is_some_and(|v| !v.is_empty()) == *want,
            Op::NotEquals(s) => v != Some(s.as_str()),
            _ => {
                let Some(v) = v else {
                    return false;
                };
                match &self.op {
                    Op::Equals(s) => v == s,
                    Op::Matches(g) => g.is_match(v),
                    Op::Regex(r) | Op::ContainsAny { regex: r, .. } => r.is_match(v),
                    Op::ContainsAll { regexes, .. } => regexes.iter().all(|r| r.is_match(v)),
                    Op::In(list) => list.iter().any(|s| s == v),
                    Op::Cmp(op, want) => compare(v, *op, want),
                    // Handled above, before the value is required, or by `eval_severity`.
                    Op::Exists(_) | Op::NotEquals(_) | Op::SeverityEq(..) => false,
                }
            }
        }
    }
}

fn compare(v: &str, op: CmpOp, want: &CmpValue) -> bool {
    use std::cmp::Ordering;
    let ord: Option<Ordering> = match want {
        CmpValue::Severity(s) => v.parse::<Severity>().ok().map(|v| v.cmp(s)),
        CmpValue::Number(n) => v.trim().parse::<f64>().ok().and_then(|v| v.partial_cmp(n)),
        CmpValue::Text(t) => Some(v.cmp(t.as_str())),
    };
    ord.is_some_and(|o| cmp_holds(op, o))
}

fn cmp_holds(op: CmpOp, o: std::cmp::Ordering) -> bool {
    match op {
        CmpOp::Ge => o.is_ge(),
        CmpOp::Gt => o.is_gt(),
        CmpOp::Le => o.is_le(),
        CmpOp::Lt => o.is_lt(),
    }
}

/// Compiles a raw condition; `path` is the field path for errors (`conditions`).
pub fn compile_condition(raw: &RawCondition, path: &str) -> Result<Cond, (String, String)> {
    let err = |field: &str, msg: String| (format!("{path}.{field}"), msg);
    if let Some(op) = &raw.operator {
        if raw.field.is_some() || raw.op.is_some() || raw.value.is_some() {
            return Err(err(
                "operator",
                "a node is either a group (operator, filters) or a filter (field, op, value), not both".into(),
            ));
        }
        let filters = raw.filters.as_deref().unwrap_or_default();
        let mut children = Vec::with_capacity(filters.len());
        for (i, f) in filters.iter().enumerate() {
            children.push(compile_condition(f, &format!("{path}.filters[{i}]"))?);
        }
        children.sort_by_key(Cond::cost);
        return Ok(match op.to_ascii_uppercase().as_str() {
            "AND" => Cond::All(children),
            "OR" => Cond::Any(children),
            "NOT" => Cond::None(children),
            _ => {
                return Err(err(
                    "operator",
                    format!("unknown operator {op:?}: expected AND, OR or NOT"),
                ));
            }
        });
    }
    if raw.filters.is_some() {
        return Err(err(
            "operator",
            "filters need an operator (AND, OR or NOT)".into(),
        ));
    }
    let Some(field_name) = &raw.field else {
        return Err(err(
            "field",
            "missing: a filter needs field, op and value (or use operator and filters)".into(),
        ));
    };
    let field = Field::parse(field_name).map_err(|m| err("field", m))?;
    let Some(op_name) = &raw.op else {
        return Err(err("op", "missing".into()));
    };
    let value = raw.value.clone().unwrap_or(serde_json::Value::Null);
    let op = compile_op(&field, op_name, &value).map_err(|(f, m)| err(f, m))?;
    let text = format!("{field} {op_name} {value}");
    Ok(Cond::Filter(Filter {
        field,
        op,
        text: text.into(),
    }))
}

fn scalar(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn string_list(v: &serde_json::Value) -> Result<Vec<String>, String> {
    match v {
        serde_json::Value::Array(a) if !a.is_empty() => a
            .iter()
            .map(|x| {
                scalar(x).ok_or_else(|| format!("list items must be strings or numbers, got {x}"))
            })
            .collect(),
        serde_json::Value::Array(_) => Err("the list is empty".into()),
        other => scalar(other)
            .map(|s| vec![s])
            .ok_or_else(|| format!("expected a string or a list of strings, got {other}")),
    }
}

fn literal_alternation(items: &[String]) -> Result<Regex, String> {
    let alts: Vec<String> = items.iter().map(|s| regex::escape(s)).collect();
    Regex::new(&format!("(?i:{})", alts.join("|"))).map_err(|e| e.to_string())
}

fn compile_op(
    field: &Field,
    op: &str,
    value: &serde_json::Value,
) -> Result<Op, (&'static str, String)> {
    let one =
        || scalar(value).ok_or(("value", format!("expected a string or number, got {value}")));
    let list = || string_list(value).map_err(|m| ("value", m));
    let severity = |s: &str| s.parse::<Severity>().map_err(|e| ("value", e.to_string()));
    Ok(match op {
        "equals" | "eq" | "==" | "=" => {
            let v = one()?;
            if *field == Field::Severity {
                Op::SeverityEq(severity(&v)?, true)
            } else {
                Op::Equals(v)
            }
        }
        "not_equals" | "ne" | "!=" => {
            let v = one()?;
            if *field == Field::Severity {
                Op::SeverityEq(severity(&v)?, false)
            } else {
                Op::NotEquals(v)
            }
        }
        "matches" | "glob" => {
            let v = one()?;
            Op::Matches(Glob::new(&v).map_err(|e| ("value", e))?)
        }
        "regex" | "=~" => {
            let v = one()?;
            Op::Regex(Regex::new(&v).map_err(|e| ("value", format!("bad regex {v:?}: {e}")))?)
        }
        "contains" | "contains_any" => {
            let literals = if op == "contains" {
                vec![one()?]
            } else {
                list()?
            };
            Op::ContainsAny {
                regex: literal_alternation(&literals).map_err(|m| ("value", m))?,
                literals,
            }
        }
        "contains_all" => {
            let literals = list()?;
            Op::ContainsAll {
                regexes: literals
                    .iter()
                    .map(|s| literal_alternation(std::slice::from_ref(s)))
                    .collect::<Result<_, _>>()
                    .map_err(|m| ("value", m))?,
                literals,
            }
        }
        "in" => {
            let items = list()?;
            if *field == Field::Severity {
                // Normalise spellings so `in: ["crit", "err"]` works.
                let sevs = items
                    .iter()
                    .map(|s| severity(s).map(|s| s.as_str().to_string()))
                    .collect::<Result<_, _>>()?;
                Op::In(sevs)
            } else {
                Op::In(items)
            }
        }
        "exists" => Op::Exists(match value {
            serde_json::Value::Null => true,
            serde_json::Value::Bool(b) => *b,
            other => return Err(("value", format!("exists takes true or false, got {other}"))),
        }),
        ">=" | ">" | "<=" | "<" | "gte" | "gt" | "lte" | "lt" => {
            let cmp = match op {
                ">=" | "gte" => CmpOp::Ge,
                ">" | "gt" => CmpOp::Gt,
                "<=" | "lte" => CmpOp::Le,
                _ => CmpOp::Lt,
            };
            let v = one()?;
            let cv = if *field == Field::Severity {
                CmpValue::Severity(severity(&v)?)
            } else if let Ok(n) = v.trim().parse::<f64>() {
                CmpValue::Number(n)
            } else if let Ok(s) = v.parse::<Severity>() {
                CmpValue::Severity(s)
            } else {
                CmpValue::Text(v)
            };
            Op::Cmp(cmp, cv)
        }
        other => {
            return Err((
                "op",
                format!(
                    "unknown op {other:?}: expected equals, not_equals, matches, regex, contains, \
                     contains_any, contains_all, in, exists, >=, >, <=, <"
                ),
            ));
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Compiled rules
// ---------------------------------------------------------------------------------------------

/// Which properties a `copy_*` directive takes.
#[derive(Debug, Clone)]
pub enum CopySel {
    Name(String),
    Regex(Regex),
}

impl CopySel {
    fn parse(s: &str) -> Result<CopySel, String> {
        let t = s.trim();
        let inner = t
            .strip_prefix("qr/")
            .and_then(|r| r.strip_suffix('/'))
            .or_else(|| t.strip_prefix('/').and_then(|r| r.strip_suffix('/')));
        match inner {
            Some(re) => Regex::new(re)
                .map(CopySel::Regex)
                .map_err(|e| format!("bad regex {s:?}: {e}")),
            None => Ok(CopySel::Name(canonical_property(t))),
        }
    }
}

/// Property names are field names where they resolve (`node.name` → `hostname`), else as
/// written (`priority`, `stateful`, `node`).
pub fn canonical_property(name: &str) -> String {
    match name {
        // Seed 003's own synthetic-event properties keep their names.
        "node" | "stateful" | "state" | "element" | "priority" => name.to_string(),
        _ => Field::parse(name)
            .map(|f| f.name())
            .unwrap_or_else(|_| name.to_string()),
    }
}

/// The copy directives in seed 003's order.
#[derive(Debug, Clone, Default)]
pub struct Copies {
    pub present: Vec<String>,
    pub first: Vec<CopySel>,
    pub last: Vec<CopySel>,
    pub highest: Vec<CopySel>,
    pub groupby: Vec<Option<String>>,
}

/// A compiled correlation rule.
#[derive(Debug, Clone)]
pub struct Rule {
    pub name: Arc<str>,
    pub priority: i64,
    /// Hash of the normalised definition: state survives a reload only if this is unchanged.
    pub version: Arc<str>,
    pub cond: Cond,
    /// Seed 003 `events`, kept apart so the engine can index rules by event name.
    pub events: Vec<String>,
    /// Window in microseconds.
    pub window: i64,
    pub count: u32,
    pub group_by: Vec<Field>,
    /// The least severe event the conditions can match, when they say so at the top level:
    /// a cheap test before the condition tree.
    pub min_severity: Option<Severity>,
    /// `group_by` canonical names, computed once (group keys are built per event).
    pub group_names: Vec<String>,
    /// Microseconds; 0 = no inhibit.
    pub inhibit: i64,
    /// Microseconds, when set.
    pub delayed_action: Option<i64>,
    pub auto_acknowledge: bool,
    pub enrich: Vec<(String, Option<String>)>,
    pub copies: Copies,
    pub create_incident: bool,
    pub incident_severity: Option<Severity>,
    pub contact_list: Option<String>,
    pub suppress_individual: bool,
    pub site_inhibit: bool,
    /// What the rule matches, for explanations.
    pub describe: Arc<str>,
    pub raw: RawRule,
}

/// A compiled aggregate (throttle) rule.
#[derive(Debug, Clone)]
pub struct Aggregate {
    pub name: Arc<str>,
    pub priority: i64,
    pub version: Arc<str>,
    pub cond: Cond,
    pub fields: Vec<Field>,
    pub watch: Vec<Field>,
    /// Microseconds; `None` = infinite (-1).
    pub throttle: Option<i64>,
    pub flapping: u32,
    pub raw: RawAggregate,
}

/// A validated, compiled rule set: enabled rules in priority order (ties: file order).
#[derive(Debug, Clone, Default)]
pub struct RuleSet {
    pub rules: Vec<Arc<Rule>>,
    pub aggregates: Vec<Arc<Aggregate>>,
    /// Disabled rules, kept so `GET` shows them.
    pub disabled: Vec<RawRule>,
}

const MICROS: i64 = 1_000_000;

fn version_of<T: Serialize>(raw: &T) -> Arc<str> {
    // serde_json writes struct fields in declaration order and maps sorted (BTreeMap), so
    // equal definitions hash equally however they were written.
    let bytes = serde_json::to_vec(raw).unwrap_or_default();
    let digest = Sha256::digest(&bytes);
    hex::encode(&digest[..8]).into()
}

fn secs(s: u64) -> i64 {
    i64::try_from(s)
        .unwrap_or(i64::MAX / MICROS)
        .min(i64::MAX / MICROS / 4)
        * MICROS
}

impl RuleSet {
    /// Compiles a raw rule file; `path` only names the source in errors.
    pub fn compile(file: RawRuleFile, path: &Path) -> Result<RuleSet, RuleError> {
        let mut set = RuleSet::default();
        let mut names = std::collections::HashSet::new();
        for raw in file.rules {
            let invalid = |field: &str, message: String| RuleError::Invalid {
                path: path.to_path_buf(),
                rule: raw.name.clone(),
                field: field.to_string(),
                message,
            };
            if raw.name.trim().is_empty() {
                return Err(invalid("name", "must not be empty".into()));
            }
            if !names.insert(raw.name.clone()) {
                return Err(invalid(
                    "name",
                    "two rules have this name; names must be unique".into(),
                ));
            }
            let rule = compile_rule(&raw).map_err(|(f, m)| invalid(&f, m))?;
            if raw.enabled {
                set.rules.push(Arc::new(rule));
            } else {
                set.disabled.push(raw);
            }
        }
        let mut agg_names = std::collections::HashSet::new();
        for raw in file.aggregates {
            let invalid = |field: &str, message: String| RuleError::Invalid {
                path: path.to_path_buf(),
                rule: raw.name.clone(),
                field: field.to_string(),
                message,
            };
            if !agg_names.insert(raw.name.clone()) {
                return Err(invalid("name", "two aggregates have this name".into()));
            }
            let agg = compile_aggregate(&raw).map_err(|(f, m)| invalid(&f, m))?;
            if raw.enabled {
                set.aggregates.push(Arc::new(agg));
            }
        }
        set.rules.sort_by_key(|r| r.priority);
        set.aggregates.sort_by_key(|r| r.priority);
        Ok(set)
    }

    /// Parses and compiles rule text: JSON (a list, one rule, or `{rules, aggregates}`) or
    /// TOML (`[[rules]]`, `[[aggregates]]`), told apart by the first non-blank character.
    pub fn parse(text: &str, path: &Path) -> Result<RuleSet, RuleError> {
        let file = parse_file(text, path)?;
        RuleSet::compile(file, path)
    }

    /// Reads, parses and compiles a rule file.
    pub fn load(path: &Path) -> Result<RuleSet, RuleError> {
        let text = std::fs::read_to_string(path).map_err(|e| RuleError::Read {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        RuleSet::parse(&text, path)
    }

    /// The raw definitions, enabled and disabled, for `GET /api/v1/rules`.
    pub fn raw(&self) -> RawRuleFile {
        let mut rules: Vec<RawRule> = self.rules.iter().map(|r| r.raw.clone()).collect();
        rules.extend(self.disabled.iter().cloned());
        RawRuleFile {
            rules,
            aggregates: self.aggregates.iter().map(|a| a.raw.clone()).collect(),
        }
    }
}

/// Parses rule text without compiling it.
pub fn parse_file(text: &str, path: &Path) -> Result<RawRuleFile, RuleError> {
    let trimmed = text.trim_start();
    let syntax = |line: usize, column: usize, message: String| RuleError::Syntax {
        path: path.to_path_buf(),
        line,
        column,
        message,
    };
    let json = |e: serde_json::Error| syntax(e.line(), e.column(), e.to_string());
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    // TOML's `[[rules]]` also opens with a bracket: the extension decides, else `[[`.
    let is_toml = ext.eq_ignore_ascii_case("toml")
        || (!ext.eq_ignore_ascii_case("json")
            && (trimmed.starts_with("[[") || !trimmed.starts_with(['[', '{'])));
    if is_toml {
        return weir_common::config::parse_toml(path, text).map_err(|e| match e {
            weir_common::config::ConfigError::Invalid {
                line,
                column,
                message,
                ..
            } => syntax(line, column, message),
            other => syntax(1, 1, other.to_string()),
        });
    }
    if trimmed.starts_with('[') {
        Ok(RawRuleFile {
            rules: serde_json::from_str(text).map_err(json)?,
            aggregates: Vec::new(),
        })
    } else if trimmed.starts_with('{') {
        let probe: serde_json::Value = serde_json::from_str(text).map_err(json)?;
        if probe.get("rules").is_some() || probe.get("aggregates").is_some() {
            serde_json::from_str(text).map_err(json)
        } else {
            Ok(RawRuleFile {
                rules: vec![serde_json::from_str(text).map_err(json)?],
                aggregates: Vec::new(),
            })
        }
    } else {
        Err(syntax(1, 1, "expected a JSON rule file (a list, one rule, or {\"rules\": [...]}) or TOML ([[rules]])".into()))
    }
}

fn compile_rule(raw: &RawRule) -> Result<Rule, (String, String)> {
    let e = |f: &str, m: &str| (f.to_string(), m.to_string());
    let mut parts = Vec::new();
    if let Some(c) = &raw.conditions {
        parts.push(compile_condition(c, "conditions")?);
    }
    for (i, ev) in raw.events.iter().enumerate() {
        if ev.trim().is_empty() {
            return Err((format!("events[{i}]"), "empty event name".into()));
        }
    }
    if raw.conditions.is_none() && raw.events.is_empty() {
        return Err(e(
            "conditions",
            "a rule needs conditions or an events list (else it would match every event)",
        ));
    }
    let cond = match parts.len() {
        0 => Cond::True,
        _ => parts.pop().unwrap_or(Cond::True),
    };
    let window = match (raw.window_minutes, raw.window) {
        (Some(_), Some(_)) => {
            return Err(e(
                "window",
                "give window_minutes or window (seconds), not both",
            ));
        }
        (Some(m), None) => secs(m.saturating_mul(60)),
        (None, Some(s)) => secs(s.0),
        (None, None) => 5 * 60 * MICROS,
    };
    if window <= 0 {
        return Err(e("window", "must be greater than zero"));
    }
    let count = match (raw.min_event_count, raw.count) {
        (Some(_), Some(_)) => return Err(e("count", "give min_event_count or count, not both")),
        (Some(c), None) | (None, Some(c)) => c,
        (None, None) => 1,
    };
    if count == 0 {
        return Err(e("min_event_count", "must be at least 1"));
    }
    let mut group_by = Vec::new();
    for (i, g) in raw.group_by.iter().enumerate() {
        group_by.push(Field::parse(g).map_err(|m| (format!("group_by[{i}]"), m))?);
    }
    let mut enrich = Vec::new();
    for (k, v) in &raw.enrich {
        let v = match v {
            serde_json::Value::Null => None,
            other => Some(scalar(other).ok_or_else(|| {
                (
                    format!("enrich.{k}"),
                    format!("expected a string, number, bool or null, got {other}"),
                )
            })?),
        };
        enrich.push((canonical_property(k), v));
    }
    let sels = |name: &str, list: &Option<Vec<String>>| -> Result<Vec<CopySel>, (String, String)> {
        list.iter()
            .flatten()
            .enumerate()
            .map(|(i, s)| CopySel::parse(s).map_err(|m| (format!("{name}[{i}]"), m)))
            .collect()
    };
    let mut copies = Copies {
        present: Vec::new(),
        first: sels("copy_first", &raw.copy_first)?,
        last: sels("copy_last", &raw.copy_last)?,
        highest: sels("copy_highest", &raw.copy_highest)?,
        groupby: raw.copy_groupby.clone().unwrap_or_default(),
    };
    for (i, p) in raw.copy_present.iter().flatten().enumerate() {
        match CopySel::parse(p) {
            Ok(CopySel::Name(n)) => copies.present.push(n),
            _ => {
                return Err((
                    format!("copy_present[{i}]"),
                    "explicit property names only, no regular expressions (seed 003)".into(),
                ));
            }
        }
    }
    if copies.groupby.len() > group_by.len() {
        return Err(e("copy_groupby", "has more entries than group_by"));
    }
    if raw.copy_first.is_none()
        && raw.copy_last.is_none()
        && raw.copy_highest.is_none()
        && raw.copy_present.is_none()
        && raw.copy_groupby.is_none()
    {
        // Seed 003 step 1: the backwards-compatible default.
        copies.last.push(CopySel::Regex(
            Regex::new("").map_err(|m| e("copy_last", &m.to_string()))?,
        ));
    }
    let incident_severity = match &raw.action.incident_severity {
        Some(s) => Some(
            s.parse::<Severity>()
                .map_err(|m| e("action.incident_severity", &m.to_string()))?,
        ),
        None => None,
    };
    let mut describe = cond.describe();
    if !raw.events.is_empty() {
        let names = format!("name in {:?}", raw.events);
        describe = if matches!(cond, Cond::True) {
            names
        } else {
            format!("{names} AND {describe}")
        };
    }
    let floor = min_severity(&cond);
    Ok(Rule {
        name: raw.name.as_str().into(),
        priority: raw.priority,
        version: version_of(raw),
        cond,
        events: raw.events.clone(),
        window,
        count,
        group_names: group_by.iter().map(Field::name).collect(),
        min_severity: floor,
        group_by,
        inhibit: raw.inhibit.map_or(0, |s| secs(s.0)),
        delayed_action: raw.delayed_action.map(|s| secs(s.0)),
        auto_acknowledge: raw.auto_acknowledge,
        enrich,
        copies,
        create_incident: raw.action.create_incident,
        incident_severity,
        contact_list: raw.action.contact_list.clone(),
        suppress_individual: raw.action.suppress_individual,
        site_inhibit: raw.site_inhibit.unwrap_or(true),
        describe: describe.into(),
        raw: raw.clone(),
    })
}

/// A severity floor implied by a top-level `severity >= X` (or `equals X`) filter.
fn min_severity(cond: &Cond) -> Option<Severity> {
    let floor = |c: &Cond| match c {
        Cond::Filter(Filter {
            field: Field::Severity,
            op: Op::Cmp(CmpOp::Ge, CmpValue::Severity(s)) | Op::SeverityEq(s, true),
            ..
        }) => Some(*s),
        _ => None,
    };
    match cond {
        Cond::All(children) => children.iter().filter_map(floor).max(),
        other => floor(other),
    }
}

fn compile_aggregate(raw: &RawAggregate) -> Result<Aggregate, (String, String)> {
    let cond = match &raw.condition {
        Some(c) => compile_condition(c, "condition")?,
        None => Cond::True,
    };
    let fields = |name: &str, l: &FieldList| -> Result<Vec<Field>, (String, String)> {
        l.0.iter()
            .enumerate()
            .map(|(i, f)| Field::parse(f).map_err(|m| (format!("{name}[{i}]"), m)))
            .collect()
    };
    let throttle = match raw.throttle {
        -1 => None,
        t if t >= 0 => Some(secs(t.unsigned_abs())),
        t => {
            return Err((
                "throttle".into(),
                format!("{t}: expected seconds (0 or more) or -1 for infinite"),
            ));
        }
    };
    Ok(Aggregate {
        name: raw.name.as_str().into(),
        priority: raw.priority,
        version: version_of(raw),
        cond,
        fields: fields("fields", &raw.fields)?,
        watch: fields("watch", &raw.watch)?,
        throttle,
        flapping: raw.flapping,
        raw: raw.clone(),
    })
}

/// Enabled rule names and their version hashes (what `GET /api/v1/rules` can show as versions).
pub fn versions(set: &RuleSet) -> BTreeMap<String, Arc<str>> {
    set.rules
        .iter()
        .map(|r| (r.name.to_string(), r.version.clone()))
        .collect()
}
