//! The SNMP trap drop policy the aggregator pushes to its agents (protocol version 2), so traps
//! whose event definition says `dest = "discardtraps"` (seed 001: "dropped as early as
//! possible") are dropped at the site, before they are queued or cross the WAN.
//!
//! A policy is a list of [`TagRule`]s matched against a trap's tag the way the aggregator looks
//! up event definitions: exact tags first, then patterns with one `*` (which must match at
//! least one character) in list order; the first match decides, and a tag no rule matches is
//! kept. Rules that keep (`discard = false`) exist so that an exact definition or an earlier
//! pattern that does not discard still wins over a later discarding pattern, as it does at the
//! aggregator.
//!
//! The policy travels in [`crate::wire::AggregatorFrame::TrapPolicy`]; the agent checks it
//! ([`TrapPolicy::check`]) before compiling it ([`CompiledPolicy`]), so a broken or hostile
//! aggregator can neither panic an agent nor make it hold an unbounded rule set.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// Most rules an agent accepts in one policy.
pub const MAX_RULES: usize = 10_000;
/// Longest tag or pattern an agent accepts, in bytes.
pub const MAX_PATTERN_LEN: usize = 256;

/// One rule: a tag (or a pattern with one `*`) and whether traps with it are dropped.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TagRule {
    pub pattern: String,
    pub discard: bool,
}

/// What the agent drops (see the module documentation for how rules match).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrapPolicy {
    /// A hash of `rules` ([`TrapPolicy::new`]): equal versions mean equal policies, so logs can
    /// say whether an agent runs the aggregator's current policy.
    pub version: u64,
    pub rules: Vec<TagRule>,
}

impl TrapPolicy {
    /// A policy of `rules`, with its version computed.
    pub fn new(rules: Vec<TagRule>) -> TrapPolicy {
        let bytes = postcard::to_allocvec(&rules).unwrap_or_default();
        TrapPolicy {
            version: xxhash_rust::xxh3::xxh3_64(&bytes),
            rules,
        }
    }

    /// Tags and patterns dropped by this policy (for logs).
    pub fn discarded(&self) -> impl Iterator<Item = &str> {
        self.rules
            .iter()
            .filter(|r| r.discard)
            .map(|r| r.pattern.as_str())
    }

    /// Whether the policy drops anything at all.
    pub fn is_empty(&self) -> bool {
        !self.rules.iter().any(|r| r.discard)
    }

    /// Refuses policies an agent should not hold: too many rules, too long or malformed patterns.
    pub fn check(&self) -> Result<(), String> {
        if self.rules.len() > MAX_RULES {
            return Err(format!(
                "{} rules, more than the {MAX_RULES} an agent accepts",
                self.rules.len()
            ));
        }
        for r in &self.rules {
            if r.pattern.is_empty() || r.pattern.len() > MAX_PATTERN_LEN {
                return Err(format!(
                    "tag pattern of {} bytes (must be 1 to {MAX_PATTERN_LEN})",
                    r.pattern.len()
                ));
            }
            if r.pattern.matches('*').count() > 1 {
                return Err(format!("tag pattern {:?} has more than one *", r.pattern));
            }
        }
        Ok(())
    }
}

/// Whether the definition-style `pattern` (exact, or one `*` matching at least one character)
/// matches `tag`.
pub fn pattern_matches(pattern: &str, tag: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == tag,
        Some((p, s)) => tag.len() > p.len() + s.len() && tag.starts_with(p) && tag.ends_with(s),
    }
}

/// A checked policy, indexed for the per-trap lookup.
#[derive(Debug, Default)]
pub struct CompiledPolicy {
    pub version: u64,
    exact: HashMap<String, bool>,
    /// `(prefix, suffix, discard)` in policy order.
    patterns: Vec<(String, String, bool)>,
}

impl CompiledPolicy {
    /// Checks and indexes `policy`. The first rule for a tag or pattern wins.
    pub fn compile(policy: &TrapPolicy) -> Result<CompiledPolicy, String> {
        policy.check()?;
        let mut out = CompiledPolicy {
            version: policy.version,
            ..CompiledPolicy::default()
        };
        for r in &policy.rules {
            match r.pattern.split_once('*') {
                None => {
                    out.exact.entry(r.pattern.clone()).or_insert(r.discard);
                }
                Some((p, s)) => out.patterns.push((p.into(), s.into(), r.discard)),
            }
        }
        Ok(out)
    }

    /// Whether a trap with `tag` is dropped.
    pub fn discards(&self, tag: &str) -> bool {
        if let Some(&d) = self.exact.get(tag) {
            return d;
        }
        self.patterns
            .iter()
            .find(|(p, s, _)| {
                tag.len() > p.len() + s.len() && tag.starts_with(p.as_str()) && tag.ends_with(s)
            })
            .is_some_and(|(_, _, d)| *d)
    }

    /// Whether it drops anything at all (the trap input skips the lookup otherwise).
    pub fn is_empty(&self) -> bool {
        !self.exact.values().any(|d| *d) && !self.patterns.iter().any(|(_, _, d)| *d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(p: &str, discard: bool) -> TagRule {
        TagRule {
            pattern: p.into(),
            discard,
        }
    }

    #[test]
    fn exact_tags_win_then_patterns_in_order() {
        let p = TrapPolicy::new(vec![
            rule("SNMP_COLD_START", false),
            rule("SNMP_WARM_START", true),
            rule("VENDOR_*_START", false),
            rule("*_START", true),
        ]);
        let c = CompiledPolicy::compile(&p).unwrap();
        assert!(c.discards("SNMP_WARM_START"));
        assert!(
            !c.discards("SNMP_COLD_START"),
            "exact keep beats the pattern"
        );
        assert!(c.discards("X_START"));
        assert!(!c.discards("VENDOR_A_START"), "earlier pattern keeps");
        assert!(!c.discards("_START"), "* matches at least one character");
        assert!(!c.discards("SNMP_LINK_DOWN"), "no rule: kept");
        assert!(!c.is_empty());
        assert!(CompiledPolicy::default().is_empty());
        assert!(!CompiledPolicy::default().discards("SNMP_WARM_START"));
    }

    #[test]
    fn version_follows_content() {
        let a = TrapPolicy::new(vec![rule("A", true)]);
        assert_eq!(a.version, TrapPolicy::new(vec![rule("A", true)]).version);
        assert_ne!(a.version, TrapPolicy::new(vec![rule("A", false)]).version);
        assert_ne!(a.version, TrapPolicy::new(vec![]).version);
    }

    #[test]
    fn oversized_or_malformed_policies_are_refused() {
        let many = TrapPolicy::new(
            (0..=MAX_RULES)
                .map(|i| rule(&i.to_string(), true))
                .collect(),
        );
        assert!(
            CompiledPolicy::compile(&many)
                .unwrap_err()
                .contains("rules")
        );
        let long = TrapPolicy::new(vec![rule(&"A".repeat(MAX_PATTERN_LEN + 1), true)]);
        assert!(CompiledPolicy::compile(&long).is_err());
        assert!(CompiledPolicy::compile(&TrapPolicy::new(vec![rule("", true)])).is_err());
        assert!(CompiledPolicy::compile(&TrapPolicy::new(vec![rule("*A*", true)])).is_err());
    }

    #[test]
    fn pattern_matching() {
        assert!(pattern_matches("A", "A"));
        assert!(!pattern_matches("A", "AB"));
        assert!(pattern_matches("*_DOWN", "PING_DOWN"));
        assert!(!pattern_matches("*_DOWN", "_DOWN"));
        assert!(pattern_matches("SNMP_*", "SNMP_X"));
        assert!(
            !pattern_matches("AB*BA", "ABA"),
            "prefix and suffix must not overlap"
        );
    }
}
