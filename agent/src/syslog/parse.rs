//! Syslog message parsing: one datagram or TCP frame in, one [`Event`] out, whatever the bytes.
//!
//! RFC 5424 and RFC 3164 headers are parsed by `syslog_loose`. When neither fits (Cisco IOS
//! sequence-numbered lines, bare text), the PRI is still taken when there is one and the rest
//! becomes the message. Then the vendor parser chain ([`super::vendor`]) may claim the line and
//! add a tag, a severity and fields. The original bytes are always kept in `raw_payload`, also
//! when they are not UTF-8 (the message is then a lossy copy, tagged `weir_non_utf8=true`).
//!
//! Severity comes from the PRI (seed 002's table); a line without one is `user.notice` and
//! tagged `weir_no_pri=true`. Hostname: the header's, else the vendor's, else the sender address.
//!
//! Time: a device timestamp becomes `event_time`, unless it lies more than a day after the
//! receive time (a device with a wrong clock); then the receive time is used. Timestamps
//! without a zone (RFC 3164, most Cisco lines) are read in the sender's zone: the most specific
//! `[[syslog.timezones]]` entry matching its address, else `default_timezone`. Dates without a
//! year take the receive year in that zone, or the previous one if that would put the date
//! more than a day in the future (a December message received in January).

use std::borrow::Cow;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::LazyLock;

use jiff::civil::DateTime;
use jiff::tz::{TimeZone, TimeZoneDatabase};
use jiff::{SignedDuration, Timestamp};
use syslog_loose::{IncompleteDate, Message, Protocol, SyslogFacility, SyslogSeverity, Variant};
use weir_common::config::ConfigError;
use weir_common::{Event, InputKind, Severity};

use super::vendor::{self, Header, VendorFields};
use crate::config::SyslogConfig;

/// How far ahead of the receive time a device's timestamp may be before it is not believed.
pub(crate) const MAX_FUTURE: SignedDuration = SignedDuration::from_secs(24 * 3600);

/// Turns syslog bytes into events, reading zone-less timestamps in each sender's zone.
/// Built once from the config ([`Parser::new`]); parsing takes `&self` and never fails.
#[derive(Debug, Clone)]
pub struct Parser {
    /// Zone for senders no rule matches.
    default_tz: TimeZone,
    /// Per-sender zones, longest prefix first, so the first match is the most specific.
    zones: Vec<(Cidr, TimeZone)>,
}

static UTC_PARSER: LazyLock<Parser> = LazyLock::new(Parser::utc);

/// Parses with UTC for zone-less timestamps; see [`Parser::parse`].
pub fn parse(bytes: &[u8], peer: IpAddr, received_at: Timestamp) -> Event {
    UTC_PARSER.parse(bytes, peer, received_at)
}

impl Parser {
    /// A parser that reads zone-less timestamps as UTC.
    pub fn utc() -> Parser {
        Parser {
            default_tz: TimeZone::UTC,
            zones: Vec::new(),
        }
    }

    /// Builds the zone table from `default_timezone` and `[[syslog.timezones]]`. An unknown
    /// zone name or a bad address is a [`ConfigError::Check`] naming the field (its `path` is
    /// `[syslog]`: the config loader puts the file there).
    pub fn new(cfg: &SyslogConfig) -> Result<Parser, ConfigError> {
        let fail = |field: String, message: String| ConfigError::Check {
            path: PathBuf::from("[syslog]"),
            field,
            message,
        };
        let default_tz =
            zone(&cfg.default_timezone).map_err(|m| fail("syslog.default_timezone".into(), m))?;
        let mut zones = Vec::new();
        for (i, rule) in cfg.timezones.iter().enumerate() {
            let tz = zone(&rule.tz).map_err(|m| fail(format!("syslog.timezones[{i}].tz"), m))?;
            if rule.sources.is_empty() {
                return Err(fail(
                    format!("syslog.timezones[{i}].sources"),
                    "list at least one address or network, e.g. [\"10.1.0.0/16\"]".into(),
                ));
            }
            for s in &rule.sources {
                let net = Cidr::parse(s).ok_or_else(|| {
                    fail(
                        format!("syslog.timezones[{i}].sources"),
                        format!("{s:?} is not an IP address or network (e.g. \"10.1.0.0/16\")"),
                    )
                })?;
                zones.push((net, tz.clone()));
            }
        }
        // Stable: for equal prefixes the earlier rule wins.
        zones.sort_by_key(|(net, _)| std::cmp::Reverse(net.prefix_bits()));
        Ok(Parser { default_tz, zones })
    }

    /// The zone for zone-less timestamps from `peer`.
    pub fn zone_for(&self, peer: IpAddr) -> &TimeZone {
        self.zones
            .iter()
            .find(|(net, _)| net.contains(peer))
            .map_or(&self.default_tz, |(_, tz)| tz)
    }

    /// Parses one syslog message (RFC 5424, RFC 3164, vendor formats, or anything else) into an
    /// event. Never fails: unparseable input becomes an event whose message is the text and
    /// whose host is the sender.
    pub fn parse(&self, bytes: &[u8], peer: IpAddr, received_at: Timestamp) -> Event {
        // The parsers are fed by anyone who can reach the port: a panic in one must cost one
        // message, not the listener task. The parser is immutable, so unwinding cannot leave
        // it half-updated.
        let guarded =
            std::panic::AssertUnwindSafe(|| self.parse_unguarded(bytes, peer, received_at));
        match std::panic::catch_unwind(guarded) {
            Ok(ev) => ev,
            Err(_) => panicked(bytes, peer, received_at),
        }
    }

    /// [`Parser::parse`] without the panic guard, so the property tests see panics.
    pub(crate) fn parse_unguarded(
        &self,
        bytes: &[u8],
        peer: IpAddr,
        received_at: Timestamp,
    ) -> Event {
        #[cfg(test)]
        test_panic::enter();
        // `from_utf8` validates ASCII a word at a time; `from_utf8_lossy` walks byte by byte
        // (~7 instructions a byte, 5% of the agent's work per line), so it only runs on the
        // rare line that is not UTF-8.
        let text = match std::str::from_utf8(bytes) {
            Ok(s) => Cow::Borrowed(s),
            Err(_) => String::from_utf8_lossy(bytes),
        };
        let lossy = matches!(text, Cow::Owned(_));
        let tz = self.zone_for(peer);
        let head = head(&text, tz, received_at);
        let mut ev = match &head.parsed {
            Some(msg) => from_message(msg, &head, peer, tz, received_at),
            None => from_unparsed(head.pri, head.after_pri, peer, tz, received_at),
        };
        if lossy {
            ev.tags.insert("weir_non_utf8".into(), "true".into());
        }
        ev.raw_payload = Some(bytes.to_vec());
        ev
    }
}

/// What a line whose parse panicked becomes, on either path: counted, logged (rate-limited)
/// and kept unparsed, tagged `weir_parse_failed=true`.
pub(super) fn panicked(bytes: &[u8], peer: IpAddr, received_at: Timestamp) -> Event {
    metrics::counter!("weir_agent_syslog_parse_panics_total").increment(1);
    weir_common::warn_limited!(
        "syslog_parse_panic",
        %peer,
        "the syslog parser panicked on a message; kept it unparsed \
         (tag weir_parse_failed=true); please report the raw_payload as a bug"
    );
    let mut ev = base_event(
        peer,
        peer.to_string(),
        Severity::Info,
        String::from_utf8_lossy(bytes).into_owned(),
        received_at,
    );
    ev.tags.insert("weir_parse_failed".into(), "true".into());
    ev.raw_payload = Some(bytes.to_vec());
    ev
}

/// A test-only way to make both parse paths panic, and to count how often a line is parsed.
#[cfg(test)]
pub(super) mod test_panic {
    use std::cell::Cell;

    thread_local! {
        static FORCE: Cell<bool> = const { Cell::new(false) };
        static ENTRIES: Cell<u32> = const { Cell::new(0) };
    }

    /// Called where each parse path starts.
    pub(in crate::syslog) fn enter() {
        ENTRIES.set(ENTRIES.get() + 1);
        if FORCE.get() {
            panic!("forced parser panic (test)");
        }
    }

    /// Runs `f` with every parse on this thread panicking; returns its result and how many
    /// parses started.
    pub(in crate::syslog) fn forced<T>(f: impl FnOnce() -> T) -> (T, u32) {
        ENTRIES.set(0);
        FORCE.set(true);
        let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
        FORCE.set(false);
        match out {
            Ok(v) => (v, ENTRIES.get()),
            Err(e) => std::panic::resume_unwind(e),
        }
    }
}

/// A line as both parse paths (this module's and [`super::draft`]'s) start it.
pub(super) struct Head<'a> {
    /// The line without framing: trailing NULs, line ends, a leading BOM.
    pub line: &'a str,
    pub pri: Option<u8>,
    /// What follows the PRI (all of `line` without one), without a BOM.
    pub after_pri: &'a str,
    /// The RFC 5424 or RFC 3164 header, when one fits.
    pub parsed: Option<Message<&'a str>>,
    /// The instant the year inference found for a year-less date, so [`Parts::of`] need not
    /// convert the same wall-clock time again.
    pub resolved: Option<Resolved>,
}

/// A year-less RFC 3164 date with the year chosen for it and its instant in the sender's zone
/// (`civil(Some(year), ..)` of it, with no fraction of a second).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Resolved {
    date: IncompleteDate,
    year: i32,
    at: Timestamp,
}

pub(super) fn head<'a>(text: &'a str, tz: &TimeZone, received_at: Timestamp) -> Head<'a> {
    // Trailing NULs (logger, some appliances) and line ends are framing, not message.
    let line = strip_bom(text.trim_matches(|c: char| c.is_whitespace() || c == '\0'));
    let (pri, after_pri) = split_pri(line);
    let after_pri = strip_bom(after_pri);
    // `123: ` or `: ` after the PRI is a Cisco sequence header, which no RFC fits and
    // syslog_loose would only reject after trying both (its issue #10).
    let (parsed, resolved) = if cisco_shaped(after_pri) {
        (None, None)
    } else if let Some((msg, resolved)) = super::fast3164::header(line, tz, received_at) {
        (Some(msg), resolved)
    } else {
        loose(line, tz, received_at)
    };
    Head {
        line,
        pri,
        after_pri,
        parsed,
        resolved,
    }
}

/// The RFC 5424 or RFC 3164 header of `line` by syslog_loose, which defines what a header is
/// (the common RFC 3164 shape is read by `fast3164` to the same result, more cheaply).
fn loose<'a>(
    line: &'a str,
    tz: &TimeZone,
    received_at: Timestamp,
) -> (Option<Message<&'a str>>, Option<Resolved>) {
    let resolved = std::cell::Cell::new(None);
    let get_year = |d: IncompleteDate| {
        let (year, at) = year_for(d, received_at, tz);
        resolved.set(at);
        year
    };
    let parsed = syslog_loose::parse_message_with_year_exact_tz(
        line,
        get_year,
        Some(chrono::Utc),
        Variant::Either,
    )
    .ok();
    (parsed, resolved.get())
}

/// What a parsed header gives an event, whichever path builds it.
pub(super) struct Parts<'a> {
    pub hostname: Option<&'a str>,
    pub appname: Option<&'a str>,
    pub msgid: Option<&'a str>,
    pub message: &'a str,
    pub body: &'a str,
    pub from_host: &'a str,
    pub rfc5424: bool,
    pub severity: Option<Severity>,
    /// The device's time, already [`believable`]; `None` without a header timestamp.
    pub event_time: Option<Timestamp>,
}

impl<'a> Parts<'a> {
    pub(super) fn of(
        msg: &Message<&'a str>,
        head: &Head<'a>,
        tz: &TimeZone,
        received_at: Timestamp,
    ) -> Parts<'a> {
        let (line, after_pri) = (head.line, head.after_pri);
        let hostname = msg.hostname.filter(|h| !h.is_empty() && *h != "-");
        let appname = msg.appname.filter(|v| !v.is_empty() && *v != "-");
        let msgid = msg.msgid.filter(|v| !v.is_empty() && *v != "-");
        let mut message = strip_bom(msg.msg);
        let rfc5424 = matches!(msg.protocol, Protocol::RFC5424(_));
        // RFC 3164 content from the tag on: vendors whose text syslog_loose splits at a
        // colon or comma (PAN-OS CSV) read it whole. Slices of `line`, so offsets are exact.
        let body = match (rfc5424, msg.appname) {
            (false, Some(app)) => offset_in(line, app).map_or(message, |at| &line[at..]),
            _ => message,
        };
        // A tag without `:` or `[pid]` (`host Use the BFG!`): RFC 3164 and rsyslog still call
        // the first word the tag, but syslog_loose also drops it from the message. Keep it.
        if let (false, Some(app)) = (rfc5424, msg.appname)
            && !body[app.len().min(body.len())..].starts_with([':', '['])
        {
            message = body;
        }
        let from_host = match (rfc5424, msg.hostname) {
            (false, Some(host)) => offset_in(line, host).map_or(body, |at| &line[at..]),
            _ => body,
        };
        let severity = msg.severity.map(|s| Severity::from_syslog(s as u8));
        let event_time = msg.timestamp.map(|t| {
            // syslog_loose read zone-less times as UTC wall-clock time; RFC 3339 ones (which
            // start with a digit) carry their own offset.
            let zoneless = !rfc5424
                && !after_pri
                    .trim_start()
                    .starts_with(|c: char| c.is_ascii_digit());
            let at = if zoneless {
                let n = t.naive_utc();
                use chrono::{Datelike as _, Timelike as _};
                let date = (n.month(), n.day(), n.hour(), n.minute(), n.second());
                match head.resolved {
                    // The year inference converted this very time already.
                    Some(r) if r.date == date && r.year == n.year() && n.nanosecond() == 0 => {
                        Some(r.at)
                    }
                    _ => civil(
                        Some(n.year()),
                        n.month(),
                        n.day(),
                        (n.hour(), n.minute(), n.second()),
                        n.nanosecond(),
                        tz,
                        received_at,
                    ),
                }
            } else {
                Timestamp::new(t.timestamp(), t.timestamp_subsec_nanos() as i32).ok()
            };
            believable(at, received_at)
        });
        Parts {
            hostname,
            appname,
            msgid,
            message,
            body,
            from_host,
            rfc5424,
            severity,
            event_time,
        }
    }

    /// What the vendor parsers see of the line.
    pub(super) fn header<'h>(
        &self,
        msg: &'h Message<&'a str>,
        after_pri: &'a str,
        tz: &'h TimeZone,
        received_at: Timestamp,
    ) -> Header<'h>
    where
        'a: 'h,
    {
        Header {
            text: after_pri,
            body: self.body,
            from_host: self.from_host,
            message: self.message,
            hostname: self.hostname,
            appname: self.appname,
            msgid: self.msgid,
            structured_data: &msg.structured_data,
            rfc5424: self.rfc5424,
            has_timestamp: msg.timestamp.is_some(),
            tz,
            received_at,
        }
    }
}

/// The header of a line no RFC fits (everything after the PRI is its text), for the vendors.
pub(super) fn unparsed_header<'h>(
    text: &'h str,
    tz: &'h TimeZone,
    received_at: Timestamp,
) -> Header<'h> {
    Header {
        text,
        body: text,
        from_host: text,
        message: text,
        hostname: None,
        appname: None,
        msgid: None,
        structured_data: &[],
        rfc5424: false,
        has_timestamp: false,
        tz,
        received_at,
    }
}

fn from_message(
    msg: &Message<&str>,
    head: &Head<'_>,
    peer: IpAddr,
    tz: &TimeZone,
    received_at: Timestamp,
) -> Event {
    let after_pri = head.after_pri;
    let p = Parts::of(msg, head, tz, received_at);
    let mut ev = base_event(
        peer,
        p.hostname.map_or_else(|| ip_string(peer), str::to_string),
        p.severity.unwrap_or(Severity::Info),
        p.message.to_string(),
        received_at,
    );
    match (msg.facility, msg.severity) {
        (Some(f), Some(s)) => pri_tags(&mut ev, f, s),
        _ => no_pri(&mut ev),
    }
    if let Some(v) = p.appname {
        ev.tags.insert("appname".into(), v.into());
    }
    if let Some(v) = p.msgid {
        ev.tags.insert("msgid".into(), v.into());
    }
    if let Some(p) = &msg.procid {
        ev.tags.insert("procid".into(), p.to_string());
    }
    for element in &msg.structured_data {
        for (name, value) in element.params() {
            ev.tags.insert(format!("sd.{}.{}", element.id, name), value);
        }
    }
    if let Some(t) = p.event_time {
        ev.event_time = t;
    }
    let header = p.header(msg, after_pri, tz, received_at);
    apply_vendor(&mut ev, &header, p.hostname.is_some());
    ev
}

/// Neither RFC fits: the PRI (if any) was split off, the rest is the message.
fn from_unparsed(
    pri: Option<u8>,
    after_pri: &str,
    peer: IpAddr,
    tz: &TimeZone,
    received_at: Timestamp,
) -> Event {
    let text = after_pri.trim_start();
    let (facility, severity) = match pri {
        Some(p) => syslog_loose::decompose_pri(p),
        None => (None, None),
    };
    let severity_raw = severity;
    let severity = severity.map(|s| Severity::from_syslog(s as u8));
    let mut ev = base_event(
        peer,
        ip_string(peer),
        severity.unwrap_or(Severity::Info),
        text.to_string(),
        received_at,
    );
    match (facility, severity_raw) {
        (Some(f), Some(s)) => pri_tags(&mut ev, f, s),
        _ => no_pri(&mut ev),
    }
    apply_vendor(&mut ev, &unparsed_header(text, tz, received_at), false);
    ev
}

/// Runs the vendor chain and merges what the first claiming parser found.
fn apply_vendor(ev: &mut Event, header: &Header<'_>, header_has_host: bool) {
    if let Some(v) = vendor::classify(header) {
        merge_vendor(ev, v, header_has_host);
    }
}

/// Merges what a vendor parser found into the event built from the header.
pub(super) fn merge_vendor(ev: &mut Event, v: VendorFields, header_has_host: bool) {
    ev.tags.insert("vendor".into(), v.vendor.into());
    if let Some(tag) = v.tag {
        ev.tag = Some(tag);
    }
    if let Some(s) = v.severity {
        ev.severity = s;
    }
    match v.hostname {
        Some(h) if !header_has_host || v.replace_hostname => ev.hostname = h,
        None if v.replace_hostname => ev.hostname = ev.peer.clone().unwrap_or_default(),
        _ => {}
    }
    if let Some(t) = v.event_time {
        ev.event_time = believable(Some(t), ev.received_at);
    }
    if let Some(m) = v.message {
        ev.message = m;
    }
    ev.tags.extend(v.fields);
}

/// The PRI's two halves as tags (`facility=local7`, `syslog_severity=notice`): the five-level
/// severity cannot tell notice from info.
fn pri_tags(ev: &mut Event, facility: SyslogFacility, severity: SyslogSeverity) {
    ev.tags.insert("facility".into(), facility.as_str().into());
    ev.tags
        .insert("syslog_severity".into(), severity.as_str().into());
}

/// No PRI: RFC 3164's default `user.notice`, flagged.
fn no_pri(ev: &mut Event) {
    pri_tags(ev, SyslogFacility::LOG_USER, SyslogSeverity::SEV_NOTICE);
    ev.tags.insert("weir_no_pri".into(), "true".into());
}

fn base_event(
    peer: IpAddr,
    hostname: String,
    severity: Severity,
    message: String,
    received_at: Timestamp,
) -> Event {
    let mut ev = Event::new(
        InputKind::Syslog,
        "syslog",
        hostname,
        severity,
        message,
        received_at,
    );
    ev.peer = Some(ip_string(peer));
    ev
}

/// `peer.to_string()` without the formatting machinery for IPv4 (every line formats its
/// sender: `Display` cost ~1,300 instructions, 4% of the agent's work per line).
fn ip_string(peer: IpAddr) -> String {
    match PeerText::of(peer) {
        PeerText::Other(s) => s,
        v4 => v4.as_str().to_string(),
    }
}

/// The sender's address as text, without an allocation for IPv4 (the common case).
#[derive(Debug)]
pub(super) enum PeerText {
    V4 { buf: [u8; 15], len: u8 },
    Other(String),
}

impl PeerText {
    pub(super) fn of(peer: IpAddr) -> PeerText {
        let IpAddr::V4(v4) = peer else {
            return PeerText::Other(peer.to_string());
        };
        let (mut buf, mut len) = ([0u8; 15], 0);
        let mut push = |b: u8| {
            buf[len] = b;
            len += 1;
        };
        for (i, octet) in v4.octets().into_iter().enumerate() {
            if i > 0 {
                push(b'.');
            }
            if octet >= 100 {
                push(b'0' + octet / 100);
            }
            if octet >= 10 {
                push(b'0' + octet / 10 % 10);
            }
            push(b'0' + octet % 10);
        }
        PeerText::V4 {
            buf,
            len: len as u8,
        }
    }

    pub(super) fn as_str(&self) -> &str {
        match self {
            // Digits and dots only, so always UTF-8; the tests compare every byte.
            PeerText::V4 { buf, len } => {
                std::str::from_utf8(&buf[..usize::from(*len)]).unwrap_or_default()
            }
            PeerText::Other(s) => s,
        }
    }
}

/// Cisco's `<PRI>123: ...` or `<PRI>: ...`: a sequence number or an empty field, then a colon.
fn cisco_shaped(after_pri: &str) -> bool {
    let digits = after_pri.bytes().take_while(u8::is_ascii_digit).count();
    after_pri.as_bytes().get(digits) == Some(&b':')
}

/// Where `part` (a slice of `whole`) starts in `whole`.
pub(in crate::syslog) fn offset_in(whole: &str, part: &str) -> Option<usize> {
    let at = (part.as_ptr() as usize).checked_sub(whole.as_ptr() as usize)?;
    (at + part.len() <= whole.len() && whole.is_char_boundary(at)).then_some(at)
}

/// `<PRI>` at the start of `text` (1 to 3 digits, at most 191), and what follows it.
fn split_pri(text: &str) -> (Option<u8>, &str) {
    let Some(inner) = text.strip_prefix('<') else {
        return (None, text);
    };
    let digits = inner.bytes().take_while(u8::is_ascii_digit).count();
    if !(1..=3).contains(&digits) || inner.as_bytes().get(digits) != Some(&b'>') {
        return (None, text);
    }
    match inner[..digits].parse::<u8>() {
        Ok(p) if p <= 191 => (Some(p), &inner[digits + 1..]),
        _ => (None, text),
    }
}

fn strip_bom(s: &str) -> &str {
    s.strip_prefix('\u{feff}').unwrap_or(s)
}

/// The device's time, unless it is missing, out of range or more than [`MAX_FUTURE`] ahead.
pub(crate) fn believable(t: Option<Timestamp>, received_at: Timestamp) -> Timestamp {
    let latest = received_at
        .checked_add(MAX_FUTURE)
        .unwrap_or(Timestamp::MAX);
    match t {
        Some(t) if t <= latest => t,
        _ => received_at,
    }
}

/// A wall-clock time in `tz` as an instant. Without a year: the receive year in `tz`, or the
/// one before if the date would otherwise be more than a day in the future. `None` for
/// impossible dates (Feb 30) and out-of-range values.
pub(crate) fn civil(
    year: Option<i32>,
    month: u32,
    day: u32,
    (hour, minute, second): (u32, u32, u32),
    nanos: u32,
    tz: &TimeZone,
    received_at: Timestamp,
) -> Option<Timestamp> {
    let at = |y: i32| -> Option<Timestamp> {
        let dt = DateTime::new(
            i16::try_from(y).ok()?,
            i8::try_from(month).ok()?,
            i8::try_from(day).ok()?,
            i8::try_from(hour).ok()?,
            i8::try_from(minute).ok()?,
            // A leap second (:60) is the last instant of its minute.
            i8::try_from(second.min(59)).ok()?,
            i32::try_from(nanos.min(999_999_999)).ok()?,
        )
        .ok()?;
        tz.to_timestamp(dt).ok()
    };
    match year {
        Some(y) => at(y),
        None => {
            let this = i32::from(tz.to_datetime(received_at).year());
            recent_year(this, received_at, at, |t| *t)
        }
    }
}

/// What a year-less date becomes: `at` of the receive year `this`, or of the year before if
/// that would be more than [`MAX_FUTURE`] ahead of `received_at` or does not exist (Feb 29 in
/// a common year: the last leap year may be the one meant). `instant` reads the time of an
/// answer, so [`year_for`] can keep the year it tried alongside.
fn recent_year<T>(
    this: i32,
    received_at: Timestamp,
    at: impl Fn(i32) -> Option<T>,
    instant: impl Fn(&T) -> Timestamp,
) -> Option<T> {
    let latest = received_at.checked_add(MAX_FUTURE).ok()?;
    match at(this) {
        Some(t) if instant(&t) > latest => at(this - 1),
        None => at(this - 1),
        t => t,
    }
}

/// [`year_for_uncached`], remembered per thread for the last date, zone and second of receipt:
/// the lines of a burst mostly share their date and the second they arrive in, and this skips
/// the two zone conversions (~450 instructions a line) for all but the first of them.
///
/// Exact, not approximate: the answer depends on the receive time only through its whole
/// second. Zone offsets are whole seconds, so the receive year in `tz` is that of the second;
/// and the dates compared with `received_at + MAX_FUTURE` are whole seconds too, so a fraction
/// of a second added to the receive time never changes which side of it they are (checked
/// by the tests, `year_cache_*`).
pub(super) fn year_for(
    date: IncompleteDate,
    received_at: Timestamp,
    tz: &TimeZone,
) -> (i32, Option<Resolved>) {
    const _: () = assert!(MAX_FUTURE.subsec_nanos() == 0, "see year_for");
    type Entry = (IncompleteDate, i64, TimeZone, (i32, Option<Resolved>));
    thread_local! {
        static LAST: std::cell::RefCell<Option<Entry>> = const { std::cell::RefCell::new(None) };
    }
    // The whole second it falls in (`as_second` truncates toward zero, before 1970 too).
    let second = received_at.as_second() - i64::from(received_at.subsec_nanosecond() < 0);
    LAST.with_borrow_mut(|last| {
        if let Some((d, s, z, answer)) = last.as_ref()
            && *d == date
            && *s == second
            && z == tz
        {
            return *answer;
        }
        let answer = year_for_uncached(date, received_at, tz);
        *last = Some((date, second, tz.clone(), answer));
        answer
    })
}

/// The year for a year-less RFC 3164 date in `tz`, as [`civil`] chooses it, and the instant
/// it chose, for [`Parts::of`] to reuse. Converts the receive time and the date once each
/// (this ran `civil`'s conversions and then its own: ~1,900 instructions a line).
pub(super) fn year_for_uncached(
    date @ (month, day, hour, minute, second): IncompleteDate,
    received_at: Timestamp,
    tz: &TimeZone,
) -> (i32, Option<Resolved>) {
    let this = i32::from(tz.to_datetime(received_at).year());
    let at = |year: i32| {
        let at = civil(
            Some(year),
            month,
            day,
            (hour, minute, second),
            0,
            tz,
            received_at,
        )?;
        Some(Resolved { date, year, at })
    };
    // `civil(None, ..)`, keeping the year it tried.
    let chosen = recent_year(this, received_at, at, |r| r.at);
    match chosen {
        // The instant's year in `tz` is the one tried, unless a zone's gap moved the time
        // forward across New Year: a gap is at most a day or two, so only a January or
        // December date can cross one.
        Some(r) if (2..=11).contains(&month) => (r.year, Some(r)),
        Some(r) => (i32::from(tz.to_datetime(r.at).year()), Some(r)),
        // Invalid dates (Feb 30) fail later, in the parser, whatever year is given.
        None => (this, None),
    }
}

/// A zone by IANA name: from the system's tz database, else the copy built into the agent
/// (hosts without the tzdata package).
fn zone(name: &str) -> Result<TimeZone, String> {
    if name.eq_ignore_ascii_case("utc") {
        return Ok(TimeZone::UTC);
    }
    jiff::tz::db()
        .get(name)
        .or_else(|_| TimeZoneDatabase::bundled().get(name))
        .map_err(|_| {
            format!(
                "unknown time zone {name:?}: use an IANA name such as \"Europe/Berlin\" or \
                 \"America/New_York\", or \"UTC\""
            )
        })
}

/// An IPv4 or IPv6 network (`10.1.0.0/16`), or one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cidr {
    addr: IpAddr,
    bits: u8,
}

impl Cidr {
    fn parse(s: &str) -> Option<Cidr> {
        let s = s.trim();
        let (addr, bits) = match s.split_once('/') {
            Some((a, b)) => (a.parse::<IpAddr>().ok()?, Some(b.parse::<u8>().ok()?)),
            None => (s.parse::<IpAddr>().ok()?, None),
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let bits = bits.unwrap_or(max);
        if bits > max {
            return None;
        }
        // A v4-mapped network (`::ffff:10.0.0.0/104`) is the IPv4 network it maps: peers are
        // compared in canonical form, so its prefix counts IPv4 bits.
        let canonical = addr.to_canonical();
        let bits = match (addr, canonical) {
            (IpAddr::V6(_), IpAddr::V4(_)) => bits.checked_sub(96)?,
            _ => bits,
        };
        Some(Cidr {
            addr: canonical,
            bits,
        })
    }

    fn prefix_bits(&self) -> u8 {
        self.bits
    }

    fn contains(&self, ip: IpAddr) -> bool {
        let mask = |bits: u8, width: u32| -> u128 {
            if bits == 0 {
                0
            } else {
                (u128::MAX << (width - u32::from(bits))) & (u128::MAX >> (128 - width))
            }
        };
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let m = mask(self.bits, 32);
                u128::from(u32::from(net)) & m == u128::from(u32::from(ip)) & m
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let m = mask(self.bits, 128);
                u128::from(net) & m == u128::from(ip) & m
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests;
