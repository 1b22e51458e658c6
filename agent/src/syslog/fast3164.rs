//! A byte scanner for the common RFC 3164 header, `<PRI>Mmm dd hh:mm:ss host app[pid]: msg`,
//! that gives the same [`Message`] `syslog_loose` gives, without its parser combinators: on
//! the typical line syslog_loose cost ~4,100 instructions (an RFC 5424 attempt first, nom for
//! every field, a lowercased copy of the month), this ~300.
//!
//! syslog_loose stays the definition and the fallback: [`header`] returns `None` for anything
//! it is not certain of (odd spacing, tabs, missing fields, out-of-range values, non-ASCII
//! header bytes, a host or tag syslog_loose reads specially, a message it could take for
//! structured data), and [`super::parse::head`] then asks syslog_loose. The tests
//! (`fast3164/tests.rs`) hold the two to the same message, field offsets and year choice on
//! every corpus line and on generated near-misses, and the draft tests to the same queue bytes.
//!
//! What the scanner accepts, and why each rule matches syslog_loose (0.23):
//! - `<PRI>`: 1–3 digits, at most 191 (a facility and a severity; syslog_loose reads the
//!   digits as `u8`), or no PRI at all (files written by syslog daemons). A letter must
//!   follow, so the RFC 5424 attempt (`<PRI>` then a version number) fails there and the
//!   RFC 3164 one is what syslog_loose returns.
//! - The date: three ASCII letters naming a month in any case, one or two spaces, a one- or
//!   two-digit day, one space, `hh:mm:ss` of two digits each, then one space. The year is
//!   chosen by [`year_for`] exactly as syslog_loose's `get_year` callback chooses it, and the
//!   date must exist in it (else syslog_loose tries other date forms: declined).
//! - The host: printable ASCII up to one space; not `-` (syslog_loose's empty field, which
//!   with a tag drops the host as well), not ending in `:` (then it is the tag).
//! - The tag: printable ASCII without `:`, `[`, `]`, not `-`, optionally `[digits]`, then `:`.
//! - The message: after the colon and any spaces or tabs (which syslog_loose skips); it must
//!   not start with `[` or `-`, which syslog_loose would try as structured data.

use jiff::Timestamp;
use jiff::tz::TimeZone;
use syslog_loose::{Message, ProcId, Protocol};

use super::parse::{Resolved, year_for};

/// The header of `line` (as [`super::parse::head`] trimmed it) as syslog_loose would parse it,
/// with what the year inference resolved; `None` when the scanner is not certain.
pub(super) fn header<'a>(
    line: &'a str,
    tz: &TimeZone,
    received_at: Timestamp,
) -> Option<(Message<&'a str>, Option<Resolved>)> {
    #[cfg(test)]
    if test_switch::loose_only() {
        return None;
    }
    let b = line.as_bytes();
    let mut s = Scan { b, i: 0 };
    // <PRI>, or none (then syslog_loose leaves both halves out)
    let (facility, severity) = if s.byte(b'<').is_some() {
        let (pri, digits) = s.number(3)?;
        if digits == 0 || pri > 191 {
            return None;
        }
        s.byte(b'>')?;
        syslog_loose::decompose_pri(u8::try_from(pri).ok()?)
    } else {
        (None, None)
    };
    // Mmm dd hh:mm:ss
    let month = month(b.get(s.i..s.i + 3)?)?;
    s.i += 3;
    s.byte(b' ')?;
    if b.get(s.i) == Some(&b' ') {
        s.i += 1;
    }
    let (day, digits) = s.number(2)?;
    if digits == 0 {
        return None;
    }
    s.byte(b' ')?;
    let hour = s.two_digits()?;
    s.byte(b':')?;
    let minute = s.two_digits()?;
    s.byte(b':')?;
    let second = s.two_digits()?;
    s.byte(b' ')?;
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    // host
    let host_at = s.i;
    s.skip(|c| c.is_ascii_graphic());
    let host = &line[host_at..s.i];
    if host.is_empty() || host == "-" || host.ends_with(':') {
        return None;
    }
    s.byte(b' ')?;
    // app[pid]:
    let app_at = s.i;
    s.skip(|c| c.is_ascii_graphic() && !matches!(c, b':' | b'[' | b']'));
    let app = &line[app_at..s.i];
    if app.is_empty() || app == "-" {
        return None;
    }
    let procid = if b.get(s.i) == Some(&b'[') {
        s.i += 1;
        let pid_at = s.i;
        s.skip(|c| c.is_ascii_digit());
        let pid = &line[pid_at..s.i];
        if pid.is_empty() {
            return None;
        }
        s.byte(b']')?;
        Some(ProcId::from(pid))
    } else {
        None
    };
    s.byte(b':')?;
    s.skip(|c| c == b' ' || c == b'\t');
    if matches!(b.get(s.i), Some(b'[' | b'-')) {
        return None;
    }
    let msg = &line[s.i..];

    let date = (month, day, hour, minute, second);
    let (year, resolved) = year_for(date, received_at, tz);
    // As syslog_loose's `make_timestamp` with the zone `chrono::Utc` that `head` passes it.
    use chrono::{Offset as _, TimeZone as _};
    let timestamp = chrono::Utc
        .with_ymd_and_hms(year, month, day, hour, minute, second)
        .earliest()
        .map(|t| t.with_timezone(&t.offset().fix()))?;
    let message = Message {
        protocol: Protocol::RFC3164,
        facility,
        severity,
        timestamp: Some(timestamp),
        hostname: Some(host),
        appname: Some(app),
        procid,
        msgid: None,
        structured_data: Vec::new(),
        msg,
    };
    Some((message, resolved))
}

/// A cursor over the line's bytes.
struct Scan<'a> {
    b: &'a [u8],
    i: usize,
}

impl Scan<'_> {
    /// Steps over `want`, or fails.
    fn byte(&mut self, want: u8) -> Option<()> {
        (self.b.get(self.i) == Some(&want)).then(|| self.i += 1)
    }

    /// Up to `max` decimal digits, and how many there were.
    fn number(&mut self, max: usize) -> Option<(u32, usize)> {
        let mut n = 0;
        let start = self.i;
        while let Some(&c) = self.b.get(self.i)
            && c.is_ascii_digit()
        {
            if self.i - start == max {
                return None;
            }
            n = n * 10 + u32::from(c - b'0');
            self.i += 1;
        }
        Some((n, self.i - start))
    }

    /// Exactly two decimal digits.
    fn two_digits(&mut self) -> Option<u32> {
        match self.b.get(self.i..self.i + 2)? {
            &[a, b] if a.is_ascii_digit() && b.is_ascii_digit() => {
                self.i += 2;
                Some(u32::from(a - b'0') * 10 + u32::from(b - b'0'))
            }
            _ => None,
        }
    }

    fn skip(&mut self, keep: impl Fn(u8) -> bool) {
        while self.b.get(self.i).is_some_and(|&c| keep(c)) {
            self.i += 1;
        }
    }
}

/// A month's number from its three-letter English name, in any case (as syslog_loose, which
/// lowercases it).
fn month(name: &[u8]) -> Option<u32> {
    let lower = [name[0] | 0x20, name[1] | 0x20, name[2] | 0x20];
    // `| 0x20` also maps some non-letters onto letters (`@` to a backquote, `[` to `{`):
    // only letters may match.
    if !name.iter().all(u8::is_ascii_alphabetic) {
        return None;
    }
    Some(match &lower {
        b"jan" => 1,
        b"feb" => 2,
        b"mar" => 3,
        b"apr" => 4,
        b"may" => 5,
        b"jun" => 6,
        b"jul" => 7,
        b"aug" => 8,
        b"sep" => 9,
        b"oct" => 10,
        b"nov" => 11,
        b"dec" => 12,
        _ => return None,
    })
}

/// A test-only switch that turns the scanner off on this thread, so tests can compare what a
/// line becomes with and without it.
#[cfg(test)]
pub(super) mod test_switch {
    use std::cell::Cell;

    thread_local! {
        static LOOSE_ONLY: Cell<bool> = const { Cell::new(false) };
    }

    pub(in crate::syslog) fn loose_only() -> bool {
        LOOSE_ONLY.get()
    }

    /// Runs `f` with every header on this thread parsed by syslog_loose alone.
    pub(in crate::syslog) fn without<T>(f: impl FnOnce() -> T) -> T {
        LOOSE_ONLY.set(true);
        let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
        LOOSE_ONLY.set(false);
        out.unwrap_or_else(|e| std::panic::resume_unwind(e))
    }
}

#[cfg(test)]
mod tests;
