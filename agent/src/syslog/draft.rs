//! The syslog hot path without the owned event: a line becomes a [`Draft`] (text borrowed from
//! the line, tags in a small sorted `Vec`), written straight into the queue's postcard bytes
//! and hashed for dedup from there. Building an [`Event`] only to encode it and drop it cost
//! about a third of the agent's work per line (its strings, the tag B-tree, the frees).
//!
//! The draft covers the common line: UTF-8, no vendor parser claims it, no panic. Anything
//! else takes the owned path ([`Parser::parse`]), which stays the definition of what a line
//! becomes: a vendor line is built as an [`Event`] from the draft and merged as
//! [`Parser::parse`] merges it; a non-UTF-8 line is parsed owned; a panic becomes the owned
//! path's unparsed event, counted and logged once (`parse::panicked`), not parsed again. The
//! tests hold the two paths to the same bytes and dedup tag for every line of the shared
//! corpora and for generated lines (`draft/tests.rs`).

use std::borrow::Cow;
use std::net::IpAddr;

use jiff::Timestamp;
use syslog_loose::{SyslogFacility, SyslogSeverity};
use weir_common::{Event, InputKind, Severity};

use super::parse::{
    Parser, Parts, PeerText, head, merge_vendor, offset_in, panicked, unparsed_header,
};
use super::vendor;
use crate::dedup::{DedupRules, KeyField};
use crate::queue::{Encoded, EventFields};

/// What [`Parser::draft`] made of a line.
#[derive(Debug)]
pub(crate) enum Parsed<'a> {
    Draft(Draft<'a>),
    /// Lines the draft does not represent, built by the owned path.
    Event(Event),
}

/// A syslog event borrowed from its line: the fields [`Parser::parse`] would set, the others
/// being an input event's constants (source `syslog`, count 1, first and last seen at receipt).
#[derive(Debug)]
pub(crate) struct Draft<'a> {
    /// The header's hostname; `None`: the sender's address.
    hostname: Option<&'a str>,
    severity: Severity,
    message: &'a str,
    event_time: Timestamp,
    received_at: Timestamp,
    tags: Tags<'a>,
    raw: &'a [u8],
    peer: PeerText,
}

/// Tags in increasing key order, each key once: a `BTreeMap<String, String>`'s contents, for
/// the handful of tags a syslog line has.
#[derive(Debug)]
struct Tags<'a>(Vec<(Cow<'a, str>, Cow<'a, str>)>);

impl<'a> Tags<'a> {
    /// As `BTreeMap::insert`: a key already there gets the new value.
    fn insert(&mut self, key: impl Into<Cow<'a, str>>, value: impl Into<Cow<'a, str>>) {
        let (key, value) = (key.into(), value.into());
        // The draft inserts its fixed tags in key order, so most inserts append.
        if self.0.last().is_none_or(|(k, _)| k.as_ref() < key.as_ref()) {
            self.0.push((key, value));
            return;
        }
        match self
            .0
            .binary_search_by(|(k, _)| k.as_ref().cmp(key.as_ref()))
        {
            Ok(i) => self.0[i].1 = value,
            Err(i) => self.0.insert(i, (key, value)),
        }
    }

    /// Appends a tag whose key is known to sort after every key already there (the draft's
    /// fixed tags, pushed in key order): [`Tags::insert`]'s comparison and `Cow` conversions
    /// cost ~60 instructions a tag, this a plain push. Tests (debug builds) check the order.
    fn push(&mut self, key: &'static str, value: &'a str) {
        debug_assert!(
            self.0.last().is_none_or(|(k, _)| k.as_ref() < key),
            "tag {key:?} pushed out of key order"
        );
        self.0.push((Cow::Borrowed(key), Cow::Borrowed(value)));
    }

    /// A linear scan: a syslog line has five or six tags, and comparing lengths first skips
    /// most of them without touching their bytes (the binary search's string comparisons
    /// cost ~150 instructions a dedup key).
    fn get(&self, key: &str) -> Option<&str> {
        (self.0.iter())
            .find(|(k, _)| k.len() == key.len() && k.as_bytes() == key.as_bytes())
            .map(|(_, v)| v.as_ref())
    }
}

impl Parser {
    /// [`Parser::parse`] for the hot path: the line as a [`Draft`] when it is a plain one, else
    /// the owned event. Never fails; panics are caught as [`Parser::parse`] catches them.
    pub(crate) fn draft<'a>(
        &self,
        bytes: &'a [u8],
        peer: IpAddr,
        received_at: Timestamp,
    ) -> Parsed<'a> {
        let Ok(text) = std::str::from_utf8(bytes) else {
            return Parsed::Event(self.parse(bytes, peer, received_at));
        };
        let guarded =
            std::panic::AssertUnwindSafe(|| self.draft_unguarded(text, bytes, peer, received_at));
        match std::panic::catch_unwind(guarded) {
            Ok(parsed) => parsed,
            // What the owned path makes of a panic, without parsing the line again (which
            // would panic, and be reported, twice).
            Err(_) => Parsed::Event(panicked(bytes, peer, received_at)),
        }
    }

    /// [`Parser::draft`] of UTF-8 `text` (= `bytes`) without the panic guard, so the property
    /// tests see panics. Mirrors [`Parser::parse_unguarded`] step by step.
    pub(crate) fn draft_unguarded<'a>(
        &self,
        text: &'a str,
        bytes: &'a [u8],
        peer: IpAddr,
        received_at: Timestamp,
    ) -> Parsed<'a> {
        #[cfg(test)]
        super::parse::test_panic::enter();
        let tz = self.zone_for(peer);
        let head = head(text, tz, received_at);
        let mut d = Draft {
            hostname: None,
            severity: Severity::Info,
            message: "",
            event_time: received_at,
            received_at,
            // facility, syslog_severity, appname, procid and one more without reallocating.
            tags: Tags(Vec::with_capacity(5)),
            raw: bytes,
            peer: PeerText::of(peer),
        };
        let (claimed, header_has_host) = match &head.parsed {
            Some(msg) => {
                let p = Parts::of(msg, &head, tz, received_at);
                d.hostname = p.hostname;
                d.severity = p.severity.unwrap_or(Severity::Info);
                d.message = p.message;
                // Tags in key order (see `Tags::insert`): appname, facility, msgid, procid,
                // sd.*, syslog_severity, weir_no_pri.
                if let Some(v) = p.appname {
                    d.tags.push("appname", v);
                }
                let (facility, severity, no_pri) = pri(msg.facility, msg.severity);
                d.tags.push("facility", facility.as_str());
                if let Some(v) = p.msgid {
                    d.tags.push("msgid", v);
                }
                match msg.procid {
                    Some(syslog_loose::ProcId::Name(name)) => d.tags.push("procid", name),
                    Some(syslog_loose::ProcId::PID(pid)) => match pid_text(head.line, msg, pid) {
                        Some(text) => d.tags.push("procid", text),
                        None => d.tags.insert("procid", pid.to_string()),
                    },
                    None => {}
                }
                for element in &msg.structured_data {
                    for (name, value) in element.params() {
                        d.tags.insert(format!("sd.{}.{}", element.id, name), value);
                    }
                }
                d.tags.push("syslog_severity", severity.as_str());
                if no_pri {
                    d.tags.push("weir_no_pri", "true");
                }
                if let Some(t) = p.event_time {
                    d.event_time = t;
                }
                let header = p.header(msg, head.after_pri, tz, received_at);
                (vendor::classify(&header), p.hostname.is_some())
            }
            None => {
                let text = head.after_pri.trim_start();
                let (facility, severity) = match head.pri {
                    Some(p) => syslog_loose::decompose_pri(p),
                    None => (None, None),
                };
                d.severity = severity.map_or(Severity::Info, |s| Severity::from_syslog(s as u8));
                d.message = text;
                let (facility, severity, no_pri) = pri(facility, severity);
                d.tags.push("facility", facility.as_str());
                d.tags.push("syslog_severity", severity.as_str());
                if no_pri {
                    d.tags.push("weir_no_pri", "true");
                }
                (
                    vendor::classify(&unparsed_header(text, tz, received_at)),
                    false,
                )
            }
        };
        match claimed {
            None => Parsed::Draft(d),
            Some(v) => {
                let mut ev = d.into_event();
                merge_vendor(&mut ev, v, header_has_host);
                Parsed::Event(ev)
            }
        }
    }
}

/// A numeric PROCID as the line spells it, when that is how the owned path writes it
/// (`pid.to_string()`: no sign, no leading zero), so the draft borrows it instead of
/// formatting and allocating. The PROCID follows the APP-NAME and one byte (`[` in RFC 3164,
/// a space in RFC 5424); `None` sends the caller to `to_string`.
fn pid_text<'a>(line: &'a str, msg: &syslog_loose::Message<&'a str>, pid: i32) -> Option<&'a str> {
    let app = msg.appname?;
    let rest = line.get(offset_in(line, app)? + app.len() + 1..)?;
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    let text = &rest[..digits];
    let canonical = !text.is_empty() && (text == "0" || !text.starts_with('0'));
    (canonical && text.parse::<i32>().ok()? == pid).then_some(text)
}

/// The PRI's halves, and whether there was none: then RFC 3164's default `user.notice`, which
/// the owned path (`pri_tags`, `no_pri`) also tags `weir_no_pri`.
fn pri(
    facility: Option<SyslogFacility>,
    severity: Option<SyslogSeverity>,
) -> (SyslogFacility, SyslogSeverity, bool) {
    match (facility, severity) {
        (Some(f), Some(s)) => (f, s, false),
        _ => (SyslogFacility::LOG_USER, SyslogSeverity::SEV_NOTICE, true),
    }
}

impl<'a> Draft<'a> {
    /// Adds a tag, replacing one of the same key (as `BTreeMap::insert` on an event's tags).
    pub(crate) fn insert_tag(&mut self, key: &'a str, value: &'a str) {
        self.tags.insert(key, value);
    }

    fn hostname(&self) -> &str {
        self.hostname.unwrap_or_else(|| self.peer.as_str())
    }

    /// The owned event with these fields, as [`Parser::parse`] builds it before the vendors.
    fn into_event(self) -> Event {
        let mut ev = Event::new(
            InputKind::Syslog,
            "syslog",
            self.hostname(),
            self.severity,
            self.message,
            self.received_at,
        );
        ev.peer = Some(self.peer.as_str().to_string());
        ev.event_time = self.event_time;
        ev.tags = (self.tags.0.into_iter())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        ev.raw_payload = Some(self.raw.to_vec());
        ev
    }

    /// The queue record [`DedupRules::encode`] makes of the owned event, with its dedup tag.
    pub(crate) fn encode(&self, rules: &DedupRules, received_at_us: i64) -> Encoded {
        let (hostname, peer) = (self.hostname(), self.peer.as_str());
        let fields = EventFields {
            source: "syslog",
            hostname,
            severity: self.severity,
            message: self.message,
            event_type: None,
            tag: None,
            input: InputKind::Syslog,
            event_time: self.event_time,
            received_at: self.received_at,
            tags: self.tags.0.iter().map(|(k, v)| (k.as_ref(), v.as_ref())),
            raw_payload: Some(self.raw),
            peer: Some(peer),
            count: 1,
            first_seen: self.received_at,
            last_seen: self.received_at,
        };
        let mut enc = Encoded::event(fields, received_at_us);
        enc.dedup = rules.tag_by(InputKind::Syslog, |f| {
            Some(match f {
                KeyField::Source => b"syslog".as_slice(),
                KeyField::Hostname => hostname.as_bytes(),
                KeyField::Severity => self.severity.as_str().as_bytes(),
                KeyField::Message => self.message.as_bytes(),
                KeyField::EventType | KeyField::Tag => return None,
                KeyField::Peer => peer.as_bytes(),
                KeyField::TagsEntry(n) => self.tags.get(n)?.as_bytes(),
            })
        });
        enc
    }
}

#[cfg(test)]
mod tests;
