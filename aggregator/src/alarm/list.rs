//! Listing alarms a page at a time, without loading them all.
//!
//! `GET /api/v1/alarms` shows alarms newest id first. A page is read by walking ids downwards
//! from the cursor and stopping at the `limit + 1`-th match, through one of two orders:
//! - `alarm_ids` (id → reduction key) when no status is asked for;
//! - `alarm_by_status` (`(status rank, id)` → reduction key) when one is: the NOC's usual
//!   views (open, acknowledged) then skip the other statuses without reading them.
//!
//! `alarm_by_status` is written with every alarm write ([`reindex`], [`unindex`]), in the same
//! transaction, so it is never out of step; [`super::persist::init`] builds it for a store
//! written before it existed.
//!
//! # The total
//! Exact when no filter is given (the table's length) or only `status` (the index range is
//! counted, keys only). With other filters it counts matches among at most [`COUNT_BUDGET`]
//! alarms examined, and says `total_exact: false` when it stopped there: an exact count would
//! read every alarm on every request.

use globset::GlobMatcher;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use weir_common::Severity;

use super::persist::{ALARM_IDS, ALARMS, dec};
use super::state::{Alarm, AlarmStatus};

/// `(status rank, alarm id)` → reduction key.
pub(crate) const BY_STATUS: TableDefinition<(u8, u64), &str> =
    TableDefinition::new("alarm_by_status");

/// Most alarms examined to count `total` when filters other than `status` are given.
pub const COUNT_BUDGET: u64 = 10_000;

fn rank(s: AlarmStatus) -> u8 {
    match s {
        AlarmStatus::Open => 0,
        AlarmStatus::Acknowledged => 1,
        AlarmStatus::Cleared => 2,
    }
}

/// Keeps `alarm_by_status` in step with a write of `a`, whose status was `before` (`None`:
/// a new alarm).
pub(super) fn reindex(
    idx: &mut redb::Table<'_, (u8, u64), &'static str>,
    before: Option<AlarmStatus>,
    a: &Alarm,
) -> Result<(), redb::StorageError> {
    if before == Some(a.status) {
        return Ok(());
    }
    if let Some(b) = before {
        idx.remove((rank(b), a.id))?;
    }
    idx.insert((rank(a.status), a.id), a.reduction_key.as_str())?;
    Ok(())
}

/// Removes a deleted alarm from `alarm_by_status`.
pub(super) fn unindex(
    idx: &mut redb::Table<'_, (u8, u64), &'static str>,
    a: &Alarm,
) -> Result<(), redb::StorageError> {
    idx.remove((rank(a.status), a.id))?;
    Ok(())
}

/// The reduction keys of cleared alarms (expiry reads only those).
pub(super) fn cleared_keys(
    idx: &impl ReadableTable<(u8, u64), &'static str>,
) -> Result<Vec<String>, redb::StorageError> {
    let r = rank(AlarmStatus::Cleared);
    let mut v = Vec::new();
    for item in idx.range((r, 0)..=(r, u64::MAX))? {
        v.push(item?.1.value().to_string());
    }
    Ok(v)
}

/// The filters of `GET /api/v1/alarms`.
#[derive(Debug, Default, Clone)]
pub struct AlarmFilter {
    pub status: Option<AlarmStatus>,
    /// At least this severity (the current one).
    pub severity: Option<Severity>,
    pub site: Option<String>,
    pub tag: Option<String>,
    /// Glob on the hostname.
    pub hostname: Option<GlobMatcher>,
}

impl AlarmFilter {
    pub fn matches(&self, a: &Alarm) -> bool {
        self.status.is_none_or(|s| a.status == s)
            && self.severity.is_none_or(|s| a.severity >= s)
            && self.site.as_deref().is_none_or(|s| a.site == s)
            && self
                .tag
                .as_deref()
                .is_none_or(|t| a.tag.as_deref() == Some(t))
            && self
                .hostname
                .as_ref()
                .is_none_or(|g| g.is_match(&a.hostname))
    }

    /// Filters that the walk's order does not answer by itself.
    fn needs_reading(&self) -> bool {
        self.severity.is_some()
            || self.site.is_some()
            || self.tag.is_some()
            || self.hostname.is_some()
    }
}

/// One page of alarms, newest id first.
#[derive(Debug, Default)]
pub struct AlarmPage {
    pub alarms: Vec<Alarm>,
    /// Alarms matching the filter in all (whatever the cursor); a lower bound when
    /// `total_exact` is false.
    pub total: u64,
    pub total_exact: bool,
    /// More matches follow this page.
    pub more: bool,
}

type Candidates = Box<dyn Iterator<Item = Result<(u64, String), redb::StorageError>>>;

/// Up to `limit` alarms matching `filter` with an id below `before` (all when `None`).
pub fn page(
    db: &Database,
    filter: &AlarmFilter,
    limit: usize,
    before: Option<u64>,
) -> Result<AlarmPage, redb::Error> {
    let txn = db.begin_read()?;
    let alarms = txn.open_table(ALARMS)?;
    let ids = txn.open_table(ALARM_IDS)?;
    let by_status = txn.open_table(BY_STATUS)?;
    let candidates = |upper: u64| -> Result<Candidates, redb::StorageError> {
        Ok(match filter.status {
            None => Box::new(
                ids.range(..upper)?
                    .rev()
                    .map(|r| r.map(|(k, v)| (k.value(), v.value().to_string()))),
            ),
            Some(s) => Box::new(
                by_status
                    .range((rank(s), 0)..(rank(s), upper))?
                    .rev()
                    .map(|r| r.map(|(k, v)| (k.value().1, v.value().to_string()))),
            ),
        })
    };
    let read = |key: &str| -> Result<Option<Alarm>, redb::Error> {
        alarms
            .get(key)?
            .map(|v| dec::<Alarm>("alarm", v.value()))
            .transpose()
    };

    let mut out = AlarmPage {
        total_exact: true,
        ..AlarmPage::default()
    };
    // The page: stop at the first match past it.
    let mut walk = candidates(before.unwrap_or(u64::MAX))?;
    let mut examined = 0u64;
    let mut matched = 0u64;
    for c in walk.by_ref() {
        let (_, key) = c?;
        examined += 1;
        let Some(a) = read(&key)? else { continue };
        if !filter.matches(&a) {
            continue;
        }
        matched += 1;
        if out.alarms.len() == limit {
            out.more = true;
            break;
        }
        out.alarms.push(a);
    }

    out.total = if !filter.needs_reading() && filter.status.is_none() {
        alarms.len()?
    } else if !filter.needs_reading() {
        // Status only: count index keys, reading no alarm.
        let r = rank(filter.status.unwrap_or(AlarmStatus::Open));
        let mut n = 0;
        for item in by_status.range((r, 0)..=(r, u64::MAX))? {
            item?;
            n += 1;
        }
        n
    } else if before.is_none() {
        // The walk started at the top: go on counting where it stopped.
        if out.more {
            for c in walk {
                if examined >= COUNT_BUDGET {
                    out.total_exact = false;
                    break;
                }
                let (_, key) = c?;
                examined += 1;
                if read(&key)?.is_some_and(|a| filter.matches(&a)) {
                    matched += 1;
                }
            }
        }
        matched
    } else {
        // A later page: count from the top, as the first page did.
        let mut n = 0;
        for (examined, c) in (0u64..).zip(candidates(u64::MAX)?) {
            if examined >= COUNT_BUDGET {
                out.total_exact = false;
                break;
            }
            let (_, key) = c?;
            if read(&key)?.is_some_and(|a| filter.matches(&a)) {
                n += 1;
            }
        }
        n
    };
    Ok(out)
}
