//! Corpus tests: every SNMP payload in `shared/corpora/snmp` decodes or is dropped with a
//! reason (never a panic), and the traps map to what the captures' MANIFEST.json and the
//! upstream expected decodes say.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use jiff::Timestamp;
use serde_json::Value;
use weir_common::Severity;

use super::lib_adapter::{LocalEngine, Outcome, Processor};
use super::{Auth, DropReason, Notification, Priv, Typed, UserSpec, map};

const CORPUS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/corpora/snmp");

fn corpus() -> Option<PathBuf> {
    let p = PathBuf::from(CORPUS);
    if p.is_dir() {
        Some(p)
    } else {
        eprintln!("skipping: SNMP corpus not found at {CORPUS}");
        None
    }
}

fn bins(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            bins(&p, out);
        } else if p.extension().is_some_and(|x| x == "bin") {
            out.push(p);
        }
    }
}

fn processor() -> Processor {
    let noauth = UserSpec {
        name: "NOAUTHNOPRIV".into(),
        auth: Auth::None,
        auth_password: String::new(),
        privacy: Priv::None,
        priv_password: String::new(),
        engine_ids: vec![],
    };
    Processor::new(
        &["public".into(), "public2c".into(), "adsl".into()],
        &[noauth],
        LocalEngine {
            engine_id: vec![0x80, 0, 0, 0, 1, 2, 3, 4],
            boots: 1,
        },
    )
    .unwrap()
}

fn src() -> SocketAddr {
    "192.0.2.1:1040".parse().unwrap()
}

/// The v2 trap OID a manifest entry implies (RFC 3584 for v1).
fn expected_trap_oid(m: &Value) -> Option<String> {
    if let Some(o) = m["snmpTrapOID"].as_str() {
        return Some(o.to_string());
    }
    let ent = m["enterprise"].as_str()?;
    let g = m["generic_trap"].as_i64()?;
    Some(if g == 6 {
        format!("{ent}.0.{}", m["specific_trap"].as_i64()?)
    } else {
        format!("1.3.6.1.6.3.1.1.5.{}", g + 1)
    })
}

#[test]
fn every_corpus_payload_decodes_or_is_dropped_with_a_reason() {
    let Some(root) = corpus() else { return };
    let mut files = Vec::new();
    bins(&root, &mut files);
    assert!(files.len() > 100, "only {} .bin files", files.len());
    let (mut events, mut drops) = (0, std::collections::BTreeMap::<&str, usize>::new());
    for f in &files {
        let data = std::fs::read(f).unwrap();
        let mut p = processor();
        match p.process(&data) {
            Outcome::Notification { notification, .. } => {
                let ev = map::to_event(&notification, src(), &data, Timestamp::now());
                assert!(
                    ev.tag.as_deref().unwrap().starts_with("SNMP_"),
                    "{}",
                    f.display()
                );
                events += 1;
            }
            Outcome::Report { .. } => *drops.entry("report").or_default() += 1,
            Outcome::Drop { reason, .. } => *drops.entry(reason.as_str()).or_default() += 1,
        }
        // Every prefix and a bit-flipped copy too: truncation and corruption never panic.
        for cut in (0..data.len()).step_by(7) {
            let _ = processor().process(&data[..cut]);
        }
        let mut flipped = data.clone();
        for i in (0..flipped.len()).step_by(5) {
            flipped[i] ^= 0x5a;
        }
        let _ = processor().process(&flipped);
    }
    eprintln!("{} files: {events} events, {drops:?}", files.len());
    assert!(events >= 19, "{events} events");
    assert!(drops["malformed"] >= 6, "{drops:?}");
    assert!(drops["not_a_notification"] >= 100, "{drops:?}");
}

#[test]
fn capture_traps_match_their_manifests() {
    let Some(root) = corpus() else { return };
    let mut checked = 0;
    for entry in glob_manifests(&root.join("pcap")) {
        let manifest: Vec<Value> = serde_json::from_slice(&std::fs::read(&entry).unwrap()).unwrap();
        let dir = entry.parent().unwrap();
        for m in manifest {
            let file = dir.join(m["file"].as_str().unwrap());
            let data = std::fs::read(&file).unwrap();
            let pdu = m["pdu"].as_str().unwrap_or("");
            let outcome = processor().process(&data);
            let what = format!("{} ({pdu})", file.display());
            match pdu {
                "Trap(v1)" | "SNMPv2-Trap"
                    if m["version"] != "v3" || m["user"] == "NOAUTHNOPRIV" =>
                {
                    let Outcome::Notification {
                        notification: n, ..
                    } = outcome
                    else {
                        panic!("{what}: {outcome:?}");
                    };
                    // The nDPI manifest does not decode v3 scoped PDUs: there, only the version.
                    if m["version"] == "v3" {
                        assert!(
                            n.trap_oid.starts_with("1.3.6.1.6.3.1.1.5."),
                            "{what}: {n:?}"
                        );
                        checked += 1;
                        continue;
                    }
                    assert_eq!(Some(n.trap_oid.clone()), expected_trap_oid(&m), "{what}");
                    let oids: Vec<&str> = n.varbinds.iter().map(|(o, _)| o.as_str()).collect();
                    let want: Vec<&str> = m["varbind_oids"]
                        .as_array()
                        .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
                        .unwrap_or_default();
                    // The manifest lists sysUpTime.0 and snmpTrapOID.0 too; we keep them apart.
                    let want: Vec<&str> = want
                        .into_iter()
                        .filter(|o| *o != "1.3.6.1.2.1.1.3.0" && *o != "1.3.6.1.6.3.1.1.4.1.0")
                        .collect();
                    assert_eq!(oids, want, "{what}");
                    if let Some(g) = m["generic_trap"].as_i64() {
                        assert_eq!(n.v1.as_ref().unwrap().generic as i64, g, "{what}");
                        assert_eq!(
                            n.v1.as_ref().unwrap().enterprise,
                            m["enterprise"].as_str().unwrap()
                        );
                    }
                    checked += 1;
                }
                "SNMPv2-Trap" => {
                    // v3 traps of users whose passwords are not published.
                    assert!(
                        matches!(
                            outcome,
                            Outcome::Drop {
                                reason: DropReason::UnknownUser,
                                ..
                            }
                        ),
                        "{what}: {outcome:?}"
                    );
                }
                "0xbf" => assert!(
                    matches!(
                        outcome,
                        Outcome::Drop {
                            reason: DropReason::Malformed | DropReason::NotANotification,
                            ..
                        }
                    ),
                    "{what}: {outcome:?}"
                ),
                "GetRequest" | "GetNextRequest" | "GetBulkRequest" | "SetRequest" | "Response"
                    if m["version"] != "v3" && m["parse_error"].is_null() =>
                {
                    assert!(
                        matches!(
                            outcome,
                            Outcome::Drop {
                                reason: DropReason::NotANotification
                                    | DropReason::CommunityNotAllowed,
                                ..
                            }
                        ),
                        "{what}: {outcome:?}"
                    );
                }
                _ => assert!(
                    !matches!(outcome, Outcome::Notification { .. }),
                    "{what}: {outcome:?}"
                ),
            }
        }
    }
    // PROTOS c06 (6), zeek (1), nDPI v1/v2c/v3-noauth (2 + 2 + 2).
    assert!(checked >= 13, "checked {checked} traps");
}

fn glob_manifests(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    fn walk(d: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.file_name().is_some_and(|n| n == "MANIFEST.json") {
                out.push(p);
            }
        }
    }
    walk(dir, &mut out);
    out
}

fn one(path: &str, users: &[UserSpec]) -> Option<(Notification, Option<Vec<u8>>)> {
    let data = std::fs::read(format!("{CORPUS}/{path}")).ok()?;
    let mut p = Processor::new(
        &["public".into()],
        users,
        LocalEngine {
            engine_id: vec![0x80, 0, 0, 0, 1, 2, 3, 4],
            boots: 1,
        },
    )
    .unwrap();
    match p.process(&data) {
        Outcome::Notification {
            notification,
            reply,
        } => Some((notification, reply)),
        other => panic!("{path}: {other:?}"),
    }
}

#[test]
fn net_frame_traps_keep_every_varbind_type() {
    if corpus().is_none() {
        return;
    }
    let (n, _) = one(
        "bin/net-frame-layer-snmp/snmpv1_trap_enterprise50000_generic6_specific1.bin",
        &[],
    )
    .unwrap();
    let v1 = n.v1.clone().unwrap();
    assert_eq!((v1.generic, v1.specific), (6, 1));
    assert_eq!(v1.agent_addr.to_string(), "192.168.10.102");
    assert_eq!(n.trap_oid, "1.3.6.1.4.1.50000.0.1");
    let ev = map::to_event(&n, src(), b"", Timestamp::now());
    assert_eq!(ev.tag.as_deref(), Some("SNMP_TRAP"));
    assert_eq!(ev.hostname, "192.168.10.102");
    assert_eq!(
        ev.peer.as_deref(),
        Some("192.0.2.1"),
        "the peer, without its port"
    );
    let t = &ev.tags;
    assert_eq!(t["vb.1.3.6.1.4.1.50000.1.3"], "integer:1");
    assert_eq!(t["vb.1.3.6.1.4.1.50000.1.4"], "string:String");
    assert_eq!(t["vb.1.3.6.1.4.1.50000.1.5"], "hex:0102030405060708");
    assert_eq!(t["vb.1.3.6.1.4.1.50000.1.6"], "oid:1.2.3.4.5.6.7.8.9");
    assert_eq!(t["vb.1.3.6.1.4.1.50000.1.7"], "ip:10.10.10.1");
    assert_eq!(t["vb.1.3.6.1.4.1.50000.1.8"], "counter32:32323232");
    assert_eq!(t["vb.1.3.6.1.4.1.50000.1.9"], "gauge32:42424242");
    assert_eq!(t["vb.1.3.6.1.4.1.50000.1.10"], "timeticks:1363097164");
    assert!(t["vb.1.3.6.1.4.1.50000.1.11"].starts_with("opaque:"));

    let (n, reply) = one(
        "bin/net-frame-layer-snmp/snmpv2c_trap_all_varbind_types.bin",
        &[],
    )
    .unwrap();
    assert!(reply.is_none() && !n.inform);
    assert_eq!(n.trap_oid, "1.3.6.1.4.1.50000");
    assert_eq!(n.request_id, Some(1584726016));
    assert_eq!(n.varbinds.len(), 9);
    let ev = map::to_event(&n, src(), b"", Timestamp::now());
    assert_eq!(ev.tag.as_deref(), Some("SNMP_TRAP_1.3.6.1.4.1.50000"));
    assert_eq!(ev.severity, Severity::Warning);

    let (n, reply) = one(
        "bin/net-frame-layer-snmp/snmpv2c_inform_all_varbind_types.bin",
        &[],
    )
    .unwrap();
    assert!(n.inform && reply.is_some());
    assert_eq!(n.request_id, Some(484835328));

    let (n, _) = one("bin/rusticata-snmp-parser/snmpv1_trap_coldstart.bin", &[]).unwrap();
    let ev = map::to_event(&n, src(), b"", Timestamp::now());
    assert_eq!(
        (ev.tag.as_deref(), ev.severity),
        (Some("SNMP_COLD_START"), Severity::Error)
    );

    let (n, _) = one("bin/gosnmp/snmpv2c_trap1_with_trailing_bytes.bin", &[]).unwrap();
    assert_eq!(n.trailing_bytes, 219);
}

#[test]
fn gosnmp_v3_traps_authenticate_and_decrypt() {
    if corpus().is_none() {
        return;
    }
    let myuser = UserSpec {
        name: "myuser".into(),
        auth: Auth::Md5,
        auth_password: "mypassword".into(),
        privacy: Priv::None,
        priv_password: String::new(),
        engine_ids: vec![],
    };
    let (n, _) = one(
        "bin/gosnmp/snmpv3_trap_authNoPriv_myuser_MD5.bin",
        &[myuser],
    )
    .unwrap();
    assert_eq!(n.trap_oid, "1.3.6.1.2.1.1");
    assert_eq!(n.security_level, Some("authNoPriv"));
    assert!(
        n.varbinds
            .iter()
            .any(|(_, v)| *v == Typed::Octets(b"red laptop".to_vec())),
        "{n:?}"
    );
    let myuser2 = UserSpec {
        name: "myuser2".into(),
        auth: Auth::Md5,
        auth_password: "mypassword2".into(),
        privacy: Priv::Aes,
        priv_password: "myprivacy2".into(),
        engine_ids: vec![],
    };
    let (n, _) = one(
        "bin/gosnmp/snmpv3_trap_authPriv_myuser2_MD5_AES.bin",
        &[myuser2],
    )
    .unwrap();
    assert_eq!(n.trap_oid, "1.3.6.1.4.1.8072.2.3.0.1");
    assert_eq!(n.request_id, Some(1318065890));
    assert_eq!(
        n.varbinds,
        vec![("1.3.6.1.4.1.8072.2.3.2.1".into(), Typed::Integer(60))]
    );
    assert_eq!(n.security_level, Some("authPriv"));
}

/// Single-core cost of the hot path per trap: decode (and for v3 authenticate and decrypt),
/// map to an event, encode the queue record. Run with
/// `cargo test -p weir-agent decode_cost -- --ignored --nocapture` (add `--release` for
/// production figures).
#[test]
#[ignore]
fn decode_cost() {
    use super::lib_adapter::encode;
    const N: usize = 50_000;
    let v2c: Vec<Vec<u8>> = (0..N)
        .map(|i| {
            encode::v2c_trap(
                "public",
                i as i32,
                5,
                "1.3.6.1.4.1.8072.2.3.0.1",
                &[("1.3.6.1.4.1.8072.2.3.2.1", &format!("seq={i}"))],
            )
            .unwrap()
        })
        .collect();
    let user = UserSpec {
        name: "weir".into(),
        auth: Auth::Sha,
        auth_password: "weir-auth-pass".into(),
        privacy: Priv::Aes,
        priv_password: "weir-priv-pass".into(),
        engine_ids: vec![],
    };
    let tx = encode::V3Sender::new(b"\x80\x00\x1f\x88\x04bench", &user).unwrap();
    let v3: Vec<Vec<u8>> = (0..N)
        .map(|i| {
            tx.trap(
                i as i32,
                1,
                7,
                "1.3.6.1.4.1.8072.2.3.0.1",
                &[("1.3.6.1.4.1.8072.2.3.2.1", &format!("seq={i}"))],
            )
            .unwrap()
        })
        .collect();
    let mut p = Processor::new(
        &["public".into()],
        &[user],
        LocalEngine {
            engine_id: vec![0x80, 0, 0, 0, 1, 2, 3, 4],
            boots: 1,
        },
    )
    .unwrap();
    for (name, set) in [("v2c", &v2c), ("v3 SHA/AES", &v3)] {
        let t = std::time::Instant::now();
        for d in set.iter() {
            let Outcome::Notification { notification, .. } = p.process(d) else {
                panic!("not accepted");
            };
            let ev = map::to_event(&notification, src(), d, Timestamp::now());
            let enc = crate::queue::Encoded::new(
                &weir_common::Record::Event(ev),
                Timestamp::now().as_microsecond(),
            );
            std::hint::black_box(enc);
        }
        let per = t.elapsed().as_secs_f64() * 1e6 / N as f64;
        let t = std::time::Instant::now();
        for d in set.iter() {
            std::hint::black_box(p.process(d));
        }
        let decode = t.elapsed().as_secs_f64() * 1e6 / N as f64;
        eprintln!("{name}: decode/authenticate alone {decode:.2} us");
        eprintln!(
            "{name}: {per:.2} us per trap (decode+map+encode), {:.0} traps/s on one core",
            1e6 / per
        );
    }
}
