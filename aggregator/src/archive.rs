//! The cold archive: events aged out of the hot store, one compressed JSON Lines file per day.
//!
//! # Format
//! `DIR/events-YYYY-MM-DD.jsonl.gz`, the day being the event time's UTC date. Each line is one
//! event as `GET /api/v1/events/{id}` shows it ([`EventView`]). Each retention transaction
//! appends one gzip member per day it touches; a file of several members is a valid gzip file
//! (`zcat` and any multi-member reader read it whole).
//!
//! # Guarantees
//! Retention writes and fsyncs the archive before the transaction that deletes the events
//! commits. A crash between the two leaves the events in the store and in the archive, and the
//! next run archives them again: the archive can hold **duplicates** (same `id`), never lose an
//! event. Readers that need uniqueness deduplicate on `id`.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use flate2::Compression;
use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;
use jiff::Timestamp;
use jiff::civil::Date;
use jiff::tz::TimeZone;

use crate::api::EventView;
use crate::query::EventFilter;
use crate::store::StoredEvent;
use weir_common::Event;

const PREFIX: &str = "events-";
const SUFFIX: &str = ".jsonl.gz";

fn day_of(t: Timestamp) -> Date {
    t.to_zoned(TimeZone::UTC).date()
}

pub fn file_name(day: Date) -> String {
    format!("{PREFIX}{day}{SUFFIX}")
}

/// Appends events to their days' files and fsyncs them (and the directory, for new files).
pub fn append(dir: &Path, events: &[StoredEvent]) -> io::Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    std::fs::create_dir_all(dir)?;
    let mut days: BTreeMap<Date, Vec<u8>> = BTreeMap::new();
    for s in events {
        let buf = days.entry(day_of(s.event.event_time)).or_default();
        serde_json::to_writer(&mut *buf, &EventView::from(s.clone()))?;
        buf.push(b'\n');
    }
    let mut created = false;
    for (day, lines) in days {
        let path = dir.join(file_name(day));
        created |= !path.exists();
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let before = file.metadata()?.len();
        let written = (|| {
            let mut gz = GzEncoder::new(&file, Compression::default());
            gz.write_all(&lines)?;
            gz.finish()?;
            file.sync_all()
        })();
        if let Err(e) = written {
            // A half-written gzip member would make the rest of the day unreadable: cut it
            // off (the events are not deleted, so the next sweep archives them again).
            let _ = file.set_len(before);
            return Err(e);
        }
    }
    if created {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Rebuilds the stored form of an archived event, so [`EventFilter`] applies unchanged.
fn stored_from_view(v: EventView) -> Option<StoredEvent> {
    let (_, _, seq) = weir_common::parse_event_id(&v.id)?;
    let raw_payload = match (v.raw_payload, v.raw_payload_hex) {
        (Some(text), _) => Some(text.into_bytes()),
        (None, Some(h)) => hex::decode(h).ok(),
        (None, None) => None,
    };
    Some(StoredEvent {
        site: v.site,
        agent: v.agent,
        seq,
        stored_at: v.stored_at,
        correlated_incident: v.correlated_incident,
        event: Event {
            source: v.source,
            hostname: v.hostname,
            severity: v.severity,
            message: v.message,
            event_type: v.event_type,
            tag: v.tag,
            input: v.input,
            event_time: v.event_time,
            received_at: v.received_at,
            tags: v.tags,
            raw_payload,
            peer: v.peer,
            count: v.count,
            first_seen: v.first_seen,
            last_seen: v.last_seen,
        },
    })
}

/// The archive files in `dir` whose day overlaps `[from, to)`, oldest day first.
pub fn files(
    dir: &Path,
    from: Option<Timestamp>,
    to: Option<Timestamp>,
) -> io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(day) = name
            .to_str()
            .and_then(|n| n.strip_prefix(PREFIX))
            .and_then(|n| n.strip_suffix(SUFFIX))
            .and_then(|d| d.parse::<Date>().ok())
        else {
            continue;
        };
        let start = day.to_zoned(TimeZone::UTC).ok().map(|z| z.timestamp());
        let end = day
            .tomorrow()
            .ok()
            .and_then(|d| d.to_zoned(TimeZone::UTC).ok())
            .map(|z| z.timestamp());
        if let (Some(to), Some(start)) = (to, start)
            && start >= to
        {
            continue;
        }
        if let (Some(from), Some(end)) = (from, end)
            && end <= from
        {
            continue;
        }
        out.push((day, entry.path()));
    }
    out.sort();
    Ok(out.into_iter().map(|(_, p)| p).collect())
}

/// What [`query`] read.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct QueryOutcome {
    pub files: u64,
    pub matched: u64,
    /// Lines that are not archived events (reported, skipped).
    pub bad_lines: u64,
}

/// Writes every archived event matching `filter` to `out`, as its archived JSON line.
pub fn query(dir: &Path, filter: &EventFilter, out: &mut impl Write) -> io::Result<QueryOutcome> {
    let (from, to) = filter.time_range();
    let mut o = QueryOutcome::default();
    for path in files(dir, from, to)? {
        o.files += 1;
        let reader = BufReader::new(MultiGzDecoder::new(File::open(&path)?));
        for (n, line) in reader.lines().enumerate() {
            let line = line.map_err(|e| {
                io::Error::new(e.kind(), format!("{}: line {}: {e}", path.display(), n + 1))
            })?;
            let Some(stored) = serde_json::from_str::<EventView>(&line)
                .ok()
                .and_then(stored_from_view)
            else {
                o.bad_lines += 1;
                eprintln!(
                    "{}: line {}: not an archived event; skipped",
                    path.display(),
                    n + 1
                );
                continue;
            };
            if filter.matches(&stored) {
                o.matched += 1;
                out.write_all(line.as_bytes())?;
                out.write_all(b"\n")?;
            }
        }
    }
    Ok(o)
}
