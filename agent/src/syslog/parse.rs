//! Syslog message parsing: one datagram or TCP frame in, one [`Event`] out, whatever the bytes.
//!
//! RFC 5424 and RFC 3164 headers are parsed by `syslog_loose`. When neither fits (Cisco IOS
//! sequence-numbered lines, bare text), the PRI is still taken when there is one and the rest
//! becomes the message. The original bytes are always kept in `raw_payload`, also when they are
//! not UTF-8 (the message is then a lossy copy).
//!
//! Time: a header timestamp becomes `event_time`, unless it lies more than a day after the
//! receive time (a device with a wrong clock); then the receive time is used. RFC 3164 dates
//! carry no year: it is the receive year, or the previous one if that would put the date more
//! than a day in the future (a December message received in January). They carry no zone
//! either: UTC is assumed for now; per-source time zones come later.

use std::net::IpAddr;

use jiff::civil::DateTime;
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};
use syslog_loose::{IncompleteDate, Message, Variant};
use weir_common::{Event, InputKind, Severity};

/// How far ahead of the receive time a device's timestamp may be before it is not believed.
const MAX_FUTURE: SignedDuration = SignedDuration::from_secs(24 * 3600);

/// Parses one syslog message (RFC 5424, RFC 3164, or anything else) into an event. Never fails:
/// unparseable input becomes an event whose message is the text and whose host is the sender.
pub fn parse(bytes: &[u8], peer: IpAddr, received_at: Timestamp) -> Event {
    // The parser is third-party code fed by anyone who can reach the port: a panic in it must
    // cost one message, not the listener task.
    match std::panic::catch_unwind(|| parse_unguarded(bytes, peer, received_at)) {
        Ok(ev) => ev,
        Err(_) => {
            weir_common::warn_limited!(
                "syslog_parse_panic",
                %peer,
                "the syslog parser panicked on a message; kept it unparsed (tag weir_parse_failed=true)"
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
    }
}

/// [`parse`] without the panic guard, so the property tests see panics.
fn parse_unguarded(bytes: &[u8], peer: IpAddr, received_at: Timestamp) -> Event {
    let text = String::from_utf8_lossy(bytes);
    let get_year = move |date: IncompleteDate| year_for(date, received_at);
    let mut ev = match syslog_loose::parse_message_with_year_exact_tz(
        &text,
        get_year,
        Some(chrono::Utc),
        Variant::Either,
    ) {
        Ok(msg) => from_message(msg, peer, received_at),
        Err(_) => from_unparsed(&text, peer, received_at),
    };
    ev.raw_payload = Some(bytes.to_vec());
    ev
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
    ev.peer = Some(peer.to_string());
    ev
}

fn from_message(msg: Message<&str>, peer: IpAddr, received_at: Timestamp) -> Event {
    let hostname = msg
        .hostname
        .filter(|h| !h.is_empty() && *h != "-")
        .map_or_else(|| peer.to_string(), str::to_string);
    let severity = msg.severity.map(|s| Severity::from_syslog(s as u8));
    let mut ev = base_event(
        peer,
        hostname,
        severity.unwrap_or(Severity::Info),
        strip_bom(msg.msg).to_string(),
        received_at,
    );
    if severity.is_none() {
        ev.tags.insert("weir_no_pri".into(), "true".into());
    }
    if let Some(f) = msg.facility {
        ev.tags.insert("facility".into(), f.as_str().into());
    }
    for (key, value) in [("appname", msg.appname), ("msgid", msg.msgid)] {
        if let Some(v) = value.filter(|v| !v.is_empty() && *v != "-") {
            ev.tags.insert(key.into(), v.into());
        }
    }
    if let Some(p) = msg.procid {
        ev.tags.insert("procid".into(), p.to_string());
    }
    for element in &msg.structured_data {
        for (name, value) in element.params() {
            ev.tags.insert(format!("sd.{}.{}", element.id, name), value);
        }
    }
    if let Some(t) = msg.timestamp {
        ev.event_time = believable_time(t.timestamp(), t.timestamp_subsec_nanos(), received_at);
    }
    ev
}

/// Neither RFC fits: keep a valid PRI if the text starts with one, the rest is the message.
fn from_unparsed(text: &str, peer: IpAddr, received_at: Timestamp) -> Event {
    let text = strip_bom(text.trim());
    let (pri, rest) = split_pri(text);
    let (facility, severity) = match pri {
        Some(p) => syslog_loose::decompose_pri(p),
        None => (None, None),
    };
    let severity = severity.map(|s| Severity::from_syslog(s as u8));
    let mut ev = base_event(
        peer,
        peer.to_string(),
        severity.unwrap_or(Severity::Info),
        rest.trim_start().to_string(),
        received_at,
    );
    if severity.is_none() {
        ev.tags.insert("weir_no_pri".into(), "true".into());
    }
    if let Some(f) = facility {
        ev.tags.insert("facility".into(), f.as_str().into());
    }
    ev
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

/// The device's time, unless it is out of range or more than [`MAX_FUTURE`] ahead.
fn believable_time(secs: i64, nanos: u32, received_at: Timestamp) -> Timestamp {
    let latest = received_at
        .checked_add(MAX_FUTURE)
        .unwrap_or(Timestamp::MAX);
    match i32::try_from(nanos)
        .ok()
        .and_then(|n| Timestamp::new(secs, n).ok())
    {
        Some(t) if t <= latest => t,
        _ => received_at,
    }
}

/// The year for a year-less RFC 3164 date (taken as UTC): the receive year, or the one before
/// if the date would otherwise be more than a day in the future.
fn year_for((month, day, hour, minute, second): IncompleteDate, received_at: Timestamp) -> i32 {
    let year = received_at.to_zoned(TimeZone::UTC).year();
    let in_year = |y: i16| -> Option<Timestamp> {
        let dt = DateTime::new(
            y,
            i8::try_from(month).ok()?,
            i8::try_from(day).ok()?,
            i8::try_from(hour).ok()?,
            i8::try_from(minute).ok()?,
            i8::try_from(second).ok()?,
            0,
        )
        .ok()?;
        Some(dt.to_zoned(TimeZone::UTC).ok()?.timestamp())
    };
    let latest = received_at
        .checked_add(MAX_FUTURE)
        .unwrap_or(Timestamp::MAX);
    match in_year(year) {
        Some(t) if t > latest => i32::from(year) - 1,
        // Invalid dates (Feb 30) fail later, in the parser, whatever year is given.
        _ => i32::from(year),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn peer() -> IpAddr {
        "192.0.2.7".parse().unwrap()
    }

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn rfc5424_with_structured_data() {
        let line = "<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog - ID47 \
                    [exampleSDID@32473 iut=\"3\" eventSource=\"Application\" eventID=\"1011\"]\
                    [origin ip=\"192.0.2.1\"] \u{feff}An application event log entry";
        let ev = parse(line.as_bytes(), peer(), at("2003-10-12T00:00:00Z"));
        assert_eq!(ev.hostname, "mymachine.example.com");
        assert_eq!(ev.severity, Severity::Info); // notice
        assert_eq!(ev.message, "An application event log entry");
        assert_eq!(ev.event_time, at("2003-10-11T22:14:15.003Z"));
        assert_eq!(ev.received_at, at("2003-10-12T00:00:00Z"));
        assert_eq!(ev.source, "syslog");
        assert_eq!(ev.input, InputKind::Syslog);
        assert_eq!(ev.peer.as_deref(), Some("192.0.2.7"));
        assert_eq!(ev.raw_payload.as_deref(), Some(line.as_bytes()));
        let tag = |k: &str| ev.tags.get(k).map(String::as_str);
        assert_eq!(tag("facility"), Some("local4"));
        assert_eq!(tag("appname"), Some("evntslog"));
        assert_eq!(tag("msgid"), Some("ID47"));
        assert_eq!(tag("procid"), None);
        assert_eq!(tag("sd.exampleSDID@32473.iut"), Some("3"));
        assert_eq!(tag("sd.exampleSDID@32473.eventSource"), Some("Application"));
        assert_eq!(tag("sd.exampleSDID@32473.eventID"), Some("1011"));
        assert_eq!(tag("sd.origin.ip"), Some("192.0.2.1"));
        assert_eq!(tag("weir_no_pri"), None);
    }

    #[test]
    fn rfc3164_line() {
        let line =
            b"<34>Oct 11 22:14:15 mymachine su[42]: 'su root' failed for lonvick on /dev/pts/8";
        let ev = parse(line, peer(), at("2024-12-01T00:00:00Z"));
        assert_eq!(ev.hostname, "mymachine");
        assert_eq!(ev.severity, Severity::Critical); // auth.crit
        assert_eq!(ev.message, "'su root' failed for lonvick on /dev/pts/8");
        assert_eq!(ev.tags["facility"], "auth");
        assert_eq!(ev.tags["appname"], "su");
        assert_eq!(ev.tags["procid"], "42");
        // No zone in RFC 3164: taken as UTC.
        assert_eq!(ev.event_time, at("2024-10-11T22:14:15Z"));
        assert_eq!(ev.raw_payload.as_deref(), Some(&line[..]));
    }

    #[test]
    fn rfc3164_date_in_the_future_is_last_year() {
        let line = b"<13>Dec 31 23:59:00 host app: happy new year";
        let ev = parse(line, peer(), at("2025-01-01T00:00:30Z"));
        assert_eq!(ev.event_time, at("2024-12-31T23:59:00Z"));
        // Less than a day ahead (a fast device clock): still this year.
        let ev = parse(
            b"<13>Jun 02 10:00:00 host app: x",
            peer(),
            at("2025-06-01T12:00:00Z"),
        );
        assert_eq!(ev.event_time, at("2025-06-02T10:00:00Z"));
    }

    #[test]
    fn timestamps_far_in_the_future_are_not_believed() {
        let line = b"<14>1 2099-01-01T00:00:00Z host app - - - from the future";
        let now = at("2025-06-01T12:00:00Z");
        let ev = parse(line, peer(), now);
        assert_eq!(ev.event_time, now);
        assert_eq!(ev.message, "from the future");
    }

    #[test]
    fn cisco_line_keeps_pri_and_raw_bytes() {
        let line = b"<189>123: *Mar  1 00:00:05.123: %LINK-3-UPDOWN: Interface Gi0/1, changed state to down";
        let now = at("2025-06-01T12:00:00Z");
        let ev = parse(line, peer(), now);
        assert_eq!(ev.severity, Severity::Info); // local7.notice
        assert_eq!(ev.tags["facility"], "local7");
        assert_eq!(ev.raw_payload.as_deref(), Some(&line[..]));
        assert!(ev.message.contains("%LINK-3-UPDOWN"), "{}", ev.message);
        assert_eq!(ev.hostname, "192.0.2.7");
        assert!(!ev.tags.contains_key("weir_no_pri"));
    }

    #[test]
    fn non_utf8_bytes_are_kept_raw() {
        let line = b"<11>Oct 11 22:14:15 host app: caf\xe9 \xff\xfe end";
        let ev = parse(line, peer(), at("2025-06-01T12:00:00Z"));
        assert_eq!(ev.severity, Severity::Error); // user.err
        assert_eq!(ev.raw_payload.as_deref(), Some(&line[..]));
        assert!(
            ev.message.contains('\u{fffd}') && ev.message.ends_with("end"),
            "{}",
            ev.message
        );
    }

    #[test]
    fn empty_line() {
        let now = at("2025-06-01T12:00:00Z");
        let ev = parse(b"", peer(), now);
        assert_eq!(ev.message, "");
        assert_eq!(ev.hostname, "192.0.2.7");
        assert_eq!(ev.severity, Severity::Info);
        assert_eq!(ev.tags["weir_no_pri"], "true");
        assert_eq!(ev.event_time, now);
        assert_eq!(ev.raw_payload.as_deref(), Some(&b""[..]));
    }

    #[test]
    fn text_without_pri() {
        let ev = parse(b"just some text\n", peer(), at("2025-06-01T12:00:00Z"));
        assert_eq!(ev.message, "just some text");
        assert_eq!(ev.severity, Severity::Info);
        assert_eq!(ev.tags["weir_no_pri"], "true");
        let ev = parse(b"<999>not a pri", peer(), at("2025-06-01T12:00:00Z"));
        assert_eq!(ev.message, "<999>not a pri");
        assert_eq!(ev.tags["weir_no_pri"], "true");
    }

    #[test]
    fn pri_only() {
        let ev = parse(b"<3>", peer(), at("2025-06-01T12:00:00Z"));
        assert_eq!(ev.severity, Severity::Error);
        assert_eq!(ev.tags["facility"], "kern");
        assert_eq!(ev.message, "");
    }

    const SAMPLES: [&str; 5] = [
        "<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog 77 ID47 [exampleSDID@32473 iut=\"3\" eventSource=\"App\\\"x\\]\"] msg",
        "<34>Oct 11 22:14:15 mymachine su[42]: 'su root' failed for lonvick on /dev/pts/8",
        "<189>123: *Mar  1 00:00:05.123: %LINK-3-UPDOWN: Interface Gi0/1, changed state to down",
        "<13>Feb 29 2024 10:00:00 host app: leap",
        "<14>1 2024-02-29T23:59:60.999999+14:00 h a p m - x",
    ];

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let ev = parse_unguarded(&bytes, peer(), at("2025-06-01T12:00:00Z"));
            prop_assert_eq!(ev.raw_payload.as_deref(), Some(&bytes[..]));
        }

        #[test]
        fn syslog_looking_text_never_panics(s in "<[0-9]{0,4}>?[0-9]? ?[A-Za-z0-9 :.*\\[\\]=\"@-]{0,120}") {
            let _ = parse_unguarded(s.as_bytes(), peer(), at("2025-06-01T12:00:00Z"));
        }

        #[test]
        fn truncated_real_lines_never_panic(which in 0..SAMPLES.len(), cut in 0usize..200, seconds in 0i64..4_000_000_000) {
            let line = SAMPLES[which].as_bytes();
            let cut = cut.min(line.len());
            let now = Timestamp::from_second(seconds).unwrap();
            let ev = parse_unguarded(&line[..cut], peer(), now);
            prop_assert_eq!(ev.raw_payload.as_deref(), Some(&line[..cut]));
            prop_assert!(ev.event_time <= now.checked_add(MAX_FUTURE).unwrap());
        }
    }
}
