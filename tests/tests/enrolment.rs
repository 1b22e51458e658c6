//! Enrolment and rotation as an operator does them, with the real binaries: `weir-certs issue
//! agent --bundle`, `weir-agent enroll`, start the agent, events arrive as the enrolled
//! identity; `weir-certs renew` and SIGHUP rotate the certificate without a restart, and the
//! agent keeps delivering.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use weir_tests::{Aggregator, Env, binary, free_tcp_port, http_client, post_events, token_events};

fn run(bin: &str, args: &[&str]) -> String {
    let out = Command::new(binary(bin))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {bin}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{bin} {args:?} failed:\n{text}");
    text
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// `weir-agent --config FILE` with stdout and stderr in `log` (the log goes to stdout, which
/// is what the journal captures under systemd); killed on drop.
struct AgentProc {
    child: std::process::Child,
    log: std::path::PathBuf,
}

impl AgentProc {
    async fn start(config: &Path, http: SocketAddr, log: std::path::PathBuf) -> AgentProc {
        AgentProc::start_with(config, http, log, &[]).await
    }

    async fn start_with(
        config: &Path,
        http: SocketAddr,
        log: std::path::PathBuf,
        env: &[(&str, &str)],
    ) -> AgentProc {
        let file = std::fs::File::create(&log).unwrap();
        // Through `exec` so WATCHDOG_PID (which systemd sets) is the agent's own pid.
        let child = Command::new("sh")
            .arg("-c")
            .arg("WATCHDOG_PID=$$ exec \"$0\" --config \"$1\"")
            .arg(binary("weir-agent"))
            .arg(config)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdin(std::process::Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap();
        weir_tests::wait_healthy(http, "agent HTTP up").await;
        AgentProc { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&self, sig: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_child(&self.child);
        rustix::process::kill_process(pid, sig).unwrap();
    }

    fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("----- weir-agent log -----\n{}", self.log());
        }
    }
}

fn hup(p: &AgentProc) {
    p.signal(rustix::process::Signal::HUP);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bundle_enrol_run_renew_reload() {
    let env = Env::new();
    let agg = Aggregator::start(&env.aggregator_config("agg", 0, 0)).await;
    let dir = env.path();
    let s = |p: &Path| p.display().to_string();

    // On the aggregator: issue the agent's bundle.
    let bundle = dir.join("paris-gw-01.bundle");
    let out = run(
        "weir-certs",
        &[
            "issue",
            "agent",
            "--ca",
            &s(&env.ca_dir),
            "--site",
            "paris",
            "--name",
            "gw-01",
            "--out",
            &s(&dir.join("issued/gw-01")),
            "--bundle",
            &s(&bundle),
        ],
    );
    assert!(
        out.contains("weir-agent enroll paris-gw-01.bundle"),
        "{out}"
    );
    assert_eq!(mode(&bundle), 0o600, "the bundle holds a private key");

    // On the gateway: a config as packaged (TLS paths pointing nowhere yet), then enrol.
    let http: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
    let config = env.write(
        "agent.toml",
        &env.agent_config_text(
            "agent",
            &agg.quic_addr.to_string(),
            &dir.join("none"),
            http.port(),
        ),
    );
    let before = std::fs::read_to_string(&config).unwrap();
    let out = Command::new(binary("weir-agent"))
        .args(["check-config", &s(&config)])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("not enrolled yet"),
        "{err}"
    );
    let tls = dir.join("gateway-tls");
    let out = run(
        "weir-agent",
        &[
            "enroll",
            &s(&bundle),
            "--config",
            &s(&config),
            "--tls-dir",
            &s(&tls),
        ],
    );
    assert!(out.contains("Enrolled agent paris/gw-01"), "{out}");
    assert_eq!(mode(&tls), 0o750);
    assert_eq!(mode(&tls.join("agent.key")), 0o600);
    assert_eq!(mode(&tls.join("agent.pem")), 0o644);
    let after = std::fs::read_to_string(&config).unwrap();
    assert!(
        after.contains("# Enrolled: agent paris/gw-01, certificate serial"),
        "{after}"
    );
    assert!(
        after.contains(&format!("cert = \"{}\"", tls.join("agent.pem").display())),
        "{after}"
    );
    // Every comment line of the original survives the edit.
    for line in before.lines().filter(|l| l.starts_with('#')) {
        assert!(after.contains(line), "enrol lost the comment {line:?}");
    }
    run("weir-agent", &["check-config", &s(&config)]);
    // Re-enrolling is idempotent: one enrolment comment, still a valid config.
    run(
        "weir-agent",
        &[
            "enroll",
            &s(&bundle),
            "--config",
            &s(&config),
            "--tls-dir",
            &s(&tls),
        ],
    );
    let again = std::fs::read_to_string(&config).unwrap();
    assert_eq!(again.matches("# Enrolled:").count(), 1, "{again}");

    // The enrolled agent delivers as paris/gw-01.
    let mut agent = AgentProc::start(&config, http, dir.join("agent.log")).await;
    let client = http_client();
    post_events(&client, http, &token_events(0..50))
        .await
        .unwrap();
    weir_tests::eventually(Duration::from_secs(30), "50 events stored", || {
        agg.len() >= 50
    })
    .await;
    assert!(
        agg.events()
            .iter()
            .all(|e| e.site == "paris" && e.agent == "gw-01")
    );

    // Rotation: renew in place, SIGHUP; the agent stays up, says what it reloaded, and keeps
    // delivering (its queue is untouched).
    let old_serial = weir_certs::cert_serial_hex(
        &weir_certs::tls::load_certs(&tls.join("agent.pem")).unwrap()[0],
    )
    .unwrap();
    let out = run(
        "weir-certs",
        &["renew", "--ca", &s(&env.ca_dir), &s(&tls.join("agent.pem"))],
    );
    assert!(out.contains(&format!("old serial {old_serial}")), "{out}");
    let new_serial = weir_certs::cert_serial_hex(
        &weir_certs::tls::load_certs(&tls.join("agent.pem")).unwrap()[0],
    )
    .unwrap();
    assert_ne!(old_serial, new_serial);
    hup(&agent);
    weir_tests::eventually(Duration::from_secs(10), "the reload is logged", || {
        agent.log().contains("SIGHUP: reload done")
    })
    .await;
    assert!(
        agent.is_running(),
        "SIGHUP killed the agent:\n{}",
        agent.log()
    );
    let log = agent.log();
    assert!(log.contains(&format!("serial {new_serial}")), "{log}");
    assert!(log.contains("needs_restart"), "{log}");
    post_events(&client, http, &token_events(50..100))
        .await
        .unwrap();
    weir_tests::eventually(Duration::from_secs(30), "100 events stored", || {
        agg.len() >= 100
    })
    .await;

    // A broken certificate file: the reload says so, the agent stays up.
    std::fs::write(tls.join("agent.pem"), "not a certificate").unwrap();
    hup(&agent);
    weir_tests::eventually(
        Duration::from_secs(10),
        "the failed reload is logged",
        || agent.log().contains("some reloads failed"),
    )
    .await;
    assert!(agent.is_running());
    agent.signal(rustix::process::Signal::TERM);
    weir_tests::eventually(
        Duration::from_secs(20),
        "the agent stops on SIGTERM",
        || !agent.is_running(),
    )
    .await;
    agg.stop().await;
}

/// Under systemd (`Type=notify`, `WatchdogSec=`): READY=1 once listening, WATCHDOG=1 pings at
/// half `WATCHDOG_USEC`, STOPPING=1 on SIGTERM. A datagram socket stands in for systemd.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifies_systemd_ready_watchdog_and_stopping() {
    let env = Env::new();
    let agg = Aggregator::start(&env.aggregator_config("agg", 0, 0)).await;
    let tls = env.issue_agent("site-a", "agent-1");
    let http: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
    let config = env.agent_config("agent", &agg.quic_addr.to_string(), &tls, http.port());
    let sock_path = env.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut agent = AgentProc::start_with(
        &config,
        http,
        env.path().join("agent.log"),
        &[
            ("NOTIFY_SOCKET", sock_path.to_str().unwrap()),
            ("WATCHDOG_USEC", "200000"),
        ],
    )
    .await;
    let mut seen = String::new();
    let mut buf = [0u8; 512];
    while !(seen.contains("READY=1") && seen.matches("WATCHDOG=1").count() >= 3) {
        let n = sock
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("waiting for notifications (got {seen:?}): {e}"));
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        seen.push('\n');
    }
    assert!(seen.find("READY=1") < seen.find("WATCHDOG=1"), "{seen}");
    agent.signal(rustix::process::Signal::TERM);
    loop {
        let n = sock.recv(&mut buf).expect("STOPPING=1 after SIGTERM");
        if String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1") {
            break;
        }
    }
    weir_tests::eventually(Duration::from_secs(20), "the agent stops", || {
        !agent.is_running()
    })
    .await;
    agg.stop().await;
}
