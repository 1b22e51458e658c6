//! Which SNMP traps agents may drop before queueing them: the [`TrapPolicy`] computed from the
//! event definitions and transformation rules, pushed to agents on connect and on every
//! reload (see [`weir_common::trap_policy`] and [`crate::ingest`]).
//!
//! A tag is dropped early when its definition says `dest = "discardtraps"` and no
//! transformation rule could change its fate first (processing order: transforms, then
//! definitions). A rule that sets the tag or clears alarms (`set_tag`, `close_existing`) and
//! whose tag condition is absent or could match the tag makes that tag unsafe: its traps must
//! reach the aggregator, which discards them itself after the rule ran. Rules that only set
//! severity or fields, or suppress, do not: the trap is discarded either way.
//!
//! The rules sent replicate definition lookup: exact tags first (discarding ones, and keeping
//! ones that a discarding pattern would otherwise catch), then the patterns in file order up to
//! the last discarding one (earlier non-discarding patterns keep what they match, as lookup
//! would give them the event).

use weir_common::trap_policy::{MAX_PATTERN_LEN, MAX_RULES, TagRule, TrapPolicy, pattern_matches};

use super::definition::{Definitions, Dest};
use super::transform::Transforms;

/// A discardtraps tag left to the aggregator, and the rule that makes dropping it early unsafe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsafe {
    pub tag: String,
    pub rule: String,
}

/// The policy for `definitions` under `transforms`, and the discardtraps tags it leaves to the
/// aggregator.
pub fn compute(definitions: &Definitions, transforms: &Transforms) -> (TrapPolicy, Vec<Unsafe>) {
    let mut unsafe_tags = Vec::new();
    let mut safe = |tag: &str| match transforms
        .rules
        .iter()
        .find(|r| r.retags_or_closes() && r.may_match_tag(tag))
    {
        Some(r) => {
            unsafe_tags.push(Unsafe {
                tag: tag.to_string(),
                rule: r.name.clone(),
            });
            false
        }
        None => true,
    };
    let mut patterns: Vec<TagRule> = definitions
        .patterns()
        .map(|d| TagRule {
            pattern: d.tag.clone(),
            discard: d.dest == Dest::Discardtraps && safe(&d.tag),
        })
        .collect();
    let last = patterns.iter().rposition(|r| r.discard);
    patterns.truncate(last.map_or(0, |i| i + 1));
    let mut exact: Vec<TagRule> = definitions
        .exact()
        .filter_map(|d| {
            let discard = d.dest == Dest::Discardtraps && safe(&d.tag);
            // A keeping exact tag matters only when a discarding pattern would catch it.
            let caught = patterns
                .iter()
                .any(|p| p.discard && pattern_matches(&p.pattern, &d.tag));
            (discard || caught).then(|| TagRule {
                pattern: d.tag.clone(),
                discard,
            })
        })
        .collect();
    exact.sort_by(|a, b| a.pattern.cmp(&b.pattern));
    unsafe_tags.sort_by(|a, b| a.tag.cmp(&b.tag));
    let mut rules = exact;
    rules.extend(patterns);
    if !rules.iter().any(|r| r.discard) {
        rules.clear();
    }
    let policy = TrapPolicy::new(rules);
    if let Err(e) = policy.check() {
        // Agents would refuse it; keep every trap (the aggregator still discards them).
        tracing::warn!(
            error = %e, max_rules = MAX_RULES, max_tag_len = MAX_PATTERN_LEN,
            "the discardtraps policy is too large to send to agents; they keep every trap and this aggregator discards them. Use fewer or shorter definition tags"
        );
        return (TrapPolicy::new(Vec::new()), unsafe_tags);
    }
    (policy, unsafe_tags)
}

/// [`compute`], logging what agents will drop and what is left to the aggregator.
pub fn compute_and_log(definitions: &Definitions, transforms: &Transforms) -> TrapPolicy {
    let (policy, unsafe_tags) = compute(definitions, transforms);
    for u in &unsafe_tags {
        tracing::info!(
            tag = %u.tag, rule = %u.rule,
            "discardtraps: agents keep these traps and this aggregator discards them, because the transformation rule could change their tag or clear alarms first"
        );
    }
    let dropped: Vec<&str> = policy.discarded().collect();
    tracing::info!(
        version = format_args!("{:016x}", policy.version),
        ?dropped,
        "trap drop policy for agents (discardtraps definitions)"
    );
    policy
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use weir_common::trap_policy::CompiledPolicy;

    use super::*;

    fn defs(text: &str) -> Definitions {
        Definitions::parse(Path::new("d.toml"), text).unwrap()
    }

    fn transforms(text: &str) -> Transforms {
        Transforms::parse(Path::new("t.toml"), text).unwrap()
    }

    const DEFS: &str = r#"
[[definition]]
tag = "SNMP_WARM_START"
dest = "discardtraps"

[[definition]]
tag = "SNMP_COLD_START"

[[definition]]
tag = "VENDOR_*_NOISE"
dest = "logonly"

[[definition]]
tag = "*_NOISE"
dest = "discardtraps"

[[definition]]
tag = "*_DOWN"
"#;

    /// The agent's decision must equal the aggregator's lookup for every tag it drops.
    fn agrees_with_lookup(d: &Definitions, policy: &TrapPolicy, tags: &[&str]) {
        let c = CompiledPolicy::compile(policy).unwrap();
        for tag in tags {
            if c.discards(tag) {
                let (def, _) = d.lookup(tag).expect("dropped tags have a definition");
                assert_eq!(def.dest, Dest::Discardtraps, "{tag}");
            }
        }
    }

    #[test]
    fn discardtraps_definitions_become_the_policy_with_lookup_precedence() {
        let d = defs(DEFS);
        let (p, unsafe_tags) = compute(&d, &Transforms::default());
        assert!(unsafe_tags.is_empty());
        let c = CompiledPolicy::compile(&p).unwrap();
        assert!(c.discards("SNMP_WARM_START"));
        assert!(c.discards("FAN_NOISE"));
        assert!(!c.discards("VENDOR_X_NOISE"), "an earlier pattern keeps it");
        assert!(!c.discards("SNMP_COLD_START"));
        assert!(!c.discards("PING_DOWN"));
        assert!(!c.discards("SOMETHING"));
        // `*_DOWN` comes after the last discarding pattern: not sent at all.
        assert!(p.rules.iter().all(|r| r.pattern != "*_DOWN"), "{p:?}");
        agrees_with_lookup(
            &d,
            &p,
            &[
                "SNMP_WARM_START",
                "FAN_NOISE",
                "VENDOR_X_NOISE",
                "SNMP_COLD_START",
                "_NOISE",
            ],
        );
    }

    #[test]
    fn an_exact_definition_that_keeps_beats_a_discarding_pattern() {
        let d = defs(
            "[[definition]]\ntag = \"*_START\"\ndest = \"discardtraps\"\n[[definition]]\ntag = \"SNMP_COLD_START\"\n",
        );
        let (p, _) = compute(&d, &Transforms::default());
        let c = CompiledPolicy::compile(&p).unwrap();
        assert!(c.discards("SNMP_WARM_START"));
        assert!(!c.discards("SNMP_COLD_START"));
        agrees_with_lookup(&d, &p, &["SNMP_WARM_START", "SNMP_COLD_START"]);
    }

    #[test]
    fn transforms_that_retag_or_close_keep_their_tags_at_the_aggregator() {
        let d = defs(DEFS);
        let t = transforms(
            r#"
[[transform]]
name = "retag-warm"
tag = "SNMP_WARM_*"
set_tag = "DEVICE_RESTART"

[[transform]]
name = "only-severity"
set_severity = "debug"

[[transform]]
name = "suppress-all"
suppress = true
"#,
        );
        let (p, unsafe_tags) = compute(&d, &t);
        assert_eq!(
            unsafe_tags,
            vec![
                Unsafe {
                    tag: "*_NOISE".into(),
                    rule: "retag-warm".into()
                },
                Unsafe {
                    tag: "SNMP_WARM_START".into(),
                    rule: "retag-warm".into()
                }
            ]
        );
        assert!(p.is_empty(), "{p:?}");
        assert!(p.rules.is_empty());

        // A literal tag condition that cannot match leaves the pattern safe.
        let t = transforms(
            "[[transform]]\nname = \"close\"\ntag = \"LINK_UP\"\nclose_existing = \"x\"\n",
        );
        let (p, unsafe_tags) = compute(&d, &t);
        assert!(unsafe_tags.is_empty(), "{unsafe_tags:?}");
        assert_eq!(
            p.discarded().collect::<Vec<_>>(),
            ["SNMP_WARM_START", "*_NOISE"]
        );
        // One that can match makes it unsafe.
        let t = transforms(
            "[[transform]]\nname = \"close\"\ntag = \"FAN_NOISE\"\nclose_existing = \"x\"\n",
        );
        let (p, unsafe_tags) = compute(&d, &t);
        assert_eq!(unsafe_tags.len(), 1);
        assert_eq!(unsafe_tags[0].tag, "*_NOISE");
        assert_eq!(p.discarded().collect::<Vec<_>>(), ["SNMP_WARM_START"]);
        // A rule without a tag condition that closes alarms makes every tag unsafe.
        let t = transforms("[[transform]]\nname = \"close\"\nclose_existing = \"x\"\n");
        let (p, unsafe_tags) = compute(&d, &t);
        assert_eq!(unsafe_tags.len(), 2);
        assert!(p.is_empty());
    }

    #[test]
    fn a_literal_tag_condition_a_pattern_matches_makes_both_unsafe() {
        let d = defs(
            "[[definition]]\ntag = \"A_NOISE\"\ndest = \"discardtraps\"\n[[definition]]\ntag = \"*_NOISE\"\ndest = \"discardtraps\"\n",
        );
        // The rule retags A_NOISE only, but a literal tag condition that a pattern matches
        // makes the pattern unsafe too (conservative: never drop what a rule might see).
        let t = transforms("[[transform]]\nname = \"r\"\ntag = \"A_NOISE\"\nset_tag = \"B\"\n");
        let (p, unsafe_tags) = compute(&d, &t);
        assert_eq!(unsafe_tags.len(), 2, "{unsafe_tags:?}");
        assert!(p.is_empty());
        let c = CompiledPolicy::compile(&p).unwrap();
        assert!(!c.discards("A_NOISE"));
        assert!(!c.discards("C_NOISE"));
    }

    #[test]
    fn shipped_definitions_drop_nothing() {
        let (p, _) = compute(&Definitions::defaults(), &Transforms::default());
        assert!(p.rules.is_empty());
        assert_eq!(p, TrapPolicy::new(Vec::new()));
    }
}
