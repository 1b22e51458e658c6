//! Hot-store retention: a periodic sweep deletes events stored longer ago than `[retention]
//! days` (seed 002: 30 days by default), archiving them first when `archive_dir` is set.
//!
//! It never blocks ingest for long: each transaction deletes at most `batch` events, and the
//! sweep pauses between transactions so the store writer (one write transaction at a time)
//! gets in. Age is time in the hot store (`stored_at`), not the device's event time: a device
//! with a wrong clock cannot make fresh events vanish, and a backlog delivered late is kept for
//! the full period. See [`crate::archive`] for the archive's crash guarantees.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use weir_common::config::HumanDuration;

use crate::store::{ExpireError, Expired, Store};

/// `[retention]` in the aggregator config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    /// Days an event stays in the hot store; 0 keeps events forever.
    #[serde(default = "d_days")]
    pub days: u32,
    /// Where aged events are archived (daily `events-YYYY-MM-DD.jsonl.gz`) before deletion;
    /// without it they are deleted unarchived.
    #[serde(default)]
    pub archive_dir: Option<PathBuf>,
    /// How often the sweep runs.
    #[serde(default = "d_interval")]
    pub interval: HumanDuration,
    /// Most events deleted per transaction (smaller: shorter pauses for ingest).
    #[serde(default = "d_batch")]
    pub batch: usize,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            days: d_days(),
            archive_dir: None,
            interval: d_interval(),
            batch: d_batch(),
        }
    }
}

fn d_days() -> u32 {
    30
}
fn d_interval() -> HumanDuration {
    HumanDuration::secs(3600)
}
fn d_batch() -> usize {
    5_000
}

/// Longest retention `days` accepted (100 years); 0 means forever.
pub const MAX_DAYS: u32 = 36_525;

/// Pause between two deletion transactions of one sweep.
const PAUSE: Duration = Duration::from_millis(20);

/// Deletes (and archives) every event stored before `now - days`, transaction by transaction.
/// Returns the totals; stops at the first failure (nothing of the failed batch is deleted).
pub fn sweep(store: &Store, cfg: &RetentionConfig, now: Timestamp) -> Result<Expired, ExpireError> {
    let mut total = Expired::default();
    if cfg.days == 0 {
        return Ok(total);
    }
    // `days` is bounded at load (MAX_DAYS), so this cannot leave jiff's range.
    let cutoff = now
        .checked_sub(SignedDuration::from_hours(i64::from(cfg.days) * 24))
        .unwrap_or(Timestamp::MIN);
    loop {
        let e = store.expire(cutoff, cfg.batch.max(1), |events| match &cfg.archive_dir {
            Some(dir) => crate::archive::append(dir, events),
            None => Ok(()),
        })?;
        metrics::counter!("weir_aggregator_retention_deleted_total", "reason" => "aged")
            .increment(e.deleted - e.unreadable);
        metrics::counter!("weir_aggregator_retention_deleted_total", "reason" => "unreadable")
            .increment(e.unreadable);
        if cfg.archive_dir.is_some() {
            metrics::counter!("weir_aggregator_retention_archived_total").increment(e.archived);
        }
        total.deleted += e.deleted;
        if cfg.archive_dir.is_some() {
            total.archived += e.archived;
        }
        total.unreadable += e.unreadable;
        if !e.more {
            return Ok(total);
        }
        std::thread::sleep(PAUSE);
    }
}

/// Runs [`sweep`] every `interval` (first at start) until `shutdown`.
pub async fn run(store: Arc<Store>, cfg: RetentionConfig, shutdown: CancellationToken) {
    if cfg.days == 0 {
        tracing::info!("retention disabled ([retention] days = 0): events are kept forever");
        return;
    }
    let mut tick = tokio::time::interval(cfg.interval.0);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let (store, c) = (store.clone(), cfg.clone());
        let done = tokio::task::spawn_blocking(move || sweep(&store, &c, Timestamp::now())).await;
        match done {
            Ok(Ok(e)) if e.deleted > 0 => tracing::info!(
                deleted = e.deleted,
                archived = e.archived,
                unreadable = e.unreadable,
                days = cfg.days,
                "retention: deleted events older than the hot-store period"
            ),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                let reason = match e {
                    ExpireError::Archive(_) => "archive",
                    ExpireError::Store(_) => "store",
                };
                metrics::counter!("weir_aggregator_retention_failures_total", "reason" => reason)
                    .increment(1);
                tracing::error!(
                    error = %e,
                    "retention sweep failed; nothing of the failed batch was deleted, retrying at the next interval (check the archive directory's space and permissions)"
                );
            }
            Err(e) => tracing::error!(error = %e, "retention sweep task failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::query::{EventFilter, EventParams};
    use crate::store::{AgentBatch, prepare};
    use weir_common::wire::{Batch, WireRecord};
    use weir_common::{Event, InputKind, Record, Severity};

    /// Commits events `seqs` stored at `stored_at` with event times one minute apart from it.
    fn fill(store: &Store, seqs: std::ops::RangeInclusive<u64>, stored_at: Timestamp) {
        let records: Vec<_> = seqs
            .clone()
            .map(|seq| {
                let t = stored_at + SignedDuration::from_mins(seq as i64);
                let mut e = Event::new(
                    InputKind::Syslog,
                    "syslog",
                    format!("h{}", seq % 3),
                    if seq % 2 == 0 {
                        Severity::Error
                    } else {
                        Severity::Info
                    },
                    format!("link down seq={seq}"),
                    t,
                );
                e.raw_payload = Some(if seq == 1 {
                    vec![0xff, 0x00]
                } else {
                    b"<3>raw".to_vec()
                });
                WireRecord {
                    seq,
                    payload: Record::Event(e).to_bytes(),
                }
            })
            .collect();
        let batch = Batch {
            first_seq: *seqs.start(),
            last_seq: *seqs.end(),
            records,
        };
        let prepared = prepare("paris", "gw-1", &batch, stored_at);
        store
            .commit(
                &[AgentBatch {
                    site: "paris",
                    name: "gw-1",
                    records: &prepared,
                }],
                stored_at,
            )
            .unwrap();
    }

    fn filter(f: impl FnOnce(&mut EventParams)) -> EventFilter {
        let mut p = EventParams::default();
        f(&mut p);
        EventFilter::parse(&p).unwrap()
    }

    #[test]
    fn sweep_deletes_aged_events_in_batches_and_archives_them_first() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("e.redb")).unwrap();
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let old = now - SignedDuration::from_hours(24 * 40);
        fill(&store, 1..=7, old);
        fill(&store, 8..=10, now - SignedDuration::from_hours(24));
        let archive = dir.path().join("archive");
        let cfg = RetentionConfig {
            archive_dir: Some(archive.clone()),
            batch: 3,
            ..RetentionConfig::default()
        };
        let e = sweep(&store, &cfg, now).unwrap();
        assert_eq!((e.deleted, e.archived, e.unreadable), (7, 7, 0));
        assert_eq!(store.len().unwrap(), 3);
        // Indexes and fleet ids went with the events.
        let page = store.search(&filter(|_| {}), 100, None).unwrap();
        assert_eq!(page.total, 3);
        let page = store
            .search(&filter(|p| p.q = Some("seq=".into())), 100, None)
            .unwrap();
        assert_eq!(page.total, 3);
        let page = store
            .search(&filter(|p| p.site = Some("paris".into())), 100, None)
            .unwrap();
        assert_eq!(page.total, 3);
        assert!(store.get_by_id("paris:gw-1:7").unwrap().is_none());
        assert!(store.get_by_id("paris:gw-1:8").unwrap().is_some());
        // A second sweep finds nothing more.
        assert_eq!(sweep(&store, &cfg, now).unwrap().deleted, 0);

        // Archive round trip: every aged event, filters applied to archived events.
        let mut out = Vec::new();
        let o = crate::archive::query(&archive, &filter(|_| {}), &mut out).unwrap();
        assert_eq!((o.matched, o.bad_lines), (7, 0));
        let lines: Vec<crate::api::EventView> = String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[0].id, "paris:gw-1:1");
        assert_eq!(lines[0].raw_payload_hex.as_deref(), Some("ff00"));
        assert_eq!(lines[6].message, "link down seq=7");
        let mut out = Vec::new();
        let o = crate::archive::query(
            &archive,
            &filter(|p| {
                p.severity = Some(">=error".into());
                p.hostname = Some("h1".into());
            }),
            &mut out,
        )
        .unwrap();
        assert_eq!(
            o.matched,
            1,
            "seq 4 only: {}",
            String::from_utf8_lossy(&out)
        );
        let mut out = Vec::new();
        let o = crate::archive::query(&archive, &filter(|p| p.q = Some("SEQ=5".into())), &mut out)
            .unwrap();
        assert_eq!(o.matched, 1);
        // A time range after the archived days skips every file.
        let mut out = Vec::new();
        let o = crate::archive::query(
            &archive,
            &filter(|p| p.from = Some("2027-01-15T00:00:00Z".into())),
            &mut out,
        )
        .unwrap();
        assert_eq!((o.files, o.matched), (0, 0));
    }

    #[test]
    fn failed_archive_deletes_nothing_and_disabled_retention_keeps_all() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("e.redb")).unwrap();
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        fill(&store, 1..=4, now - SignedDuration::from_hours(24 * 40));
        // The archive "directory" is a file: appending fails.
        let not_a_dir = dir.path().join("file");
        std::fs::write(&not_a_dir, b"x").unwrap();
        let cfg = RetentionConfig {
            archive_dir: Some(not_a_dir),
            ..RetentionConfig::default()
        };
        assert!(matches!(
            sweep(&store, &cfg, now),
            Err(ExpireError::Archive(_))
        ));
        assert_eq!(store.len().unwrap(), 4);
        let off = RetentionConfig {
            days: 0,
            ..RetentionConfig::default()
        };
        assert_eq!(sweep(&store, &off, now).unwrap().deleted, 0);
        assert_eq!(store.len().unwrap(), 4);
        // Without an archive they are deleted.
        let e = sweep(&store, &RetentionConfig::default(), now).unwrap();
        assert_eq!((e.deleted, e.archived), (4, 0));
        assert!(store.is_empty().unwrap());
    }
}
