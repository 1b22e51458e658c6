//! The syslog input end to end on loopback: real sockets in, a real redb queue out.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use weir_agent::config::SyslogConfig;
use weir_agent::pipeline::{self, Sink};
use weir_agent::queue::{Limits, Queue};
use weir_agent::syslog::Listeners;
use weir_common::config::{ByteSize, HumanDuration};
use weir_common::{Event, Record, Severity};

struct Harness {
    queue: Arc<Queue>,
    sink: Sink,
    tracker: TaskTracker,
    shutdown: CancellationToken,
    writer: JoinHandle<()>,
    udp: SocketAddr,
    tcp: SocketAddr,
    _dir: tempfile::TempDir,
}

async fn start(tune: impl FnOnce(&mut SyslogConfig)) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let queue = Arc::new(
        Queue::open(
            &dir.path().join("queue.redb"),
            Limits {
                max_records: 1_000_000,
                max_bytes: 1 << 30,
            },
        )
        .unwrap(),
    );
    // No dedup here: these tests count every line they send.
    let (sink, rx) = pipeline::channel(64, weir_agent::dedup::DedupRules::default());
    let (committed, _) = watch::channel(0);
    let shutdown = CancellationToken::new();
    let writer = tokio::spawn(pipeline::run_writer(
        queue.clone(),
        rx,
        committed,
        pipeline::WriterOptions {
            drop_report_interval: Duration::from_secs(3600),
            dedup_flush_interval: Duration::from_secs(1),
            dedup_max_keys: 1,
            min_commit_interval: pipeline::MIN_COMMIT_INTERVAL,
        },
        shutdown.clone(),
    ));
    let mut cfg = SyslogConfig {
        udp: vec!["127.0.0.1:0".parse().unwrap()],
        tcp: vec!["127.0.0.1:0".parse().unwrap()],
        ..SyslogConfig::default()
    };
    tune(&mut cfg);
    let listeners = Listeners::bind(&cfg).await.unwrap();
    let udp = listeners.udp_addrs()[0];
    let tcp = listeners.tcp_addrs()[0];
    assert_ne!(udp.port(), 0);
    assert_ne!(tcp.port(), 0);
    let tracker = TaskTracker::new();
    listeners.spawn(&cfg, sink.clone(), &tracker, shutdown.clone());
    Harness {
        queue,
        sink,
        tracker,
        shutdown,
        writer,
        udp,
        tcp,
        _dir: dir,
    }
}

impl Harness {
    fn events(&self) -> Vec<Event> {
        self.queue
            .read_from(0, usize::MAX, usize::MAX)
            .unwrap()
            .into_iter()
            .filter_map(|r| match Record::from_bytes(&r.payload).unwrap() {
                Record::Event(e) => Some(e),
                Record::Count { .. } => None,
            })
            .collect()
    }

    /// Waits until the queue holds at least `n` events (or panics after 10 s).
    async fn wait_for(&self, n: usize) -> Vec<Event> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let events = self.events();
            if events.len() >= n {
                return events;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("expected {n} events in the queue, found {}", events.len());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.tracker.close();
        tokio::time::timeout(Duration::from_secs(5), self.tracker.wait())
            .await
            .expect("syslog tasks stop on shutdown");
        drop(self.sink);
        self.writer.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_datagrams_reach_the_queue() {
    let h = start(|_| {}).await;
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for i in 0..50 {
        let line = if i % 2 == 0 {
            format!("<11>1 2025-01-01T00:00:00Z host{i} app - - - udp message {i}")
        } else {
            format!("<12>Oct 11 22:14:15 host{i} app[1]: udp message {i}")
        };
        client.send_to(line.as_bytes(), h.udp).await.unwrap();
        // Loopback does not drop, but a burst can outrun a tiny default receive buffer.
        if i % 10 == 9 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    client.send_to(b"", h.udp).await.unwrap();
    let mut events = h.wait_for(50).await;
    events.sort_by_key(|e| {
        e.message
            .rsplit(' ')
            .next()
            .unwrap()
            .parse::<u32>()
            .unwrap()
    });
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.message, format!("udp message {i}"));
        assert_eq!(e.hostname, format!("host{i}"));
        let want = if i % 2 == 0 {
            Severity::Error
        } else {
            Severity::Warning
        };
        assert_eq!(e.severity, want, "{e:?}");
        assert_eq!(e.peer.as_deref(), Some("127.0.0.1"));
    }
    // The empty datagram is counted, not queued.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while h.sink.drops.snapshot().get("empty_message") != Some(&1) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            h.sink.drops.snapshot()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(h.events().len(), 50);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_octet_counted_then_newline_framed_in_one_connection() {
    let h = start(|_| {}).await;
    let mut stream = TcpStream::connect(h.tcp).await.unwrap();
    let mut data = Vec::new();
    for i in 0..1000 {
        let msg = format!(
            "<{}>1 2025-01-01T00:00:00Z counted{i} app - - - tcp message {i}",
            8 + i % 8
        );
        data.extend_from_slice(format!("{} {msg}", msg.len()).as_bytes());
    }
    for i in 1000..1200 {
        data.extend_from_slice(
            format!(
                "<{}>Oct 11 22:14:15 lf{i} app: tcp message {i}\r\n",
                8 + i % 8
            )
            .as_bytes(),
        );
    }
    // Odd-sized writes, so frames straddle reads.
    for chunk in data.chunks(777) {
        stream.write_all(chunk).await.unwrap();
    }
    stream.shutdown().await.unwrap();
    let events = h.wait_for(1200).await;
    assert_eq!(events.len(), 1200);
    // One connection: order is kept.
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.message, format!("tcp message {i}"));
        let host = if i < 1000 {
            format!("counted{i}")
        } else {
            format!("lf{i}")
        };
        assert_eq!(e.hostname, host);
        assert_eq!(e.severity, Severity::from_syslog((i % 8) as u8), "{e:?}");
        assert!(!e.tags.contains_key("weir_truncated"));
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_tcp_message_is_truncated_and_flagged() {
    let h = start(|c| c.max_message_bytes = ByteSize(100)).await;
    let mut stream = TcpStream::connect(h.tcp).await.unwrap();
    let long = format!("<14>Oct 11 22:14:15 big app: {}", "x".repeat(500));
    stream
        .write_all(format!("{long}\n<14>Oct 11 22:14:15 small app: fits\n").as_bytes())
        .await
        .unwrap();
    let events = h.wait_for(2).await;
    assert_eq!(
        events[0].raw_payload.as_deref(),
        Some(&long.as_bytes()[..100])
    );
    assert_eq!(events[0].tags["weir_truncated"], "true");
    assert_eq!(events[1].message, "fits");
    assert!(!events[1].tags.contains_key("weir_truncated"));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_connection_limit_holds() {
    let h = start(|c| c.tcp_max_connections = 2).await;
    let mut first = TcpStream::connect(h.tcp).await.unwrap();
    let mut second = TcpStream::connect(h.tcp).await.unwrap();
    first
        .write_all(b"<14>Oct 11 22:14:15 one app: first\n")
        .await
        .unwrap();
    second
        .write_all(b"<14>Oct 11 22:14:15 two app: second\n")
        .await
        .unwrap();
    h.wait_for(2).await;
    // The kernel completes the handshake, but the agent does not take the connection.
    let mut third = TcpStream::connect(h.tcp).await.unwrap();
    third
        .write_all(b"<14>Oct 11 22:14:15 three app: third\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        h.events().len(),
        2,
        "a third connection was served over the limit"
    );
    drop(first);
    let events = h.wait_for(3).await;
    assert_eq!(events[2].message, "third");
    drop((second, third));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_tcp_connections_are_closed() {
    let h = start(|c| c.tcp_idle_timeout = HumanDuration::millis(200)).await;
    let mut stream = TcpStream::connect(h.tcp).await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
        .await
        .expect("the agent closes an idle connection")
        .unwrap_or(0);
    assert_eq!(n, 0);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_listeners_and_connections() {
    let h = start(|_| {}).await;
    let mut open = TcpStream::connect(h.tcp).await.unwrap();
    open.write_all(b"<14>Oct 11 22:14:15 h app: before\n")
        .await
        .unwrap();
    h.wait_for(1).await;
    let tcp = h.tcp;
    h.stop().await;
    // The open connection was closed and the port no longer accepts.
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), open.read(&mut buf))
        .await
        .expect("connection closed on shutdown")
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert!(
        TcpStream::connect(tcp).await.is_err(),
        "listener still open after shutdown"
    );
}

#[tokio::test]
async fn bind_errors_name_the_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let cfg = SyslogConfig {
        tcp: vec![addr],
        ..SyslogConfig::default()
    };
    let err = format!("{:#}", Listeners::bind(&cfg).await.unwrap_err());
    assert!(
        err.contains(&addr.to_string()) && err.contains("in use"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn util_linux_logger_messages_arrive() {
    let logger = std::path::Path::new("/usr/bin/logger");
    if !logger.exists() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "/usr/bin/logger is required in CI (install util-linux / bsdutils)"
        );
        eprintln!("skipping: /usr/bin/logger is not installed");
        return;
    }
    let h = start(|_| {}).await;
    let run = |args: Vec<String>| async move {
        let out = tokio::process::Command::new(logger)
            .args(&args)
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "logger {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let port = |a: SocketAddr| a.port().to_string();
    run([
        "--server",
        "127.0.0.1",
        "--port",
        &port(h.udp),
        "--udp",
        "--rfc5424",
        "hello",
    ]
    .map(String::from)
    .to_vec())
    .await;
    h.wait_for(1).await;
    run([
        "--server",
        "127.0.0.1",
        "--port",
        &port(h.tcp),
        "--tcp",
        "--octet-count",
        "--rfc3164",
        "hello tcp",
    ]
    .map(String::from)
    .to_vec())
    .await;
    let events = h.wait_for(2).await;
    assert_eq!(events[0].message, "hello");
    assert_eq!(events[1].message, "hello tcp");
    for e in &events {
        // logger's default priority is user.notice.
        assert_eq!(e.severity, Severity::Info, "{e:?}");
        assert_eq!(
            e.tags.get("facility").map(String::as_str),
            Some("user"),
            "{e:?}"
        );
        assert!(!e.hostname.is_empty());
    }
    h.stop().await;
}
