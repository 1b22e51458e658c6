//! `weir-loadgen`: load generator and benchmark driver for the delivery spine.
//!
//! Benchmarks (run on release builds: `cargo build --release --workspace`):
//! - `bench-drain --count 1000000`: fills an agent queue with N records, then starts a real
//!   aggregator and agent process and measures how fast the backlog drains into the store.
//! - `bench-udp --rate 150000 --duration 10`: sends 200-byte RFC 3164 lines over UDP to a real
//!   agent and measures what reaches the aggregator's store (loss, kernel drops, throughput).
//!
//! Both report the agent's peak RSS (VmHWM). Tools: `udp` (send only) and `prefill`.
//! Every line sent carries a unique `seq=N` token so loss and duplicates can be counted.

use std::io::Write;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(about = "Weir load generator and benchmark driver")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Send RFC 3164 syslog lines over UDP at a fixed rate.
    Udp {
        #[arg(long)]
        target: SocketAddr,
        /// Messages per second (0 = as fast as possible).
        #[arg(long, default_value_t = 100_000)]
        rate: u64,
        /// Seconds to send for.
        #[arg(long, default_value_t = 10)]
        duration: u64,
        /// Bytes per line.
        #[arg(long, default_value_t = 200)]
        size: usize,
    },
    /// Append N records to an agent queue file (the agent must not be running).
    Prefill {
        #[arg(long)]
        queue: PathBuf,
        #[arg(long, default_value_t = 1_000_000)]
        count: u64,
        #[arg(long, default_value_t = 200)]
        size: usize,
    },
    /// Benchmark (a): drain an N-record backlog from agent to aggregator.
    BenchDrain {
        #[arg(long, default_value_t = 1_000_000)]
        count: u64,
        /// Keep the work directory (printed) instead of deleting it.
        #[arg(long)]
        keep: bool,
    },
    /// Benchmark (b): sustained syslog UDP → aggregator store.
    BenchUdp {
        #[arg(long, default_value_t = 150_000)]
        rate: u64,
        #[arg(long, default_value_t = 10)]
        duration: u64,
        #[arg(long, default_value_t = 200)]
        size: usize,
        #[arg(long)]
        keep: bool,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Udp {
            target,
            rate,
            duration,
            size,
        } => {
            let sent = send_udp(target, rate, Duration::from_secs(duration), size, 0)?;
            println!(
                "sent {} messages in {duration}s ({:.0}/s)",
                sent.count,
                sent.count as f64 / sent.elapsed.as_secs_f64()
            );
            Ok(())
        }
        Cmd::Prefill { queue, count, size } => {
            let t = Instant::now();
            prefill(&queue, count, size)?;
            println!(
                "appended {count} records in {:.2}s",
                t.elapsed().as_secs_f64()
            );
            Ok(())
        }
        Cmd::BenchDrain { count, keep } => bench_drain(count, keep),
        Cmd::BenchUdp {
            rate,
            duration,
            size,
            keep,
        } => bench_udp(rate, duration, size, keep),
    }
}

/// One syslog line of exactly `size` bytes (padding the message) with a unique token.
fn line(seq: u64, size: usize, buf: &mut Vec<u8>) {
    buf.clear();
    let _ = write!(buf, "<134>Nov 21 12:00:00 loadgen-host app[42]: seq={seq} ");
    while buf.len() < size {
        buf.push(b'x');
    }
    buf.truncate(size.max(40));
}

struct Sent {
    count: u64,
    elapsed: Duration,
}

fn send_udp(
    target: SocketAddr,
    rate: u64,
    duration: Duration,
    size: usize,
    first_seq: u64,
) -> anyhow::Result<Sent> {
    let sock = UdpSocket::bind("127.0.0.1:0")?;
    sock.connect(target)?;
    let mut buf = Vec::with_capacity(size + 64);
    let start = Instant::now();
    let mut sent = 0u64;
    while start.elapsed() < duration {
        // Pace in 1 ms slices: send what the rate allows so far, then sleep briefly.
        let allowed = if rate == 0 {
            u64::MAX
        } else {
            (start.elapsed().as_secs_f64() * rate as f64) as u64
        };
        if sent >= allowed {
            std::thread::sleep(Duration::from_micros(200));
            continue;
        }
        let burst = (allowed - sent).min(1000);
        for _ in 0..burst {
            line(first_seq + sent, size, &mut buf);
            match sock.send(&buf) {
                Ok(_) => sent += 1,
                // Loopback can refuse momentarily (ENOBUFS/ECONNREFUSED before the agent binds).
                Err(_) => std::thread::sleep(Duration::from_micros(50)),
            }
        }
    }
    Ok(Sent {
        count: sent,
        elapsed: start.elapsed(),
    })
}

fn prefill(queue: &Path, count: u64, size: usize) -> anyhow::Result<()> {
    use weir_agent::queue::{Encoded, Limits, Queue};
    use weir_common::{Event, InputKind, Record, Severity};
    let q = Queue::open(
        queue,
        Limits {
            max_records: u64::MAX,
            max_bytes: u64::MAX,
        },
    )?;
    let now = jiff::Timestamp::now();
    let mut buf = Vec::new();
    let mut done = 0;
    while done < count {
        let n = (count - done).min(20_000);
        let batch: Vec<Encoded> = (done..done + n)
            .map(|seq| {
                line(seq, size, &mut buf);
                let mut e = Event::new(
                    InputKind::Syslog,
                    "syslog",
                    "loadgen-host",
                    Severity::Info,
                    String::from_utf8_lossy(&buf[30..]).into_owned(),
                    now,
                );
                e.raw_payload = Some(buf.clone());
                Encoded::new(&Record::Event(e), now.as_microsecond())
            })
            .collect();
        q.append(&batch)?;
        done += n;
    }
    Ok(())
}

/// A temporary fleet: PKI, configs and process handles.
struct Fleet {
    dir: tempfile::TempDir,
    api_port: u16,
    syslog_port: u16,
    api_key: String,
    aggregator: Option<Child>,
    agent: Option<Child>,
    /// Keep the work directory after the run (printed) for inspection.
    keep: bool,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn bin_dir() -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe()?;
    let dir = me.parent().context("exe dir")?.to_path_buf();
    for b in ["weir-agent", "weir-aggregator"] {
        if !dir.join(b).exists() {
            bail!(
                "{} missing: run `cargo build --release --workspace` first",
                dir.join(b).display()
            );
        }
    }
    Ok(dir)
}

impl Fleet {
    fn new() -> anyhow::Result<Fleet> {
        let dir = tempfile::Builder::new().prefix("weir-bench-").tempdir()?;
        let d = dir.path();
        weir_certs::init_ca(&d.join("ca"), &Default::default())?;
        weir_certs::issue_aggregator(
            &d.join("ca"),
            &["localhost".into()],
            &["127.0.0.1".parse()?],
            &d.join("agg-tls"),
            &Default::default(),
        )?;
        weir_certs::issue_agent(
            &d.join("ca"),
            "bench",
            "agent-1",
            &d.join("agent-tls"),
            &Default::default(),
        )?;
        let (api_port, quic_port, syslog_port, http_port) =
            (free_port()?, free_port()?, free_port()?, free_port()?);
        let api_key = "bench-key".to_string();
        std::fs::write(d.join("api-key"), format!("{api_key}\n"))?;
        std::fs::write(
            d.join("aggregator.toml"),
            weir_aggregator::config::example(
                "agg-data",
                "agg-tls",
                "ca/crl.pem",
                quic_port,
                api_port,
            ),
        )?;
        // Benchmarks want a big enough channel and a fast status; the rest is the shipped default.
        let agent = weir_agent::config::example(
            "agent-data",
            &format!("127.0.0.1:{quic_port}"),
            "agent-tls",
            syslog_port,
            http_port,
        )
        .replace("status_interval = \"10s\"", "status_interval = \"1s\"");
        std::fs::write(d.join("agent.toml"), agent)?;
        std::fs::create_dir_all(d.join("agent-data"))?;
        Ok(Fleet {
            dir,
            api_port,
            syslog_port,
            api_key,
            aggregator: None,
            agent: None,
            keep: false,
        })
    }

    fn spawn(&self, bin: &str, config: &str) -> anyhow::Result<Child> {
        let log = std::fs::File::create(self.dir.path().join(format!("{bin}.log")))?;
        let mut cmd = Command::new(bin_dir()?.join(bin));
        // The agent runs as packaged: its systemd unit sets MALLOC_ARENA_MAX=2 (glibc's
        // per-thread arenas otherwise add ~10 MB of RSS on a small gateway).
        if bin == "weir-agent" {
            cmd.env("MALLOC_ARENA_MAX", "2");
        }
        cmd.arg("--config")
            .arg(self.dir.path().join(config))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {bin}"))
    }

    fn start(&mut self) -> anyhow::Result<()> {
        self.aggregator = Some(self.spawn("weir-aggregator", "aggregator.toml")?);
        self.wait_api()?;
        self.agent = Some(self.spawn("weir-agent", "agent.toml")?);
        Ok(())
    }

    fn wait_api(&self) -> anyhow::Result<()> {
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(20) {
            if self.http_get("/healthz").is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("aggregator API did not come up");
    }

    /// A minimal HTTP/1.1 GET (keeps the load generator free of an HTTP client stack).
    fn http_get(&self, path: &str) -> anyhow::Result<String> {
        use std::io::Read;
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.api_port))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: {}\r\nConnection: close\r\n\r\n",
            self.api_key
        )?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        let body = out
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Ok(body)
    }

    fn stored_total(&self) -> anyhow::Result<u64> {
        let body = self.http_get("/api/v1/events?limit=1")?;
        // Chunked or not, the JSON object starts at the first '{'.
        let json = &body[body.find('{').context("no JSON")?..];
        let end = json.rfind('}').context("no JSON end")?;
        let v: serde_json::Value = serde_json::from_str(&json[..=end])?;
        v["total"].as_u64().context("no total")
    }

    fn agent_rss_peak_kb(&self) -> Option<u64> {
        let pid = self.agent.as_ref()?.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    }

    /// CPU seconds (user + system) used so far by the agent and the aggregator.
    fn cpu_secs(&self) -> (f64, f64) {
        let cpu = |c: &Option<Child>| -> f64 {
            let Some(c) = c else { return 0.0 };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{}/stat", c.id())) else {
                return 0.0;
            };
            // Fields after the command name (which may contain spaces) start after ") ".
            let rest = stat.rsplit_once(") ").map_or("", |(_, r)| r);
            let f: Vec<&str> = rest.split_whitespace().collect();
            let ticks: f64 = f.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
                + f.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
            ticks / 100.0
        };
        (cpu(&self.agent), cpu(&self.aggregator))
    }

    fn agent_rss_kb(&self) -> Option<u64> {
        let pid = self.agent.as_ref()?.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for c in [self.agent.as_mut(), self.aggregator.as_mut()]
            .into_iter()
            .flatten()
        {
            let _ = c.kill();
            let _ = c.wait();
        }
        if self.keep {
            let dir = std::mem::replace(&mut self.dir, tempfile::TempDir::new().expect("temp dir"));
            println!("work dir kept: {}", dir.keep().display());
        }
    }
}

fn bench_drain(count: u64, keep: bool) -> anyhow::Result<()> {
    let mut fleet = Fleet::new()?;
    let t = Instant::now();
    prefill(&fleet.dir.path().join("agent-data/queue.redb"), count, 200)?;
    eprintln!(
        "prefilled {count} records in {:.1}s",
        t.elapsed().as_secs_f64()
    );
    fleet.start()?;
    let start = Instant::now();
    let mut last_print = Instant::now();
    let mut rss_max = 0;
    loop {
        rss_max = rss_max.max(fleet.agent_rss_kb().unwrap_or(0));
        let stored = fleet.stored_total().unwrap_or(0);
        if stored >= count {
            break;
        }
        if start.elapsed() > Duration::from_secs(600) {
            bail!("timed out with {stored}/{count} stored");
        }
        if last_print.elapsed() > Duration::from_secs(2) {
            eprintln!(
                "  {stored}/{count} stored after {:.1}s",
                start.elapsed().as_secs_f64()
            );
            last_print = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let secs = start.elapsed().as_secs_f64();
    let peak = fleet.agent_rss_peak_kb().unwrap_or(0).max(rss_max);
    let (agent_cpu, agg_cpu) = fleet.cpu_secs();
    println!(
        "drain: {count} events in {secs:.2}s = {:.0} events/s (includes agent start and QUIC handshake); agent peak RSS {:.1} MB; CPU agent {agent_cpu:.2}s aggregator {agg_cpu:.2}s",
        count as f64 / secs,
        peak as f64 / 1024.0
    );
    fleet.keep = keep;
    Ok(())
}

fn bench_udp(rate: u64, duration: u64, size: usize, keep: bool) -> anyhow::Result<()> {
    let mut fleet = Fleet::new()?;
    fleet.start()?;
    // Wait until the agent is up (its UDP port answers nothing, so wait for its connection).
    std::thread::sleep(Duration::from_millis(1500));
    let before = fleet.stored_total()?;
    let drops_before = weir_common::telemetry::udp_rcvbuf_errors().unwrap_or(0);
    let target: SocketAddr = format!("127.0.0.1:{}", fleet.syslog_port).parse()?;
    let sent = send_udp(target, rate, Duration::from_secs(duration), size, 0)?;
    let offered = sent.count as f64 / sent.elapsed.as_secs_f64();
    let send_end = Instant::now();
    let mut stored = 0;
    let mut rss_max = 0;
    // Wait for the pipeline to settle: stop when the store stops growing for 2 s.
    let mut last_change = Instant::now();
    loop {
        rss_max = rss_max.max(fleet.agent_rss_kb().unwrap_or(0));
        let now = fleet.stored_total()? - before;
        if now != stored {
            stored = now;
            last_change = Instant::now();
        }
        if stored >= sent.count || last_change.elapsed() > Duration::from_secs(3) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let lag = send_end.elapsed().as_secs_f64() - if stored >= sent.count { 0.0 } else { 3.0 };
    let kernel_drops = weir_common::telemetry::udp_rcvbuf_errors().unwrap_or(0) - drops_before;
    let peak = fleet.agent_rss_peak_kb().unwrap_or(0).max(rss_max);
    let (agent_cpu, agg_cpu) = fleet.cpu_secs();
    println!(
        "cpu: agent {agent_cpu:.2}s ({:.2} µs/msg), aggregator {agg_cpu:.2}s",
        agent_cpu * 1e6 / sent.count.max(1) as f64
    );
    println!(
        "udp: offered {offered:.0} msg/s for {duration}s ({} sent), stored {stored} ({} lost, {:.3}%), kernel rcvbuf drops {kernel_drops}, store caught up {lag:.2}s after the sender stopped; agent peak RSS {:.1} MB",
        sent.count,
        sent.count - stored.min(sent.count),
        100.0 * (sent.count - stored.min(sent.count)) as f64 / sent.count.max(1) as f64,
        peak as f64 / 1024.0
    );
    fleet.keep = keep;
    Ok(())
}
