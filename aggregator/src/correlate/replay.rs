//! Events for offline replay (`weir-aggregator rules test RULES --events FILE.jsonl`): one JSON
//! object per line, either a seed 000 ingest body or an item of `GET /api/v1/events`, so an
//! operator can replay what the API returned or what a device would send.

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::Deserialize;
use weir_common::{Event, InputKind, Severity};

use super::EventIn;

/// One replay line. Seed 000's fields, plus the fleet's where present.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplayEvent {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    site: Option<String>,
    #[serde(default)]
    agent: Option<String>,
    #[serde(default)]
    source: Option<String>,
    hostname: String,
    severity: Severity,
    message: String,
    #[serde(default)]
    event_type: Option<String>,
    #[serde(default)]
    tag: Option<String>,
    #[serde(default)]
    input: Option<InputKind>,
    /// Event time; seed 000 calls it `timestamp`.
    #[serde(default, alias = "timestamp")]
    event_time: Option<Timestamp>,
    #[serde(default)]
    received_at: Option<Timestamp>,
    /// When the aggregator stored it: the replay clock, when present.
    #[serde(default)]
    stored_at: Option<Timestamp>,
    #[serde(default)]
    tags: BTreeMap<String, String>,
    #[serde(default)]
    peer: Option<String>,
    // API fields that do not matter to correlation.
    #[serde(default, rename = "correlated_incident")]
    _correlated_incident: Option<serde_json::Value>,
    #[serde(default, rename = "raw_payload")]
    _raw_payload: Option<serde_json::Value>,
    #[serde(default, rename = "raw_payload_hex")]
    _raw_payload_hex: Option<serde_json::Value>,
    /// First-stage dedup count: the record stands for this many events in a rule's `count`.
    #[serde(default)]
    count: Option<u64>,
    #[serde(default, rename = "first_seen")]
    _first_seen: Option<serde_json::Value>,
    #[serde(default, rename = "last_seen")]
    _last_seen: Option<serde_json::Value>,
}

/// Parses JSON lines into events and their arrival clock (`stored_at`, else `received_at`,
/// else the event time). Blank lines and lines starting with `#` are skipped. Errors name the
/// line.
pub fn parse_jsonl(text: &str) -> Result<Vec<(EventIn, Timestamp)>, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let r: ReplayEvent =
            serde_json::from_str(line).map_err(|e| format!("line {}: {e}", n + 1))?;
        let arrival = r
            .stored_at
            .or(r.received_at)
            .or(r.event_time)
            .ok_or_else(|| {
                format!(
                    "line {}: no time: give timestamp (or event_time, received_at, stored_at)",
                    n + 1
                )
            })?;
        let mut event = Event::new(
            r.input.unwrap_or(InputKind::Api),
            r.source.unwrap_or_else(|| "replay".into()),
            r.hostname,
            r.severity,
            r.message,
            r.received_at.unwrap_or(arrival),
        );
        event.event_time = r.event_time.unwrap_or(event.received_at);
        event.event_type = r.event_type;
        event.tag = r.tag;
        event.tags = r.tags;
        event.peer = r.peer;
        event.count = r.count.unwrap_or(1).max(1);
        out.push((
            EventIn {
                id: r.id.unwrap_or_else(|| format!("line-{}", n + 1)).into(),
                site: r.site.unwrap_or_else(|| "replay".into()),
                agent: r.agent.unwrap_or_else(|| "replay".into()),
                event,
            },
            arrival,
        ));
    }
    Ok(out)
}

/// What `rules test` prints after the decisions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    pub events: usize,
    pub incidents: usize,
    pub cleared: usize,
    pub suppressed: usize,
    pub inhibited: usize,
}

/// `weir-aggregator rules test`: loads a rule file and a JSON-lines event file, replays the
/// events through a fresh engine in file order, and returns every decision.
pub fn rules_test(
    rules: &std::path::Path,
    events: &std::path::Path,
    config: super::EngineConfig,
) -> anyhow::Result<(Vec<super::Decision>, Summary)> {
    use anyhow::Context;
    let set = super::RuleSet::load(rules)?;
    let text = std::fs::read_to_string(events)
        .with_context(|| format!("cannot read events file {}", events.display()))?;
    let evs = parse_jsonl(&text).map_err(|e| anyhow::anyhow!("{}: {e}", events.display()))?;
    let decisions = super::dry_run(set, config, evs.iter().map(|(e, t)| (e, *t)));
    let mut s = Summary {
        events: evs.len(),
        ..Summary::default()
    };
    for d in &decisions {
        use super::Decision as D;
        match d {
            D::OpenIncident(_) => s.incidents += 1,
            D::ClearIncident(_) => s.cleared += 1,
            D::SuppressEvent { .. } => s.suppressed += 1,
            D::Inhibited { .. } | D::SiteInhibited { .. } => s.inhibited += 1,
            _ => {}
        }
    }
    Ok((decisions, s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_000_bodies_and_api_items_parse_and_errors_name_the_line() {
        let text = r#"
# seed 000 ingest body
{"source": "my-application", "hostname": "app-prod-01", "severity": "critical", "event_type": "application_error", "message": "Database connection pool exhausted", "tags": { "environment": "production" }, "timestamp": "2026-02-24T14:37:00Z"}
{"id": "paris:a1:7", "site": "paris", "agent": "a1", "source": "syslog", "hostname": "db-1", "severity": "error", "message": "m", "event_type": null, "tag": "LINK_DOWN", "input": "syslog", "correlated_incident": null, "event_time": "2026-02-24T14:37:01Z", "received_at": "2026-02-24T14:37:02Z", "stored_at": "2026-02-24T14:37:03Z", "tags": {}, "raw_payload": "x", "raw_payload_hex": null, "peer": null, "count": 1, "first_seen": "2026-02-24T14:37:02Z", "last_seen": "2026-02-24T14:37:02Z"}
"#;
        let evs = parse_jsonl(text).unwrap();
        assert_eq!(evs.len(), 2);
        assert_eq!(&*evs[0].0.id, "line-3");
        assert_eq!(
            evs[0].1,
            "2026-02-24T14:37:00Z".parse::<Timestamp>().unwrap()
        );
        assert_eq!(evs[1].0.site, "paris");
        assert_eq!(evs[1].0.event.tag.as_deref(), Some("LINK_DOWN"));
        assert_eq!(
            evs[1].1,
            "2026-02-24T14:37:03Z".parse::<Timestamp>().unwrap()
        );
        let e = parse_jsonl("{\"hostname\": \"h\", \"severity\": \"dire\", \"message\": \"m\"}")
            .unwrap_err();
        assert!(e.starts_with("line 1:") && e.contains("dire"), "{e}");
    }

    #[test]
    fn rules_test_replays_files_through_a_fresh_engine() {
        let dir = tempfile::tempdir().unwrap();
        let rules = dir.path().join("rules.toml");
        std::fs::write(
            &rules,
            "[[rules]]\nname = \"Pair\"\nevents = [\"Down\"]\nwindow = 60\ncount = 2\n[rules.action]\nsuppress_individual = true\n",
        )
        .unwrap();
        let events = dir.path().join("events.jsonl");
        let line = |t: &str| {
            format!(
                r#"{{"hostname": "h", "severity": "error", "message": "m", "tag": "Down", "timestamp": "{t}"}}"#
            )
        };
        std::fs::write(
            &events,
            [
                line("2026-02-24T14:00:00Z"),
                line("2026-02-24T14:00:30Z"),
                line("2026-02-24T14:05:00Z"),
            ]
            .join("\n"),
        )
        .unwrap();
        let (decisions, summary) =
            rules_test(&rules, &events, crate::correlate::EngineConfig::default()).unwrap();
        assert_eq!(
            summary,
            Summary {
                events: 3,
                incidents: 1,
                cleared: 0,
                suppressed: 3,
                inhibited: 0
            }
        );
        assert!(decisions.iter().any(|d| matches!(d, crate::correlate::Decision::OpenIncident(i) if i.event_ids == ["line-1", "line-2"])));
        // A bad rule file names file, rule and field.
        std::fs::write(
            &rules,
            "[[rules]]\nname = \"Bad\"\nevents = [\"Down\"]\ngroup_by = [\"colour\"]\n",
        )
        .unwrap();
        let err = rules_test(&rules, &events, crate::correlate::EngineConfig::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("rules.toml: rule \"Bad\": group_by[0]: unknown field"),
            "{err}"
        );
    }
}
