//! Fortinet FortiGate (and FortiOS family) `key=value` logs: `date=2019-05-10 time=11:37:47
//! logid="0000000013" type="traffic" subtype="forward" level="notice" ...`.
//!
//! Values may be quoted (a quote left open runs to the end of the line), separated by runs of
//! spaces. Tag: `FORTINET_<TYPE>_<SUBTYPE>`; severity from `level=`; every pair becomes a
//! `fortinet.<key>` field (at most [`MAX_PAIRS`]); the device name is the hostname when the
//! syslog header had none; `eventtime=` (s, ms, µs or ns since the epoch) is the event time
//! when the header had no timestamp.

use std::sync::LazyLock;

use jiff::Timestamp;

use super::{Header, VendorFields, machine_tag, severity_word};

/// Most pairs kept from one line.
const MAX_PAIRS: usize = 128;

/// Keys a FortiOS line starts with.
const STARTS: &[&str] = &[
    "date=",
    "logver=",
    "devname=",
    "timestamp=",
    "eventtime=",
    "itime=",
];

/// Every line meets this parser, and a line it claims has a `type=` pair: one SIMD search for
/// that rules out most lines before the word-by-word scan (~1,000 instructions a line that
/// holds some other `=`). The body and message are slices of the text, but are searched too
/// should that ever change.
static TYPE_PAIR: LazyLock<memchr::memmem::Finder<'static>> =
    LazyLock::new(|| memchr::memmem::Finder::new("type="));

pub(super) fn parse(h: &Header<'_>) -> Option<VendorFields> {
    // The body and message are usually slices of the text: a search of the text covers them
    // (three searches of the same bytes were a tenth of the syslog parse).
    let within_text = |s: &str| crate::syslog::parse::offset_in(h.text, s).is_some();
    if [h.text, h.body, h.message]
        .iter()
        .enumerate()
        .all(|(i, s)| (i > 0 && within_text(s)) || TYPE_PAIR.find(s.as_bytes()).is_none())
    {
        return None;
    }
    let kv = [h.body, h.message]
        .into_iter()
        .find(|s| starts(s))
        .or_else(|| after_words(h.text))?;
    let pairs = pairs(kv);
    let get = |k: &str| {
        pairs
            .iter()
            .find(|(key, _)| *key == k)
            .map(|(_, v)| v.as_str())
    };
    let kind = get("type")?;
    let mut v = VendorFields::new("fortinet");
    v.tag = Some(machine_tag(&[
        "fortinet",
        kind,
        get("subtype").unwrap_or(""),
    ]));
    v.severity = get("level").and_then(severity_word);
    v.hostname = get("devname").map(str::to_string);
    // An RFC 3164 parser took `date=...` for the hostname: the device name is better.
    v.replace_hostname = h.hostname.is_some_and(|n| n.contains('='));
    if !h.has_timestamp {
        v.event_time = get("eventtime").and_then(epoch);
    }
    if let Some(msg) = get("msg").or(get("logdesc")) {
        v.message = Some(msg.to_string());
    }
    for (key, value) in &pairs {
        v.field("fortinet", key, value);
    }
    Some(v)
}

fn starts(s: &str) -> bool {
    STARTS.iter().any(|p| s.starts_with(p))
}

/// The pairs in `text`: at its start or after up to six words of a header no syslog parser
/// took (`Dec 23 11:13:03 date=...`).
fn after_words(text: &str) -> Option<&str> {
    // Every line meets this parser: without a `=` no pair can start (one SIMD scan).
    memchr::memchr(b'=', text.as_bytes())?;
    let mut at = text;
    for _ in 0..7 {
        if starts(at) {
            return Some(at);
        }
        at = at[memchr::memchr(b' ', at.as_bytes())? + 1..].trim_start_matches(' ');
    }
    None
}

/// The `key=value` pairs of `s`, values unquoted.
fn pairs(s: &str) -> Vec<(&str, String)> {
    let mut out = Vec::new();
    let mut rest = s;
    while out.len() < MAX_PAIRS {
        rest = rest.trim_start_matches(' ');
        let Some(eq) = rest.find('=') else { break };
        let key = &rest[..eq];
        if key.is_empty() || key.contains(' ') {
            // Not a pair: skip the stray word.
            match rest.find(' ') {
                Some(sp) => {
                    rest = &rest[sp..];
                    continue;
                }
                None => break,
            }
        }
        let after = &rest[eq + 1..];
        if let Some(quoted) = after.strip_prefix('"') {
            match quoted.find('"') {
                Some(end) => {
                    out.push((key, quoted[..end].to_string()));
                    rest = &quoted[end + 1..];
                }
                None => {
                    // Unterminated: the value runs to the end of the line.
                    out.push((key, quoted.trim_end().to_string()));
                    break;
                }
            }
        } else {
            let end = after.find(' ').unwrap_or(after.len());
            out.push((key, after[..end].to_string()));
            rest = &after[end..];
        }
    }
    out
}

/// Seconds, milliseconds, microseconds or nanoseconds since the epoch, by digit count.
fn epoch(s: &str) -> Option<Timestamp> {
    let n: i64 = s.parse().ok()?;
    match s.len() {
        9 | 10 => Timestamp::from_second(n).ok(),
        13 => Timestamp::from_millisecond(n).ok(),
        16 => Timestamp::from_microsecond(n).ok(),
        19 => Timestamp::from_nanosecond(i128::from(n)).ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_with_quotes_spaces_and_an_open_quote() {
        let p = pairs(
            r#"date=2019-05-10  time=11:37:47   logid="0000000013" msg="a b=c" x=1 note="open to end  "#,
        );
        let want = [
            ("date", "2019-05-10"),
            ("time", "11:37:47"),
            ("logid", "0000000013"),
            ("msg", "a b=c"),
            ("x", "1"),
            ("note", "open to end"),
        ];
        let got: Vec<(&str, &str)> = p.iter().map(|(k, v)| (*k, v.as_str())).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn epochs() {
        assert_eq!(
            epoch("1557513467369913239").unwrap().as_second(),
            1557513467
        );
        assert_eq!(epoch("1557513467").unwrap().as_second(), 1557513467);
        assert_eq!(epoch("12"), None);
    }
}
