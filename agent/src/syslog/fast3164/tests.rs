//! The scanner against its definition: for every line, [`super::super::parse::head`] with the
//! scanner and with syslog_loose alone ([`test_switch::without`]) must give the same PRI, the
//! same message (every field, and every slice at the same offset in the line) and the same
//! year choice. Everything a line becomes is made from that head, so the same head means the
//! same queue bytes and dedup tag (which `draft/tests.rs` also checks, with and without the
//! scanner). Lines: unit cases, generated near-misses, and every line of the shared corpora.

use jiff::Timestamp;
use jiff::tz::TimeZone;
use proptest::prelude::*;
use syslog_loose::Message;

use super::*;
use crate::config::SyslogConfig;
use crate::syslog::Parser;
use crate::syslog::parse::head;

fn zone(name: &str) -> TimeZone {
    let cfg = SyslogConfig {
        default_timezone: name.into(),
        ..SyslogConfig::default()
    };
    let parser = Parser::new(&cfg).unwrap();
    parser.zone_for("192.0.2.1".parse().unwrap()).clone()
}

/// Zones and receive times to compare under: New Year in zones ahead of and behind UTC, a
/// leap day, a common year's March (where `Feb 29` is last year's), Apia's skipped day.
struct Rig {
    zones: Vec<TimeZone>,
    times: Vec<Timestamp>,
}

impl Rig {
    fn new() -> Rig {
        Rig {
            zones: ["UTC", "America/New_York", "Asia/Kolkata", "Pacific/Apia"]
                .into_iter()
                .map(zone)
                .collect(),
            times: [
                "2025-06-01T12:00:00Z",
                "2026-01-01T00:30:00Z",
                "2025-12-31T23:30:00Z",
                "2024-02-29T12:00:00Z",
                "2025-03-01T00:30:00Z",
                "2011-12-31T12:00:00Z",
            ]
            .iter()
            .map(|t| t.parse().unwrap())
            .collect(),
        }
    }

    /// Compares the heads in one combination (`variant` picks it); true when the scanner
    /// took the line.
    fn check(&self, text: &str, variant: usize) -> Result<bool, String> {
        let tz = &self.zones[variant % self.zones.len()];
        let now = self.times[variant / self.zones.len() % self.times.len()];
        let fast = head(text, tz, now);
        let loose = test_switch::without(|| head(text, tz, now));
        let took = header(fast.line, tz, now).is_some();
        let same = fast.pri == loose.pri
            && fast.after_pri == loose.after_pri
            && fast.resolved == loose.resolved
            && match (&fast.parsed, &loose.parsed) {
                (None, None) => true,
                (Some(f), Some(l)) => {
                    format!("{f:?}") == format!("{l:?}") && spans(f, text) == spans(l, text)
                }
                _ => false,
            };
        if !same {
            return Err(format!(
                "scanner and syslog_loose differ for {text:?} (zone {tz:?}, received {now})\n\
                 scanner {:#?} {:?}\nloose   {:#?} {:?}",
                fast.parsed, fast.resolved, loose.parsed, loose.resolved
            ));
        }
        Ok(took)
    }

    fn check_all(&self, text: &str) -> Result<bool, String> {
        let mut took = false;
        for variant in 0..self.zones.len() * self.times.len() {
            took |= self.check(text, variant)?;
        }
        Ok(took)
    }
}

/// Where each borrowed field of `m` lies in `line` (the draft and the vendors use offsets).
fn spans(m: &Message<&str>, line: &str) -> Vec<Option<(usize, usize)>> {
    let at = |s: &str| Some((s.as_ptr() as usize - line.as_ptr() as usize, s.len()));
    let procid = match &m.procid {
        Some(ProcId::Name(n)) => at(n),
        _ => None,
    };
    vec![
        m.hostname.and_then(at),
        m.appname.and_then(at),
        m.msgid.and_then(at),
        procid,
        at(m.msg),
    ]
}

#[test]
fn common_lines_take_the_scanner_and_parse_as_syslog_loose() {
    let rig = Rig::new();
    for line in [
        "<134>Nov 21 12:00:00 loadgen-host app[42]: seq=1 xxxxxxxx",
        "<34>Oct 11 22:14:15 mymachine su[42]: 'su root' failed for lonvick on /dev/pts/8",
        "<13>Feb  5 17:32:18 10.0.0.99 sshd[1]: two spaces before a one-digit day",
        "<13>Feb 5 17:32:18 10.0.0.99 sshd[1]: one space before a one-digit day",
        "<13>Feb 05 17:32:18 host cron: zero-padded day, no pid",
        "<0>JAN 01 00:00:00 h a: kern.emerg, upper-case month",
        "<191>dec 31 23:59:59 h a: local7.debug, lower-case month",
        "<13>Feb 29 10:00:00 host app: leap day",
        "<13>Oct 11 22:14:15 2001:db8::1 app: IPv6 host",
        "<13>Oct 11 22:14:15 [::1] app: bracketed host",
        "<13>Oct 11 22:14:15 h[1] app: host that looks like a tag, then a tag",
        "<13>Oct 11 22:14:15 host app:",
        "<13>Oct 11 22:14:15 host app:    \t message after spaces and a tab",
        "<13>Oct 11 22:14:15 host app[042]: leading-zero pid",
        "<13>Oct 11 22:14:15 host app[2147483648]: pid beyond i32 (a name)",
        "<13>Oct 11 22:14:15 host app: inner\0NUL",
        "<13>Oct 11 22:14:15 host app: trailing NULs and a line end\0\0\r\n",
        "<13>Oct 11 22:14:15 host app: \u{feff}BOM before the message",
        "<13>Oct 11 22:14:15 host app: msg: with [brackets] and - dashes",
        "<13>Oct 11 22:14:15 host weir_truncated: tag named like ours",
        "<013>Oct 11 22:14:15 host app: PRI with a leading zero",
        "\u{feff}<13>Oct 11 22:14:15 host app: BOM before the PRI",
        "Oct 11 22:14:15 host app: no PRI",
        "Jun 14 15:16:01 combo sshd(pam_unix)[19939]: authentication failure; logname= uid=0",
    ] {
        let took = rig.check_all(line).unwrap_or_else(|e| panic!("{e}"));
        assert!(took, "{line:?} did not take the scanner");
    }
}

#[test]
fn near_misses_parse_as_syslog_loose() {
    let rig = Rig::new();
    for line in [
        // Dates syslog_loose rejects or reads otherwise.
        "<13>Feb 30 10:00:00 host app: no such day",
        "<13>Oct 0 10:00:00 host app: day zero",
        "<13>Oct 32 10:00:00 host app: day 32",
        "<13>Oct 11 24:00:00 host app: hour 24",
        "<13>Oct 11 23:60:00 host app: minute 60",
        "<13>Oct 11 23:59:60 host app: leap second",
        "<13>Oct 11 2:14:15 host app: one-digit hour",
        "<13>Oct 11 22:14:15: host app: colon after the seconds",
        "<13>Oct 11 22:14:15.123 host app: fraction",
        "<13>Oct 11 2024 22:14:15 host app: with a year",
        "<13>Oct  11 22:14:15 host app: two spaces, two digits",
        "<13>Oct   1 22:14:15 host app: three spaces",
        "<13>Oct\t1 22:14:15 host app: tab in the date",
        "<13>Oct 011 22:14:15 host app: three-digit day",
        "<13>Sept 11 22:14:15 host app: long month",
        "<13>Okt 11 22:14:15 host app: unknown month",
        "<13>O\u{e9}t 11 22:14:15 host app: non-ASCII month",
        "<13> Oct 11 22:14:15 host app: space before the date",
        "<13>\u{feff}Oct 11 22:14:15 host app: BOM after the PRI",
        "<13>2025-10-11T22:14:15Z host app: RFC 3339 date",
        // PRIs.
        "<192>Oct 11 22:14:15 host app: PRI beyond 191",
        "<255>Oct 11 22:14:15 host app: PRI 255",
        "<256>Oct 11 22:14:15 host app: PRI 256",
        "<0013>Oct 11 22:14:15 host app: four digits",
        "<>Oct 11 22:14:15 host app: empty PRI",
        " Oct 11 22:14:15 host app: no PRI, a space",
        "<13>1 2003-10-11T22:14:15Z h app 77 ID47 - RFC 5424",
        "<13>12: Oct 11 22:14:15 host app: Cisco-shaped",
        // Hosts and tags syslog_loose reads specially.
        "<13>Oct 11 22:14:15 app[12]: the only field is a tag",
        "<13>Oct 11 22:14:15 host: the host ends in a colon",
        "<13>Oct 11 22:14:15 : empty header field",
        "<13>Oct 11 22:14:15 - app: host is the nil value",
        "<13>Oct 11 22:14:15 host - : tag is the nil value",
        "<13>Oct 11 22:14:15 host -: tag is the nil value",
        "<13>Oct 11 22:14:15 host : empty tag",
        "<13>Oct 11 22:14:15 host  app: two spaces before the tag",
        "<13>Oct 11 22:14:15  host app: two spaces before the host",
        "<13>Oct 11 22:14:15\thost app: tab before the host",
        "<13>Oct 11 22:14:15 host\tapp: tab before the tag",
        "<13>Oct 11 22:14:15 h\u{a0}x app: no-break space in the host",
        "<13>Oct 11 22:14:15 h\u{e9} app: non-ASCII host",
        "<13>Oct 11 22:14:15 host \u{e9}t\u{e9}[12]: non-ASCII tag",
        "<13>Oct 11 22:14:15 host a\u{2003}b: em space in the tag",
        "<13>Oct 11 22:14:15 host Use the BFG!",
        "<13>Oct 11 22:14:15 host app msg without a colon",
        "<13>Oct 11 22:14:15 host app[12] msg without a colon",
        "<13>Oct 11 22:14:15 host app :space before the colon",
        "<13>Oct 11 22:14:15 host app[]: empty pid",
        "<13>Oct 11 22:14:15 host app[x]: name pid",
        "<13>Oct 11 22:14:15 host app[-7]: negative pid",
        "<13>Oct 11 22:14:15 host app[1][2]: two pids",
        "<13>Oct 11 22:14:15 host app[12: unclosed pid",
        "<13>Oct 11 22:14:15 host a]b: bracket in the tag",
        "<13>Oct 11 22:14:15 host [1]: pid without a name",
        "<13>Oct 11 22:14:15 host x:y: colon in the tag",
        "<13>Oct 11 22:14:15 host app::double colon",
        "<14>Jun  1 11:00:00 PA-220 1,2025/06/01 11:00:00,0128,THREAT: a vendor's comma text",
        "<13>Oct 11 22:14:15 host a\0b: NUL in the tag",
        "<13>Oct 11 22:14:15 host",
        "<13>Oct 11 22:14:15 host app",
        "<13>Oct 11 22:14:15",
        // Messages syslog_loose may take for structured data.
        "<13>Oct 11 22:14:15 host app: [a b=\"c\"] structured data",
        "<13>Oct 11 22:14:15 host app: [not sd] brackets",
        "<13>Oct 11 22:14:15 host app: - nil structured data",
        "<13>Oct 11 22:14:15 host app:-dash",
        "<13>Oct 11 22:14:15 host app:  [a b=\"c\"]",
        "<13>Oct 11 22:14:15 host app: \u{feff}[a b=\"c\"]",
    ] {
        rig.check_all(line).unwrap_or_else(|e| panic!("{e}"));
    }
}

/// Lines built from near-miss parts: every separator, PRI, date, host, tag and message start
/// the scanner must either read as syslog_loose does or decline.
fn near_miss_line() -> impl Strategy<Value = String> {
    let sel = |v: &[&'static str]| prop::sample::select(v.to_vec());
    let lead = sel(&["", "", "\u{feff}", " ", "\0"]);
    let pri = sel(&[
        "<13>", "<0>", "<191>", "<134>", "<192>", "<013>", "<0013>", "<999>", "<>", "", "<1",
    ]);
    let pre = sel(&["", "", "", " ", "\t", "\u{feff}"]);
    let month = sel(&[
        "Oct", "oct", "OCT", "Feb", "Dec", "Jan", "Foo", "Oc1", "O`t", "Sept",
    ]);
    let sp1 = sel(&[" ", " ", "  ", "\t", "   ", ""]);
    let day = sel(&["1", "01", "9", "29", "30", "31", "0", "00", "32", "011", ""]);
    let sp2 = sel(&[" ", " ", "  ", "\t", ""]);
    let time = sel(&[
        "22:14:15",
        "00:00:00",
        "23:59:59",
        "24:00:00",
        "23:60:00",
        "23:59:60",
        "2:14:15",
        "22:14:15:",
        "22:14:15.123",
        "22:14",
        "2024 10:00:00",
    ]);
    let sp3 = sel(&[" ", " ", " ", "  ", "\t", "", ": "]);
    let host = sel(&[
        "host",
        "host",
        "10.0.0.1",
        "2001:db8::1",
        "::1",
        "host:",
        "-",
        ":",
        "h[1]",
        "app[12]:",
        "\u{e9}",
        "h\u{a0}x",
        "",
        "a\0b",
    ]);
    let sp4 = sel(&[" ", " ", " ", "  ", "\t", "", ":"]);
    let tag = sel(&[
        "app",
        "su[42]",
        "app[042]",
        "app[]",
        "app[x]",
        "app[1][2]",
        "a]b",
        "[1]",
        "-",
        "app[12",
        "x:y",
        "\u{e9}",
        "",
        "app[2147483648]",
        "a\u{2003}b",
    ]);
    let sep = sel(&[":", ": ", ": ", ":  ", ":\t", " ", "", "::", " :"]);
    let msg = "[\u{feff}]?[-\\[ \t\0a-z:\\]\u{e9}]{0,12}[ \0\n\r]{0,2}";
    (
        (lead, pri, pre, month, sp1, day),
        (sp2, time, sp3, host, sp4, tag, sep, msg),
    )
        .prop_map(|((a, b, c, d, e, f), (g, h, i, j, k, l, m, n))| {
            format!("{a}{b}{c}{d}{e}{f}{g}{h}{i}{j}{k}{l}{m}{n}")
        })
}

/// Well-formed lines with every number drawn, in and out of range.
fn numeric_line() -> impl Strategy<Value = String> {
    (
        (0u32..260, 0usize..12, 0u32..36, any::<bool>()),
        (0u32..26, 0u32..62, 0u32..62),
        (
            "[a-z0-9.-]{1,8}",
            "[a-z0-9_/-]{1,8}",
            prop::option::of(0u32..100_000),
        ),
        "[ -~]{0,20}",
    )
        .prop_map(|((pri, m, day, pad), (h, mi, s), (host, app, pid), msg)| {
            const MONTHS: [&str; 12] = [
                "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
            ];
            let day = if pad {
                format!("{day:>2}")
            } else {
                day.to_string()
            };
            let pid = pid.map_or(String::new(), |p| format!("[{p}]"));
            format!(
                "<{pri}>{} {day} {h:02}:{mi:02}:{s:02} {host} {app}{pid}: {msg}",
                MONTHS[m]
            )
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn near_miss_lines_parse_as_syslog_loose(s in near_miss_line(), variant in 0usize..24) {
        Rig::new().check(&s, variant).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn numeric_lines_parse_as_syslog_loose(s in numeric_line(), variant in 0usize..24) {
        Rig::new().check(&s, variant).map_err(TestCaseError::fail)?;
    }
}

/// Every line of every file under `shared/corpora/syslog`, as `draft/tests.rs` reads them.
#[test]
fn corpus_lines_parse_as_syslog_loose() {
    let rig = Rig::new();
    let mut took = 0usize;
    let Some(walked) = crate::syslog::test_corpus::walk(|path, n, _, input| {
        // Lines that are not UTF-8 are parsed as a lossy copy: the scanner sees that.
        let text = String::from_utf8_lossy(input);
        match rig.check(&text, n) {
            Ok(t) => took += usize::from(t),
            Err(e) => panic!("{}: {e}", path.display()),
        }
    }) else {
        return;
    };
    let lines = walked.inputs;
    println!("{lines} corpus lines: {took} took the scanner, all parsed as syslog_loose");
    assert!(lines > 10_000, "only {lines} corpus lines");
    assert!(took > 0, "no corpus line took the scanner");
}
