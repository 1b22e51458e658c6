//! Transformation rules (seed 002): admin-defined rules evaluated in file order against each
//! event before it is stored. A rule matches when every condition it names holds; a matching
//! rule's actions apply in the order `set_tag`, `set_severity`, `set_field`, `close_existing`,
//! `suppress`. The first matching rule with `suppress = true` drops the event (counted per
//! rule) and later rules are not evaluated.
//!
//! Regexes and globs are compiled once, when the file is loaded; [`Transforms::apply`] does no
//! I/O and allocates only for what it changes.

use std::collections::BTreeMap;
use std::path::Path;

use globset::{Glob, GlobMatcher};
use regex::Regex;
use serde::Deserialize;
use weir_common::config::ConfigError;
use weir_common::{Event, InputKind, Severity};

use super::template::{Context, Template, field};
use super::{line_of, rule_error};

/// The file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    transform: Vec<toml::Spanned<RawRule>>,
}

/// One `[[transform]]` table as written (see `conf/transforms.toml` for every key).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    /// Names the rule in logs, metrics and errors; unique in the file.
    name: String,
    /// Off rules are kept in the file but not evaluated.
    #[serde(default = "yes")]
    enabled: bool,
    /// Regex the message must match (unanchored).
    message: Option<String>,
    /// Glob the event's tag must match (`SNMP_*`); an event without a tag never matches.
    tag: Option<String>,
    /// Glob the hostname must match (`db-*`).
    hostname: Option<String>,
    /// Glob the site must match.
    site: Option<String>,
    /// Input kind: syslog, snmp_trap, api, script, internal.
    input: Option<InputKind>,
    /// Exact severity.
    severity: Option<Severity>,
    /// Severity at least this.
    min_severity: Option<Severity>,
    /// Any field or tag name → regex its value must match; a missing field never matches.
    #[serde(default)]
    fields: BTreeMap<String, String>,
    #[serde(alias = "setTag")]
    set_tag: Option<String>,
    #[serde(alias = "setSeverity")]
    set_severity: Option<Severity>,
    /// Tag name → value template (`%vb.1.3.6.1.2.1.2.2.1.1%`).
    #[serde(default, alias = "setField")]
    set_field: BTreeMap<String, String>,
    #[serde(default)]
    suppress: bool,
    /// Reduction-key template of open alarms this event clears.
    #[serde(alias = "closeExisting")]
    close_existing: Option<String>,
}

fn yes() -> bool {
    true
}

/// One compiled rule.
#[derive(Debug)]
pub struct Rule {
    pub name: String,
    message: Option<Regex>,
    tag: Option<GlobMatcher>,
    hostname: Option<GlobMatcher>,
    site: Option<GlobMatcher>,
    input: Option<InputKind>,
    severity: Option<Severity>,
    min_severity: Option<Severity>,
    fields: Vec<(String, Regex)>,
    set_tag: Option<String>,
    set_severity: Option<Severity>,
    set_field: Vec<(String, Template)>,
    suppress: bool,
    close_existing: Option<Template>,
}

/// The compiled rule list, in evaluation order.
#[derive(Debug, Default)]
pub struct Transforms {
    pub rules: Vec<Rule>,
}

/// What the rules did to one event.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Applied {
    /// The rule that suppressed the event (the event must be dropped).
    pub suppressed_by: Option<String>,
    /// Reduction keys of alarms to clear (from `close_existing`).
    pub close: Vec<String>,
    /// Names of the rules that matched, in order.
    pub matched: Vec<String>,
}

impl Transforms {
    /// Reads and compiles a transforms file.
    pub fn load(path: &Path) -> Result<Transforms, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_path_buf(),
            error,
        })?;
        Transforms::parse(path, &text)
    }

    /// Compiles `text` (which came from `path`, used in errors).
    pub fn parse(path: &Path, text: &str) -> Result<Transforms, ConfigError> {
        let raw: RawFile = weir_common::config::parse_toml(path, text)?;
        let mut rules = Vec::with_capacity(raw.transform.len());
        let mut names = std::collections::HashSet::new();
        for (i, spanned) in raw.transform.into_iter().enumerate() {
            let line = line_of(text, spanned.span().start);
            let r = spanned.into_inner();
            let err = |field: &str, message: String| {
                rule_error(path, line, "transform", i, &r.name, field, message)
            };
            if r.name.trim().is_empty() {
                return Err(err("name", "must not be empty".into()));
            }
            if !names.insert(r.name.clone()) {
                return Err(err("name", "another rule already has this name".into()));
            }
            let glob =
                |field: &str, g: &Option<String>| -> Result<Option<GlobMatcher>, ConfigError> {
                    g.as_deref()
                        .map(|g| {
                            Glob::new(g)
                                .map(|g| g.compile_matcher())
                                .map_err(|e| err(field, format!("bad glob {g:?}: {e}")))
                        })
                        .transpose()
                };
            let regex = |field: &str, s: &str| {
                Regex::new(s).map_err(|e| err(field, format!("bad regex {s:?}: {e}")))
            };
            let message = r
                .message
                .as_deref()
                .map(|m| regex("message", m))
                .transpose()?;
            let mut fields = Vec::new();
            for (name, re) in &r.fields {
                fields.push((name.clone(), regex(&format!("fields.{name}"), re)?));
            }
            let mut set_field = Vec::new();
            for (name, t) in &r.set_field {
                let t = Template::parse(t).map_err(|m| err(&format!("set_field.{name}"), m))?;
                if t.uses_match() {
                    return Err(err(
                        &format!("set_field.{name}"),
                        "%match% is only meaningful in event definitions".into(),
                    ));
                }
                set_field.push((name.clone(), t));
            }
            let close_existing = r
                .close_existing
                .as_deref()
                .map(|t| Template::parse(t).map_err(|m| err("close_existing", m)))
                .transpose()?;
            if let Some(t) = &r.set_tag
                && t.trim().is_empty()
            {
                return Err(err("set_tag", "must not be empty".into()));
            }
            let acts = r.set_tag.is_some()
                || r.set_severity.is_some()
                || !set_field.is_empty()
                || r.suppress
                || close_existing.is_some();
            if !acts {
                return Err(err(
                    "set_tag",
                    "the rule has no action: give set_tag, set_severity, set_field, suppress or close_existing".into(),
                ));
            }
            if !r.enabled {
                continue;
            }
            rules.push(Rule {
                tag: glob("tag", &r.tag)?,
                hostname: glob("hostname", &r.hostname)?,
                site: glob("site", &r.site)?,
                name: r.name,
                message,
                input: r.input,
                severity: r.severity,
                min_severity: r.min_severity,
                fields,
                set_tag: r.set_tag,
                set_severity: r.set_severity,
                set_field,
                suppress: r.suppress,
                close_existing,
            });
        }
        Ok(Transforms { rules })
    }

    /// Runs the rules over `event` (from `site`), changing it in place.
    pub fn apply(&self, site: &str, event: &mut Event) -> Applied {
        let mut out = Applied::default();
        for rule in &self.rules {
            if !rule.matches(site, event) {
                continue;
            }
            out.matched.push(rule.name.clone());
            if let Some(t) = &rule.set_tag {
                event.tag = Some(t.clone());
            }
            if let Some(s) = rule.set_severity {
                event.severity = s;
            }
            if !rule.set_field.is_empty() {
                let values: Vec<(String, String)> = rule
                    .set_field
                    .iter()
                    .map(|(k, t)| {
                        let cx = Context {
                            site,
                            event,
                            matched: "",
                        };
                        (k.clone(), t.expand(cx))
                    })
                    .collect();
                event.tags.extend(values);
            }
            if let Some(t) = &rule.close_existing {
                out.close.push(t.expand(Context {
                    site,
                    event,
                    matched: "",
                }));
            }
            if rule.suppress {
                out.suppressed_by = Some(rule.name.clone());
                return out;
            }
        }
        out
    }
}

impl Rule {
    /// Whether the rule can change what happens to an event beyond its severity and fields
    /// (its tag, alarms it clears): such a rule must see the event, so an agent must not drop
    /// it early ([`super::trap_policy`]).
    pub fn retags_or_closes(&self) -> bool {
        self.set_tag.is_some() || self.close_existing.is_some()
    }

    /// Whether the rule's tag condition could hold for some tag matching the definition-style
    /// `spec` (exact, or a pattern with one `*`). Conservative: `true` when unsure.
    pub fn may_match_tag(&self, spec: &str) -> bool {
        let Some(g) = &self.tag else {
            return true;
        };
        if !spec.contains('*') {
            return g.is_match(spec);
        }
        let glob = g.glob().glob();
        if glob.contains(['*', '?', '[', '{', '\\']) {
            return true;
        }
        weir_common::trap_policy::pattern_matches(spec, glob)
    }

    fn matches(&self, site: &str, e: &Event) -> bool {
        if let Some(s) = self.severity
            && e.severity != s
        {
            return false;
        }
        if let Some(s) = self.min_severity
            && e.severity < s
        {
            return false;
        }
        if let Some(k) = self.input
            && e.input != k
        {
            return false;
        }
        if let Some(g) = &self.tag
            && !e.tag.as_deref().is_some_and(|t| g.is_match(t))
        {
            return false;
        }
        if let Some(g) = &self.hostname
            && !g.is_match(&e.hostname)
        {
            return false;
        }
        if let Some(g) = &self.site
            && !g.is_match(site)
        {
            return false;
        }
        if let Some(re) = &self.message
            && !re.is_match(&e.message)
        {
            return false;
        }
        self.fields
            .iter()
            .all(|(name, re)| field(e, name).is_some_and(|v| re.is_match(v)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::Timestamp;

    fn ev(tag: &str, msg: &str, sev: Severity) -> Event {
        let mut e = Event::new(
            InputKind::Syslog,
            "syslog",
            "db-01",
            sev,
            msg,
            Timestamp::UNIX_EPOCH,
        );
        e.tag = Some(tag.into());
        e
    }

    #[test]
    fn rules_apply_in_order_and_first_matching_suppress_drops() {
        let text = r#"
[[transform]]
name = "retag"
message = "(?i)connection refused"
set_tag = "DB_CONN_REFUSED"
set_severity = "critical"
set_field = { reason = "refused on %hostname%" }

[[transform]]
name = "drop-debug"
severity = "debug"
suppress = true

[[transform]]
name = "never-reached-for-debug"
min_severity = "debug"
suppress = true
tag = "NOISE"

[[transform]]
name = "close"
tag = "DB_CONN_REFUSED"
hostname = "db-*"
site = "par*"
fields = { reason = "^refused" }
close_existing = "DB_OK:%site%:%hostname%"
"#;
        let t = Transforms::parse(Path::new("t.toml"), text).unwrap();
        let mut e = ev("X", "Connection refused by peer", Severity::Info);
        let a = t.apply("paris", &mut e);
        assert_eq!(e.tag.as_deref(), Some("DB_CONN_REFUSED"));
        assert_eq!(e.severity, Severity::Critical);
        assert_eq!(e.tags["reason"], "refused on db-01");
        assert_eq!(a.close, vec!["DB_OK:paris:db-01"]);
        assert_eq!(a.matched, vec!["retag", "close"]);
        assert_eq!(a.suppressed_by, None);
        // The set_tag of the first rule is what the later rule sees: order matters.
        let mut e = ev("NOISE", "x", Severity::Debug);
        let a = t.apply("paris", &mut e);
        assert_eq!(a.suppressed_by.as_deref(), Some("drop-debug"));
        assert_eq!(a.matched, vec!["drop-debug"]);
        let mut e = ev("NOISE", "x", Severity::Info);
        assert_eq!(
            t.apply("lyon", &mut e).suppressed_by.as_deref(),
            Some("never-reached-for-debug")
        );
    }

    #[test]
    fn errors_name_file_line_rule_and_field() {
        let text = "[[transform]]\nname = \"a\"\nsuppress = true\n\n[[transform]]\nname = \"bad\"\nmessage = \"(unclosed\"\nsuppress = true\n";
        let e = Transforms::parse(Path::new("/etc/weir/t.toml"), text)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("/etc/weir/t.toml:5:"), "{e}");
        assert!(e.contains("transform #2 \"bad\""), "{e}");
        assert!(e.contains("message"), "{e}");
        let e = Transforms::parse(Path::new("t.toml"), "[[transform]]\nname = \"a\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("no action"), "{e}");
        let e = Transforms::parse(
            Path::new("t.toml"),
            "[[transform]]\nname = \"a\"\nsupress = true\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("t.toml:3:"), "{e}");
        let e = Transforms::parse(
            Path::new("t.toml"),
            "[[transform]]\nname = \"a\"\nsuppress = true\n[[transform]]\nname = \"a\"\nsuppress = true\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("already"), "{e}");
    }
}
