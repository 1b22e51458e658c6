//! Turns a decoded [`Notification`] into an [`Event`], following seed 002:
//!
//! | v1 generic trap | v2 snmpTrapOID (RFC 3584)   | tag              | severity |
//! |-----------------|-----------------------------|------------------|----------|
//! | 0 coldStart     | 1.3.6.1.6.3.1.1.5.1         | SNMP_COLD_START  | error    |
//! | 1 warmStart     | 1.3.6.1.6.3.1.1.5.2         | SNMP_WARM_START  | warning  |
//! | 2 linkDown      | 1.3.6.1.6.3.1.1.5.3         | SNMP_LINK_DOWN   | critical |
//! | 3 linkUp        | 1.3.6.1.6.3.1.1.5.4         | SNMP_LINK_UP     | info     |
//! | 4 authFailure   | 1.3.6.1.6.3.1.1.5.5         | SNMP_AUTH_FAIL   | error    |
//! | 5 egpNeighLoss  | 1.3.6.1.6.3.1.1.5.6         | SNMP_EGP_LOSS    | warning  |
//! | 6 enterprise    | enterprise.0.specific       | SNMP_TRAP        | warning  |
//!
//! Any other v2c/v3 notification gets the tag `SNMP_TRAP_<snmpTrapOID>` (dotted, e.g.
//! `SNMP_TRAP_1.3.6.1.4.1.9.9.43.2.0.1`) and severity warning. The tag is also the event type.
//!
//! Fields (event `tags`), documented for operators:
//! - `snmp_version` (`v1`, `v2c`, `v3`), `snmp_pdu` (`trap` or `inform`), `snmp_trap_oid`
//!   (for v1 the RFC 3584 translation), `snmp_request_id`, `snmp_uptime` (TimeTicks),
//!   `snmp_user` and `snmp_security_level` (v3), `snmp_source` (the UDP sender's IP),
//!   `snmp_enterprise`, `snmp_generic_trap`, `snmp_specific_trap`, `snmp_agent_addr` (v1),
//!   `snmp_trailing_bytes` (bytes after the message, ignored).
//! - one `vb.<oid>` per varbind, valued `<type>:<value>`, type one of `integer`, `string`
//!   (UTF-8 text without control characters), `hex` (any other octet string, lowercase hex),
//!   `oid`, `ip`, `counter32`, `gauge32` (also Unsigned32), `timeticks`, `counter64`,
//!   `opaque` (hex), `null`, and the exceptions `noSuchObject`/`noSuchInstance`/`endOfMibView`.
//!   A repeated OID gets `#2`, `#3`, ... appended to its key.
//!
//! Hostname (the device): the value of an `snmpTrapAddress.0` varbind (1.3.6.1.6.3.18.1.3.0)
//! if present; for v1, the agent-addr field (RFC 3584 maps it to snmpTrapAddress) unless it is
//! 0.0.0.0 or loopback; otherwise the UDP source address.

use std::borrow::Cow;
use std::net::IpAddr;

use jiff::Timestamp;
use weir_common::{Event, InputKind, Severity};

use super::{Notification, SnmpVersion, Typed};

const SNMP_TRAP_ADDRESS: &str = "1.3.6.1.6.3.18.1.3.0";
const STANDARD_TRAPS: &str = "1.3.6.1.6.3.1.1.5.";
/// Longest summary message; the varbinds are all in the tags anyway.
const MAX_SUMMARY: usize = 512;

/// The seed 002 tag and severity for v1 generic trap `generic` (0..=6).
fn generic_mapping(generic: i32) -> Option<(&'static str, Severity, &'static str)> {
    Some(match generic {
        0 => ("SNMP_COLD_START", Severity::Error, "coldStart"),
        1 => ("SNMP_WARM_START", Severity::Warning, "warmStart"),
        2 => ("SNMP_LINK_DOWN", Severity::Critical, "linkDown"),
        3 => ("SNMP_LINK_UP", Severity::Info, "linkUp"),
        4 => ("SNMP_AUTH_FAIL", Severity::Error, "authenticationFailure"),
        5 => ("SNMP_EGP_LOSS", Severity::Warning, "egpNeighborLoss"),
        6 => ("SNMP_TRAP", Severity::Warning, "enterpriseSpecific"),
        _ => return None,
    })
}

/// Tag, severity and a readable name for a notification.
pub fn classify(n: &Notification) -> (String, Severity, Cow<'_, str>) {
    if let Some(v1) = &n.v1
        && let Some((tag, sev, name)) = generic_mapping(v1.generic)
    {
        let name = if v1.generic == 6 {
            Cow::Owned(format!(
                "enterpriseSpecific {} ({})",
                v1.specific, n.trap_oid
            ))
        } else {
            Cow::Borrowed(name)
        };
        return (tag.to_string(), sev, name);
    }
    if let Some(last) = n.trap_oid.strip_prefix(STANDARD_TRAPS)
        && let Ok(k @ 1..=6) = last.parse::<i32>()
        && let Some((tag, sev, name)) = generic_mapping(k - 1)
    {
        return (tag.to_string(), sev, Cow::Borrowed(name));
    }
    let mut tag = String::with_capacity(10 + n.trap_oid.len());
    tag.push_str("SNMP_TRAP_");
    tag.push_str(&n.trap_oid);
    (tag, Severity::Warning, Cow::Borrowed(&n.trap_oid))
}

/// `<type>:<value>` for a varbind value (see the module doc).
pub fn typed_value(v: &Typed) -> String {
    let mut s = String::new();
    push_typed(&mut s, v);
    s
}

/// Appends `<type>:<value>` for a varbind value.
fn push_typed(out: &mut String, v: &Typed) {
    match v {
        Typed::Integer(i) => {
            out.push_str("integer:");
            push_i64(out, *i);
        }
        Typed::Octets(b) => match std::str::from_utf8(b) {
            Ok(s) if !s.chars().any(|c| c.is_control() && c != '\t') => {
                out.push_str("string:");
                out.push_str(s);
            }
            _ => {
                out.push_str("hex:");
                push_hex(out, b);
            }
        },
        Typed::Null => out.push_str("null:"),
        Typed::Oid(o) => {
            out.push_str("oid:");
            out.push_str(o);
        }
        Typed::Ip(a) => {
            out.push_str("ip:");
            push_ipv4(out, *a);
        }
        Typed::Counter32(n) => {
            out.push_str("counter32:");
            push_u64(out, u64::from(*n));
        }
        Typed::Gauge32(n) => {
            out.push_str("gauge32:");
            push_u64(out, u64::from(*n));
        }
        Typed::TimeTicks(n) => {
            out.push_str("timeticks:");
            push_u64(out, u64::from(*n));
        }
        Typed::Counter64(n) => {
            out.push_str("counter64:");
            push_u64(out, *n);
        }
        Typed::Opaque(b) => {
            out.push_str("opaque:");
            push_hex(out, b);
        }
        Typed::Exception(e) => {
            out.push_str(e);
            out.push(':');
        }
        Typed::Other(x) => {
            out.push_str("other:");
            out.push_str(x);
        }
    }
}

/// Appends `n` in decimal, without the formatting machinery (which costs several hundred
/// instructions a number: OIDs and varbind values are the bulk of a trap's text).
#[inline]
pub(crate) fn push_u64(out: &mut String, n: u64) {
    // Most OID arcs are one digit.
    if n < 10 {
        out.push(char::from(b'0' + n as u8));
    } else {
        push_digits(out, n);
    }
}

fn push_digits(out: &mut String, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    // One char at a time: cheaper than validating the slice for one `push_str`.
    for &d in &digits[i..] {
        out.push(char::from(d));
    }
}

fn push_i64(out: &mut String, n: i64) {
    if n < 0 {
        out.push('-');
    }
    push_u64(out, n.unsigned_abs());
}

/// Appends an OID's arcs, dotted (`Oid`'s `Display` without the formatting machinery).
pub(crate) fn push_oid(out: &mut String, arcs: &[u32]) {
    for (i, &arc) in arcs.iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        push_u64(out, u64::from(arc));
    }
}

/// An OID's dotted text.
pub(crate) fn oid_string(arcs: &[u32]) -> String {
    // Most arcs are one to three digits.
    let mut s = String::with_capacity(arcs.len() * 3);
    push_oid(&mut s, arcs);
    s
}

/// Appends an IPv4 address, dotted (`Display` without the formatting machinery).
fn push_ipv4(out: &mut String, a: std::net::Ipv4Addr) {
    for (i, octet) in a.octets().into_iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        push_u64(out, u64::from(octet));
    }
}

/// An IP address's text; IPv4-mapped IPv6 addresses as IPv4.
fn ip_string(ip: IpAddr) -> String {
    match ip.to_canonical() {
        IpAddr::V4(a) => {
            let mut s = String::with_capacity(15);
            push_ipv4(&mut s, a);
            s
        }
        v6 => v6.to_string(),
    }
}

/// Appends lowercase hex.
fn push_hex(out: &mut String, b: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    out.reserve(b.len() * 2);
    for &x in b {
        out.push(char::from(DIGITS[usize::from(x >> 4)]));
        out.push(char::from(DIGITS[usize::from(x & 15)]));
    }
}

/// The device address: snmpTrapAddress.0, else a usable v1 agent-addr, else the UDP source
/// (`source_text` is its text, formatted once by the caller).
fn device(n: &Notification, source_text: &str) -> String {
    for (oid, v) in &n.varbinds {
        if oid == SNMP_TRAP_ADDRESS
            && let Typed::Ip(a) = v
        {
            return ip_string(IpAddr::V4(*a));
        }
    }
    if let Some(v1) = &n.v1 {
        let a = v1.agent_addr;
        if !a.is_unspecified() && !a.is_loopback() {
            return ip_string(IpAddr::V4(a));
        }
    }
    source_text.to_string()
}

/// Below this many varbinds, repeated OIDs are found by comparing with the earlier ones;
/// above it, counted in a map (a PDU repeating one OID thousands of times stays linear).
const LINEAR_REPEATS: usize = 16;

/// Builds the event. `raw` is the whole datagram.
pub fn to_event(
    n: &Notification,
    source: std::net::SocketAddr,
    raw: &[u8],
    at: Timestamp,
) -> Event {
    to_classified_event(n, classify(n), source, raw, at)
}

/// [`to_event`] for a notification already [`classify`]'d (the receive path classifies first,
/// so a trap the drop policy discards is never built into an event).
pub fn to_classified_event(
    n: &Notification,
    (tag, severity, name): (String, Severity, Cow<'_, str>),
    source: std::net::SocketAddr,
    raw: &[u8],
    at: Timestamp,
) -> Event {
    let source_text = ip_string(source.ip());
    let host = device(n, &source_text);
    let version = match n.version {
        SnmpVersion::V1 => "v1",
        SnmpVersion::V2c => "v2c",
        SnmpVersion::V3 => "v3",
    };
    let pdu = if n.inform { "inform" } else { "trap" };
    let mut msg = String::with_capacity(64 + name.len() + raw.len().min(MAX_SUMMARY));
    for part in ["SNMP ", version, " ", pdu, " ", &name, " from ", &host] {
        msg.push_str(part);
    }
    if !n.varbinds.is_empty() {
        msg.push(':');
    }
    let mut t = std::collections::BTreeMap::new();
    // Repeated OIDs get `#2`, `#3`, ...
    let mut repeats: std::collections::HashMap<&str, u32> = std::collections::HashMap::new();
    for (i, (oid, v)) in n.varbinds.iter().enumerate() {
        let mut value = String::with_capacity(16);
        push_typed(&mut value, v);
        if msg.len() < MAX_SUMMARY {
            msg.push(' ');
            msg.push_str(oid);
            msg.push('=');
            msg.push_str(&value);
        }
        let mut seen = if n.varbinds.len() <= LINEAR_REPEATS {
            1 + n.varbinds[..i].iter().filter(|(o, _)| o == oid).count() as u32
        } else {
            let seen = repeats.entry(oid.as_str()).or_insert(0);
            *seen += 1;
            *seen
        };
        let vb_key = |seen: u32| {
            let mut key = String::with_capacity(oid.len() + 8);
            key.push_str("vb.");
            key.push_str(oid);
            if seen > 1 {
                key.push('#');
                push_u64(&mut key, u64::from(seen));
            }
            key
        };
        let mut key = vb_key(seen);
        // A literal `#n` suffix in a sender's OID text cannot collide: OIDs are dotted numbers,
        // but stay safe if a decoder ever yields otherwise.
        while t.contains_key(&key) {
            seen += 1;
            key = vb_key(seen);
        }
        if let Some(s) = repeats.get_mut(oid.as_str()) {
            *s = seen;
        }
        t.insert(key, value);
    }
    if msg.len() > MAX_SUMMARY {
        let mut cut = MAX_SUMMARY;
        while !msg.is_char_boundary(cut) {
            cut -= 1;
        }
        msg.truncate(cut);
        msg.push('…');
    }
    // One line: varbind text may hold newlines or tabs.
    if memchr::memchr3(b'\n', b'\r', b'\t', msg.as_bytes()).is_some() {
        msg = msg.replace(['\n', '\r', '\t'], " ");
    }
    t.insert("snmp_version".into(), version.into());
    t.insert("snmp_pdu".into(), pdu.into());
    t.insert("snmp_trap_oid".into(), n.trap_oid.clone());
    t.insert("snmp_source".into(), source_text.clone());
    if let Some(r) = n.request_id {
        let mut s = String::with_capacity(11);
        push_i64(&mut s, i64::from(r));
        t.insert("snmp_request_id".into(), s);
    }
    if let Some(u) = n.uptime {
        let mut s = String::with_capacity(10);
        push_u64(&mut s, u64::from(u));
        t.insert("snmp_uptime".into(), s);
    }
    if let Some(u) = &n.user {
        t.insert("snmp_user".into(), u.clone());
    }
    if let Some(l) = n.security_level {
        t.insert("snmp_security_level".into(), l.into());
    }
    if let Some(v1) = &n.v1 {
        t.insert("snmp_enterprise".into(), v1.enterprise.clone());
        t.insert("snmp_generic_trap".into(), v1.generic.to_string());
        t.insert("snmp_specific_trap".into(), v1.specific.to_string());
        t.insert("snmp_agent_addr".into(), v1.agent_addr.to_string());
    }
    if n.trailing_bytes > 0 {
        t.insert("snmp_trailing_bytes".into(), n.trailing_bytes.to_string());
    }
    let mut ev = Event::new(InputKind::SnmpTrap, "snmp", host, severity, msg, at);
    ev.tags = t;
    ev.tag = Some(tag.clone());
    ev.event_type = Some(tag);
    ev.raw_payload = Some(raw.to_vec());
    // The sender's address without its (ephemeral) port, as syslog records it: a port would
    // make every trap a distinct dedup key.
    ev.peer = Some(source_text);
    ev
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snmp::V1Fields;
    use std::net::Ipv4Addr;

    fn v2(oid: &str, vbs: Vec<(String, Typed)>) -> Notification {
        Notification {
            version: SnmpVersion::V2c,
            inform: false,
            user: None,
            security_level: None,
            request_id: Some(7),
            uptime: Some(100),
            trap_oid: oid.into(),
            v1: None,
            varbinds: vbs,
            trailing_bytes: 0,
        }
    }

    #[test]
    fn seed_002_table_for_v1_and_v2() {
        let expect = [
            ("SNMP_COLD_START", Severity::Error),
            ("SNMP_WARM_START", Severity::Warning),
            ("SNMP_LINK_DOWN", Severity::Critical),
            ("SNMP_LINK_UP", Severity::Info),
            ("SNMP_AUTH_FAIL", Severity::Error),
            ("SNMP_EGP_LOSS", Severity::Warning),
            ("SNMP_TRAP", Severity::Warning),
        ];
        for (g, (tag, sev)) in expect.iter().enumerate() {
            let mut n = v2("1.3.6.1.6.3.1.1.5.1", vec![]);
            n.version = SnmpVersion::V1;
            n.v1 = Some(V1Fields {
                enterprise: "1.3.6.1.4.1.9".into(),
                agent_addr: Ipv4Addr::new(10, 0, 0, 1),
                generic: g as i32,
                specific: 0,
            });
            let (t, s, _) = classify(&n);
            assert_eq!((t.as_str(), s), (*tag, *sev), "generic {g}");
            if g < 6 {
                let n = v2(&format!("1.3.6.1.6.3.1.1.5.{}", g + 1), vec![]);
                let (t, s, _) = classify(&n);
                assert_eq!((t.as_str(), s), (*tag, *sev), "v2 oid for generic {g}");
            }
        }
        let (t, s, _) = classify(&v2("1.3.6.1.4.1.9.9.43.2.0.1", vec![]));
        assert_eq!(t, "SNMP_TRAP_1.3.6.1.4.1.9.9.43.2.0.1");
        assert_eq!(s, Severity::Warning);
        // Not a standard trap: 5.7 and 5.10 are not in the table.
        assert_eq!(
            classify(&v2("1.3.6.1.6.3.1.1.5.7", vec![])).0,
            "SNMP_TRAP_1.3.6.1.6.3.1.1.5.7"
        );
        assert_eq!(
            classify(&v2("1.3.6.1.6.3.1.1.5.10", vec![])).0,
            "SNMP_TRAP_1.3.6.1.6.3.1.1.5.10"
        );
    }

    #[test]
    fn trap_address_wins_and_varbinds_are_typed() {
        let n = v2(
            "1.3.6.1.6.3.1.1.5.3",
            vec![
                ("1.3.6.1.2.1.2.2.1.1.3".into(), Typed::Integer(3)),
                (
                    SNMP_TRAP_ADDRESS.into(),
                    Typed::Ip(Ipv4Addr::new(192, 0, 2, 7)),
                ),
                (
                    "1.3.6.1.2.1.2.2.1.2.3".into(),
                    Typed::Octets(b"Gi0/3\nx".to_vec()),
                ),
                (
                    "1.3.6.1.2.1.2.2.1.2.3".into(),
                    Typed::Octets(b"eth0".to_vec()),
                ),
            ],
        );
        let src = "198.51.100.1:5000".parse().unwrap();
        let ev = to_event(&n, src, b"raw", Timestamp::UNIX_EPOCH);
        assert_eq!(ev.hostname, "192.0.2.7");
        assert_eq!(ev.input, InputKind::SnmpTrap);
        assert_eq!(ev.source, "snmp");
        assert_eq!(ev.tag.as_deref(), Some("SNMP_LINK_DOWN"));
        assert_eq!(ev.event_type.as_deref(), Some("SNMP_LINK_DOWN"));
        assert_eq!(ev.severity, Severity::Critical);
        assert_eq!(ev.tags["vb.1.3.6.1.2.1.2.2.1.1.3"], "integer:3");
        assert_eq!(ev.tags["vb.1.3.6.1.2.1.2.2.1.2.3"], "hex:4769302f330a78");
        assert_eq!(ev.tags["vb.1.3.6.1.2.1.2.2.1.2.3#2"], "string:eth0");
        assert_eq!(ev.tags["snmp_source"], "198.51.100.1");
        assert_eq!(
            ev.peer.as_deref(),
            Some("198.51.100.1"),
            "no ephemeral port in peer"
        );
        assert_eq!(ev.raw_payload.as_deref(), Some(&b"raw"[..]));
        assert!(!ev.message.contains('\n'), "{}", ev.message);
        assert!(
            ev.message
                .starts_with("SNMP v2c trap linkDown from 192.0.2.7:"),
            "{}",
            ev.message
        );
    }

    #[test]
    fn v1_agent_addr_used_unless_loopback() {
        let mut n = v2("1.3.6.1.6.3.1.1.5.1", vec![]);
        n.v1 = Some(V1Fields {
            enterprise: "1.3.6.1.4.1.4.1.2.21".into(),
            agent_addr: Ipv4Addr::LOCALHOST,
            generic: 0,
            specific: 0,
        });
        let src = "[::ffff:192.168.0.2]:1040".parse().unwrap();
        assert_eq!(
            to_event(&n, src, b"", Timestamp::UNIX_EPOCH).hostname,
            "192.168.0.2"
        );
        n.v1.as_mut().unwrap().agent_addr = Ipv4Addr::new(10, 1, 30, 1);
        assert_eq!(
            to_event(&n, src, b"", Timestamp::UNIX_EPOCH).hostname,
            "10.1.30.1"
        );
    }

    proptest::proptest! {
        /// The hand-written number, OID and address text equals what `Display` writes.
        #[test]
        fn formatting_matches_display(
            arcs in proptest::collection::vec(proptest::num::u32::ANY, 0..12),
            i in proptest::num::i64::ANY,
            c in proptest::num::u64::ANY,
            ip in proptest::num::u32::ANY,
            mapped in proptest::bool::ANY,
        ) {
            let dotted = arcs.iter().map(u32::to_string).collect::<Vec<_>>().join(".");
            proptest::prop_assert_eq!(oid_string(&arcs), dotted);
            proptest::prop_assert_eq!(typed_value(&Typed::Integer(i)), format!("integer:{i}"));
            proptest::prop_assert_eq!(typed_value(&Typed::Counter64(c)), format!("counter64:{c}"));
            let a = Ipv4Addr::from(ip);
            proptest::prop_assert_eq!(typed_value(&Typed::Ip(a)), format!("ip:{a}"));
            let addr = if mapped { IpAddr::V6(a.to_ipv6_mapped()) } else { IpAddr::V4(a) };
            proptest::prop_assert_eq!(ip_string(addr), a.to_string());
        }
    }

    #[test]
    fn hex_and_extremes() {
        assert_eq!(
            typed_value(&Typed::Integer(i64::MIN)),
            "integer:-9223372036854775808"
        );
        assert_eq!(
            typed_value(&Typed::Octets(vec![0, 0xab, 0x7f])),
            "hex:00ab7f"
        );
        assert_eq!(typed_value(&Typed::Opaque(vec![])), "opaque:");
        assert_eq!(ip_string("2001:db8::1".parse().unwrap()), "2001:db8::1");
    }
}
