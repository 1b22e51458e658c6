//! The fast path against its definition: for every line, [`super::super::encode`] (the draft)
//! and [`super::super::encode_owned`] (the owned event, the definition) must give the same queue
//! bytes, the same dedup tag and the same buffer footprint, and the draft must be the same with
//! the RFC 3164 scanner and with syslog_loose alone. Lines come from the unit cases
//! below, generated lines (property tests) and every line of the shared syslog corpora.

use std::net::IpAddr;

use jiff::Timestamp;
use proptest::prelude::*;

use super::*;
use crate::config::{SyslogConfig, TimezoneRule};
use crate::dedup::{DedupConfig, RuleConfig};
use crate::pipeline::{Sink, SinkReceiver};
use weir_common::config::HumanDuration;

/// Parsers, dedup rules and senders to compare under.
struct Rig {
    parsers: Vec<Parser>,
    /// Default rules, and rules keyed on every field (tags included), so every field the dedup
    /// key can read is read from the draft.
    sinks: Vec<(Sink, SinkReceiver)>,
    peers: Vec<IpAddr>,
    times: Vec<Timestamp>,
}

fn every_field() -> DedupConfig {
    let mut cfg = DedupConfig::default();
    let tags = [
        "facility",
        "syslog_severity",
        "appname",
        "procid",
        "msgid",
        "weir_no_pri",
        "weir_truncated",
        "weir_non_utf8",
        "vendor",
        "sd.exampleSDID@32473.iut",
        "sd.origin.ip",
    ];
    let mut key: Vec<KeyField> = vec![
        KeyField::Source,
        KeyField::Hostname,
        KeyField::Severity,
        KeyField::Message,
        KeyField::Peer,
    ];
    key.extend(tags.iter().map(|t| KeyField::TagsEntry((*t).into())));
    key.push(KeyField::EventType);
    cfg.syslog = RuleConfig {
        window: HumanDuration::secs(60),
        key,
        when_missing: vec![
            KeyField::Tag,
            KeyField::TagsEntry("sd.meta.sequenceId".into()),
        ],
    };
    cfg
}

impl Rig {
    fn new() -> Rig {
        let mut zoned = SyslogConfig {
            default_timezone: "America/New_York".into(),
            ..SyslogConfig::default()
        };
        zoned.timezones.push(TimezoneRule {
            sources: vec!["192.0.2.0/24".into()],
            tz: "Asia/Kolkata".into(),
        });
        Rig {
            parsers: vec![Parser::utc(), Parser::new(&zoned).unwrap()],
            sinks: vec![
                crate::pipeline::channel(4, DedupRules::new(&DedupConfig::default())),
                crate::pipeline::channel(4, DedupRules::new(&every_field())),
            ],
            peers: [
                "192.0.2.7",
                "10.0.0.1",
                "0.0.0.0",
                "255.255.255.255",
                "2001:db8::1",
                "::ffff:192.0.2.7",
            ]
            .iter()
            .map(|p| p.parse().unwrap())
            .collect(),
            times: vec![
                "2025-06-01T12:00:00Z".parse().unwrap(),
                "2026-01-01T00:30:00Z".parse().unwrap(),
            ],
        }
    }

    /// Compares the two paths for `bytes` in one combination (`variant` picks it), truncated
    /// or not. True when the draft represented the line.
    fn check(&self, bytes: &[u8], variant: usize) -> Result<bool, String> {
        let parser = &self.parsers[variant % self.parsers.len()];
        let (sink, _) = &self.sinks[variant / 2 % self.sinks.len()];
        let peer = self.peers[variant / 4 % self.peers.len()];
        let now = self.times[variant / 3 % self.times.len()];
        let truncated = variant % 5 == 4;
        let fast = super::super::encode(parser, sink, bytes, truncated, peer, "t", now);
        let owned = super::super::encode_owned(parser, sink, bytes, truncated, peer, "t", now);
        // And the draft with syslog_loose alone, which defines the header `fast3164` reads.
        let loose = crate::syslog::fast3164::test_switch::without(|| {
            super::super::encode(parser, sink, bytes, truncated, peer, "t", now)
        });
        if fast.bytes_for_test() != loose.bytes_for_test() || fast.dedup != loose.dedup {
            return Err(format!(
                "the RFC 3164 scanner changed the record (variant {variant}, peer {peer}) for \
                 {:?}\nloose   {:?} {:?}\nscanner {:?} {:?}",
                String::from_utf8_lossy(bytes),
                loose.dedup,
                loose.bytes_for_test(),
                fast.dedup,
                fast.bytes_for_test(),
            ));
        }
        if fast.bytes_for_test() != owned.bytes_for_test()
            || fast.dedup != owned.dedup
            || fast.footprint() != owned.footprint()
        {
            return Err(format!(
                "paths differ (variant {variant}, peer {peer}, truncated {truncated}) for {:?}\n\
                 owned {:?} {:?}\nfast  {:?} {:?}\nevent {:#?}",
                String::from_utf8_lossy(bytes),
                owned.dedup,
                owned.bytes_for_test(),
                fast.dedup,
                fast.bytes_for_test(),
                parser.parse(bytes, peer, now),
            ));
        }
        Ok(matches!(parser.draft(bytes, peer, now), Parsed::Draft(_)))
    }

    /// [`Rig::check`] in every combination; also runs the unguarded draft on UTF-8 input, so
    /// a panic in the fast path fails the test instead of being caught.
    fn check_all(&self, bytes: &[u8]) -> Result<bool, String> {
        if let Ok(text) = std::str::from_utf8(bytes) {
            for now in &self.times {
                let _ = self.parsers[1].draft_unguarded(text, bytes, self.peers[4], *now);
            }
        }
        let mut drafted = false;
        for variant in 0..40 {
            drafted |= self.check(bytes, variant)?;
        }
        Ok(drafted)
    }
}

#[test]
fn plain_lines_take_the_draft_and_encode_as_the_event() {
    let rig = Rig::new();
    for line in [
        "<134>Nov 21 12:00:00 loadgen-host app[42]: seq=1 xxxxxxxx",
        "<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog - ID47 \
         [exampleSDID@32473 iut=\"3\" eventSource=\"Application\" eventID=\"1011\"] \u{feff}An application event",
        // Duplicate SD parameters (the last wins, as in a map), escapes, two elements.
        "<165>1 2003-10-11T22:14:15.003Z h app 77 ID47 [exampleSDID@32473 iut=\"3\" iut=\"4\" \
         x=\"a\\\"b\\]c\"][origin ip=\"192.0.2.1\"] msg",
        "<14>1 - - - - - -",
        "<14>1 2024-02-29T23:59:60.999999+14:00 h a p m - x",
        "<34>Oct 11 22:14:15 mymachine su[42]: 'su root' failed for lonvick on /dev/pts/8",
        "<13>Feb  5 17:32:18 10.0.0.99 Use the BFG!",
        "<13>Feb 29 2024 10:00:00 host app: leap",
        "no pri at all, just text",
        "Oct 11 22:14:15 host app: no pri but a header",
        "<191>",
        "<13>",
        "",
        "\u{feff}<13>Oct 11 22:14:15 host app: BOM before the PRI",
        "<13>\u{feff}Oct 11 22:14:15 host app: BOM after the PRI",
        "<13>Oct 11 22:14:15 host app: trailing NULs and a line end\0\0\r\n",
        "<13>Oct 11 22:14:15 host app: inner\0NUL",
        "<13>Oct 11 22:14:15 host app[name-not-pid]: procid is a name",
        "<13>Oct 11 22:14:15 host : empty tag",
        "<13>Oct 11 22:14:15 host weir_truncated: tag named like ours",
        "<999>Oct 11 22:14:15 host app: PRI out of range",
        "<13>Dec 31 23:59:59 host app: a December line received in January",
        // Numeric PROCIDs: borrowed from the line only when spelt as `to_string` spells them.
        "<13>Oct 11 22:14:15 host app[042]: leading zero",
        "<13>Oct 11 22:14:15 host app[0]: zero",
        "<13>Oct 11 22:14:15 host app[-7]: negative",
        "<13>Oct 11 22:14:15 host app[+7]: plus",
        "<13>Oct 11 22:14:15 host app[2147483648]: beyond i32",
        "<13>Oct 11 22:14:15 host \u{e9}t\u{e9}[12]: non-ASCII tag",
        "<165>1 2003-10-11T22:14:15Z h app 0077 ID47 - leading zero",
        "<165>1 2003-10-11T22:14:15Z h app -3 ID47 - negative",
        "<165>1 2003-10-11T22:14:15Z h \u{e9} 12 ID47 - non-ASCII app",
        // More tags than the draft holds inline.
        "<165>1 2003-10-11T22:14:15Z h app 9 ID47 [a p1=\"1\" p2=\"2\" p3=\"3\" p4=\"4\" \
         p5=\"5\" p6=\"6\" p7=\"7\" p8=\"8\" p9=\"9\"] many tags",
    ] {
        let drafted = rig
            .check_all(line.as_bytes())
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(drafted, "{line:?} did not take the draft");
    }
}

#[test]
fn vendor_and_odd_lines_take_the_owned_path_with_the_same_bytes() {
    let rig = Rig::new();
    let owned: [&[u8]; 8] = [
        // Cisco (sequence header), PAN-OS, Fortinet, filterlog, Juniper (RFC 5424 + SD).
        b"<189>123: *Mar  1 00:00:05.123: %LINK-3-UPDOWN: Interface Gi0/1, changed state to down",
        b"<14>Jun  1 11:00:00 PA-220 1,2025/06/01 11:00:00,0128,THREAT,vulnerability,2049,2025/06/01 11:00:00,10.0.0.1,10.0.0.2,,,allow-web,,,web-browsing,vsys1,trust,untrust,e1/1,e1/2,fwd,2025/06/01 11:00:00,4242,1,51000,80,0,0,0x0,tcp,alert,\"evil.example/x\",Bad Thing(1234),any,high,client-to-server",
        br#"<189>date=2019-05-10 time=11:37:47 logid="0000000013" type="traffic" subtype="forward"  level="warning" devname="fw-01" srcip=10.1.100.11 msg="unterminated"#,
        b"<134>Jan 1 02:21:38 fw.example filterlog[97530]: 146,,,1535324496,igb1.12,match,block,in,4,0x0,,63,12617,0,DF,6,tcp,60,10.170.12.50,175.16.199.1,49724,853,0,S,1891286705,,64240,,mss",
        br#"<28>1 2023-05-08T14:25:07.466+10:00 srx-1 mib2d 8956 SNMP_TRAP_LINK_DOWN [junos@2636.1.1.1.2.129 snmp-interface-index="508" interface-name="st0.60"]"#,
        // Not UTF-8.
        b"<13>Oct 11 22:14:15 host app: caf\xe9",
        b"\xff\xfe\xfd",
        b"<13>Oct 11 22:14:15 host app: \xc3",
    ];
    for line in owned {
        let drafted = rig.check_all(line).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            !drafted,
            "{:?} took the draft",
            String::from_utf8_lossy(line)
        );
    }
}

/// Regression: a line whose draft panicked was parsed again by the owned path, so the panic
/// was raised, printed and logged twice. Now it is parsed once, counted once, and becomes the
/// owned path's unparsed event.
#[test]
fn a_panicking_line_is_parsed_once_and_counted_once() {
    use crate::syslog::parse::test_panic;
    let rig = Rig::new();
    let (parser, (sink, _)) = (&rig.parsers[0], &rig.sinks[0]);
    let (peer, now) = (rig.peers[0], rig.times[0]);
    let line = b"<13>Oct 11 22:14:15 host app: the parser panics on this";
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let (fast, parses) = metrics::with_local_recorder(&recorder, || {
        test_panic::forced(|| super::super::encode(parser, sink, line, false, peer, "t", now))
    });
    assert_eq!(parses, 1, "the line was parsed {parses} times");
    let panics = handle.render();
    assert!(
        panics.contains("weir_agent_syslog_parse_panics_total 1\n"),
        "{panics}"
    );
    let (owned, _) = test_panic::forced(|| {
        super::super::encode_owned(parser, sink, line, false, peer, "t", now)
    });
    assert_eq!(fast.bytes_for_test(), owned.bytes_for_test());
    assert_eq!(
        (fast.dedup, fast.footprint()),
        (owned.dedup, owned.footprint())
    );
    let (Parsed::Event(ev), _) = test_panic::forced(|| parser.draft(line, peer, now)) else {
        panic!("a panicking line gave a draft");
    };
    assert_eq!(
        ev.tags.get("weir_parse_failed").map(String::as_str),
        Some("true")
    );
    assert_eq!(ev.raw_payload.as_deref(), Some(line.as_slice()));
    // Without the forced panic, the same line takes the draft.
    assert!(matches!(parser.draft(line, peer, now), Parsed::Draft(_)));
}

/// The PROCID is borrowed from the line when it is spelt as `to_string` spells it, and
/// formatted otherwise (the equivalence tests check the text is the same either way).
#[test]
fn numeric_procid_is_borrowed_only_when_canonical() {
    let (parser, peer, now) = (
        Parser::utc(),
        "10.0.0.1".parse().unwrap(),
        Timestamp::UNIX_EPOCH,
    );
    for (line, borrowed) in [
        ("<13>Oct 11 22:14:15 host app[42]: x", true),
        ("<165>1 2003-10-11T22:14:15Z h app 77 ID47 - x", true),
        ("<13>Oct 11 22:14:15 host app[042]: x", false),
        ("<165>1 2003-10-11T22:14:15Z h app 0077 ID47 - x", false),
    ] {
        let Parsed::Draft(d) = parser.draft(line.as_bytes(), peer, now) else {
            panic!("{line:?} did not take the draft");
        };
        let (_, procid) = (d.tags.0.iter().find(|(k, _)| k == "procid"))
            .unwrap_or_else(|| panic!("{line:?} has no procid"));
        assert_eq!(matches!(procid, Cow::Borrowed(_)), borrowed, "{line:?}");
    }
}

#[test]
fn tags_behave_as_a_map() {
    let mut t = Tags(Vec::new());
    for (k, v) in [("b", "1"), ("a", "2"), ("c", "3"), ("b", "4"), ("", "5")] {
        t.insert(k, v);
    }
    let got: Vec<(&str, &str)> = t.0.iter().map(|(k, v)| (k.as_ref(), v.as_ref())).collect();
    assert_eq!(got, [("", "5"), ("a", "2"), ("b", "4"), ("c", "3")]);
    assert_eq!(t.get("b"), Some("4"));
    assert_eq!(t.get("d"), None);
    assert_eq!(t.get(""), Some("5"));
    // Same length, other bytes: the scan compares more than lengths.
    let mut t = Tags(Vec::new());
    t.push("appname", "sshd");
    t.push("facility", "auth");
    t.push("procid", "42");
    assert_eq!(t.get("facility"), Some("auth"));
    assert_eq!(t.get("facilitx"), None);
    assert_eq!(t.get("procid"), Some("42"));
    assert_eq!(t.get("procie"), None);
}

/// `Tags::push` is only for keys in order; debug builds (the tests) say so when one is not.
#[test]
#[should_panic(expected = "pushed out of key order")]
fn tags_pushed_out_of_order_are_caught() {
    let mut t = Tags(Vec::new());
    t.push("facility", "auth");
    t.push("appname", "sshd");
}

const SAMPLES: [&str; 6] = [
    "<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog 77 ID47 [exampleSDID@32473 iut=\"3\" eventSource=\"App\\\"x\\]\"] \u{feff}msg",
    "<34>Oct 11 22:14:15 mymachine su[42]: 'su root' failed for lonvick on /dev/pts/8",
    "<189>123: *Mar  1 00:00:05.123: %LINK-3-UPDOWN: Interface Gi0/1, changed state to down",
    "<13>Feb 29 2024 10:00:00 host app: leap",
    "<14>Jun  1 11:00:00 PA 1,2025/06/01 11:00:00,0128,THREAT,vulnerability,2049,x,\"a,b\",\"open",
    "<190>82: R1: [syslog@9 s_sn=\"1\"]: <ios-log-msg><facility>SYS</facility><severity>6</severity><msg-id>X</msg-id><time>*Sep 22 13:46:50.812</time></ios-log-msg>",
];

/// RFC 5424 and 3164 lines assembled from parts, valid and not.
fn syslog_line() -> impl Strategy<Value = String> {
    let pri = prop::sample::select(vec![
        "", "<0>", "<13>", "<134>", "<191>", "<192>", "<1", "<>",
    ]);
    let version = prop::sample::select(vec!["", "1 ", "2 "]);
    let time = prop::sample::select(vec![
        "",
        "- ",
        "2003-10-11T22:14:15.003Z ",
        "1985-04-12T19:20:50.52-04:00 ",
        "2099-01-01T00:00:00Z ",
        "Oct 11 22:14:15 ",
        "Feb 29 10:00:00 ",
        "Dec 31 23:59:59 ",
        "Aug 12 2023 12:14:24.412 mdt: ",
        "*Mar  1 00:00:05.123: ",
    ]);
    let host = prop::sample::select(vec!["", "- ", "host ", "10.0.0.99 ", "h.example.com "]);
    let app = prop::sample::select(vec![
        "", "- ", "app ", "app: ", "su[42]: ", "x[y]: ", "a:b ",
    ]);
    let procid = prop::sample::select(vec!["", "- ", "77 ", "abc "]);
    let msgid = prop::sample::select(vec!["", "- ", "ID47 "]);
    let sd = prop::sample::select(vec![
        "",
        "- ",
        "[a b=\"c\"] ",
        "[exampleSDID@32473 iut=\"3\" iut=\"9\"] ",
        "[x y=\"\\\"\\]\\\\\"][origin ip=\"1.2.3.4\"] ",
        "[broken ",
    ]);
    let msg = "[\u{feff}]?[ -~\u{e9}\u{0}]{0,40}[\0\n\r ]{0,3}";
    (pri, version, time, host, app, procid, msgid, sd, msg)
        .prop_map(|(pri, v, t, h, a, p, m, sd, msg)| format!("{pri}{v}{t}{h}{a}{p}{m}{sd}{msg}"))
}

proptest! {
    #[test]
    fn any_bytes_encode_the_same(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        Rig::new().check_all(&bytes).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn syslog_looking_text_encodes_the_same(
        s in "\u{feff}?<[0-9]{0,4}>?\u{feff}?[0-9]? ?[A-Za-z0-9 :.*\\[\\]=\"@,%/<>_\u{0}-]{0,120}"
    ) {
        Rig::new().check_all(s.as_bytes()).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn assembled_lines_encode_the_same(s in syslog_line()) {
        Rig::new().check_all(s.as_bytes()).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn cut_lines_encode_the_same(which in 0..SAMPLES.len(), cut in 0usize..200) {
        let line = SAMPLES[which].as_bytes();
        // A cut inside a character leaves bytes that are not UTF-8: the owned path's case.
        Rig::new().check_all(&line[..cut.min(line.len())]).map_err(TestCaseError::fail)?;
    }
}

/// Every line of every file under `shared/corpora/syslog`: text files line by line (bytes as
/// they are, UTF-8 or not), JSON Lines also by their `input` field, extracted datagrams
/// (`.bin`) whole (see [`crate::syslog::test_corpus`]).
#[test]
fn corpus_lines_encode_the_same() {
    let rig = Rig::new();
    let mut drafted = 0usize;
    let Some(walked) = crate::syslog::test_corpus::walk(|path, n, i, input| {
        // Every combination would take minutes in a debug build: each line gets one,
        // and the combinations rotate through the lines.
        let variant = n.wrapping_mul(7) + i;
        match rig.check(input, variant % 40) {
            Ok(d) => drafted += usize::from(d),
            Err(e) => panic!("{}: {e}", path.display()),
        }
    }) else {
        return;
    };
    let (files, lines) = (walked.files, walked.inputs);
    println!("{files} files, {lines} lines: {drafted} took the draft, all encoded the same");
    assert!(lines > 10_000, "only {lines} corpus lines");
    // Most corpus lines are plain syslog or text: the fast path must be the common one.
    assert!(drafted * 2 > lines, "{drafted} of {lines} took the draft");
}
