//! Cisco IOS, IOS-XE, NX-OS and IOS-XR: the header no RFC fits, and the `%FAC-SEV-MNEMONIC`.
//!
//! After the PRI (or the relay's RFC 3164 header) come, each ending in a colon and all
//! optional: sequence numbers (`000123:`, two on IOS-XE), the device name, an IOS-XR location
//! (`RP/0/RP0/CPU0:`), `[syslog@9 s_sn="1"]`, the device's timestamp (`*` = clock never set,
//! `.` = sync lost; optional year, milliseconds and zone word such as `UTC`, `CEST`,
//! `UTC+07:30`), an IOS-XR process (`ipv4_acl_mgr[310]:`), then `%FAC-SEV-MNEMONIC: text`
//! (IOS-XR: `%FAC-SUB-SEV-MNEMONIC : text`). Also the XML form `<ios-log-msg>`.
//!
//! The line is claimed when it has a mnemonic, the XML form, or a Cisco header with a device
//! timestamp (e.g. `NTP Core (NOTICE): ...`). Tag: `CISCO_<FAC>_<MNEMONIC>`; severity: the
//! mnemonic's; fields `cisco.facility`, `cisco.severity`, `cisco.mnemonic`, `cisco.sequence`,
//! `cisco.message_count`, `cisco.timezone`, `cisco.location`, `cisco.process`,
//! `cisco.clock_unsynced`, `cisco.clock_sync_lost`. An unset clock's time is not used.

use jiff::Timestamp;
use jiff::tz::{Offset, TimeZone};
use weir_common::Severity;

use super::{Header, VendorFields, machine_tag};
use crate::syslog::parse::civil;

/// Most header pieces looked at before giving up (bounds the work on hostile input).
const MAX_PIECES: usize = 8;

pub(super) fn parse(h: &Header<'_>) -> Option<VendorFields> {
    // Cheap first: a Cisco line has a `%` mnemonic, or a header starting with a digit, colon,
    // `*` or `.` (the XML form comes after a sequence number). No allocation.
    // `Apr 30 15:10:58: %DOT1X-5-FAIL: ...`: RFC 3164 parsers take the mnemonic for the host.
    let mnemonic_as_host = h.hostname.is_some_and(|n| n.starts_with('%'));
    let body = if mnemonic_as_host {
        h.from_host
    } else {
        h.body
    };
    // memchr's SIMD search: `str::contains` walked the line a word at a time (~240
    // instructions on a 200-byte line, for every line).
    let has_percent = memchr::memchr(b'%', body.as_bytes()).is_some();
    let first = body.as_bytes().first().copied().unwrap_or(b' ');
    if !has_percent && !matches!(first, b'0'..=b'9' | b':' | b'*' | b'.') {
        return None;
    }
    let mut head = header(body, h.text.len() != body.len() || h.hostname.is_some());
    let mut mnemonic = head.rest.strip_prefix('%').and_then(mnemonic);
    if mnemonic.is_none() && has_percent {
        // Behind a header nobody could parse (relays that prepend their own): the first
        // word-initial `%FAC-SEV-MNEMONIC:` is the message start.
        if let Some(at) = find_mnemonic(body) {
            head = Head {
                rest: &body[at..],
                ..Head::default()
            };
            mnemonic = self::mnemonic(&body[at + 1..]);
        }
    }
    // IOS-XE wraps data-plane messages: `%IOSXE-6-PLATFORM: R0/0: cpp_cp: ... %FW-6-DROP_PKT: ..`.
    if let Some((m, text)) = mnemonic
        && m.mnemonic == "PLATFORM"
        && let Some(inner) = text
            .find('%')
            .and_then(|at| self::mnemonic(&text[at + 1..]))
    {
        mnemonic = Some(inner);
    }
    let xml = match mnemonic {
        None => ios_xml(head.rest),
        Some(_) => None,
    };
    // Without a mnemonic, only a Cisco-style header (sequence or leading colon, and a device
    // timestamp) makes the line Cisco's.
    if mnemonic.is_none() && xml.is_none() && !(head.time.is_some() && head.cisco_start) {
        return None;
    }
    let mut v = VendorFields::new("cisco");
    v.replace_hostname = mnemonic_as_host;
    if let Some(m) = mnemonic.map(|m| m.0).or(xml.map(|x| x.0)) {
        v.tag = Some(machine_tag(&["cisco", m.facility, m.mnemonic]));
        v.severity = Some(Severity::from_syslog(m.severity));
        v.field("cisco", "facility", m.facility);
        v.field("cisco", "severity", &m.severity.to_string());
        v.field("cisco", "mnemonic", m.mnemonic);
    }
    if let Some(seq) = head.seq_last {
        v.field("cisco", "sequence", seq);
        v.field("cisco", "message_count", head.seq_first.unwrap_or(seq));
    }
    if let Some(loc) = head.location {
        v.field("cisco", "location", loc);
    }
    if let Some(p) = head.process {
        v.field("cisco", "process", p);
    }
    v.hostname = head.host.map(str::to_string);
    let xml_time = xml
        .and_then(|x| x.1)
        .and_then(timestamp)
        .filter(|(_, rest)| rest.is_empty());
    if let Some(t) = head.time.or(xml_time.map(|(t, _)| t)) {
        if let Some(z) = t.zone {
            v.field("cisco", "timezone", z);
        }
        match t.sync {
            Sync::Unset => v.field("cisco", "clock_unsynced", "true"),
            Sync::Lost => v.field("cisco", "clock_sync_lost", "true"),
            Sync::Ok => {}
        }
        // A clock that was never set counts from boot: its dates mean nothing.
        if t.sync != Sync::Unset {
            v.event_time = t.instant(h.tz, h.received_at);
        }
    }
    // Keep the familiar `%FAC-SEV-MNEMONIC: text` (or the text after the header), without the
    // sequence/host/time prefix, which is now in fields.
    if mnemonic.is_some() || head.rest.len() != body.len() {
        v.message = Some(head.rest.to_string());
    }
    Some(v)
}

/// The Cisco prefix pieces, and the rest of the line after them.
#[derive(Debug, Default)]
struct Head<'a> {
    seq_first: Option<&'a str>,
    seq_last: Option<&'a str>,
    host: Option<&'a str>,
    location: Option<&'a str>,
    process: Option<&'a str>,
    time: Option<Time<'a>>,
    /// Began with a sequence number or an empty field (`<189>: ...`), as only Cisco does.
    cisco_start: bool,
    rest: &'a str,
}

/// Walks the colon-terminated pieces. `had_header`: a relay's syslog header came first, so a
/// bare word is not the device name.
fn header(body: &str, had_header: bool) -> Head<'_> {
    let mut head = Head {
        rest: body,
        ..Head::default()
    };
    let mut rest = body;
    for i in 0..MAX_PIECES {
        rest = rest.trim_start_matches(' ');
        if rest.starts_with('%') || rest.starts_with('<') {
            break;
        }
        if head.time.is_none()
            && let Some((t, after)) = timestamp(rest)
            && let Some(after) = after.strip_prefix(':')
        {
            head.time = Some(t);
            rest = after;
            continue;
        }
        let Some(colon) = rest.find(':') else { break };
        let piece = &rest[..colon];
        let after = &rest[colon + 1..];
        if piece.is_empty() {
            head.cisco_start |= i == 0;
        } else if piece.bytes().all(|b| b.is_ascii_digit()) {
            head.seq_first.get_or_insert(piece);
            head.seq_last = Some(piece);
            head.cisco_start |= i == 0;
        } else if piece.starts_with('[') && piece.ends_with(']') {
            // `[syslog@9 s_sn="1"]`: Cisco's structured data; the sequence is already known.
        } else if piece.starts_with('[') {
            // Structured data with a colon inside: skip to its end.
            let Some(end) = rest.find("]:") else { break };
            rest = &rest[end + 2..];
            continue;
        } else if piece.contains('/') && !piece.contains(' ') && head.time.is_none() {
            head.location = Some(piece);
        } else if head.time.is_some()
            && piece.ends_with(']')
            && piece.find('[').is_some_and(|b| b > 0)
            && !piece.contains(' ')
        {
            head.process = Some(piece);
        } else if head.host.is_none()
            && head.time.is_none()
            && (!had_header || head.cisco_start)
            && !piece.contains(' ')
            && piece.len() <= 255
            && piece
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            head.host = Some(piece);
        } else {
            break;
        }
        rest = after;
        head.rest = rest.trim_start_matches(' ');
    }
    head.rest = rest.trim_start_matches(' ');
    head
}

/// Where the first `%FAC-SEV-MNEMONIC:` that starts a word is (looks at most 8 `%`s).
fn find_mnemonic(s: &str) -> Option<usize> {
    s.match_indices('%')
        .take(8)
        .map(|(at, _)| at)
        .find(|&at| (at == 0 || s.as_bytes()[at - 1] == b' ') && mnemonic(&s[at + 1..]).is_some())
}

/// The parts of `%FAC-SEV-MNEMONIC`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Mnemonic<'a> {
    facility: &'a str,
    severity: u8,
    mnemonic: &'a str,
}

/// `FAC[-SUB]-SEV-MNEMONIC` up to `:` (IOS-XR puts a space before it), and the text after.
fn mnemonic(s: &str) -> Option<(Mnemonic<'_>, &str)> {
    let end = s.find([':', ' '])?;
    let token = &s[..end];
    let after = s[end..].trim_start_matches(' ').strip_prefix(':')?;
    let (rest, mnem) = token.rsplit_once('-')?;
    let (facility, sev) = rest.rsplit_once('-')?;
    let ok = |p: &str| {
        !p.is_empty()
            && p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    };
    if sev.len() != 1 || !ok(facility) || !ok(mnem) {
        return None;
    }
    let severity = sev.parse::<u8>().ok().filter(|s| *s <= 7)?;
    let m = Mnemonic {
        facility,
        severity,
        mnemonic: mnem,
    };
    Some((m, after.trim_start_matches(' ')))
}

/// `<ios-log-msg><facility>SYS</facility><severity>6</severity><msg-id>X</msg-id><time>..`
fn ios_xml(s: &str) -> Option<(Mnemonic<'_>, Option<&str>)> {
    let inner = s.strip_prefix("<ios-log-msg>")?;
    let element = |name: &str| -> Option<&str> {
        let open = format!("<{name}>");
        let close = format!("</{name}>");
        let start = inner.find(&open)? + open.len();
        let len = inner[start..].find(&close)?;
        Some(&inner[start..start + len])
    };
    let m = Mnemonic {
        facility: element("facility")?,
        severity: element("severity")?.parse().ok().filter(|s| *s <= 7)?,
        mnemonic: element("msg-id")?,
    };
    Some((m, element("time")))
}

/// State of the device clock, from the timestamp's prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sync {
    Ok,
    /// `*`: never set (counts from boot).
    Unset,
    /// `.`: was synchronised, sync lost.
    Lost,
}

/// A Cisco device timestamp, `[*|.]Mmm dd [yyyy] hh:mm:ss[.fff][ ZONE]`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Time<'a> {
    sync: Sync,
    year: Option<i32>,
    month: u32,
    day: u32,
    hms: (u32, u32, u32),
    nanos: u32,
    zone: Option<&'a str>,
}

impl Time<'_> {
    /// The instant: in the zone word's offset when it is known, else in the sender's zone.
    fn instant(&self, tz: &TimeZone, received_at: Timestamp) -> Option<Timestamp> {
        let fixed;
        let tz = match self.zone.and_then(zone_offset) {
            Some(off) => {
                fixed = TimeZone::fixed(off);
                &fixed
            }
            None => tz,
        };
        civil(
            self.year,
            self.month,
            self.day,
            self.hms,
            self.nanos,
            tz,
            received_at,
        )
    }
}

/// Parses a timestamp at the start of `s`; what follows must be the end, `:` or a space.
fn timestamp(s: &str) -> Option<(Time<'_>, &str)> {
    let (sync, s) = match s.as_bytes().first()? {
        b'*' => (Sync::Unset, &s[1..]),
        b'.' => (Sync::Lost, &s[1..]),
        _ => (Sync::Ok, s),
    };
    let month = month(s.get(..3)?)?;
    let s = s[3..].strip_prefix(' ')?.trim_start_matches(' ');
    let (day, s) = number(s, 2)?;
    let s = s.strip_prefix(' ')?.trim_start_matches(' ');
    let (year, s) = match number(s, 4) {
        Some((y, rest)) if rest.starts_with(' ') && y >= 1970 => {
            (Some(y as i32), rest.trim_start_matches(' '))
        }
        _ => (None, s),
    };
    let (hour, s) = number(s, 2)?;
    let (minute, s) = number(s.strip_prefix(':')?, 2)?;
    let (second, s) = number(s.strip_prefix(':')?, 2)?;
    let (nanos, s) = match s.strip_prefix('.') {
        Some(frac) => {
            let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 || digits > 9 {
                return None;
            }
            let n: u32 = frac[..digits].parse().ok()?;
            (n * 10u32.pow(9 - digits as u32), &frac[digits..])
        }
        None => (0, s),
    };
    let (zone, s) = match s.strip_prefix(' ') {
        Some(z) => {
            let letters = z.bytes().take_while(u8::is_ascii_alphabetic).count();
            if !(1..=6).contains(&letters) {
                return None;
            }
            // `UTC+1`, `UTC+07:30`, `GMT-5`: an offset after the word.
            let mut end = letters;
            if let Some(&(b'+' | b'-')) = z.as_bytes().get(end) {
                end += 1;
                end += z[end..].bytes().take_while(u8::is_ascii_digit).count();
                if z.as_bytes().get(end) == Some(&b':')
                    && z[end + 1..].bytes().take_while(u8::is_ascii_digit).count() == 2
                {
                    end += 3;
                }
            }
            (Some(&z[..end]), &z[end..])
        }
        None => (None, s),
    };
    if !(s.is_empty() || s.starts_with([':', ' '])) {
        return None;
    }
    let rest = s;
    let t = Time {
        sync,
        year,
        month,
        day,
        hms: (hour, minute, second),
        nanos,
        zone,
    };
    Some((t, rest))
}

/// Up to `max` ASCII digits at the start of `s`.
fn number(s: &str, max: usize) -> Option<(u32, &str)> {
    let n = s.bytes().take_while(u8::is_ascii_digit).count();
    if n == 0 || n > max {
        return None;
    }
    Some((s[..n].parse().ok()?, &s[n..]))
}

fn month(s: &str) -> Option<u32> {
    const MONTHS: [&str; 12] = [
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ];
    MONTHS
        .iter()
        .position(|m| m.eq_ignore_ascii_case(s))
        .map(|i| i as u32 + 1)
}

/// The offset a zone word stands for: `UTC`, `UTC+1`, `UTC+07:30`, and the common
/// abbreviations. Ambiguous or unknown words give `None` (the sender's zone is used).
fn zone_offset(word: &str) -> Option<Offset> {
    let letters = word.bytes().take_while(u8::is_ascii_alphabetic).count();
    let (name, off) = word.split_at(letters);
    let base_minutes: i32 = match name.to_ascii_uppercase().as_str() {
        "UTC" | "GMT" | "Z" | "UT" | "WET" => 0,
        "BST" | "CET" | "WEST" | "MET" => 60,
        "CEST" | "EET" | "MEST" | "SAST" => 120,
        "EEST" | "MSK" => 180,
        "IST" => 330,
        "SGT" | "HKT" | "AWST" => 480,
        "JST" | "KST" => 540,
        "AEST" => 600,
        "AEDT" => 660,
        "NZST" => 720,
        "NZDT" => 780,
        "AST" | "EDT" => -240,
        "EST" | "CDT" => -300,
        "CST" | "MDT" => -360,
        "MST" | "PDT" => -420,
        "PST" | "AKDT" => -480,
        "AKST" => -540,
        "HST" => -600,
        _ => return None,
    };
    let extra = if off.is_empty() {
        0
    } else {
        let sign = if off.starts_with('-') { -1 } else { 1 };
        let digits = &off[1..];
        let (h, m) = match digits.split_once(':') {
            Some((h, m)) => (h.parse::<i32>().ok()?, m.parse::<i32>().ok()?),
            None => (digits.parse::<i32>().ok()?, 0),
        };
        if h > 14 || m > 59 {
            return None;
        }
        sign * (h * 60 + m)
    };
    Offset::from_seconds((base_minutes + extra) * 60).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        let (t, rest) = timestamp("*Mar  1 00:00:05.123: %X").unwrap();
        assert_eq!(t.sync, Sync::Unset);
        assert_eq!(
            (t.month, t.day, t.hms, t.nanos),
            (3, 1, (0, 0, 5), 123_000_000)
        );
        assert_eq!(rest, ": %X");
        assert_eq!(timestamp("Sep 22 13:47:16.404").unwrap().1, "");
        let (t, _) = timestamp("Jan  6 2022 20:52:12.861: x").unwrap();
        assert_eq!(t.year, Some(2022));
        let (t, rest) = timestamp("May 6 16:13:09.123 UTC+07:30: %DOT1X").unwrap();
        assert_eq!(t.zone, Some("UTC+07:30"));
        assert_eq!(rest, ": %DOT1X");
        let (t, _) = timestamp(".Aug 18 07:15:04.461 CEST: x").unwrap();
        assert_eq!((t.sync, t.zone), (Sync::Lost, Some("CEST")));
        assert!(timestamp("Aug 18 07:15").is_none());
        assert!(timestamp("Foo 18 07:15:04:").is_none());
        // A word after the time is taken as a zone; the header walk then wants a colon.
        assert_eq!(timestamp("Aug 18 07:15:04 some text").unwrap().1, " text");
    }

    #[test]
    fn zone_words() {
        let secs = |w: &str| zone_offset(w).map(|o| o.seconds());
        assert_eq!(secs("UTC"), Some(0));
        assert_eq!(secs("UTC+1"), Some(3600));
        assert_eq!(secs("UTC+07:30"), Some(27000));
        assert_eq!(secs("CEST"), Some(7200));
        assert_eq!(secs("mdt"), Some(-6 * 3600));
        assert_eq!(secs("CDT"), Some(-5 * 3600));
        assert_eq!(secs("XYZ"), None);
        assert_eq!(secs("UTC+99"), None);
    }

    #[test]
    fn mnemonics() {
        let (m, text) = mnemonic("LINK-3-UPDOWN: Interface Gi0/1").unwrap();
        assert_eq!((m.facility, m.severity, m.mnemonic), ("LINK", 3, "UPDOWN"));
        assert_eq!(text, "Interface Gi0/1");
        let (m, _) = mnemonic("ACL-IPV4_ACL-6-IPACCESSLOGP : access-list x").unwrap();
        assert_eq!((m.facility, m.severity), ("ACL-IPV4_ACL", 6));
        assert!(mnemonic("LINK-9-UPDOWN: x").is_none());
        assert!(mnemonic("100 of the total").is_none());
        assert!(mnemonic("-3-X: y").is_none());
    }

    #[test]
    fn xml_form() {
        let (m, time) = ios_xml("<ios-log-msg><facility>LINK</facility><severity>3</severity><msg-id>UPDOWN</msg-id><time>*Sep 22 13:47:16.404</time></ios-log-msg>").unwrap();
        assert_eq!((m.facility, m.severity, m.mnemonic), ("LINK", 3, "UPDOWN"));
        assert_eq!(time, Some("*Sep 22 13:47:16.404"));
    }
}
