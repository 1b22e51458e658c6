//! The `[correlation]` section of the aggregator config, ready to be embedded in
//! `AggregatorConfig` (`#[serde(default)] pub correlation: CorrelationConfig`), and its
//! translation into [`EngineConfig`].

use std::path::{Path, PathBuf};

use serde::Deserialize;
use weir_common::config::{ConfigError, HumanDuration};

use super::EngineConfig;

/// Correlation settings.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorrelationConfig {
    /// Rule file (JSON as in seed 000, or TOML with `[[rules]]` / `[[aggregates]]`); none:
    /// correlation is off.
    #[serde(default)]
    pub rules: Option<PathBuf>,
    /// How long to wait for out-of-order events before correlating them in event-time order.
    /// Incidents are decided this much after their last event; events later than this still
    /// join their windows and the incident says "created late".
    #[serde(default = "d_lateness")]
    pub allowed_lateness: HumanDuration,
    /// Live groups (distinct group_by values with an open window) per rule; the least recently
    /// active are evicted beyond it and counted in
    /// `weir_aggregator_correlation_dropped_total{reason="group_evicted"}`.
    #[serde(default = "d_groups")]
    pub max_groups_per_rule: usize,
    /// Events waiting in the reorder buffer; beyond it the oldest are correlated early
    /// (`reason="reorder_overflow"`). Also the most `delayed_action` holds: beyond it the
    /// soonest-ending are released early (`reason="hold_overflow"`).
    #[serde(default = "d_pending")]
    pub max_pending_events: usize,
    /// Distinct aggregate keys per aggregate (throttle) rule (`reason="aggregate_evicted"`).
    #[serde(default = "d_pending")]
    pub max_aggregate_keys: usize,
    /// Open stateful synthetic incidents remembered (`reason="stateful_evicted"`).
    #[serde(default = "d_pending")]
    pub max_stateful: usize,
    /// Node of synthetic incidents whose rule sets none (seed 003's correlation node).
    #[serde(default = "d_node")]
    pub default_node: String,
    /// A site whose agents have all been disconnected this long is "unreachable": its
    /// incident inhibits the incidents of rules with `site_inhibit` (default) from that site.
    #[serde(default = "d_site_down")]
    pub site_unreachable_after: HumanDuration,
    /// How often the engine's state (open windows, holds, outages) is saved into the store,
    /// so a restart keeps open windows; it is also saved at shutdown.
    #[serde(default = "d_snapshot")]
    pub snapshot_interval: HumanDuration,
    /// Committed groups of events waiting for the engine. When full, the store writer waits
    /// up to `queue_wait` for room, then counts the events it could not hand over in
    /// `weir_aggregator_correlation_dropped_total{reason="queue_full"}` (they stay stored).
    #[serde(default = "d_queue")]
    pub queue_batches: usize,
    /// The longest the store writer waits for room in the queue per commit.
    #[serde(default = "d_queue_wait")]
    pub queue_wait: HumanDuration,
}

fn d_lateness() -> HumanDuration {
    HumanDuration::secs(10)
}
fn d_groups() -> usize {
    10_000
}
fn d_pending() -> usize {
    100_000
}
fn d_node() -> String {
    "global".into()
}
fn d_site_down() -> HumanDuration {
    HumanDuration::secs(120)
}
fn d_snapshot() -> HumanDuration {
    HumanDuration::secs(30)
}
fn d_queue() -> usize {
    1024
}
fn d_queue_wait() -> HumanDuration {
    HumanDuration::secs(1)
}

impl Default for CorrelationConfig {
    fn default() -> Self {
        CorrelationConfig {
            rules: None,
            allowed_lateness: d_lateness(),
            max_groups_per_rule: d_groups(),
            max_pending_events: d_pending(),
            max_aggregate_keys: d_pending(),
            max_stateful: d_pending(),
            default_node: d_node(),
            site_unreachable_after: d_site_down(),
            snapshot_interval: d_snapshot(),
            queue_batches: d_queue(),
            queue_wait: d_queue_wait(),
        }
    }
}

/// The commented example for `aggregator/src/config.rs::example()`.
pub const EXAMPLE: &str = r#"
[correlation]
# Rule file: JSON (seed 000's format) or TOML ([[rules]], [[aggregates]]). Omit to turn
# correlation off. Try a rule offline: weir-aggregator rules test RULES --events FILE.jsonl
# rules = "rules.json"
# Wait this long for out-of-order events before correlating in event-time order.
allowed_lateness = "10s"
# Live groups per rule; the least recently active are evicted (and counted) beyond it.
max_groups_per_rule = 10000
# Events waiting for reordering; beyond it the oldest are correlated early (counted).
max_pending_events = 100000
# Aggregate (throttle) keys per aggregate rule.
max_aggregate_keys = 100000
# Open stateful synthetic incidents remembered.
max_stateful = 100000
# Node of synthetic incidents whose rule sets none.
default_node = "global"
# A site with no connected agent for this long is unreachable and can inhibit its incidents.
site_unreachable_after = "2m"
# Save open windows into the store this often (and at shutdown), so a restart keeps them.
snapshot_interval = "30s"
# Committed groups of events waiting for the engine; when full, ingest waits up to
# queue_wait, then counts what it could not hand over (reason="queue_full").
queue_batches = 1024
queue_wait = "1s"
"#;

impl CorrelationConfig {
    /// Checks limits; `path` is the config file, for the error.
    pub fn check(&self, path: &Path) -> Result<(), ConfigError> {
        let bad = |field: &str, message: &str| ConfigError::Check {
            path: path.to_path_buf(),
            field: format!("correlation.{field}"),
            message: message.to_string(),
        };
        for (field, v) in [
            ("max_groups_per_rule", self.max_groups_per_rule),
            ("max_pending_events", self.max_pending_events),
            ("max_aggregate_keys", self.max_aggregate_keys),
            ("max_stateful", self.max_stateful),
            ("queue_batches", self.queue_batches),
        ] {
            if v == 0 {
                return Err(bad(field, "must be at least 1"));
            }
        }
        if self.allowed_lateness.0 > std::time::Duration::from_secs(24 * 3600) {
            return Err(bad(
                "allowed_lateness",
                "at most 1d: incidents are decided this long after their events",
            ));
        }
        if self.snapshot_interval.0.is_zero() || self.site_unreachable_after.0.is_zero() {
            let field = if self.snapshot_interval.0.is_zero() {
                "snapshot_interval"
            } else {
                "site_unreachable_after"
            };
            return Err(bad(field, "must be longer than zero"));
        }
        if self.default_node.trim().is_empty() {
            return Err(bad("default_node", "must not be empty"));
        }
        Ok(())
    }

    pub fn engine(&self) -> EngineConfig {
        EngineConfig {
            allowed_lateness: self.allowed_lateness.0,
            max_groups_per_rule: self.max_groups_per_rule,
            max_pending: self.max_pending_events,
            max_aggregate_keys: self.max_aggregate_keys,
            max_stateful: self.max_stateful,
            default_node: self.default_node.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Wrapper {
        correlation: CorrelationConfig,
    }

    #[test]
    fn example_parses_to_the_defaults_and_checks_name_the_field() {
        let w: Wrapper = toml::from_str(EXAMPLE).unwrap();
        assert_eq!(w.correlation, CorrelationConfig::default());
        assert_eq!(w.correlation.engine(), EngineConfig::default());
        let c = CorrelationConfig {
            max_groups_per_rule: 0,
            ..CorrelationConfig::default()
        };
        let e = c.check(Path::new("agg.toml")).unwrap_err().to_string();
        assert_eq!(
            e,
            "agg.toml: correlation.max_groups_per_rule: must be at least 1"
        );
        assert!(toml::from_str::<Wrapper>("[correlation]\nlateness = \"1s\"\n").is_err());
    }
}
