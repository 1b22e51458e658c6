//! The SNMP trap listener over real datagrams on loopback, with a real queue in a temp dir and
//! the metrics read as the agent exports them (a Prometheus recorder local to the test thread
//! and to the listener threads it starts, so each test is `current_thread` and sees only its
//! own counters).
//!
//! The accounting these tests hold the listener to: every datagram received
//! (`weir_agent_received_total{input="snmp"}`) is an event in the queue (an answered Inform is
//! one too), a Report sent (`weir_agent_snmp_reports_total{kind}`), or a counted drop
//! (`weir_agent_snmp_dropped_total{reason}`, mirrored in the sink's input drops).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics_exporter_prometheus::{PrometheusHandle, PrometheusRecorder};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use weir_common::Event;

use super::lib_adapter::encode::{V3Sender, set_reportable};
use super::{Auth, Listeners, Priv, SnmpConfig, UserSpec};
use crate::pipeline::{self, Sink};
use crate::queue::Queue;
use crate::trap_policy::TrapPolicyState;

/// This receiver's engine ID.
const OUR_ENGINE: &str = "8000000001020304";
/// A trap sender's (authoritative) engine ID: not ours.
const REMOTE_ENGINE: [u8; 8] = [0x80, 0, 0x1f, 0x88, 4, 1, 2, 3];

/// A metrics recorder for the current thread and the listener threads started from it (see
/// `udp_batch::TEST_RECORDER`); install it before [`Rig::start`].
fn recorder() -> Arc<PrometheusRecorder> {
    let recorder = Arc::new(metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder());
    crate::udp_batch::TEST_RECORDER.with(|r| *r.borrow_mut() = Some(recorder.clone()));
    recorder
}

/// One SNMP listener on 127.0.0.1 feeding a queue through the real writer.
struct Rig {
    dir: tempfile::TempDir,
    queue: Arc<Queue>,
    sink: Sink,
    metrics: PrometheusHandle,
    tracker: TaskTracker,
    shutdown: CancellationToken,
    addr: SocketAddr,
}

impl Rig {
    async fn start(metrics: PrometheusHandle) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let queue = Queue::open_roomy(&dir.path().join("queue.redb"));
        let (sink, rx) = pipeline::channel(1024, crate::dedup::DedupRules::default());
        let cfg: SnmpConfig = toml::from_str(&format!(
            "listen = [\"127.0.0.1:0\"]\ncommunities = [\"public\"]\nengine_id = \"{OUR_ENGINE}\"\n\
             [[users]]\nname = \"n\"\n\
             [[users]]\nname = \"s\"\nauth = \"sha\"\nauth_password = \"authpass1\"\n\
             privacy = \"aes\"\nprivacy_password = \"privpass1\"\n"
        ))
        .unwrap();
        let listeners = Listeners::bind(&cfg, dir.path()).await.unwrap();
        let addr = listeners.addrs()[0];
        let tracker = TaskTracker::new();
        let shutdown = CancellationToken::new();
        listeners.spawn(
            sink.clone(),
            TrapPolicyState::load(dir.path()),
            &tracker,
            shutdown.clone(),
        );
        let (committed, _) = tokio::sync::watch::channel(0);
        tracker.spawn(pipeline::run_writer(
            queue.clone(),
            rx,
            committed,
            pipeline::WriterOptions::for_tests(),
            shutdown.clone(),
        ));
        Rig {
            dir,
            queue,
            sink,
            metrics,
            tracker,
            shutdown,
            addr,
        }
    }

    /// Sum of the samples whose name and labels start with `prefix` (e.g.
    /// `weir_agent_snmp_dropped_total{` for every reason).
    fn metric(&self, prefix: &str) -> u64 {
        self.metrics
            .render()
            .lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    }

    fn events(&self) -> Vec<Event> {
        self.queue.events()
    }

    /// Waits until the listener has taken `n` datagrams and every event among them is queued
    /// (drops and Reports are counted before a batch's events go to the sink).
    async fn settle(&self, n: u64) -> Accounting {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let a = self.accounting();
            if a.received >= n && a.events + a.reports + a.drops >= a.received {
                return a;
            }
            assert!(
                Instant::now() < deadline,
                "{n} datagrams never settled: {a:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn accounting(&self) -> Accounting {
        Accounting {
            received: self.metric("weir_agent_received_total{input=\"snmp\"}"),
            events: self.events().len() as u64,
            reports: self.metric("weir_agent_snmp_reports_total{"),
            drops: self.metric("weir_agent_snmp_dropped_total{"),
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.tracker.close();
        tokio::time::timeout(Duration::from_secs(10), self.tracker.wait())
            .await
            .expect("listener stops");
    }
}

#[derive(Debug, PartialEq, Eq)]
struct Accounting {
    received: u64,
    events: u64,
    reports: u64,
    drops: u64,
}

/// Informs are acknowledged only once their event is durable. While the queue cannot be
/// written, an Inform goes unanswered (its sender retries), the writer counts the loss once,
/// and the listener carries on: once the queue works again, the next Inform is stored and
/// answered. (The listener used to count a failed commit again as a shutdown drop and stop.)
#[tokio::test]
async fn an_inform_is_answered_only_once_durable_and_a_failed_commit_does_not_stop_the_listener() {
    let recorder = recorder();
    let _local = metrics::set_default_local_recorder(&*recorder);
    let rig = Rig::start(recorder.handle()).await;
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let inform = |id| {
        super::lib_adapter::encode::v2c_inform("public", id, 100, "1.3.6.1.6.3.1.1.5.3", &[])
            .unwrap()
    };
    let mut buf = [0u8; 2048];

    rig.queue.fail_appends(true);
    client.send_to(&inform(7), rig.addr).await.unwrap();
    let answer = tokio::time::timeout(Duration::from_millis(700), client.recv_from(&mut buf)).await;
    assert!(
        answer.is_err(),
        "an Inform whose event was not stored was answered"
    );
    assert_eq!(
        rig.metric("weir_agent_dropped_total{reason=\"queue_write_error\"}"),
        1
    );
    assert_eq!(rig.sink.drops.snapshot().get("shutdown"), None);

    rig.queue.fail_appends(false);
    client.send_to(&inform(8), rig.addr).await.unwrap();
    let (n, _) = tokio::time::timeout(Duration::from_secs(5), client.recv_from(&mut buf))
        .await
        .expect("the next Inform is answered once stored")
        .unwrap();
    assert!(n > 0);
    assert_eq!(rig.events().len(), 1);
    rig.stop().await;
}

/// Whether net-snmp's `tool` is installed; skips with a printed reason, or panics under
/// `CI=true` (CI must never pass by skipping).
fn have(tool: &str) -> bool {
    let ok = std::process::Command::new(tool)
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success() || !o.stderr.is_empty());
    if !ok {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{tool} missing and CI=true: apt-get install snmp");
        }
        eprintln!("skipping: net-snmp {tool} not installed (apt-get install snmp)");
    }
    ok
}

/// Runs `snmpget` against the trap port (1 s timeout, no retries, no MIBs, its own persistent
/// dir) and requires that it got no answer: it must fail with a timeout.
async fn snmpget_unanswered(rig: &Rig, args: &[&str]) {
    let persist = rig.dir.path().join("net-snmp");
    std::fs::create_dir_all(&persist).unwrap();
    let out = tokio::process::Command::new("snmpget")
        .args(["-m", "", "-M", "/dev/null", "-t", "1", "-r", "0"])
        .args(args)
        .arg(rig.addr.to_string())
        .arg("1.3.6.1.2.1.1.1.0")
        .env("SNMP_PERSISTENT_DIR", &persist)
        .env("SNMPCONFPATH", &persist)
        .output()
        .await
        .expect("running snmpget");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "snmpget got an answer from the trap port"
    );
    assert!(stderr.contains("Timeout"), "{stderr}");
}

/// Regression over the wire for 59ca010: a v3 trap with the reportableFlag set, from its own
/// engine, got a discovery Report back and was lost. It is an event, and nothing is sent back;
/// for an authPriv trap too, whose PDU type is known only once decrypted.
#[tokio::test]
async fn a_reportable_v3_trap_is_an_event_and_gets_no_report() {
    let recorder = recorder();
    let _local = metrics::set_default_local_recorder(&*recorder);
    let rig = Rig::start(recorder.handle()).await;
    let noauth = UserSpec {
        name: "n".into(),
        auth: Auth::None,
        auth_password: String::new(),
        privacy: Priv::None,
        priv_password: String::new(),
        engine_ids: vec![],
    };
    let secret = UserSpec {
        name: "s".into(),
        auth: Auth::Sha,
        auth_password: "authpass1".into(),
        privacy: Priv::Aes,
        priv_password: "privpass1".into(),
        engine_ids: vec![],
    };
    let trap = V3Sender::new(&REMOTE_ENGINE, &noauth)
        .unwrap()
        .trap(
            5,
            1,
            10,
            "1.3.6.1.6.3.1.1.5.3",
            &[("1.3.6.1.2.1.1.5.0", "reportable")],
        )
        .unwrap();
    let secret_trap = V3Sender::new(&REMOTE_ENGINE, &secret)
        .unwrap()
        .reportable()
        .trap(
            6,
            1,
            10,
            "1.3.6.1.6.3.1.1.5.3",
            &[("1.3.6.1.2.1.1.5.0", "reportable authPriv")],
        )
        .unwrap();
    let sender = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sender
        .send_to(&set_reportable(trap), rig.addr)
        .await
        .unwrap();
    sender.send_to(&secret_trap, rig.addr).await.unwrap();

    let a = rig.settle(2).await;
    assert_eq!(
        a,
        Accounting {
            received: 2,
            events: 2,
            reports: 0,
            drops: 0
        }
    );
    let mut events = rig.events();
    events.sort_by(|a, b| a.tags["snmp_user"].cmp(&b.tags["snmp_user"]));
    let ev = &events[0];
    assert_eq!(ev.tags["snmp_user"], "n", "{:?}", ev.tags);
    assert_eq!(ev.tags["vb.1.3.6.1.2.1.1.5.0"], "string:reportable");
    let ev = &events[1];
    assert_eq!(ev.tags["snmp_user"], "s", "{:?}", ev.tags);
    assert_eq!(
        ev.tags["vb.1.3.6.1.2.1.1.5.0"],
        "string:reportable authPriv"
    );
    // A Report would have been sent before the event was handed to the sink: it would be here.
    let mut buf = [0u8; 2048];
    let answer = tokio::time::timeout(Duration::from_millis(300), sender.recv_from(&mut buf)).await;
    assert!(answer.is_err(), "the trap's sender got {answer:?}");
    assert!(rig.sink.drops.snapshot().is_empty());
    rig.stop().await;
}

/// A v2c GetRequest to the trap port (a monitoring system pointed at the wrong port) is not
/// answered and is counted as `not_a_notification`, in both drop counters.
#[tokio::test]
async fn a_v2c_get_on_the_trap_port_is_unanswered_and_counted() {
    if !have("snmpget") {
        return;
    }
    let recorder = recorder();
    let _local = metrics::set_default_local_recorder(&*recorder);
    let rig = Rig::start(recorder.handle()).await;
    snmpget_unanswered(&rig, &["-v2c", "-c", "public"]).await;

    let a = rig.settle(1).await;
    assert_eq!(
        a,
        Accounting {
            received: 1,
            events: 0,
            reports: 0,
            drops: 1
        }
    );
    assert_eq!(
        rig.metric("weir_agent_snmp_dropped_total{reason=\"not_a_notification\"}"),
        1
    );
    assert_eq!(
        rig.metric("weir_agent_dropped_total{reason=\"snmp_not_a_notification\"}"),
        1
    );
    assert_eq!(
        rig.sink.drops.snapshot().into_iter().collect::<Vec<_>>(),
        [("snmp_not_a_notification".to_string(), 1)]
    );
    rig.stop().await;
}

/// `snmpget -v3` noAuthNoPriv with a user we do not know: net-snmp first probes for our engine
/// ID, which we answer with a Report (RFC 3414 4); its GetRequest, now for our engine, is
/// dropped as `not_a_notification` (before the user lookup) and not answered. Two datagrams:
/// one Report, one drop, no event.
#[tokio::test]
async fn a_v3_get_is_discovered_then_dropped_and_every_datagram_is_accounted() {
    if !have("snmpget") {
        return;
    }
    let recorder = recorder();
    let _local = metrics::set_default_local_recorder(&*recorder);
    let rig = Rig::start(recorder.handle()).await;
    snmpget_unanswered(&rig, &["-v3", "-l", "noAuthNoPriv", "-u", "nobody"]).await;

    let a = rig.settle(2).await;
    assert_eq!(
        a,
        Accounting {
            received: 2,
            events: 0,
            reports: 1,
            drops: 1
        }
    );
    assert_eq!(
        rig.metric("weir_agent_snmp_reports_total{kind=\"unknown_engine_id\"}"),
        1
    );
    assert_eq!(
        rig.metric("weir_agent_snmp_dropped_total{reason=\"not_a_notification\"}"),
        1
    );
    assert_eq!(
        rig.sink.drops.snapshot().into_iter().collect::<Vec<_>>(),
        [("snmp_not_a_notification".to_string(), 1)]
    );
    rig.stop().await;
}
