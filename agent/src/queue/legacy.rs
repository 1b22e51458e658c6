//! The queue format before blocks, kept only to upgrade a file written by an older agent: a site
//! gateway upgraded with events still queued must deliver each of them once.
//!
//! That format stored one entry per record in `records` (`u64` sequence → the record bytes, the
//! same bytes a block holds) and the same `meta` counters. [`migrate`] moves the records into
//! blocks oldest first, in durable transactions of at most [`CHUNK_RECORDS`] records and
//! [`CHUNK_BYTES`] bytes, each deleting what it moved: a crash between two leaves the oldest
//! records in blocks and the rest in `records`, with every sequence in exactly one place, and
//! the next open carries on. The empty table is
//! deleted at the end, so a migrated file costs nothing at later opens. The counters in `meta`
//! (`next_seq`, `bytes`, `count.<rank>`) mean the same in both formats and are kept.

use std::path::Path;

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition, TableHandle};

use super::block::BlockLimits;
use super::{BLOCKS, INDEX, QueueError, db_err, put_chunked};

/// The old per-record table.
pub(super) const RECORDS: TableDefinition<u64, &[u8]> = TableDefinition::new("records");

/// Most records and bytes moved per transaction: bound the memory and the size of one commit.
const CHUNK_RECORDS: usize = 64 * 1024;
const CHUNK_BYTES: usize = 8 << 20;

/// Moves every record of the old `records` table into blocks, keeping its sequence. Returns how
/// many were moved; 0 (and no write) for a file without that table.
pub(super) fn migrate(db: &Database, path: &Path, limits: BlockLimits) -> Result<u64, QueueError> {
    let exists = {
        let txn = db.begin_read().map_err(|e| db_err(path, e))?;
        txn.list_tables()
            .map_err(|e| db_err(path, e))?
            .any(|t| t.name() == RECORDS.name())
    };
    if !exists {
        return Ok(0);
    }
    let mut moved = 0;
    loop {
        let mut txn = db.begin_write().map_err(|e| db_err(path, e))?;
        txn.set_durability(Durability::Immediate)
            .map_err(|e| db_err(path, redb::Error::from(e)))?;
        let n = {
            let mut old = txn.open_table(RECORDS).map_err(|e| db_err(path, e))?;
            let mut chunk: Vec<(u64, Vec<u8>)> = Vec::new();
            let mut bytes = 0;
            for item in old.iter().map_err(|e| db_err(path, e))? {
                if chunk.len() >= CHUNK_RECORDS || bytes >= CHUNK_BYTES {
                    break;
                }
                let (k, v) = item.map_err(|e| db_err(path, e))?;
                bytes += v.value().len();
                chunk.push((k.value(), v.value().to_vec()));
            }
            if let Some(&(last, _)) = chunk.last() {
                old.retain_in(..=last, |_, _| false)
                    .map_err(|e| db_err(path, e))?;
                let mut blocks = txn.open_table(BLOCKS).map_err(|e| db_err(path, e))?;
                let mut index = txn.open_table(INDEX).map_err(|e| db_err(path, e))?;
                put_chunked(&mut blocks, &mut index, &chunk, limits)
                    .map_err(|e| db_err(path, e))?;
            }
            chunk.len()
        };
        if n == 0 {
            txn.delete_table(RECORDS).map_err(|e| db_err(path, e))?;
        }
        txn.commit().map_err(|e| db_err(path, e))?;
        moved += n as u64;
        if n == 0 {
            break;
        }
    }
    tracing::info!(
        queue = %path.display(), records = moved,
        "upgraded the queue file to the block format; every queued record kept its sequence"
    );
    Ok(moved)
}
