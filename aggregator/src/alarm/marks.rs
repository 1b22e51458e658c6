//! Clear marks: clears remembered without their alarm (they arrived before their problem,
//! OpenNMS NMS-10473, or their alarm was removed), so a late, older problem does not open a
//! stale alarm.
//!
//! Anyone who can send events can send clears for keys that never had a problem, so the marks
//! are bounded twice: each is forgotten after `clear_memory`, and at most
//! `processing.max_clear_marks` are kept, the oldest evicted first (counted as
//! `weir_aggregator_dropped_total{reason="clear_mark_limit"}`). An evicted mark costs only
//! this: a late problem older than the forgotten clear opens an alarm an operator must clear.
//!
//! # Tables
//! - `alarm_clear_marks`: reduction key → postcard [`ClearMark`];
//! - `alarm_clear_mark_ages`: `(recorded_at µs, reduction key)` → `()`, the same marks oldest
//!   first, so eviction and expiry read only what they remove. Both are written together
//!   here and nowhere else.

use redb::{ReadableTable, ReadableTableMetadata, TableDefinition, WriteTransaction};

use super::persist::{dec, enc};
use super::state::ClearMark;

pub(super) const CLEAR_MARKS: TableDefinition<&str, &[u8]> =
    TableDefinition::new("alarm_clear_marks");
pub(super) const MARK_AGES: TableDefinition<(i64, &str), ()> =
    TableDefinition::new("alarm_clear_mark_ages");

/// Both mark tables, open in a write transaction.
pub(super) struct Marks<'t> {
    marks: redb::Table<'t, &'static str, &'static [u8]>,
    ages: redb::Table<'t, (i64, &'static str), ()>,
}

impl<'t> Marks<'t> {
    pub fn open(txn: &'t WriteTransaction) -> Result<Marks<'t>, redb::TableError> {
        Ok(Marks {
            marks: txn.open_table(CLEAR_MARKS)?,
            ages: txn.open_table(MARK_AGES)?,
        })
    }

    pub fn get(&self, key: &str) -> Result<Option<ClearMark>, redb::Error> {
        self.marks
            .get(key)?
            .map(|v| dec::<ClearMark>("clear mark", v.value()))
            .transpose()
    }

    pub fn len(&self) -> Result<u64, redb::StorageError> {
        self.marks.len()
    }

    /// Stores `mark` for `key`, replacing `old` (what [`Marks::get`] returned). When that adds
    /// a mark and `cap` are already kept, the oldest are evicted first; returns how many.
    pub fn put(
        &mut self,
        key: &str,
        old: Option<&ClearMark>,
        mark: &ClearMark,
        cap: u64,
    ) -> Result<u64, redb::Error> {
        let mut evicted = 0;
        match old {
            Some(o) if o == mark => return Ok(0),
            Some(o) => {
                self.ages.remove((o.recorded_at.as_microsecond(), key))?;
            }
            None => {
                while self.marks.len()? >= cap.max(1) {
                    let Some(oldest) = self.ages.pop_first()? else {
                        break;
                    };
                    let victim = oldest.0.value().1.to_string();
                    drop(oldest);
                    self.marks.remove(victim.as_str())?;
                    evicted += 1;
                }
            }
        }
        self.marks.insert(key, enc(mark).as_slice())?;
        self.ages
            .insert((mark.recorded_at.as_microsecond(), key), ())?;
        Ok(evicted)
    }

    /// Removes and returns the mark of `key` (its problem has arrived).
    pub fn take(&mut self, key: &str) -> Result<Option<ClearMark>, redb::Error> {
        let m = self
            .marks
            .remove(key)?
            .map(|v| dec::<ClearMark>("clear mark", v.value()))
            .transpose()?;
        if let Some(m) = &m {
            self.ages.remove((m.recorded_at.as_microsecond(), key))?;
        }
        Ok(m)
    }

    /// Forgets the marks recorded at or before `cutoff_us`; returns how many.
    pub fn forget_until(&mut self, cutoff_us: i64) -> Result<u64, redb::Error> {
        let mut old = Vec::new();
        for item in self.ages.range(..(cutoff_us.saturating_add(1), ""))? {
            let (k, _) = item?;
            let (at, key) = k.value();
            old.push((at, key.to_string()));
        }
        for (at, key) in &old {
            self.ages.remove((*at, key.as_str()))?;
            self.marks.remove(key.as_str())?;
        }
        Ok(old.len() as u64)
    }

    /// Builds `alarm_clear_mark_ages` from the marks (a store written before it existed).
    pub fn rebuild_ages(&mut self) -> Result<(), redb::Error> {
        self.ages.retain(|_, _| false)?;
        let mut all = Vec::new();
        for item in self.marks.iter()? {
            let (k, v) = item?;
            let m: ClearMark = dec("clear mark", v.value())?;
            all.push((m.recorded_at.as_microsecond(), k.value().to_string()));
        }
        for (at, key) in &all {
            self.ages.insert((*at, key.as_str()), ())?;
        }
        Ok(())
    }
}
