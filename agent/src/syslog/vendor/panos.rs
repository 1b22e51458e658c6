//! Palo Alto PAN-OS CSV logs: `FUTURE,receive time,serial,TYPE,subtype,...`.
//!
//! Tag: `PAN_<TYPE>` (`PAN_TRAFFIC`, `PAN_THREAT`, `PAN_SYSTEM`, `PAN_CONFIG`, and any other
//! type PAN-OS sends, e.g. `PAN_GLOBALPROTECT`). Severity: the THREAT and SYSTEM severity
//! column. The key columns (PAN-OS 8-11 field order) become `pan.*` fields.

use super::{Header, VendorFields, csv_fields, machine_tag, severity_word};

/// Column number and field name.
type Columns = &'static [(usize, &'static str)];

/// Columns shared by TRAFFIC and THREAT records.
const SESSION: Columns = &[
    (7, "src_ip"),
    (8, "dst_ip"),
    (9, "nat_src_ip"),
    (10, "nat_dst_ip"),
    (11, "rule"),
    (12, "src_user"),
    (13, "dst_user"),
    (14, "app"),
    (15, "vsys"),
    (16, "from_zone"),
    (17, "to_zone"),
    (18, "inbound_if"),
    (19, "outbound_if"),
    (22, "session_id"),
    (24, "src_port"),
    (25, "dst_port"),
    (29, "proto"),
    (30, "action"),
];
const TRAFFIC: Columns = &[
    (31, "bytes"),
    (32, "bytes_sent"),
    (33, "bytes_received"),
    (34, "packets"),
    (36, "elapsed"),
    (37, "category"),
];
const THREAT: Columns = &[
    (31, "misc"),
    (32, "threat_id"),
    (33, "category"),
    (34, "severity"),
    (35, "direction"),
];
const SYSTEM: Columns = &[
    (7, "vsys"),
    (8, "event_id"),
    (9, "object"),
    (12, "module"),
    (13, "severity"),
    (14, "description"),
];
const CONFIG: Columns = &[
    (7, "host"),
    (8, "vsys"),
    (9, "command"),
    (10, "admin"),
    (11, "client"),
    (12, "result"),
    (13, "path"),
];

pub(super) fn parse(h: &Header<'_>) -> Option<VendorFields> {
    let csv = find_start(h.body).or_else(|| find_start(h.text))?;
    let f = csv_fields(csv);
    let col = |i: usize| f.get(i).map_or("", |c| c.as_ref());
    let kind = col(3);
    if kind.is_empty() || !kind.bytes().all(|b| b.is_ascii_uppercase() || b == b'_') {
        return None;
    }
    let mut v = VendorFields::new("panos");
    v.tag = Some(machine_tag(&["pan", kind]));
    v.field("pan", "type", kind);
    v.field("pan", "subtype", col(4));
    v.field("pan", "serial", col(2));
    let (columns, severity_col): (&[Columns], Option<usize>) = match kind {
        "TRAFFIC" => (&[SESSION, TRAFFIC], None),
        "THREAT" => (&[SESSION, THREAT], Some(34)),
        "SYSTEM" => (&[SYSTEM], Some(13)),
        "CONFIG" => (&[CONFIG], None),
        _ => (&[], None),
    };
    for &(i, name) in columns.iter().copied().flatten() {
        v.field("pan", name, col(i));
    }
    v.severity = severity_col.and_then(|i| severity_word(col(i)));
    if kind == "SYSTEM" {
        v.hostname = Some(col(22)).filter(|n| !n.is_empty()).map(str::to_string);
    }
    Some(v)
}

/// The CSV record in `s`: at its start, or after a header of up to six words that no syslog
/// parser took (e.g. `May 00 00:00:00 fw01 1,2020/...`).
fn find_start(s: &str) -> Option<&str> {
    // Every line meets this parser: a line without a comma cannot hold a record, and one
    // SIMD scan says so, where the word loop below walked the whole line (twice per line).
    memchr::memchr(b',', s.as_bytes())?;
    let mut at = s;
    for _ in 0..7 {
        if is_record(at) {
            return Some(at);
        }
        at = at[memchr::memchr(b' ', at.as_bytes())? + 1..].trim_start_matches(' ');
    }
    None
}

/// `<digits>,YYYY/MM/DD` (the future-use column, then the receive time).
fn is_record(s: &str) -> bool {
    let b = s.as_bytes();
    let digits = b.iter().take_while(|c| c.is_ascii_digit()).count();
    let d = |i: usize| b.get(digits + i).is_some_and(u8::is_ascii_digit);
    (1..=3).contains(&digits)
        && b.get(digits) == Some(&b',')
        && d(1)
        && d(2)
        && d(3)
        && d(4)
        && b.get(digits + 5) == Some(&b'/')
}
