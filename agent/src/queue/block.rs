//! The queue's on-disk unit: a block of records, one redb entry per group commit (or per chunk
//! of one), and the small per-block summary that lets acks and evictions work without reading
//! whole blocks.
//!
//! A block value is `[version = 1]` then, per record, `[seq: u64 LE][len: u32 LE][record]`,
//! where `record` is the queue's record bytes (`[rank][received_at µs][postcard Record]`, see
//! [`super::Encoded`]). Sequences increase within a block. A summary value is
//! `[last seq: u64 LE][bytes: u64 LE][records of rank 0..5: u32 LE each]` and covers only the
//! block's live records (not evicted, not acknowledged).

use redb::{StorageError, Table};

use super::RANKS;

const VERSION: u8 = 1;
/// Bytes before each record in a block: its sequence and its length.
pub(crate) const ENTRY_HEADER: usize = 12;
const SUMMARY_LEN: usize = 16 + 4 * RANKS;

/// How records are cut into blocks. A group commit becomes one block unless it is larger: then
/// it is cut into blocks of at most `max_records` and (unless one record is larger) `max_bytes`
/// of stored block (records with their entry headers).
/// Small enough that a partial ack or an eviction rewrites little, large enough that the
/// per-entry cost of redb's B-tree is spread over hundreds of records.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BlockLimits {
    pub max_records: usize,
    pub max_bytes: usize,
    /// Most bytes of blocks an append's evictions hold in memory before writing them back
    /// (each changed block is otherwise rewritten once, at the end of the transaction).
    pub max_dirty_bytes: usize,
}

impl Default for BlockLimits {
    fn default() -> Self {
        BlockLimits {
            max_records: 1024,
            // A full block and redb's leaf framing fit one 256 KiB page. At exactly 256 KiB of
            // records (plus their entry headers) each full block took a 512 KiB page, which
            // redb zero-fills and writes: ~15% of the agent's instructions per line.
            max_bytes: (256 << 10) - 1024,
            max_dirty_bytes: 4 << 20,
        }
    }
}

/// What a block holds, in its live records.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Summary {
    /// Sequence of the block's last live record.
    pub last: u64,
    /// Logical bytes (record lengths) of its live records.
    pub bytes: u64,
    /// Live records per severity rank.
    pub counts: [u32; RANKS],
}

impl Summary {
    pub fn of<B: AsRef<[u8]>>(records: &[(u64, B)]) -> Summary {
        let mut s = Summary::default();
        for (seq, rec) in records {
            s.add(*seq, rec.as_ref());
        }
        s
    }

    pub fn add(&mut self, seq: u64, rec: &[u8]) {
        self.last = self.last.max(seq);
        self.bytes += rec.len() as u64;
        self.counts[rank_of(rec)] += 1;
    }

    pub fn records(&self) -> u64 {
        self.counts.iter().map(|&c| u64::from(c)).sum()
    }

    pub fn encode(&self) -> [u8; SUMMARY_LEN] {
        let mut out = [0u8; SUMMARY_LEN];
        out[..8].copy_from_slice(&self.last.to_le_bytes());
        out[8..16].copy_from_slice(&self.bytes.to_le_bytes());
        for (r, c) in self.counts.iter().enumerate() {
            out[16 + 4 * r..20 + 4 * r].copy_from_slice(&c.to_le_bytes());
        }
        out
    }

    pub fn decode(b: &[u8]) -> Option<Summary> {
        if b.len() != SUMMARY_LEN {
            return None;
        }
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        let mut counts = [0u32; RANKS];
        for (r, c) in counts.iter_mut().enumerate() {
            *c = u32::from_le_bytes(b[16 + 4 * r..20 + 4 * r].try_into().expect("4 bytes"));
        }
        Some(Summary {
            last: u64_at(0),
            bytes: u64_at(8),
            counts,
        })
    }
}

/// A record's severity rank (its first byte), folded into range for a damaged record.
pub(crate) fn rank_of(rec: &[u8]) -> usize {
    rec.first().copied().unwrap_or(0) as usize % RANKS
}

/// Writes `records` (in increasing sequence order, at least one) as one block keyed by the first
/// sequence, with its summary. Written in place in redb's page: no intermediate buffer.
pub(crate) fn put<B: AsRef<[u8]>>(
    blocks: &mut Table<u64, &[u8]>,
    index: &mut Table<u64, &[u8]>,
    records: &[(u64, B)],
) -> Result<(), StorageError> {
    let Some((key, _)) = records.first() else {
        return Ok(());
    };
    let len = 1 + records
        .iter()
        .map(|(_, r)| ENTRY_HEADER + r.as_ref().len())
        .sum::<usize>();
    {
        let mut guard = blocks.insert_reserve(*key, len)?;
        let buf: &mut [u8] = guard.as_mut();
        buf[0] = VERSION;
        let mut at = 1;
        for (seq, rec) in records {
            let rec = rec.as_ref();
            buf[at..at + 8].copy_from_slice(&seq.to_le_bytes());
            // A record is at most the queue's byte limit, which redb's 3 GiB value bound
            // already keeps under u32::MAX.
            buf[at + 8..at + 12].copy_from_slice(&(rec.len() as u32).to_le_bytes());
            buf[at + 12..at + 12 + rec.len()].copy_from_slice(rec);
            at += ENTRY_HEADER + rec.len();
        }
    }
    index.insert(*key, Summary::of(records).encode().as_slice())?;
    Ok(())
}

/// A block that is not in the format above (only a bug or an edited file makes one: redb
/// checksums its pages).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Malformed {
    pub at: usize,
}

/// The records of a block, `(seq, record bytes)`, in order. Never panics on any input: a
/// malformed block yields one `Err` and ends.
pub(crate) fn records(block: &[u8]) -> Records<'_> {
    match block.first() {
        Some(&VERSION) => Records { block, at: 1 },
        _ => Records {
            block,
            at: usize::MAX,
        },
    }
}

pub(crate) struct Records<'a> {
    block: &'a [u8],
    /// Offset of the next entry; `usize::MAX` for "report malformed at 0", past the end when
    /// done.
    at: usize,
}

impl<'a> Iterator for Records<'a> {
    type Item = Result<(u64, &'a [u8]), Malformed>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.at == usize::MAX {
            self.at = self.block.len() + 1;
            return Some(Err(Malformed { at: 0 }));
        }
        if self.at >= self.block.len() {
            return None;
        }
        let at = self.at;
        let entry = (|| {
            let header = self.block.get(at..at + ENTRY_HEADER)?;
            let seq = u64::from_le_bytes(header[..8].try_into().ok()?);
            let len = u32::from_le_bytes(header[8..].try_into().ok()?) as usize;
            let start = at + ENTRY_HEADER;
            let rec = self.block.get(start..start.checked_add(len)?)?;
            Some((seq, rec, start + len))
        })();
        match entry {
            Some((seq, rec, next)) => {
                self.at = next;
                Some(Ok((seq, rec)))
            }
            None => {
                self.at = self.block.len() + 1;
                Some(Err(Malformed { at }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::{Database, ReadableTable, TableDefinition};

    const B: TableDefinition<u64, &[u8]> = TableDefinition::new("b");
    const I: TableDefinition<u64, &[u8]> = TableDefinition::new("i");

    #[test]
    fn put_then_read_back_with_summary() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::create(dir.path().join("b.redb")).unwrap();
        let recs: Vec<(u64, Vec<u8>)> = vec![
            (10, vec![2, 1, 2, 3]),
            (11, vec![0]),
            (14, vec![2; 300]),
            (15, vec![]),
        ];
        let txn = db.begin_write().unwrap();
        {
            let mut b = txn.open_table(B).unwrap();
            let mut i = txn.open_table(I).unwrap();
            put(&mut b, &mut i, &recs).unwrap();
            let v = b.get(10).unwrap().unwrap();
            let got: Vec<(u64, Vec<u8>)> = records(v.value())
                .map(|r| r.map(|(s, b)| (s, b.to_vec())))
                .collect::<Result<_, _>>()
                .unwrap();
            assert_eq!(got, recs);
            let s = Summary::decode(i.get(10).unwrap().unwrap().value()).unwrap();
            assert_eq!(s.last, 15);
            assert_eq!(s.bytes, 305);
            assert_eq!(s.counts, [2, 0, 2, 0, 0]);
            assert_eq!(s.records(), 4);
        }
        txn.commit().unwrap();
    }

    proptest::proptest! {
        /// Parsing any bytes ends without panicking, and a well-formed block parses exactly.
        #[test]
        fn parsing_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let n = records(&bytes).take(1000).count();
            proptest::prop_assert!(n <= bytes.len() + 1);
        }

        #[test]
        fn summary_round_trips(last: u64, bytes: u64, counts: [u32; RANKS]) {
            let s = Summary { last, bytes, counts };
            proptest::prop_assert_eq!(Summary::decode(&s.encode()), Some(s));
        }
    }
}
