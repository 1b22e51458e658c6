//! Event search filters for `GET /api/v1/events` and the opaque page cursor.
//!
//! Every filter is optional and they combine with AND. Parsing reports the parameter and what
//! is wrong with it, for a 400 that says how to fix the request.
//!
//! Time filters (`from` inclusive, `to` exclusive) apply to the event time, the time the device
//! gave (seed 002), not the receive time.

use globset::{Glob, GlobMatcher};
use jiff::Timestamp;
use weir_common::Severity;

pub use crate::index::Access;
use crate::store::StoredEvent;

/// The raw query parameters, as strings, so every problem gets our own message.
#[derive(Debug, Default, Clone, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventParams {
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000)]
    pub limit: Option<String>,
    pub cursor: Option<String>,
    /// `error` (exactly) or `>=warning` (at least).
    pub severity: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
    /// A glob: `db-*`, `core-sw-0[1-4]`.
    pub hostname: Option<String>,
    pub source: Option<String>,
    pub site: Option<String>,
    pub agent: Option<String>,
    /// The short machine tag, e.g. `SNMP_LINK_DOWN`.
    pub tag: Option<String>,
    pub event_type: Option<String>,
    pub correlated_incident: Option<String>,
    /// Case-insensitive text in the message or the tag.
    pub q: Option<String>,
    /// Events hidden from default views (`logonly` definitions, events a correlation rule
    /// suppressed): `exclude` (default), `include`, or `only`.
    pub hidden: Option<String>,
}

/// A compiled filter.
#[derive(Debug, Default)]
pub struct EventFilter {
    severity: Option<(bool, Severity)>,
    from: Option<Timestamp>,
    to: Option<Timestamp>,
    hostname: Option<GlobMatcher>,
    source: Option<String>,
    site: Option<String>,
    agent: Option<String>,
    tag: Option<String>,
    event_type: Option<String>,
    incident: Option<String>,
    q: Option<String>,
    hidden: Hidden,
}

/// Whether a query shows events hidden from default views.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Hidden {
    #[default]
    Exclude,
    Include,
    Only,
}

impl Hidden {
    /// Whether an event that is (or is not) hidden passes.
    pub fn admits(self, hidden: bool) -> bool {
        match self {
            Hidden::Exclude => !hidden,
            Hidden::Include => true,
            Hidden::Only => hidden,
        }
    }
}

/// A bad parameter: which one and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamError {
    pub param: &'static str,
    pub message: String,
}

fn bad(param: &'static str, message: impl Into<String>) -> ParamError {
    ParamError {
        param,
        message: message.into(),
    }
}

fn time(param: &'static str, s: &str) -> Result<Timestamp, ParamError> {
    s.parse::<Timestamp>().map_err(|_| {
        bad(
            param,
            format!("{s:?} is not an RFC 3339 time with an offset, e.g. 2026-11-21T14:00:00Z"),
        )
    })
}

impl EventFilter {
    pub fn parse(p: &EventParams) -> Result<EventFilter, ParamError> {
        let mut f = EventFilter::default();
        if let Some(s) = &p.severity {
            let (at_least, name) = match s.strip_prefix(">=") {
                Some(rest) => (true, rest),
                None => (false, s.as_str()),
            };
            let sev = name
                .parse::<Severity>()
                .map_err(|e| bad("severity", format!("{e}; prefix with >= for a threshold")))?;
            f.severity = Some((at_least, sev));
        }
        f.from = p.from.as_deref().map(|s| time("from", s)).transpose()?;
        f.to = p.to.as_deref().map(|s| time("to", s)).transpose()?;
        if let (Some(a), Some(b)) = (f.from, f.to)
            && a >= b
        {
            return Err(bad("to", "must be later than `from`"));
        }
        if let Some(h) = &p.hostname {
            let glob = Glob::new(h).map_err(|e| bad("hostname", format!("bad glob: {e}")))?;
            f.hostname = Some(glob.compile_matcher());
        }
        let nonempty = |param: &'static str, v: &Option<String>| -> Result<_, ParamError> {
            match v {
                Some(s) if s.is_empty() => Err(bad(param, "must not be empty")),
                other => Ok(other.clone()),
            }
        };
        f.source = nonempty("source", &p.source)?;
        f.site = nonempty("site", &p.site)?;
        f.agent = nonempty("agent", &p.agent)?;
        f.tag = nonempty("tag", &p.tag)?;
        f.event_type = nonempty("event_type", &p.event_type)?;
        f.incident = nonempty("correlated_incident", &p.correlated_incident)?;
        f.q = nonempty("q", &p.q)?.map(|s| s.to_lowercase());
        f.hidden = match p.hidden.as_deref() {
            None | Some("exclude") => Hidden::Exclude,
            Some("include") => Hidden::Include,
            Some("only") => Hidden::Only,
            Some(other) => {
                return Err(bad(
                    "hidden",
                    format!("{other:?}: expected exclude (default), include or only"),
                ));
            }
        };
        Ok(f)
    }

    /// No filter set but (perhaps) `hidden`: every event matches, less the hidden ones unless
    /// they are included (the total is the store's size, less the hidden index's).
    pub fn is_empty(&self) -> bool {
        self.severity.is_none()
            && self.from.is_none()
            && self.to.is_none()
            && self.hostname.is_none()
            && self.source.is_none()
            && self.site.is_none()
            && self.agent.is_none()
            && self.tag.is_none()
            && self.event_type.is_none()
            && self.incident.is_none()
            && self.q.is_none()
    }

    /// Chooses how to read the store for this filter: the index most likely to be selective
    /// (an incident, a literal hostname, a site, then severities; the time index otherwise,
    /// which also answers `q` without reading events), and which checks remain.
    ///
    /// No statistics: the order reflects a NOC's data, where one site or host is a small slice
    /// of the fleet and warnings and worse are a minority.
    pub fn plan(&self) -> Plan {
        let literal_host = self
            .hostname
            .as_ref()
            .map(|g| g.glob().glob())
            .filter(|h| !h.contains(['*', '?', '[', ']', '{', '}', '\\']))
            .map(str::to_string);
        let mut ranks = [true; 5];
        if let Some((at_least, sev)) = self.severity {
            for s in Severity::ALL {
                ranks[s.rank() as usize] = if at_least { s >= sev } else { s == sev };
            }
        }
        let access = if let Some(i) = &self.incident {
            Access::Incident(i.clone())
        } else if let Some(h) = &literal_host {
            Access::Host(h.clone())
        } else if let Some(s) = &self.site {
            Access::Site(s.clone())
        } else if self.severity.is_some() && self.q.is_none() {
            Access::Severity((0..5u8).rev().filter(|r| ranks[*r as usize]).collect())
        } else {
            Access::Time
        };
        let q_in_index = match access {
            Access::Time => self.q.clone(),
            _ => None,
        };
        let needs_event = self.source.is_some()
            || self.agent.is_some()
            || self.tag.is_some()
            || self.event_type.is_some()
            || (self.hostname.is_some() && !matches!(access, Access::Host(_)))
            || (self.site.is_some() && !matches!(access, Access::Site(_)))
            || (self.incident.is_some() && !matches!(access, Access::Incident(_)))
            || (self.q.is_some() && q_in_index.is_none());
        Plan {
            access,
            from_us: self.from.map(|t| t.as_microsecond()),
            to_us: self.to.map(|t| t.as_microsecond()),
            ranks,
            hidden: self.hidden,
            q_in_index,
            needs_event,
        }
    }

    /// The event time range, `from` inclusive, `to` exclusive.
    pub fn time_range(&self) -> (Option<Timestamp>, Option<Timestamp>) {
        (self.from, self.to)
    }

    /// Whether hidden events are left out, shown too, or shown alone.
    pub fn set_hidden(&mut self, hidden: Hidden) {
        self.hidden = hidden;
    }

    /// Narrows the time range (the histogram's `from`/`to`).
    pub fn set_time_range(&mut self, from: Timestamp, to: Timestamp) {
        self.from = Some(from);
        self.to = Some(to);
    }

    pub fn matches(&self, s: &StoredEvent) -> bool {
        let e = &s.event;
        if !self.hidden.admits(s.hidden()) {
            return false;
        }
        if let Some((at_least, sev)) = self.severity
            && !(if at_least {
                e.severity >= sev
            } else {
                e.severity == sev
            })
        {
            return false;
        }
        if self.from.is_some_and(|t| e.event_time < t) || self.to.is_some_and(|t| e.event_time >= t)
        {
            return false;
        }
        if self
            .hostname
            .as_ref()
            .is_some_and(|g| !g.is_match(&e.hostname))
        {
            return false;
        }
        let eq = |want: &Option<String>, have: Option<&str>| match want {
            Some(w) => have == Some(w.as_str()),
            None => true,
        };
        if !eq(&self.source, Some(&e.source))
            || !eq(&self.site, Some(&s.site))
            || !eq(&self.agent, Some(&s.agent))
            || !eq(&self.tag, e.tag.as_deref())
            || !eq(&self.event_type, e.event_type.as_deref())
            || !eq(&self.incident, s.correlated_incident.as_deref())
        {
            return false;
        }
        if let Some(q) = &self.q {
            let in_msg = e.message.to_lowercase().contains(q.as_str());
            let in_tag = e
                .tag
                .as_deref()
                .is_some_and(|t| t.to_lowercase().contains(q.as_str()));
            if !in_msg && !in_tag {
                return false;
            }
        }
        true
    }
}

/// How the store answers a filter: see [`EventFilter::plan`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub access: Access,
    /// Event time range, µs since the epoch: `from` inclusive, `to` exclusive.
    pub from_us: Option<i64>,
    pub to_us: Option<i64>,
    /// Allowed severities by rank (debug = 0 … critical = 4).
    pub ranks: [bool; 5],
    /// Hidden events: checked on the index summaries.
    pub hidden: Hidden,
    /// `q` (lowercased), checked on the time index's copy of message and tag.
    pub q_in_index: Option<String>,
    /// Some filter needs the event itself: read it and apply [`EventFilter::matches`].
    pub needs_event: bool,
}

/// A position in the event list, which is ordered newest event time first, ties by store key
/// (newest stored first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cursor {
    pub time_us: i64,
    pub key: u64,
}

/// Cursors are the position of the last event on a page, in a versioned, opaque wrapper. The
/// next page is everything strictly after it in list order, so a cursor stays correct while
/// events arrive: new events sort before it (or, when a device reports an old event time, into
/// their place in time) and never shift or repeat what the next pages show.
pub fn encode_cursor(c: Cursor) -> String {
    format!("c2.{:x}.{:x}", c.time_us as u64, c.key)
}

pub fn decode_cursor(s: &str) -> Result<Cursor, ParamError> {
    s.strip_prefix("c2.")
        .and_then(|rest| rest.split_once('.'))
        .and_then(|(t, k)| {
            Some(Cursor {
                time_us: u64::from_str_radix(t, 16).ok()? as i64,
                key: u64::from_str_radix(k, 16).ok()?,
            })
        })
        .ok_or_else(|| {
            bad(
                "cursor",
                "not a cursor this server issued: pass `next_cursor` from the previous page unchanged",
            )
        })
}

/// A cursor over lists ordered by one number (alarm ids, incident numbers), newest first.
pub fn encode_key_cursor(key: u64) -> String {
    format!("k1.{key:x}")
}

pub fn decode_key_cursor(s: &str) -> Result<u64, ParamError> {
    s.strip_prefix("k1.")
        .and_then(|k| u64::from_str_radix(k, 16).ok())
        .ok_or_else(|| {
            bad(
                "cursor",
                "not a cursor this server issued: pass `next_cursor` from the previous page unchanged",
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_common::{Event, InputKind};

    fn stored(host: &str, sev: Severity, msg: &str, at_s: i64) -> StoredEvent {
        let t = Timestamp::from_second(1_700_000_000 + at_s).unwrap();
        let mut e = Event::new(InputKind::Syslog, "syslog", host, sev, msg, t);
        e.tag = Some("CISCO_LINK_UPDOWN".into());
        StoredEvent {
            site: "paris".into(),
            agent: "gw-1".into(),
            seq: 1,
            stored_at: t,
            correlated_incident: None,
            event: e,
        }
    }

    fn filter(f: impl FnOnce(&mut EventParams)) -> Result<EventFilter, ParamError> {
        let mut p = EventParams::default();
        f(&mut p);
        EventFilter::parse(&p)
    }

    #[test]
    fn each_filter_selects() {
        let e = stored(
            "db-prod-01",
            Severity::Error,
            "Connection REFUSED by peer",
            0,
        );
        let yes = |f: EventFilter| assert!(f.matches(&e));
        let no = |f: EventFilter| assert!(!f.matches(&e));
        yes(filter(|_| {}).unwrap());
        yes(filter(|p| p.severity = Some("error".into())).unwrap());
        no(filter(|p| p.severity = Some("warning".into())).unwrap());
        yes(filter(|p| p.severity = Some(">=warning".into())).unwrap());
        no(filter(|p| p.severity = Some(">=critical".into())).unwrap());
        yes(filter(|p| p.hostname = Some("db-*".into())).unwrap());
        no(filter(|p| p.hostname = Some("web-*".into())).unwrap());
        yes(filter(|p| p.q = Some("refused".into())).unwrap());
        yes(filter(|p| p.q = Some("link_up".into())).unwrap());
        no(filter(|p| p.q = Some("timeout".into())).unwrap());
        yes(filter(|p| p.site = Some("paris".into())).unwrap());
        no(filter(|p| p.agent = Some("gw-2".into())).unwrap());
        yes(filter(|p| p.tag = Some("CISCO_LINK_UPDOWN".into())).unwrap());
        no(filter(|p| p.event_type = Some("x".into())).unwrap());
        no(filter(|p| p.correlated_incident = Some("INC-1".into())).unwrap());
        yes(filter(|p| {
            p.from = Some("2023-11-14T22:13:20Z".into());
            p.to = Some("2023-11-14T22:13:21Z".into());
        })
        .unwrap());
        no(filter(|p| p.from = Some("2023-11-14T22:13:21Z".into())).unwrap());
        no(filter(|p| p.to = Some("2023-11-14T22:13:20Z".into())).unwrap());
    }

    #[test]
    fn bad_parameters_name_themselves() {
        let param = |f: fn(&mut EventParams)| filter(f).unwrap_err().param;
        assert_eq!(param(|p| p.severity = Some("loud".into())), "severity");
        assert_eq!(param(|p| p.from = Some("yesterday".into())), "from");
        assert_eq!(param(|p| p.hostname = Some("db-[".into())), "hostname");
        assert_eq!(param(|p| p.source = Some(String::new())), "source");
        assert_eq!(
            param(|p| {
                p.from = Some("2026-01-02T00:00:00Z".into());
                p.to = Some("2026-01-01T00:00:00Z".into());
            }),
            "to"
        );
        let e = filter(|p| p.severity = Some("loud".into())).unwrap_err();
        assert!(e.message.contains("critical"), "{}", e.message);
    }

    #[test]
    fn cursors_round_trip_and_reject_forgeries() {
        for c in [
            Cursor {
                time_us: 1_700_000_000_000_000,
                key: 12345,
            },
            Cursor {
                time_us: -5,
                key: 0,
            },
        ] {
            assert_eq!(decode_cursor(&encode_cursor(c)).unwrap(), c);
        }
        assert_eq!(decode_cursor("12345").unwrap_err().param, "cursor");
        assert!(
            decode_cursor("c1.3039").is_err(),
            "store-key cursors are gone"
        );
        assert!(decode_cursor("c2.zz.1").is_err());
        assert!(decode_cursor("c2.1").is_err());
    }
}
