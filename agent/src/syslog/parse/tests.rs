//! Unit and property tests of the syslog parser (vendor formats have their own, and the
//! corpus tests are in `agent/tests/syslog_corpus.rs`).

use super::*;
use proptest::prelude::*;

use crate::config::SyslogConfig;

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
    let line = b"<34>Oct 11 22:14:15 mymachine su[42]: 'su root' failed for lonvick on /dev/pts/8";
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
    let line =
        b"<189>123: *Mar  1 00:00:05.123: %LINK-3-UPDOWN: Interface Gi0/1, changed state to down";
    let now = at("2025-06-01T12:00:00Z");
    let ev = parse(line, peer(), now);
    // The mnemonic's severity (3) wins over the PRI's (local7.notice).
    assert_eq!(ev.severity, Severity::Error);
    assert_eq!(ev.tag.as_deref(), Some("CISCO_LINK_UPDOWN"));
    assert_eq!(ev.tags["facility"], "local7");
    assert_eq!(ev.tags["vendor"], "cisco");
    assert_eq!(ev.tags["cisco.sequence"], "123");
    assert_eq!(ev.tags["cisco.clock_unsynced"], "true");
    assert_eq!(ev.raw_payload.as_deref(), Some(&line[..]));
    assert_eq!(
        ev.message,
        "%LINK-3-UPDOWN: Interface Gi0/1, changed state to down"
    );
    assert_eq!(ev.hostname, "192.0.2.7");
    // `*`: the clock was never set, so its date is not used.
    assert_eq!(ev.event_time, now);
    assert!(!ev.tags.contains_key("weir_no_pri"));
}

#[test]
fn non_utf8_bytes_are_kept_raw() {
    let line = b"<11>Oct 11 22:14:15 host app: caf\xe9 \xff\xfe end";
    let ev = parse(line, peer(), at("2025-06-01T12:00:00Z"));
    assert_eq!(ev.severity, Severity::Error); // user.err
    assert_eq!(ev.raw_payload.as_deref(), Some(&line[..]));
    assert_eq!(ev.tags["weir_non_utf8"], "true");
    assert!(
        !parse(b"<11>ok", peer(), at("2025-06-01T12:00:00Z"))
            .tags
            .contains_key("weir_non_utf8")
    );
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
    assert_eq!(ev.tags["facility"], "user");
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

fn cfg(default: &str, rules: &[(&[&str], &str)]) -> SyslogConfig {
    SyslogConfig {
        default_timezone: default.into(),
        timezones: rules
            .iter()
            .map(|(sources, tz)| crate::config::TimezoneRule {
                sources: sources.iter().map(|s| s.to_string()).collect(),
                tz: tz.to_string(),
            })
            .collect(),
        ..SyslogConfig::default()
    }
}

#[test]
fn zoneless_timestamps_use_the_senders_zone() {
    let p = Parser::new(&cfg(
        "America/New_York",
        &[
            (&["10.1.0.0/16"], "Europe/Berlin"),
            (&["10.1.2.3"], "Asia/Tokyo"),
            (&["2001:db8::/32"], "Asia/Kolkata"),
        ],
    ))
    .unwrap();
    let now = at("2025-07-01T12:00:00Z");
    let line = b"<13>Jun 30 10:00:00 host app: x";
    let from = |ip: &str| p.parse(line, ip.parse().unwrap(), now).event_time;
    assert_eq!(from("10.1.9.9"), at("2025-06-30T08:00:00Z")); // CEST, +2
    assert_eq!(from("10.1.2.3"), at("2025-06-30T01:00:00Z")); // most specific: JST, +9
    assert_eq!(from("::ffff:10.1.9.9"), at("2025-06-30T08:00:00Z")); // v4-mapped
    assert_eq!(from("2001:db8::1"), at("2025-06-30T04:30:00Z")); // IST, +5:30
    assert_eq!(from("192.0.2.1"), at("2025-06-30T14:00:00Z")); // default: EDT, -4
    // Winter: the zone's rules, not a fixed offset.
    let ev = p.parse(
        b"<13>Jan 15 10:00:00 host app: x",
        "10.1.9.9".parse().unwrap(),
        now,
    );
    assert_eq!(ev.event_time, at("2025-01-15T09:00:00Z"));
    // A timestamp with its own offset keeps it.
    let ev = p.parse(
        b"<13>1 2025-06-30T10:00:00+01:00 host app - - - x",
        "10.1.9.9".parse().unwrap(),
        now,
    );
    assert_eq!(ev.event_time, at("2025-06-30T09:00:00Z"));
    // Cisco device time without a zone word: the sender's zone too.
    let ev = p.parse(
        b"<189>12: Jun 30 10:00:00.250: %SYS-5-CONFIG_I: Configured",
        "10.1.9.9".parse().unwrap(),
        now,
    );
    assert_eq!(ev.event_time, at("2025-06-30T08:00:00.25Z"));
}

#[test]
fn year_inference_never_yields_more_than_a_day_ahead_in_the_senders_zone() {
    let p = Parser::new(&cfg("Pacific/Auckland", &[])).unwrap();
    // 2025-01-01 10:00 in Auckland is 2024-12-31T21:00Z; a device there sends Jan 1.
    let now = at("2024-12-31T21:00:00Z");
    let ev = p.parse(b"<13>Jan  1 09:59:00 h a: x", peer(), now);
    assert_eq!(ev.event_time, at("2024-12-31T20:59:00Z"));
    let ev = p.parse(b"<13>Dec 31 23:00:00 h a: x", peer(), now);
    assert_eq!(ev.event_time, at("2024-12-31T10:00:00Z"));
}

#[test]
fn bad_zone_config_names_the_field() {
    let err = |c: SyslogConfig| match Parser::new(&c).unwrap_err() {
        ConfigError::Check { field, message, .. } => (field, message),
        e => panic!("{e}"),
    };
    let (field, message) = err(cfg("Mars/Olympus", &[]));
    assert_eq!(field, "syslog.default_timezone");
    assert!(message.contains("Mars/Olympus"), "{message}");
    let (field, _) = err(cfg("UTC", &[(&["10.0.0.0/8"], "Europe/Berln")]));
    assert_eq!(field, "syslog.timezones[0].tz");
    let (field, message) = err(cfg("UTC", &[(&["10.0.0.0/33"], "UTC")]));
    assert_eq!(field, "syslog.timezones[0].sources");
    assert!(message.contains("10.0.0.0/33"), "{message}");
    let (field, _) = err(cfg("UTC", &[(&[], "UTC")]));
    assert_eq!(field, "syslog.timezones[0].sources");
}

#[test]
fn bundled_tz_database_has_the_zones() {
    // The copy built into the agent, used on hosts without /usr/share/zoneinfo.
    let db = TimeZoneDatabase::bundled();
    for name in [
        "Europe/Berlin",
        "America/New_York",
        "Asia/Kolkata",
        "Australia/Sydney",
    ] {
        assert!(db.get(name).is_ok(), "{name}");
    }
}

#[test]
fn cidr_matching() {
    let c = Cidr::parse("10.1.0.0/16").unwrap();
    assert!(c.contains("10.1.255.1".parse().unwrap()));
    assert!(!c.contains("10.2.0.1".parse().unwrap()));
    assert!(!c.contains("::1".parse().unwrap()));
    assert!(
        Cidr::parse("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap())
    );
    assert!(
        Cidr::parse("::/0")
            .unwrap()
            .contains("2001:db8::1".parse().unwrap())
    );
    assert!(Cidr::parse("192.0.2.7").unwrap().contains(peer()));
    assert!(Cidr::parse("2001:db8::/129").is_none());
    // A v4-mapped network is its IPv4 network (its prefix counted in IPv4 bits), and matches
    // both plain and mapped peers; a mapped prefix shorter than the mapping is refused.
    let mapped = Cidr::parse("::ffff:10.1.0.0/112").unwrap();
    assert_eq!(mapped.prefix_bits(), 16);
    assert!(mapped.contains("10.1.200.3".parse().unwrap()));
    assert!(mapped.contains("::ffff:10.1.200.3".parse().unwrap()));
    assert!(!mapped.contains("10.2.0.1".parse().unwrap()));
    assert!(Cidr::parse("::ffff:10.0.0.0/90").is_none());
    assert!(Cidr::parse("host.example").is_none());
}

#[test]
fn vendor_lines_get_tags_severity_and_fields() {
    let now = at("2025-06-01T12:00:00Z");
    let p = |line: &str| parse(line.as_bytes(), peer(), now);

    let ev = p(
        "<14>Jun  1 11:00:00 PA-220 1,2025/06/01 11:00:00,0128,THREAT,vulnerability,2049,2025/06/01 11:00:00,10.0.0.1,10.0.0.2,,,allow-web,,,web-browsing,vsys1,trust,untrust,e1/1,e1/2,fwd,2025/06/01 11:00:00,4242,1,51000,80,0,0,0x0,tcp,alert,\"evil.example/x\",Bad Thing(1234),any,high,client-to-server",
    );
    assert_eq!(ev.tag.as_deref(), Some("PAN_THREAT"));
    assert_eq!(ev.severity, Severity::Error); // high
    assert_eq!(ev.hostname, "PA-220");
    assert_eq!(ev.tags["pan.src_ip"], "10.0.0.1");
    assert_eq!(ev.tags["pan.dst_port"], "80");
    assert_eq!(ev.tags["pan.misc"], "evil.example/x");
    assert_eq!(ev.tags["pan.threat_id"], "Bad Thing(1234)");

    let ev = p(
        r#"<189>date=2019-05-10 time=11:37:47 logid="0000000013" type="traffic" subtype="forward"  level="warning" devname="fw-01" srcip=10.1.100.11 msg="unterminated"#,
    );
    assert_eq!(ev.tag.as_deref(), Some("FORTINET_TRAFFIC_FORWARD"));
    assert_eq!(ev.severity, Severity::Warning);
    assert_eq!(ev.hostname, "fw-01");
    assert_eq!(ev.tags["fortinet.srcip"], "10.1.100.11");
    assert_eq!(ev.tags["fortinet.msg"], "unterminated");

    let ev = p(
        "<134>Jan 1 02:21:38 fw.example filterlog[97530]: 146,,,1535324496,igb1.12,match,block,in,4,0x0,,63,12617,0,DF,6,tcp,60,10.170.12.50,175.16.199.1,49724,853,0,S,1891286705,,64240,,mss",
    );
    assert_eq!(ev.tag.as_deref(), Some("FILTERLOG_BLOCK"));
    assert_eq!(ev.tags["filterlog.interface"], "igb1.12");
    assert_eq!(ev.tags["filterlog.direction"], "in");
    assert_eq!(ev.tags["filterlog.proto"], "tcp");
    assert_eq!(ev.tags["filterlog.src_ip"], "10.170.12.50");
    assert_eq!(ev.tags["filterlog.dst_port"], "853");

    let ev = p(
        r#"<28>1 2023-05-08T14:25:07.466+10:00 srx-1 mib2d 8956 SNMP_TRAP_LINK_DOWN [junos@2636.1.1.1.2.129 snmp-interface-index="508" interface-name="st0.60"]"#,
    );
    assert_eq!(ev.tag.as_deref(), Some("SNMP_TRAP_LINK_DOWN"));
    assert_eq!(ev.tags["vendor"], "juniper");
    assert_eq!(ev.severity, Severity::Warning); // PRI 28 = daemon.warning
    assert_eq!(
        ev.tags["sd.junos@2636.1.1.1.2.129.interface-name"],
        "st0.60"
    );

    // A plain line is nobody's.
    let ev = p(
        "<34>Oct 11 22:14:15 mymachine su[42]: 'su root' failed for lonvick on /dev/pts/8 (100%)",
    );
    assert_eq!(ev.tag, None);
    assert!(!ev.tags.contains_key("vendor"));
}

const SAMPLES: [&str; 9] = [
    "<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog 77 ID47 [exampleSDID@32473 iut=\"3\" eventSource=\"App\\\"x\\]\"] msg",
    "<34>Oct 11 22:14:15 mymachine su[42]: 'su root' failed for lonvick on /dev/pts/8",
    "<189>123: *Mar  1 00:00:05.123: %LINK-3-UPDOWN: Interface Gi0/1, changed state to down",
    "<13>Feb 29 2024 10:00:00 host app: leap",
    "<14>1 2024-02-29T23:59:60.999999+14:00 h a p m - x",
    "<190>3352436: 3352457: Aug 12 2023 12:14:24.412 mdt: %IOSXE-6-PLATFORM: R0/0: cpp_cp: %FW-6-DROP_PKT: x",
    "<14>Jun  1 11:00:00 PA 1,2025/06/01 11:00:00,0128,THREAT,vulnerability,2049,x,\"a,b\",\"open",
    "<189>date=2019-05-10 time=11:37:47 type=\"traffic\" level=\"notice\" msg=\"open",
    "<190>82: R1: [syslog@9 s_sn=\"1\"]: <ios-log-msg><facility>SYS</facility><severity>6</severity><msg-id>X</msg-id><time>*Sep 22 13:46:50.812</time></ios-log-msg>",
];

/// `year_for` against its definition (the year of `civil(None, ..)`'s instant in the zone) and
/// its reused instant against `civil(Some(year), ..)`. Panics (a proptest failure) otherwise.
fn year_for_matches_civil(
    (month, day, hms): (u32, u32, (u32, u32, u32)),
    tz: &TimeZone,
    now: Timestamp,
) {
    let (year, resolved) = year_for((month, day, hms.0, hms.1, hms.2), now, tz);
    let defined = civil(None, month, day, hms, 0, tz, now);
    let what = format!("{month}/{day} {hms:?} in {tz:?} received {now}");
    assert_eq!(resolved.map(|r| r.at), defined, "{what}");
    let this = i32::from(tz.to_datetime(now).year());
    let want = defined.map_or(this, |t| i32::from(tz.to_datetime(t).year()));
    assert_eq!(year, want, "{what}");
    if let Some(r) = resolved {
        let again = civil(Some(r.year), month, day, hms, 0, tz, now);
        assert_eq!(Some(r.at), again, "{what}");
    }
}

/// `year_for` on the dates a random test almost never draws: Apia's skipped 30 Dec 2011, New
/// York's spring-forward hour and fall-back hour, and dates either side of New Year.
#[test]
fn year_for_is_civils_year_at_the_edges() {
    let cases = [
        ("Pacific/Apia", (12, 30, (12, 0, 0)), "2012-01-01T00:00:00Z"),
        (
            "Pacific/Apia",
            (12, 29, (23, 59, 59)),
            "2012-01-01T00:00:00Z",
        ),
        ("Pacific/Apia", (12, 31, (0, 0, 1)), "2011-12-31T12:00:00Z"),
        (
            "America/New_York",
            (3, 8, (2, 30, 0)),
            "2026-03-10T00:00:00Z",
        ),
        (
            "America/New_York",
            (11, 1, (1, 30, 0)),
            "2026-11-02T00:00:00Z",
        ),
        (
            "America/New_York",
            (12, 31, (23, 59, 59)),
            "2026-01-01T05:00:30Z",
        ),
        (
            "Pacific/Auckland",
            (1, 1, (0, 0, 10)),
            "2025-12-31T10:59:59Z",
        ),
    ];
    for (name, (month, day, hms), received) in cases {
        year_for_matches_civil((month, day, hms), &zone(name).unwrap(), at(received));
    }
}

/// The cached `year_for` gives what `year_for_uncached` gives for the same call, whatever the
/// thread asked before: `asks` are (date, zone, receive time) in the order given.
fn year_cache_agrees(asks: &[(IncompleteDate, &TimeZone, Timestamp)]) {
    for &(date, tz, now) in asks {
        assert_eq!(
            year_for(date, now, tz),
            year_for_uncached(date, now, tz),
            "{date:?} in {tz:?} received {now}"
        );
    }
}

/// The cache's key is the receive time's whole second: times either side of the edge where
/// a date turns from "this year" (at most `MAX_FUTURE` ahead) to "last year", within one
/// second, before 1970 and across zones, asked one after the other.
#[test]
fn year_cache_at_the_future_edge() {
    let ny = zone("America/New_York").unwrap();
    let date = (6, 2, 12, 0, 0);
    // Jun 2 12:00:00 UTC is exactly MAX_FUTURE after this receive time.
    let edge = at("2025-06-01T12:00:00Z");
    let ns = |t: Timestamp, n: i64| t.checked_add(SignedDuration::from_nanos(n)).unwrap();
    let utc = &TimeZone::UTC;
    let epoch = Timestamp::UNIX_EPOCH;
    year_cache_agrees(&[
        (date, utc, ns(edge, -1)),
        (date, utc, ns(edge, -999_999_999)),
        (date, utc, ns(edge, -1_000_000_000)),
        (date, utc, edge),
        (date, utc, ns(edge, 1)),
        (date, utc, ns(edge, 999_999_999)),
        (date, utc, ns(edge, -1)),
        (date, &ny, ns(edge, -1)),
        (date, utc, ns(edge, -1)),
        // `as_second` truncates toward zero, so -0.5 s and +0.5 s share its answer, but
        // not their year: Jan 1 12:00 is 1969's received at -0.5 s, 1970's at +0.5 s.
        ((1, 1, 12, 0, 0), utc, ns(epoch, -1_500_000_000)),
        ((1, 1, 12, 0, 0), utc, ns(epoch, -500_000_000)),
        ((1, 1, 12, 0, 0), utc, ns(epoch, 500_000_000)),
        ((1, 1, 12, 0, 0), utc, ns(epoch, -500_000_000)),
    ]);
    assert_eq!(
        year_for((1, 1, 12, 0, 0), ns(epoch, -500_000_000), utc).0,
        1969
    );
    // The edge itself: the same second, then the next one, give different years.
    let before = year_for(date, ns(edge, -1), utc).0;
    let after = year_for(date, ns(edge, 1), utc).0;
    assert_eq!((before, after), (2024, 2025));
}

proptest! {
    /// The cached `year_for` against `year_for_uncached` over runs of receive times a few
    /// fractions of a second apart, near New Year and the `MAX_FUTURE` edge, in zones with
    /// DST and a skipped day.
    #[test]
    fn year_cache_is_year_for(
        date in (1u32..=12, 1u32..=31, 0u32..24, 0u32..60, 0u32..61),
        zones in proptest::collection::vec(0usize..3, 1..6),
        seconds in 1_230_000_000i64..1_800_000_000,
        steps in proptest::collection::vec(-1_500_000_000i64..1_500_000_000, 1..6),
    ) {
        let tzs = [
            TimeZone::UTC,
            zone("Pacific/Apia").unwrap(),
            zone("America/New_York").unwrap(),
        ];
        // Receive times a day before the date in `seconds`' year, where the year flips.
        let base = Timestamp::from_second(seconds).unwrap();
        let year = base.to_zoned(TimeZone::UTC).year();
        let near = DateTime::new(year, date.0 as i8, date.1.min(28) as i8, date.2 as i8, 0, 0, 0)
            .unwrap()
            .to_zoned(TimeZone::UTC)
            .unwrap()
            .timestamp()
            .checked_sub(MAX_FUTURE)
            .unwrap();
        let mut asks = Vec::new();
        for (i, step) in steps.iter().enumerate() {
            let now = near.checked_add(SignedDuration::from_nanos(*step)).unwrap();
            asks.push((date, &tzs[zones[i % zones.len()]], now));
            asks.push((date, &tzs[zones[i % zones.len()]], base));
        }
        year_cache_agrees(&asks);
    }
}

proptest! {
    #[test]
    fn ip_string_is_display(v4 in any::<[u8; 4]>(), v6 in any::<[u8; 16]>()) {
        for ip in [IpAddr::from(v4), IpAddr::from(v6)] {
            prop_assert_eq!(ip_string(ip), ip.to_string());
        }
    }

    /// `year_for` against its definition (the year of `civil(None, ..)`'s instant in the
    /// zone) and its reused instant against `civil(Some(year), ..)`, in zones with DST, a
    /// skipped day (Apia, end of 2011) and a Feb 29 now and then.
    #[test]
    fn year_for_is_civils_year(
        month in 1u32..=12,
        day in 1u32..=31,
        hms in (0u32..24, 0u32..60, 0u32..61),
        zone_at in 0usize..4,
        seconds in 1_230_000_000i64..1_800_000_000,
    ) {
        let tz = [
            TimeZone::UTC,
            zone("Pacific/Apia").unwrap(),
            zone("America/New_York").unwrap(),
            zone("Pacific/Auckland").unwrap(),
        ][zone_at].clone();
        let now = Timestamp::from_second(seconds).unwrap();
        year_for_matches_civil((month, day, hms), &tz, now);
    }

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let ev = UTC_PARSER.parse_unguarded(&bytes, peer(), at("2025-06-01T12:00:00Z"));
        prop_assert_eq!(ev.raw_payload.as_deref(), Some(&bytes[..]));
    }

    #[test]
    fn syslog_looking_text_never_panics(s in "<[0-9]{0,4}>?[0-9]? ?[A-Za-z0-9 :.*\\[\\]=\"@,%/<>_-]{0,120}") {
        let _ = UTC_PARSER.parse_unguarded(s.as_bytes(), peer(), at("2025-06-01T12:00:00Z"));
    }

    #[test]
    fn truncated_real_lines_never_panic(which in 0..SAMPLES.len(), cut in 0usize..200, seconds in 0i64..4_000_000_000) {
        let line = SAMPLES[which].as_bytes();
        let cut = cut.min(line.len());
        let now = Timestamp::from_second(seconds).unwrap();
        let ev = UTC_PARSER.parse_unguarded(&line[..cut], peer(), now);
        prop_assert_eq!(ev.raw_payload.as_deref(), Some(&line[..cut]));
        prop_assert!(ev.event_time <= now.checked_add(MAX_FUTURE).unwrap());
    }
}

#[test]
fn a_tag_without_a_colon_stays_in_the_message() {
    let ev = parse(
        b"<13>Feb  5 17:32:18 10.0.0.99 Use the BFG!",
        peer(),
        at("2025-06-01T12:00:00Z"),
    );
    assert_eq!(ev.hostname, "10.0.0.99");
    assert_eq!(ev.message, "Use the BFG!");
    assert_eq!(ev.tags["appname"], "Use");
    // With a colon the tag is split off as usual.
    let ev = parse(
        b"<13>Feb  5 17:32:18 h app: x",
        peer(),
        at("2025-06-01T12:00:00Z"),
    );
    assert_eq!(
        (ev.message.as_str(), ev.tags["appname"].as_str()),
        ("x", "app")
    );
}
