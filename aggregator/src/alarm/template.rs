//! Key templates: `%tag%:%site%:%hostname%:%field.ifIndex%`, parsed once at load into
//! segments and expanded per event without allocation beyond the result.
//!
//! Tokens: `%tag%`, `%site%`, `%hostname%`, `%source%`, `%input%`, `%event_type%`,
//! `%severity%`, `%field.NAME%` (the event's tag/field `NAME`), `%vb.OID%` (an SNMP varbind:
//! the value of `vb.OID`, or of the first `vb.OID.<instance>`, without its `<type>:` prefix),
//! and `%match%` (in event definitions whose tag is a pattern: the part the `*` matched, so
//! `*_UP` can clear `%match%_DOWN`). `%%` is a literal `%`. A missing value expands to empty.

use weir_common::Event;

#[derive(Debug, Clone, PartialEq)]
enum Segment {
    Literal(String),
    Tag,
    Site,
    Hostname,
    Source,
    Input,
    EventType,
    Severity,
    Field(String),
    Varbind(String),
    Match,
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    text: String,
    segments: Vec<Segment>,
}

/// What a template is expanded against.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    pub site: &'a str,
    pub event: &'a Event,
    /// What a definition's `*` matched (empty when the definition's tag is exact).
    pub matched: &'a str,
}

impl Template {
    /// Parses `text`; the error names the bad token.
    pub fn parse(text: &str) -> Result<Template, String> {
        let mut segments = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        while let Some(start) = rest.find('%') {
            literal.push_str(&rest[..start]);
            let after = &rest[start + 1..];
            let Some(end) = after.find('%') else {
                return Err(format!(
                    "unclosed % in template {text:?} (write %% for a literal %)"
                ));
            };
            let token = &after[..end];
            rest = &after[end + 1..];
            if token.is_empty() {
                literal.push('%');
                continue;
            }
            let seg = match token {
                "tag" => Segment::Tag,
                "site" => Segment::Site,
                "hostname" => Segment::Hostname,
                "source" => Segment::Source,
                "input" => Segment::Input,
                "event_type" => Segment::EventType,
                "severity" => Segment::Severity,
                "match" => Segment::Match,
                t if t.starts_with("field.") && t.len() > 6 => Segment::Field(t[6..].to_string()),
                t if t.starts_with("vb.") && t.len() > 3 => Segment::Varbind(t.to_string()),
                t => {
                    return Err(format!(
                        "unknown token %{t}% in template {text:?}: use %tag%, %site%, %hostname%, \
                         %source%, %input%, %event_type%, %severity%, %match%, %field.NAME% or %vb.OID%"
                    ));
                }
            };
            if !literal.is_empty() {
                segments.push(Segment::Literal(std::mem::take(&mut literal)));
            }
            segments.push(seg);
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            segments.push(Segment::Literal(literal));
        }
        Ok(Template {
            text: text.to_string(),
            segments,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether the template uses `%match%`.
    pub fn uses_match(&self) -> bool {
        self.segments.contains(&Segment::Match)
    }

    pub fn expand(&self, cx: Context<'_>) -> String {
        let mut out = String::with_capacity(self.text.len() + 32);
        let e = cx.event;
        for seg in &self.segments {
            match seg {
                Segment::Literal(s) => out.push_str(s),
                Segment::Tag => out.push_str(e.tag.as_deref().unwrap_or("")),
                Segment::Site => out.push_str(cx.site),
                Segment::Hostname => out.push_str(&e.hostname),
                Segment::Source => out.push_str(&e.source),
                Segment::Input => out.push_str(e.input.as_str()),
                Segment::EventType => out.push_str(e.event_type.as_deref().unwrap_or("")),
                Segment::Severity => out.push_str(e.severity.as_str()),
                Segment::Field(name) => out.push_str(field(e, name).unwrap_or("")),
                Segment::Varbind(key) => out.push_str(varbind(e, key).unwrap_or("")),
                Segment::Match => out.push_str(cx.matched),
            }
        }
        out
    }
}

/// A named value of an event: its own fields by name, else its tags.
pub fn field<'a>(e: &'a Event, name: &str) -> Option<&'a str> {
    match name {
        "message" => Some(&e.message),
        "hostname" => Some(&e.hostname),
        "source" => Some(&e.source),
        "tag" => e.tag.as_deref(),
        "event_type" => e.event_type.as_deref(),
        "input" => Some(e.input.as_str()),
        "severity" => Some(e.severity.as_str()),
        _ => e.tags.get(name).map(String::as_str),
    }
}

/// `vb.OID` exactly, else the first `vb.OID.<instance>` (tags are ordered, so "first" is
/// stable); the `<type>:` prefix the agent writes is removed.
fn varbind<'a>(e: &'a Event, key: &str) -> Option<&'a str> {
    let value = e.tags.get(key).or_else(|| {
        let prefix = format!("{key}.");
        e.tags
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(_, v)| v)
            .next()
    })?;
    Some(value.split_once(':').map_or(value.as_str(), |(_, v)| v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::Timestamp;
    use weir_common::{InputKind, Severity};

    #[test]
    fn expands_tokens_fields_and_varbinds() {
        let mut e = Event::new(
            InputKind::SnmpTrap,
            "snmptrap",
            "sw1",
            Severity::Critical,
            "linkDown",
            Timestamp::UNIX_EPOCH,
        );
        e.tag = Some("SNMP_LINK_DOWN".into());
        e.tags
            .insert("vb.1.3.6.1.2.1.2.2.1.1.3".into(), "integer:3".into());
        e.tags.insert("ifIndex".into(), "7".into());
        let t = Template::parse(
            "%tag%:%site%:%hostname%:%vb.1.3.6.1.2.1.2.2.1.1%:%field.ifIndex%:%field.none%:100%%",
        )
        .unwrap();
        let cx = Context {
            site: "paris",
            event: &e,
            matched: "",
        };
        assert_eq!(t.expand(cx), "SNMP_LINK_DOWN:paris:sw1:3:7::100%");
        assert!(Template::parse("%nope%").unwrap_err().contains("%nope%"));
        assert!(Template::parse("%tag").unwrap_err().contains("unclosed"));
        assert!(Template::parse("%match%_DOWN").unwrap().uses_match());
    }
}
