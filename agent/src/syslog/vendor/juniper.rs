//! Juniper JunOS: RFC 5424 lines whose structured data is `[junos@2636.… key="value" …]` and
//! whose MSGID is the event tag (`SNMP_TRAP_LINK_DOWN`, `RT_FLOW_SESSION_DENY`, ...); the same
//! carried inside an RFC 3164 line from a `junos-*` relay; and NIL-header lines in which JunOS
//! repeats the hostname before `process: text` (also sent as `<166> ` without the version).
//!
//! Tag: the JunOS event name; fields: `junos.process`, and for embedded structured data its
//! parameters as `junos.<param>` (parsed RFC 5424 SD is already in `sd.*` tags).

use super::{Header, VendorFields};

pub(super) fn parse(h: &Header<'_>) -> Option<VendorFields> {
    if h.structured_data.iter().any(|e| e.id.starts_with("junos@")) {
        let mut v = VendorFields::new("juniper");
        v.tag = h.msgid.filter(|m| is_event_name(m)).map(str::to_string);
        return Some(v);
    }
    if h.appname.is_some_and(|a| a.starts_with("junos")) {
        return embedded(h.message);
    }
    // NIL fields, then the hostname again: `- - - - host process: text`.
    let host = h.hostname.filter(|_| h.rfc5424)?;
    let rest = h.message.strip_prefix(host)?.strip_prefix(' ')?;
    let mut v = VendorFields::new("juniper");
    // `process: text` or `node1.fpc0 EVENT_NAME: text`.
    for word in rest.split(' ').take(2) {
        if let Some(name) = word.strip_suffix(':') {
            if is_event_name(name) {
                v.tag = Some(name.to_string());
            } else {
                v.field("junos", "process", name);
            }
            break;
        }
    }
    v.message = Some(rest.to_string());
    Some(v)
}

/// `2017-09-23T13:54:54.803Z host RT_FLOW - RT_FLOW_SESSION_DENY [junos@2636… k="v" …] text`.
fn embedded(message: &str) -> Option<VendorFields> {
    let open = message.find("[junos@")?;
    let mut v = VendorFields::new("juniper");
    v.tag = message[..open]
        .split_whitespace()
        .last()
        .filter(|w| is_event_name(w))
        .map(str::to_string);
    let mut params = &message[open..];
    params = &params[params.find(' ').unwrap_or(params.len())..];
    // key="value" pairs up to the closing `]`; `\"`, `\]` and `\\` are escapes.
    // At most 64 parameters: JunOS sends fewer than 40.
    while let Some(eq) = params.find("=\"").filter(|_| v.fields.len() < 64) {
        let key = params[..eq].trim_start();
        if key.is_empty() || key.contains([' ', ']']) {
            break;
        }
        let after = &params[eq + 2..];
        let mut value = String::new();
        let mut end = None;
        let mut chars = after.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, n)) = chars.next() {
                        value.push(n);
                    }
                }
                '"' => {
                    end = Some(i);
                    break;
                }
                c => value.push(c),
            }
        }
        v.field("junos", key, &value);
        let Some(end) = end else { break };
        params = &after[end + 1..];
        if params.starts_with(']') {
            break;
        }
    }
    Some(v)
}

/// JunOS event names are upper case with underscores: `SNMP_TRAP_LINK_DOWN`.
fn is_event_name(s: &str) -> bool {
    s.len() >= 3
        && s.contains('_')
        && s.bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
}
