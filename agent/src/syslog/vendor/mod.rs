//! The vendor parser chain (seed 002): after the syslog header is parsed, each vendor parser in
//! [`VENDORS`] looks at it in turn; the first that claims the line adds a machine tag (e.g.
//! `PAN_TRAFFIC`), the vendor's severity when it has one, and named fields as event tags.
//!
//! Adding a vendor is one new module with a `pub(super) fn parse(&Header) -> Option<VendorFields>`
//! and one line in [`VENDORS`]. Every parser runs on every syslog line (340k lines/s on the
//! agent's budget), so each starts with a cheap test of a prefix or the app name, allocates
//! nothing before it claims the line, and uses no regular expressions.

mod cisco;
mod filterlog;
mod fortinet;
mod juniper;
mod panos;

use std::borrow::Cow;

use jiff::Timestamp;
use jiff::tz::TimeZone;
use syslog_loose::StructuredElement;
use weir_common::Severity;

/// A vendor parser: claims a line by returning its fields, or passes with `None`.
pub type VendorParser = fn(&Header<'_>) -> Option<VendorFields>;

/// The chain, cheapest test first. The first parser that returns `Some` wins.
static VENDORS: &[VendorParser] = &[
    filterlog::parse,
    juniper::parse,
    panos::parse,
    fortinet::parse,
    cisco::parse,
];

/// Runs the chain on one parsed header.
pub fn classify(header: &Header<'_>) -> Option<VendorFields> {
    VENDORS.iter().find_map(|parse| parse(header))
}

/// What the syslog parser knows about a line when the vendors see it. All text is borrowed
/// from the message.
#[derive(Debug, Clone, Copy)]
pub struct Header<'a> {
    /// Everything after the PRI (the whole line when there is none), trimmed.
    pub text: &'a str,
    /// RFC 3164: the content from the tag (app name) on, unsplit; RFC 5424: the MSG;
    /// unparsed lines: `text`.
    pub body: &'a str,
    /// RFC 3164: the content from the hostname on (what a header parser took for the hostname
    /// may be a vendor's field); otherwise `body`.
    pub from_host: &'a str,
    /// The message as the header parser split it off.
    pub message: &'a str,
    pub hostname: Option<&'a str>,
    pub appname: Option<&'a str>,
    /// RFC 5424 MSGID.
    pub msgid: Option<&'a str>,
    pub structured_data: &'a [StructuredElement<&'a str>],
    /// An RFC 5424 header was parsed.
    pub rfc5424: bool,
    /// The syslog header carried a timestamp.
    pub has_timestamp: bool,
    /// The sender's zone, for device timestamps that carry none.
    pub tz: &'a TimeZone,
    pub received_at: Timestamp,
}

/// What a vendor parser found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VendorFields {
    /// Vendor name, kept as tag `vendor` (e.g. `cisco`).
    pub vendor: &'static str,
    /// The event's machine tag (e.g. `CISCO_LINK_UPDOWN`, `PAN_TRAFFIC`).
    pub tag: Option<String>,
    /// The vendor's own severity, which replaces the PRI's.
    pub severity: Option<Severity>,
    /// Named fields, added to the event's tags (prefixed with the vendor, e.g. `pan.src_ip`).
    pub fields: Vec<(String, String)>,
    /// Device name, used when the syslog header had none.
    pub hostname: Option<String>,
    /// The header's hostname is wrong (a vendor field taken for it): use `hostname` anyway,
    /// or the sender address when there is none.
    pub replace_hostname: bool,
    /// The device's own timestamp, when it is better than the header's.
    pub event_time: Option<Timestamp>,
    /// A cleaner message than the header parser's (e.g. with a vendor header removed).
    pub message: Option<String>,
}

impl VendorFields {
    fn new(vendor: &'static str) -> VendorFields {
        VendorFields {
            vendor,
            ..VendorFields::default()
        }
    }

    /// Adds `<prefix>.<name>` = `value`, skipping empty values.
    fn field(&mut self, prefix: &str, name: &str, value: &str) {
        if !value.is_empty() {
            // Built by hand: `format!` costs several times more on this path.
            let mut key = String::with_capacity(prefix.len() + 1 + name.len());
            key.push_str(prefix);
            key.push('.');
            key.push_str(name);
            self.fields.push((key, value.to_string()));
        }
    }
}

/// An upper-case machine tag from parts: `["pan", "traffic"]` -> `PAN_TRAFFIC`; anything but
/// ASCII letters and digits becomes `_`.
fn machine_tag(parts: &[&str]) -> String {
    let mut tag = String::new();
    for part in parts.iter().filter(|p| !p.is_empty()) {
        if !tag.is_empty() {
            tag.push('_');
        }
        tag.extend(part.chars().map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        }));
    }
    tag
}

/// Most CSV columns split off one line; the rest stays in the last one. No vendor names a
/// column beyond this, and it bounds the work a line of commas can cause.
const MAX_COLUMNS: usize = 128;

/// Splits one CSV record: `"`-quoted fields may hold commas, `""` is a quote; an unterminated
/// quote runs to the end. Quoted fields are copied, the rest borrowed.
fn csv_fields(line: &str) -> Vec<Cow<'_, str>> {
    let mut out = Vec::with_capacity(64);
    let mut rest = line;
    loop {
        if out.len() == MAX_COLUMNS - 1 {
            out.push(Cow::Borrowed(rest));
            return out;
        }
        if let Some(quoted) = rest.strip_prefix('"') {
            let mut value = String::new();
            let mut i = 0;
            let bytes = quoted.as_bytes();
            let mut end = None;
            while i < bytes.len() {
                if bytes[i] == b'"' {
                    if bytes.get(i + 1) == Some(&b'"') {
                        value.push('"');
                        i += 2;
                        continue;
                    }
                    end = Some(i);
                    break;
                }
                let ch_len = quoted[i..].chars().next().map_or(1, char::len_utf8);
                value.push_str(&quoted[i..i + ch_len]);
                i += ch_len;
            }
            out.push(Cow::Owned(value));
            match end {
                Some(e) => {
                    rest = &quoted[e + 1..];
                    match rest.find(',') {
                        Some(c) => rest = &rest[c + 1..],
                        None => return out,
                    }
                }
                None => return out,
            }
        } else {
            match rest.find(',') {
                Some(c) => {
                    out.push(Cow::Borrowed(&rest[..c]));
                    rest = &rest[c + 1..];
                }
                None => {
                    out.push(Cow::Borrowed(rest));
                    return out;
                }
            }
        }
    }
}

/// Severity from a vendor's level word (`informational`, `notice`, `high`, `medium`, ...).
fn severity_word(word: &str) -> Option<Severity> {
    let w = word.trim();
    if let Ok(s) = w.parse::<Severity>() {
        return Some(s);
    }
    Some(match w.to_ascii_lowercase().as_str() {
        "high" => Severity::Error,
        "medium" => Severity::Warning,
        "low" => Severity::Info,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_and_empties() {
        let f = csv_fields(r#"1,,"a, b","say ""hi""",x"#);
        assert_eq!(f, ["1", "", "a, b", "say \"hi\"", "x"]);
        let f = csv_fields(r#"a,"unterminated, still"#);
        assert_eq!(f, ["a", "unterminated, still"]);
        assert_eq!(csv_fields(""), [""]);
        assert_eq!(csv_fields("a,"), ["a", ""]);
        let many = ",".repeat(10_000);
        let f = csv_fields(&many);
        assert_eq!(f.len(), MAX_COLUMNS);
        assert_eq!(f[MAX_COLUMNS - 1].len(), 10_000 - (MAX_COLUMNS - 1));
    }

    #[test]
    fn machine_tags() {
        assert_eq!(machine_tag(&["pan", "traffic"]), "PAN_TRAFFIC");
        assert_eq!(
            machine_tag(&["FORTINET", "utm", "app-ctrl"]),
            "FORTINET_UTM_APP_CTRL"
        );
        assert_eq!(machine_tag(&["x", ""]), "X");
    }

    #[test]
    fn severity_words() {
        assert_eq!(severity_word("informational"), Some(Severity::Info));
        assert_eq!(severity_word("critical"), Some(Severity::Critical));
        assert_eq!(severity_word("high"), Some(Severity::Error));
        assert_eq!(severity_word("medium"), Some(Severity::Warning));
        assert_eq!(severity_word("emergency"), Some(Severity::Critical));
        assert_eq!(severity_word("bogus"), None);
    }
}
