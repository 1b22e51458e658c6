//! Event definitions (seed 001), keyed by tag: what an event of that tag means (label,
//! description, operator instructions), its severity, where it goes (`dest`), and its alarm
//! data (reduction key, problem/resolution/notification, clear key).
//!
//! A definition's `tag` is exact (`SNMP_LINK_DOWN`) or a pattern with one `*` (`*_DOWN`).
//! Lookup tries the exact tags first, then the patterns in file order; the part a pattern's `*`
//! matched is `%match%` in its key templates, so `*_UP` clears `%match%_DOWN:...`.

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use weir_common::Severity;
use weir_common::config::ConfigError;

use super::template::Template;
use super::{line_of, rule_error};

/// The definitions Weir ships (SNMP standard traps, the ping-style `*_DOWN`/`*_UP` pair): the
/// same file packages install as an example, so it is always valid.
pub const DEFAULTS: &str = include_str!("../../conf/definitions.toml");

/// Where an event goes after its definition (seed 001 `dest`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Dest {
    /// Store it and show it.
    #[default]
    Logndisplay,
    /// Store it, hidden from default views (marked with the tag `weir.dest = logonly`).
    Logonly,
    /// Neither store nor process it.
    Suppress,
    /// Do not store it, but still update alarms (correlation sees only stored events, for now).
    Donotpersist,
    /// For SNMP traps: drop it, as early as possible; other events: as `suppress`.
    Discardtraps,
}

/// What the alarm of an event type does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlarmType {
    /// Raises (or re-raises) the alarm with the reduction key.
    Problem,
    /// Clears the problem alarm whose reduction key equals the clear key.
    Resolution,
    /// Informational: no alarm.
    Notification,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    definition: Vec<toml::Spanned<RawDefinition>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDefinition {
    /// Exact tag, or a pattern with one `*`.
    tag: String,
    /// Short summary of every event of this type.
    #[serde(default)]
    label: String,
    /// Long description.
    #[serde(default)]
    description: String,
    /// What the operator should do.
    #[serde(default)]
    instructions: String,
    /// Replaces the event's severity when set.
    severity: Option<Severity>,
    /// Where the event goes.
    #[serde(default)]
    dest: Dest,
    /// Alarm data; absent means no alarm.
    alarm: Option<RawAlarm>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAlarm {
    #[serde(rename = "type")]
    kind: AlarmType,
    /// Template for the alarm's reduction key (problems).
    reduction_key: Option<String>,
    /// Template for the key of the problem alarm a resolution clears.
    clear_key: Option<String>,
}

/// A compiled definition.
#[derive(Debug, Clone)]
pub struct Definition {
    pub tag: String,
    pub label: String,
    pub description: String,
    pub instructions: String,
    pub severity: Option<Severity>,
    pub dest: Dest,
    pub alarm: Option<AlarmData>,
}

#[derive(Debug, Clone)]
pub struct AlarmData {
    pub kind: AlarmType,
    pub reduction_key: Option<Template>,
    pub clear_key: Option<Template>,
}

/// All definitions, indexed for lookup.
#[derive(Debug, Default)]
pub struct Definitions {
    exact: HashMap<String, Definition>,
    /// `(prefix, suffix, definition)` in file order.
    patterns: Vec<(String, String, Definition)>,
}

impl Definitions {
    /// The shipped defaults.
    pub fn defaults() -> Definitions {
        Definitions::parse(Path::new("<built-in definitions>"), DEFAULTS)
            .expect("the shipped definitions are valid (tested)")
    }

    pub fn load(path: &Path) -> Result<Definitions, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_path_buf(),
            error,
        })?;
        Definitions::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Definitions, ConfigError> {
        let raw: RawFile = weir_common::config::parse_toml(path, text)?;
        let mut out = Definitions::default();
        for (i, spanned) in raw.definition.into_iter().enumerate() {
            let line = line_of(text, spanned.span().start);
            let r = spanned.into_inner();
            let err = |field: &str, message: String| {
                rule_error(path, line, "definition", i, &r.tag, field, message)
            };
            let stars = r.tag.matches('*').count();
            if r.tag.trim().is_empty() || stars > 1 {
                return Err(err(
                    "tag",
                    "must be a tag, or a pattern with one * (e.g. *_DOWN)".into(),
                ));
            }
            let tmpl = |field: &str, t: &Option<String>| {
                t.as_deref()
                    .map(|t| Template::parse(t).map_err(|m| err(field, m)))
                    .transpose()
            };
            let alarm = match &r.alarm {
                None => None,
                Some(a) => {
                    let reduction_key = tmpl("alarm.reduction_key", &a.reduction_key)?;
                    let clear_key = tmpl("alarm.clear_key", &a.clear_key)?;
                    match a.kind {
                        AlarmType::Problem if reduction_key.is_none() => {
                            return Err(err(
                                "alarm.reduction_key",
                                "a problem needs a reduction_key".into(),
                            ));
                        }
                        AlarmType::Resolution if clear_key.is_none() => {
                            return Err(err(
                                "alarm.clear_key",
                                "a resolution needs a clear_key (the reduction key of the problem it clears)".into(),
                            ));
                        }
                        _ => {}
                    }
                    for (f, t) in [
                        ("alarm.reduction_key", &reduction_key),
                        ("alarm.clear_key", &clear_key),
                    ] {
                        if stars == 0 && t.as_ref().is_some_and(Template::uses_match) {
                            return Err(err(f, "%match% needs a tag pattern with *".into()));
                        }
                    }
                    Some(AlarmData {
                        kind: a.kind,
                        reduction_key,
                        clear_key,
                    })
                }
            };
            let def = Definition {
                tag: r.tag.clone(),
                label: r.label,
                description: r.description,
                instructions: r.instructions,
                severity: r.severity,
                dest: r.dest,
                alarm,
            };
            if let Some((prefix, suffix)) = r.tag.split_once('*') {
                if out
                    .patterns
                    .iter()
                    .any(|(p, s, _)| p == prefix && s == suffix)
                {
                    return Err(err("tag", "defined twice".into()));
                }
                out.patterns
                    .push((prefix.to_string(), suffix.to_string(), def));
            } else if out.exact.insert(r.tag.clone(), def).is_some() {
                return Err(err("tag", "defined twice".into()));
            }
        }
        Ok(out)
    }

    /// The definition for `tag` and what its `*` matched.
    pub fn lookup<'a>(&'a self, tag: &'a str) -> Option<(&'a Definition, &'a str)> {
        if let Some(d) = self.exact.get(tag) {
            return Some((d, ""));
        }
        self.patterns.iter().find_map(|(p, s, d)| {
            (tag.len() > p.len() + s.len()
                && tag.starts_with(p.as_str())
                && tag.ends_with(s.as_str()))
            .then(|| (d, &tag[p.len()..tag.len() - s.len()]))
        })
    }

    /// The definitions with an exact tag (in no particular order).
    pub fn exact(&self) -> impl Iterator<Item = &Definition> {
        self.exact.values()
    }

    /// The definitions with a pattern tag, in lookup (file) order.
    pub fn patterns(&self) -> impl Iterator<Item = &Definition> {
        self.patterns.iter().map(|(_, _, d)| d)
    }

    pub fn len(&self) -> usize {
        self.exact.len() + self.patterns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_defaults_parse_and_cover_the_standard_tags() {
        let d = Definitions::defaults();
        for tag in [
            "SNMP_LINK_DOWN",
            "SNMP_LINK_UP",
            "SNMP_COLD_START",
            "SNMP_WARM_START",
            "SNMP_AUTH_FAIL",
            "PING_DOWN",
            "PING_UP",
        ] {
            assert!(d.lookup(tag).is_some(), "{tag}");
        }
        let (def, matched) = d.lookup("PING_UP").unwrap();
        assert_eq!(matched, "PING");
        assert_eq!(def.alarm.as_ref().unwrap().kind, AlarmType::Resolution);
        assert!(d.lookup("_DOWN").is_none(), "the * must match something");
        assert!(d.lookup("SOMETHING_ELSE").is_none());
    }

    #[test]
    fn errors_name_file_line_definition_and_field() {
        let text = "[[definition]]\ntag = \"A\"\n\n[[definition]]\ntag = \"B\"\n[definition.alarm]\ntype = \"resolution\"\n";
        let e = Definitions::parse(Path::new("d.toml"), text)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("d.toml:4:"), "{e}");
        assert!(e.contains("definition #2 \"B\""), "{e}");
        assert!(e.contains("alarm.clear_key"), "{e}");
        let e = Definitions::parse(
            Path::new("d.toml"),
            "[[definition]]\ntag = \"A\"\ndest = \"nowhere\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("d.toml:3:"), "{e}");
        let e = Definitions::parse(
            Path::new("d.toml"),
            "[[definition]]\ntag = \"A\"\n[definition.alarm]\ntype = \"problem\"\nreduction_key = \"%match%\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("needs a tag pattern"), "{e}");
    }
}
