//! Real syslog senders against a real agent, through to the aggregator's store: util-linux
//! `logger` (RFC 3164 and 5424 over UDP, TCP, TCP with octet counting) and a private rsyslogd
//! relaying over TCP with RFC 6587 octet counting, plus TLS (RFC 5425) with a rustls client.
//!
//! Tests that need a tool skip with a printed reason when it is missing, except under
//! `CI=true`, where a missing tool fails the test (apt: `bsdutils`, `rsyslog`).

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt as _;
use weir_aggregator::store::StoredEvent;
use weir_tests::{Agent, Aggregator, Env, edit, eventually};

/// Whether `tool` runs (`tool <version_arg>`); prints why not, or panics under `CI=true`.
fn have(tool: &str, version_arg: &str) -> bool {
    let ok = Command::new(tool)
        .arg(version_arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{tool} is required under CI=true (apt-get install bsdutils rsyslog)"
        );
        eprintln!("SKIP: {tool} not found or not working; install it to run this test");
    }
    ok
}

/// An aggregator and an agent with UDP, TCP and (optionally) TLS syslog on ephemeral ports.
async fn fleet(env: &Env, tls: Option<(&Path, &Path)>) -> (Aggregator, Agent) {
    let agg = Aggregator::start(&env.aggregator_config("agg", 0, 0)).await;
    let certs = env.issue_agent("site-a", "agent-1");
    let mut text = env.agent_config_text("agent", &agg.quic_addr.to_string(), &certs, 0);
    if let Some((cert, key)) = tls {
        text = edit(
            &text,
            "# tls = [\"0.0.0.0:6514\"]",
            "tls = [\"127.0.0.1:0\"]",
        );
        text = edit(
            &text,
            &format!("# tls_cert = \"{}/syslog.pem\"", certs.display()),
            &format!("tls_cert = \"{}\"", cert.display()),
        );
        text = edit(
            &text,
            &format!("# tls_key = \"{}/syslog.key\"", certs.display()),
            &format!("tls_key = \"{}\"", key.display()),
        );
    }
    let agent = Agent::start(&env.write("agent.toml", &text)).await;
    (agg, agent)
}

fn with_text<'a>(events: &'a [StoredEvent], needle: &str) -> Vec<&'a StoredEvent> {
    events
        .iter()
        .filter(|e| e.event.message.contains(needle))
        .collect()
}

fn logger(args: &[&str], message: &str) {
    let out = Command::new("logger")
        .args(args)
        .arg(message)
        .output()
        .expect("running logger");
    assert!(
        out.status.success(),
        "logger {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logger_over_udp_and_tcp_in_both_formats_and_framings() {
    if !have("logger", "--version") {
        return;
    }
    let env = Env::new();
    let (agg, agent) = fleet(&env, None).await;
    let udp = agent.running().udp_addrs[0].port().to_string();
    let tcp = agent.running().tcp_addrs[0].port().to_string();
    let cases: [(&str, &[&str]); 6] = [
        ("udp-3164", &["--rfc3164", "-d", "-P", &udp]),
        ("udp-5424", &["--rfc5424", "-d", "-P", &udp]),
        ("tcp-3164", &["--rfc3164", "-T", "-P", &tcp]),
        ("tcp-5424", &["--rfc5424", "-T", "-P", &tcp]),
        (
            "tcp-octet-3164",
            &["--rfc3164", "-T", "--octet-count", "-P", &tcp],
        ),
        (
            "tcp-octet-5424",
            &["--rfc5424", "-T", "--octet-count", "-P", &tcp],
        ),
    ];
    for (name, args) in cases {
        let mut all = vec!["-n", "127.0.0.1", "-t", "weirtest", "-p", "local3.warning"];
        all.extend_from_slice(args);
        logger(&all, &format!("interop {name} message"));
    }
    // Generous: on a loaded 2-core CI machine the first delivery can take a while.
    let stored = |name: &str| with_text(&agg.events(), &format!("interop {name} message")).len();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !cases.iter().all(|(name, _)| stored(name) == 1) {
        let missing: Vec<_> = cases
            .iter()
            .filter(|(name, _)| stored(name) != 1)
            .map(|(name, _)| (*name, stored(name)))
            .collect();
        assert!(
            std::time::Instant::now() < deadline,
            "logger messages not stored exactly once after 60 s (name, copies): {missing:?}; \
             agent queue {}",
            agent.queued()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let events = agg.events();
    for (name, _) in cases {
        let e = &with_text(&events, &format!("interop {name} message"))[0].event;
        assert_eq!(
            e.severity,
            weir_common::Severity::Warning,
            "{name}: severity from <PRI> (local3.warning): {e:?}"
        );
        assert_eq!(e.peer.as_deref(), Some("127.0.0.1"), "{name}");
    }
    agent.stop().await;
    agg.stop().await;
}

/// A private rsyslogd: imtcp on `listen`, everything forwarded to `target` over TCP with
/// RFC 6587 octet counting (omfwd `TCP_Framing="octet-counted"`).
struct Rsyslog {
    child: std::process::Child,
}

impl Rsyslog {
    fn start(dir: &Path, listen: u16, target: SocketAddr) -> Rsyslog {
        let work = dir.join("rsyslog");
        std::fs::create_dir_all(&work).unwrap();
        let conf = work.join("rsyslog.conf");
        std::fs::write(
            &conf,
            format!(
                r#"global(workDirectory="{work}" maxMessageSize="8k")
module(load="imtcp")
input(type="imtcp" address="127.0.0.1" port="{listen}")
action(type="omfwd" target="{host}" port="{port}" protocol="tcp" TCP_Framing="octet-counted"
       queue.type="LinkedList" queue.size="100000" action.resumeRetryCount="-1")
"#,
                work = work.display(),
                host = target.ip(),
                port = target.port(),
            ),
        )
        .unwrap();
        let check = Command::new("rsyslogd")
            .args(["-N1", "-f"])
            .arg(&conf)
            .output()
            .expect("rsyslogd -N1");
        assert!(
            check.status.success(),
            "rsyslogd rejected its config: {}",
            String::from_utf8_lossy(&check.stderr)
        );
        let child = Command::new("rsyslogd")
            .args(["-n", "-f"])
            .arg(&conf)
            .arg("-i")
            .arg(work.join("rsyslogd.pid"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(work.join("stderr")).unwrap())
            .spawn()
            .expect("starting rsyslogd");
        Rsyslog { child }
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsyslog_relays_octet_counted_over_tcp_without_loss() {
    if !have("rsyslogd", "-v") || !have("logger", "--version") {
        return;
    }
    const N: usize = 2000;
    let env = Env::new();
    let (agg, agent) = fleet(&env, None).await;
    let listen = weir_tests::free_tcp_port();
    let _rsyslog = Rsyslog::start(env.path(), listen, agent.running().tcp_addrs[0]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", listen)).is_err() {
        assert!(
            Instant::now() < deadline,
            "rsyslogd never listened on {listen}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // logger sends one message per input line.
    let mut child = Command::new("logger")
        .args([
            "-n",
            "127.0.0.1",
            "-T",
            "--octet-count",
            "--rfc5424",
            "-t",
            "relayed",
        ])
        .args(["-P", &listen.to_string()])
        .stdin(Stdio::piped())
        .spawn()
        .expect("running logger");
    {
        let mut stdin = child.stdin.take().unwrap();
        for i in 0..N {
            writeln!(stdin, "relay-{i:05} through rsyslog").unwrap();
        }
    }
    assert!(child.wait().unwrap().success());
    eventually(
        Duration::from_secs(30),
        "every relayed message stored",
        || with_text(&agg.events(), " through rsyslog").len() >= N,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let events = agg.events();
    let mut seen: Vec<usize> = with_text(&events, " through rsyslog")
        .iter()
        .filter_map(|e| {
            let m = &e.event.message;
            let at = m.find("relay-")?;
            m[at + 6..at + 11].parse().ok()
        })
        .collect();
    assert_eq!(seen.len(), N, "each message stored once");
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen, (0..N).collect::<Vec<_>>());
    agent.stop().await;
    agg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_syslog_from_a_rustls_client_reaches_the_aggregator() {
    let env = Env::new();
    // A server certificate for 127.0.0.1 from the test PKI (the aggregator's will do).
    let cert = env.aggregator_tls.join("aggregator.pem");
    let key = env.aggregator_tls.join("aggregator.key");
    let (agg, agent) = fleet(&env, Some((&cert, &key))).await;
    let addr = agent.running().tls_addrs[0];

    let mut roots = rustls::RootCertStore::empty();
    for c in weir_certs::tls::load_certs(&env.ca_cert).unwrap() {
        roots.add(c).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(weir_certs::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    let mut out = Vec::new();
    for i in 0..100 {
        let msg = format!("<11>1 2024-05-01T10:00:00Z router7 sshd 42 - - tls-{i:03} over 6514");
        out.extend_from_slice(format!("{} {msg}", msg.len()).as_bytes());
    }
    tls.write_all(&out).await.unwrap();
    tls.shutdown().await.unwrap();
    eventually(Duration::from_secs(20), "every TLS message stored", || {
        with_text(&agg.events(), " over 6514").len() >= 100
    })
    .await;
    let events = agg.events();
    let got = with_text(&events, " over 6514");
    assert_eq!(got.len(), 100);
    for (i, e) in got.iter().enumerate() {
        assert!(
            e.event.message.contains(&format!("tls-{i:03}")),
            "{:?}",
            e.event
        );
        assert_eq!(e.event.hostname, "router7");
        assert_eq!(e.event.severity, weir_common::Severity::Error);
    }
    agent.stop().await;
    agg.stop().await;
}
