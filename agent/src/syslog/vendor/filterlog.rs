//! pfSense / OPNsense `filterlog`: one CSV record per packet-filter decision.
//!
//! Columns: rule, sub-rule, anchor, tracker, interface, reason, action, direction, IP version,
//! then for IPv4: tos, ecn, ttl, id, offset, flags, protocol id, protocol, length, src, dst,
//! and for IPv6: class, flow label, hop limit, protocol, protocol id, length, src, dst; TCP and
//! UDP then give the source and destination ports. Tag: `FILTERLOG_<ACTION>` (e.g.
//! `FILTERLOG_BLOCK`); no vendor severity.

use super::{Header, VendorFields, csv_fields, machine_tag};

pub(super) fn parse(h: &Header<'_>) -> Option<VendorFields> {
    // `host filterlog[pid]: ...` or, without a hostname, `filterlog: ...` (then taken as host).
    let named = h.appname == Some("filterlog")
        || (h.appname.is_none()
            && h.hostname
                .is_some_and(|n| n.trim_end_matches(':') == "filterlog"));
    if !named {
        return None;
    }
    let f = csv_fields(h.message.trim());
    let col = |i: usize| f.get(i).map_or("", |c| c.as_ref());
    if f.len() < 9 {
        return None;
    }
    let mut v = VendorFields::new("filterlog");
    v.tag = Some(machine_tag(&["filterlog", col(6)]));
    for (i, name) in [
        (0, "rule"),
        (3, "tracker"),
        (4, "interface"),
        (5, "reason"),
        (6, "action"),
        (7, "direction"),
        (8, "ip_version"),
    ] {
        v.field("filterlog", name, col(i));
    }
    let (proto, src, ports) = match col(8) {
        "4" => (16, 18, 20),
        "6" => (12, 15, 17),
        _ => return Some(v),
    };
    let protocol = col(proto).to_ascii_lowercase();
    v.field("filterlog", "proto", &protocol);
    v.field("filterlog", "src_ip", col(src));
    v.field("filterlog", "dst_ip", col(src + 1));
    if protocol == "tcp" || protocol == "udp" {
        v.field("filterlog", "src_port", col(ports));
        v.field("filterlog", "dst_port", col(ports + 1));
    }
    Some(v)
}
