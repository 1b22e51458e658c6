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
use weir_common::telemetry::proc_status_kb;

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
        /// Keep the aggregator down while sending (a WAN outage), so the agent alone shares the
        /// machine with the sender: measures the gateway's intake (received → parsed → deduped
        /// → durably committed to its queue). Then starts the aggregator and checks every
        /// committed event is stored exactly once.
        #[arg(long)]
        outage: bool,
    },
    /// Post bulk JSON events to a running aggregator's `POST /api/v1/events`.
    ApiIngest {
        /// The aggregator's API base URL.
        #[arg(long, default_value = "http://127.0.0.1:8083")]
        url: String,
        /// An API key with the `ingest` scope.
        #[arg(long, env = "WEIR_API_KEY")]
        key: String,
        /// Events in total.
        #[arg(long, default_value_t = 500_000)]
        events: u64,
        /// Events per request.
        #[arg(long, default_value_t = 1000)]
        batch: u64,
        /// Concurrent connections.
        #[arg(long, default_value_t = 4)]
        conns: usize,
    },
    /// Benchmark (e): bulk API ingest into a fresh aggregator (release build), then checks
    /// that every event was stored.
    BenchApi {
        #[arg(long, default_value_t = 500_000)]
        events: u64,
        #[arg(long, default_value_t = 1000)]
        batch: u64,
        #[arg(long, default_value_t = 4)]
        conns: usize,
        #[arg(long)]
        keep: bool,
    },
    /// Benchmark (c): syslog TCP (newline framing, several connections) → aggregator store.
    BenchTcp {
        /// Messages in total, spread over the connections.
        #[arg(long, default_value_t = 2_000_000)]
        count: u64,
        #[arg(long, default_value_t = 4)]
        conns: u64,
        #[arg(long, default_value_t = 200)]
        size: usize,
        #[arg(long)]
        keep: bool,
        /// Keep the aggregator down while sending (see `bench-udp --outage`).
        #[arg(long)]
        outage: bool,
    },
    /// Benchmark (d): SNMP traps from `weir-trapgen` → aggregator store.
    BenchTrap {
        /// v2c or v3 (v3 = user `weir`, SHA/AES, trapgen's defaults).
        #[arg(long, default_value = "v2c")]
        version: String,
        #[arg(long, default_value_t = 100_000)]
        rate: u64,
        #[arg(long, default_value_t = 10)]
        duration: u64,
        /// Keep the shipped SNMP dedup (one flood = one event with a count) instead of turning
        /// it off (one stored event per trap).
        #[arg(long)]
        dedup: bool,
        #[arg(long)]
        keep: bool,
        /// Keep the aggregator down while sending, as `bench-udp --outage` does: measures the
        /// gateway's intake of traps (received → decoded, authenticated, decrypted → durably
        /// committed), then checks every committed event is stored exactly once. Dedup off only.
        #[arg(long)]
        outage: bool,
    },
    /// Peer benchmark: UDP to another daemon; count unique seq in its output file.
    PeerUdp {
        #[arg(long)]
        target: SocketAddr,
        #[arg(long, default_value_t = 100_000)]
        rate: u64,
        #[arg(long, default_value_t = 10)]
        duration: u64,
        #[arg(long, default_value_t = 200)]
        size: usize,
        /// File where the peer writes delivered lines.
        #[arg(long)]
        out: PathBuf,
        /// The receiving daemon's PID (CPU and RSS).
        #[arg(long)]
        pid: u32,
    },
    /// Peer benchmark: TCP (newline framing) to another daemon; time until all seqs arrive.
    PeerTcp {
        #[arg(long)]
        target: SocketAddr,
        #[arg(long, default_value_t = 2_000_000)]
        count: u64,
        #[arg(long, default_value_t = 4)]
        conns: u64,
        #[arg(long, default_value_t = 200)]
        size: usize,
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        pid: u32,
    },
    /// Issue 4 setup: write N realistic events straight into an aggregator store (created when
    /// missing; stop the aggregator first), spread over DAYS ending now.
    StoreFill {
        #[arg(long)]
        db: PathBuf,
        #[arg(long, default_value_t = 10_000_000)]
        events: u64,
        #[arg(long, default_value_t = 20)]
        sites: u32,
        #[arg(long, default_value_t = 2000)]
        hosts: u32,
        #[arg(long, default_value_t = 30)]
        days: u32,
    },
    /// Issue 4 benchmark: p50/p99 of the two search queries on a filled store (in-process:
    /// parameters, store search, JSON page; no network).
    StoreBench {
        #[arg(long)]
        db: PathBuf,
        /// Runs per query.
        #[arg(long, default_value_t = 200)]
        runs: usize,
        /// Sites the fill used (site-00 … ).
        #[arg(long, default_value_t = 20)]
        sites: u32,
        /// The store's page cache in MiB (aggregator.toml `store_cache`; default 2 GiB).
        #[arg(long, default_value_t = 2048)]
        cache_mib: u64,
    },
    /// Count unique `seq=N` tokens (and duplicates) in a file, waiting until it stops growing.
    CountSeq {
        #[arg(long)]
        out: PathBuf,
        /// Seqs expected (0..N); stop waiting once all are there.
        #[arg(long, default_value_t = 0)]
        expect: u64,
        /// The receiving daemon's PID (CPU and RSS), optional.
        #[arg(long)]
        pid: Option<u32>,
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
        Cmd::ApiIngest {
            url,
            key,
            events,
            batch,
            conns,
        } => {
            let rt = tokio::runtime::Runtime::new()?;
            let out = rt.block_on(weir_tests::api_load::run(&url, &key, events, batch, conns))?;
            println!(
                "api-ingest: {} events in {} requests in {:.2}s = {:.0} events/s; slowest request {:.0} ms",
                out.events,
                out.requests,
                out.elapsed.as_secs_f64(),
                out.rate(),
                out.max_latency.as_secs_f64() * 1e3
            );
            Ok(())
        }
        Cmd::BenchApi {
            events,
            batch,
            conns,
            keep,
        } => bench_api(events, batch, conns, keep),
        Cmd::BenchUdp {
            rate,
            duration,
            size,
            keep,
            outage,
        } => bench_udp(rate, duration, size, keep, outage),
        Cmd::BenchTcp {
            count,
            conns,
            size,
            keep,
            outage,
        } => bench_tcp(count, conns, size, keep, outage),
        Cmd::BenchTrap {
            version,
            rate,
            duration,
            dedup,
            keep,
            outage,
        } => bench_trap(&version, rate, duration, dedup, keep, outage),
        Cmd::PeerUdp {
            target,
            rate,
            duration,
            size,
            out,
            pid,
        } => peer_udp(target, rate, duration, size, &out, pid),
        Cmd::PeerTcp {
            target,
            count,
            conns,
            size,
            out,
            pid,
        } => peer_tcp(target, count, conns, size, &out, pid),
        Cmd::StoreFill {
            db,
            events,
            sites,
            hosts,
            days,
        } => {
            let f = weir_tests::store_bench::fill(&db, events, sites, hosts, days)?;
            println!(
                "store-fill: {} events ({} .. {}) in {:.1}s ({:.0}/s); {} is {:.0} MB",
                f.events,
                f.first,
                f.last,
                f.elapsed.as_secs_f64(),
                f.events as f64 / f.elapsed.as_secs_f64(),
                db.display(),
                std::fs::metadata(&db).map_or(0, |m| m.len()) as f64 / 1e6
            );
            Ok(())
        }
        Cmd::StoreBench {
            db,
            runs,
            sites,
            cache_mib,
        } => {
            for l in weir_tests::store_bench::bench(&db, runs, sites, cache_mib << 20)? {
                println!(
                    "store-bench: {:<48} runs {:>4}  p50 {:>8.2} ms  p99 {:>8.2} ms  max {:>8.2} ms  (mean total {:.0})",
                    l.name,
                    l.runs,
                    l.p50.as_secs_f64() * 1e3,
                    l.p99.as_secs_f64() * 1e3,
                    l.max.as_secs_f64() * 1e3,
                    l.mean_total
                );
            }
            Ok(())
        }
        Cmd::CountSeq { out, expect, pid } => {
            let before = pid.map(cpu_secs_pid).unwrap_or(0.0);
            let mut seen = SeqCounter::new(&out);
            let mut rss = 0;
            let t = Instant::now();
            wait_settled(expect, || {
                rss = rss.max(
                    pid.and_then(|p| proc_status_kb(Some(p), "VmRSS:"))
                        .unwrap_or(0),
                );
                seen.scan()
            })?;
            println!(
                "count-seq: {} unique, {} duplicates, {} missing of {expect}, settled after {:.2}s; pid CPU {:.2}s, peak RSS {:.1} MB",
                seen.unique,
                seen.dups,
                expect.saturating_sub(seen.unique),
                t.elapsed().as_secs_f64(),
                pid.map(cpu_secs_pid).unwrap_or(0.0) - before,
                pid.and_then(|p| proc_status_kb(Some(p), "VmHWM:"))
                    .unwrap_or(0)
                    .max(rss) as f64
                    / 1024.0
            );
            Ok(())
        }
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
        q.append(batch)?;
        done += n;
    }
    Ok(())
}

/// A temporary fleet: PKI, configs and process handles.
struct Fleet {
    dir: tempfile::TempDir,
    api_port: u16,
    syslog_port: u16,
    /// The agent's SNMP trap port (the example's fixed 1162 is replaced by a free port).
    snmp_port: u16,
    /// The agent's HTTP port (metrics).
    http_port: u16,
    api_key: String,
    aggregator: Option<Child>,
    agent: Option<Child>,
    /// Keep the work directory after the run (printed) for inspection.
    keep: bool,
}

/// `key = default` in a shipped example config, set from the environment variable `var` when
/// that is set (quoted as the default is): the `WEIR_BENCH_*` knobs for trying other values
/// without editing configs. Fails when the example no longer has that line, rather than
/// running the benchmark with the knob silently ignored.
fn bench_setting(config: String, key: &str, default: &str, var: &str) -> anyhow::Result<String> {
    let Ok(value) = std::env::var(var) else {
        return Ok(config);
    };
    let from = format!("{key} = {default}");
    if !config.contains(&from) {
        bail!("{var} is set, but the example config no longer has `{from}` to change");
    }
    let quote = if default.starts_with('"') { "\"" } else { "" };
    Ok(config.replace(&from, &format!("{key} = {quote}{value}{quote}")))
}

/// The host's UDP receive-buffer drops (`RcvbufErrors`) since `before` (0: the count itself).
fn kernel_drops_since(before: u64) -> u64 {
    weir_common::telemetry::udp_rcvbuf_errors()
        .unwrap_or(0)
        .saturating_sub(before)
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
        let (api_port, quic_port, syslog_port, http_port, snmp_port) = (
            free_port()?,
            free_port()?,
            free_port()?,
            free_port()?,
            free_port()?,
        );
        let api_key = "bench-key".to_string();
        std::fs::write(d.join("api-key"), format!("{api_key}\n"))?;
        let aggregator = weir_aggregator::config::example(
            "agg-data",
            "agg-tls",
            "ca/crl.pem",
            quic_port,
            api_port,
        );
        let aggregator = bench_setting(
            aggregator,
            "index_max_lag_events",
            "1000000",
            "WEIR_BENCH_INDEX_MAX_LAG",
        )?;
        let aggregator = bench_setting(
            aggregator,
            "store_cache",
            "\"2GiB\"",
            "WEIR_BENCH_STORE_CACHE",
        )?;
        std::fs::write(d.join("aggregator.toml"), aggregator)?;
        // Benchmarks want a big enough channel and a fast status; the rest is the shipped default.
        let agent = weir_agent::config::example(
            "agent-data",
            &format!("127.0.0.1:{quic_port}"),
            "agent-tls",
            syslog_port,
            http_port,
        )
        .replace("status_interval = \"10s\"", "status_interval = \"1s\"")
        .replace(
            "listen = [\"127.0.0.1:1162\"]",
            &format!("listen = [\"127.0.0.1:{snmp_port}\"]"),
        );
        let agent = bench_setting(
            agent,
            "channel_max_bytes",
            "\"2MiB\"",
            "WEIR_BENCH_AGENT_CHANNEL",
        )?;
        let agent = bench_setting(
            agent,
            "send_window",
            "\"2MiB\"",
            "WEIR_BENCH_AGENT_SEND_WINDOW",
        )?;
        std::fs::write(d.join("agent.toml"), agent)?;
        std::fs::create_dir_all(d.join("agent-data"))?;
        Ok(Fleet {
            dir,
            api_port,
            syslog_port,
            snmp_port,
            http_port,
            api_key,
            aggregator: None,
            agent: None,
            keep: false,
        })
    }

    fn spawn(&self, bin: &str, config: &str) -> anyhow::Result<Child> {
        let log = std::fs::File::create(self.dir.path().join(format!("{bin}.log")))?;
        let mut cmd = Command::new(bin_dir()?.join(bin));
        // The agent runs as packaged: its systemd unit sets MALLOC_ARENA_MAX=1 (glibc's
        // per-thread arenas otherwise add ~10 MB of RSS on a small gateway).
        if bin == "weir-agent" {
            cmd.env("MALLOC_ARENA_MAX", "1");
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
        self.wait_http(self.api_port, "aggregator API")
    }

    /// Waits up to 20 s for `/healthz` on `port` to answer.
    fn wait_http(&self, port: u16, what: &str) -> anyhow::Result<()> {
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(20) {
            if self.http_get_port(port, "/healthz").is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("{what} did not come up");
    }

    /// A minimal HTTP/1.1 GET (keeps the load generator free of an HTTP client stack).
    fn http_get(&self, path: &str) -> anyhow::Result<String> {
        self.http_get_port(self.api_port, path)
    }

    fn http_get_port(&self, port: u16, path: &str) -> anyhow::Result<String> {
        use std::io::Read;
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
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

    fn events_page(&self, limit: u32) -> anyhow::Result<serde_json::Value> {
        let body = self.http_get(&format!("/api/v1/events?limit={limit}"))?;
        // Chunked or not, the JSON object starts at the first '{'.
        let json = &body[body.find('{').context("no JSON")?..];
        let end = json.rfind('}').context("no JSON end")?;
        Ok(serde_json::from_str(&json[..=end])?)
    }

    fn stored_total(&self) -> anyhow::Result<u64> {
        self.events_page(1)?["total"].as_u64().context("no total")
    }

    /// Events this aggregator process has stored (`weir_aggregator_events_stored_total`), for
    /// polling progress: reading it costs the aggregator nothing, where a search during heavy
    /// ingest scans the events not yet indexed (polled every 20 ms, that was most of the
    /// aggregator's CPU in a drain).
    fn stored_metric(&self) -> anyhow::Result<u64> {
        Ok(self
            .aggregator_metric("weir_aggregator_events_stored_total")?
            .unwrap_or(0))
    }

    /// One unlabelled metric of the aggregator's `/metrics` (`None` while not exported).
    fn aggregator_metric(&self, name: &str) -> anyhow::Result<Option<u64>> {
        self.metric_at(self.api_port, name)
    }

    /// Starts the agent alone (the aggregator stays down, as in a WAN outage) and waits for
    /// its HTTP endpoint.
    fn start_agent(&mut self) -> anyhow::Result<()> {
        self.agent = Some(self.spawn("weir-agent", "agent.toml")?);
        self.wait_http(self.http_port, "agent HTTP endpoint")
    }

    /// Records the agent has durably committed to its queue (`weir_agent_committed_total`).
    fn agent_committed(&self) -> anyhow::Result<u64> {
        Ok(self
            .metric_at(self.http_port, "weir_agent_committed_total")?
            .unwrap_or(0))
    }

    /// Queue commits and batch frames the agent has made so far (0 while not exported).
    fn agent_commits_and_frames(&self) -> (u64, u64) {
        let get = |name| {
            self.metric_at(self.http_port, name)
                .ok()
                .flatten()
                .unwrap_or(0)
        };
        (
            get("weir_agent_queue_commit_seconds_count"),
            get("weir_agent_batch_rtt_seconds_count"),
        )
    }

    /// One unlabelled metric from the `/metrics` endpoint on `port`.
    fn metric_at(&self, port: u16, name: &str) -> anyhow::Result<Option<u64>> {
        let body = self.http_get_port(port, "/metrics")?;
        let prefix = format!("{name} ");
        let value = body.lines().find_map(|l| l.strip_prefix(prefix.as_str()));
        Ok(match value {
            Some(v) => Some(v.trim().parse::<f64>()? as u64),
            None => None,
        })
    }

    /// Sum of the stored events' dedup counts (meaningful while at most 1000 events are stored).
    fn stored_count_sum(&self) -> anyhow::Result<u64> {
        let page = self.events_page(1000)?;
        let events = page["events"].as_array().context("no events")?;
        Ok(events.iter().filter_map(|e| e["count"].as_u64()).sum())
    }

    /// The agent's non-zero drop counters, from its /metrics endpoint.
    fn agent_drops(&self) -> String {
        let Ok(body) = self.http_get_port(self.http_port, "/metrics") else {
            return "(metrics unavailable)".into();
        };
        let lines: Vec<&str> = body
            .lines()
            .filter(|l| !l.starts_with('#') && l.contains("drop"))
            .filter(|l| l.rsplit(' ').next().is_some_and(|v| v != "0"))
            .collect();
        if lines.is_empty() {
            "none".into()
        } else {
            lines.join("; ")
        }
    }

    fn agent_rss_peak_kb(&self) -> Option<u64> {
        proc_status_kb(Some(self.agent.as_ref()?.id()), "VmHWM:")
    }

    /// CPU seconds (user + system) used so far by the agent and the aggregator.
    fn cpu_secs(&self) -> (f64, f64) {
        let cpu = |c: &Option<Child>| c.as_ref().map_or(0.0, |c| cpu_secs_pid(c.id()));
        (cpu(&self.agent), cpu(&self.aggregator))
    }

    fn agent_rss_kb(&self) -> Option<u64> {
        proc_status_kb(Some(self.agent.as_ref()?.id()), "VmRSS:")
    }
}

/// CPU seconds (user + system) a process has used so far (0 when it is gone).
fn cpu_secs_pid(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may contain spaces) start after ") ".
    let rest = stat.rsplit_once(") ").map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    ticks / 100.0
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

fn bench_api(events: u64, batch: u64, conns: usize, keep: bool) -> anyhow::Result<()> {
    let mut fleet = Fleet::new()?;
    fleet.keep = keep;
    fleet.aggregator = Some(fleet.spawn("weir-aggregator", "aggregator.toml")?);
    fleet.wait_api()?;
    let url = format!("http://127.0.0.1:{}", fleet.api_port);
    let rt = tokio::runtime::Runtime::new()?;
    let cpu_before = fleet.cpu_secs().1;
    let out = rt.block_on(weir_tests::api_load::run(
        &url,
        &fleet.api_key,
        events,
        batch,
        conns,
    ))?;
    let agg_cpu = fleet.cpu_secs().1 - cpu_before;
    let stored = fleet.stored_total()?;
    println!(
        "bench-api: {} events ({} per request, {conns} connections) stored durably in {:.2}s = {:.0} events/s; slowest request {:.0} ms; aggregator CPU {agg_cpu:.2}s; stored {stored}",
        out.events,
        batch,
        out.elapsed.as_secs_f64(),
        out.rate(),
        out.max_latency.as_secs_f64() * 1e3,
    );
    if stored != events {
        bail!("{stored} events stored of {events} posted");
    }
    Ok(())
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
        let stored = fleet.stored_metric().unwrap_or(0);
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
    // The counter says stored; the API must agree (every event exactly once, searchable).
    let api_total = fleet.stored_total()?;
    if api_total != count {
        bail!("weir_aggregator_events_stored_total reached {count} but the API lists {api_total}");
    }
    // Stored events are searchable at once (a search scans what is not indexed yet); the
    // search indexes catch up behind ingest, bounded by `index_max_lag_events`. Say when.
    let lag = |f: &Fleet| f.aggregator_metric("weir_aggregator_index_lag_events");
    let lag_at_stored = lag(&fleet)?.unwrap_or(0);
    // Not exported yet counts as behind: the wait must not end before the indexer reports.
    while lag(&fleet)?.is_none_or(|l| l > 0) {
        if start.elapsed() > Duration::from_secs(600) {
            bail!("the search indexes did not catch up");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let indexed_secs = start.elapsed().as_secs_f64();
    let (_, agg_cpu_indexed) = fleet.cpu_secs();
    println!(
        "drain: {count} events in {secs:.2}s = {:.0} events/s (includes agent start and QUIC handshake); agent peak RSS {:.1} MB; CPU agent {agent_cpu:.2}s aggregator {agg_cpu:.2}s; \
         search indexes {lag_at_stored} behind when the last was stored, all indexed after {indexed_secs:.2}s = {:.0} events/s (aggregator CPU {agg_cpu_indexed:.2}s)",
        count as f64 / secs,
        peak as f64 / 1024.0,
        count as f64 / indexed_secs,
    );
    fleet.keep = keep;
    Ok(())
}

fn bench_udp(
    rate: u64,
    duration: u64,
    size: usize,
    keep: bool,
    outage: bool,
) -> anyhow::Result<()> {
    let mut fleet = Fleet::new()?;
    if outage {
        fleet.keep = keep;
        let port = fleet.syslog_port;
        return outage_run(&mut fleet, "udp", port, move |target| {
            send_udp(target, rate, Duration::from_secs(duration), size, 0)
        });
    }
    fleet.start()?;
    // Wait until the agent is up (its UDP port answers nothing, so wait for its connection).
    std::thread::sleep(Duration::from_millis(1500));
    let before = fleet.stored_metric()?;
    let drops_before = kernel_drops_since(0);
    let commits_before = fleet.agent_commits_and_frames();
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
        let now = fleet.stored_metric()? - before;
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
    let kernel_drops = kernel_drops_since(drops_before);
    let peak = fleet.agent_rss_peak_kb().unwrap_or(0).max(rss_max);
    let (agent_cpu, agg_cpu) = fleet.cpu_secs();
    println!(
        "cpu: agent {agent_cpu:.2}s ({:.2} µs/msg), aggregator {agg_cpu:.2}s",
        agent_cpu * 1e6 / sent.count.max(1) as f64
    );
    // What the fixed costs per wakeup scale with: queue commits and batch frames per second.
    let (commits, frames) = fleet.agent_commits_and_frames();
    let (commits, frames) = (
        commits.saturating_sub(commits_before.0),
        frames.saturating_sub(commits_before.1),
    );
    let secs = sent.elapsed.as_secs_f64().max(1e-9);
    println!(
        "agent: {commits} queue commits ({:.0}/s), {frames} batch frames ({:.0}/s) while sending and settling (per second of sending)",
        commits as f64 / secs,
        frames as f64 / secs,
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

/// An outage run (`--outage`): the agent alone receives what `send` sends to its `port` (its
/// syslog or SNMP port; the aggregator stays down, as in a WAN outage) and commits it to its
/// queue; then the aggregator starts and every committed event must be stored exactly once.
fn outage_run(
    fleet: &mut Fleet,
    kind: &str,
    port: u16,
    send: impl FnOnce(SocketAddr) -> anyhow::Result<Sent> + Send + 'static,
) -> anyhow::Result<()> {
    fleet.start_agent()?;
    let target: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let drops_before = kernel_drops_since(0);
    let cpu_before = fleet.cpu_secs().0;
    let sender = std::thread::spawn(move || send(target));
    let mut rss_max = 0;
    let (committed, last_growth) = wait_settled(0, || {
        rss_max = rss_max.max(fleet.agent_rss_kb().unwrap_or(0));
        fleet.agent_committed()
    })?;
    let sent = sender
        .join()
        .map_err(|_| anyhow::anyhow!("sender panicked"))??;
    let kernel_drops = kernel_drops_since(drops_before);
    let cpu = fleet.cpu_secs().0 - cpu_before;
    let lost = sent.count.saturating_sub(committed);
    let secs = last_growth.as_secs_f64();
    println!(
        "{kind}, aggregator down: {} sent in {:.2}s ({:.0} msg/s offered), agent committed {committed} in {secs:.2}s = {:.0} msg/s ({lost} lost, {:.3}%), kernel rcvbuf drops {kernel_drops}; agent CPU {cpu:.2}s ({:.2} µs/msg), peak RSS {:.1} MB",
        sent.count,
        sent.elapsed.as_secs_f64(),
        sent.count as f64 / sent.elapsed.as_secs_f64(),
        committed as f64 / secs,
        100.0 * lost as f64 / sent.count.max(1) as f64,
        cpu * 1e6 / committed.max(1) as f64,
        fleet.agent_rss_peak_kb().unwrap_or(0).max(rss_max) as f64 / 1024.0,
    );
    println!("agent drop counters: {}", fleet.agent_drops());
    drain_after_outage(fleet, committed)
}

/// Ends an outage run: starts the aggregator and waits until the `committed` events the agent
/// queued are stored, each exactly once (the stored counter and the API's total agree).
fn drain_after_outage(fleet: &mut Fleet, committed: u64) -> anyhow::Result<()> {
    let start = Instant::now();
    fleet.aggregator = Some(fleet.spawn("weir-aggregator", "aggregator.toml")?);
    fleet.wait_api()?;
    // The agent reconnects with backoff (up to `reconnect_max`), so the store may stay empty for
    // a while after the aggregator is up: wait for the count, not for a quiet spell.
    let mut stored = fleet.stored_metric()?;
    let mut last_change = Instant::now();
    while stored < committed && last_change.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(20));
        let now = fleet.stored_metric()?;
        if now != stored {
            stored = now;
            last_change = Instant::now();
        }
    }
    let api_total = fleet.stored_total()?;
    if stored != committed || api_total != committed {
        bail!(
            "after the outage: agent committed {committed}, aggregator stored {stored}, API lists {api_total}"
        );
    }
    println!(
        "after the outage: all {committed} stored exactly once {:.2}s after the aggregator was started (its start and the agent's reconnect backoff included)",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Polls `progress` every 20 ms until it reaches `expect` (when non-zero) or stops growing for
/// 3 s. Returns the final value and when it last grew (since the call).
fn wait_settled(
    expect: u64,
    mut progress: impl FnMut() -> anyhow::Result<u64>,
) -> anyhow::Result<(u64, Duration)> {
    let start = Instant::now();
    let mut value = progress()?;
    let mut last_change = start.elapsed();
    loop {
        if expect > 0 && value >= expect {
            return Ok((value, last_change));
        }
        if start.elapsed() - last_change > Duration::from_secs(3) {
            return Ok((value, last_change));
        }
        if start.elapsed() > Duration::from_secs(900) {
            bail!("timed out at {value}/{expect}");
        }
        std::thread::sleep(Duration::from_millis(20));
        let now = progress()?;
        if now != value {
            value = now;
            last_change = start.elapsed();
        }
    }
}

/// Counts unique `seq=N` tokens in a file a peer appends to, reading only what was added.
struct SeqCounter {
    path: PathBuf,
    offset: u64,
    seen: Vec<u64>,
    unique: u64,
    dups: u64,
}

impl SeqCounter {
    fn new(path: &Path) -> SeqCounter {
        SeqCounter {
            path: path.to_path_buf(),
            offset: 0,
            seen: Vec::new(),
            unique: 0,
            dups: 0,
        }
    }

    /// Reads the complete lines added since the last call; returns the unique count.
    fn scan(&mut self) -> anyhow::Result<u64> {
        use std::io::{Read, Seek, SeekFrom};
        let Ok(mut f) = std::fs::File::open(&self.path) else {
            return Ok(self.unique);
        };
        f.seek(SeekFrom::Start(self.offset))?;
        let mut buf = Vec::new();
        f.take(256 << 20).read_to_end(&mut buf)?;
        let Some(end) = buf.iter().rposition(|b| *b == b'\n') else {
            return Ok(self.unique);
        };
        self.offset += end as u64 + 1;
        for line in buf[..end].split(|b| *b == b'\n') {
            let Some(at) = line.windows(4).position(|w| w == b"seq=") else {
                continue;
            };
            let digits = line[at + 4..]
                .iter()
                .take_while(|b| b.is_ascii_digit())
                .fold(0u64, |n, b| n * 10 + u64::from(b - b'0'));
            let (word, bit) = ((digits / 64) as usize, digits % 64);
            if word >= self.seen.len() {
                self.seen.resize(word + 1, 0);
            }
            if self.seen[word] & (1 << bit) != 0 {
                self.dups += 1;
            } else {
                self.seen[word] |= 1 << bit;
                self.unique += 1;
            }
        }
        Ok(self.unique)
    }
}

/// Sends `count` newline-framed lines of `size` bytes (newline included) over `conns` TCP
/// connections, each with its own seq range, as fast as the receiver reads them.
fn send_tcp(target: SocketAddr, count: u64, conns: u64, size: usize) -> anyhow::Result<Sent> {
    let start = Instant::now();
    let per = count.div_ceil(conns.max(1));
    let threads: Vec<_> = (0..conns.max(1))
        .map(|k| {
            let (first, last) = (k * per, ((k + 1) * per).min(count));
            std::thread::spawn(move || -> anyhow::Result<u64> {
                let s = std::net::TcpStream::connect(target)?;
                let mut w = std::io::BufWriter::with_capacity(256 << 10, s);
                let mut buf = Vec::with_capacity(size + 64);
                for seq in first..last {
                    line(seq, size.saturating_sub(1), &mut buf);
                    buf.push(b'\n');
                    w.write_all(&buf)?;
                }
                w.flush()?;
                Ok(last.saturating_sub(first))
            })
        })
        .collect();
    let mut sent = 0;
    for t in threads {
        sent += t
            .join()
            .map_err(|_| anyhow::anyhow!("sender thread panicked"))??;
    }
    Ok(Sent {
        count: sent,
        elapsed: start.elapsed(),
    })
}

fn bench_tcp(count: u64, conns: u64, size: usize, keep: bool, outage: bool) -> anyhow::Result<()> {
    let mut fleet = Fleet::new()?;
    if outage {
        fleet.keep = keep;
        let port = fleet.syslog_port;
        return outage_run(&mut fleet, "tcp", port, move |target| {
            send_tcp(target, count, conns, size)
        });
    }
    fleet.start()?;
    std::thread::sleep(Duration::from_millis(1500));
    let before = fleet.stored_metric()?;
    let cpu_before = fleet.cpu_secs();
    let target: SocketAddr = format!("127.0.0.1:{}", fleet.syslog_port).parse()?;
    let sender = std::thread::spawn(move || send_tcp(target, count, conns, size));
    let mut rss_max = 0;
    let (stored, last_growth) = wait_settled(count, || {
        rss_max = rss_max.max(fleet.agent_rss_kb().unwrap_or(0));
        Ok(fleet.stored_metric()? - before)
    })?;
    // From the start of sending to the store's last growth.
    let secs = last_growth.as_secs_f64();
    let sent = sender
        .join()
        .map_err(|_| anyhow::anyhow!("sender panicked"))??;
    let (agent_cpu, agg_cpu) = fleet.cpu_secs();
    println!(
        "tcp: {} sent over {conns} connections in {:.2}s ({:.0}/s offered), stored {stored} in {secs:.2}s = {:.0} msg/s end to end ({} lost); agent peak RSS {:.1} MB; CPU agent {:.2}s ({:.2} µs/msg) aggregator {:.2}s",
        sent.count,
        sent.elapsed.as_secs_f64(),
        sent.count as f64 / sent.elapsed.as_secs_f64(),
        stored as f64 / secs,
        sent.count.saturating_sub(stored),
        fleet.agent_rss_peak_kb().unwrap_or(0).max(rss_max) as f64 / 1024.0,
        agent_cpu - cpu_before.0,
        (agent_cpu - cpu_before.0) * 1e6 / stored.max(1) as f64,
        agg_cpu - cpu_before.1,
    );
    println!("agent drop counters: {}", fleet.agent_drops());
    fleet.keep = keep;
    Ok(())
}

/// The v3 user `weir-trapgen` sends as by default (SHA/AES).
const TRAPGEN_V3_USER: &str = r#"
[[snmp.users]]
name = "weir"
auth = "sha"
auth_password = "weir-auth-pass"
privacy = "aes"
privacy_password = "weir-priv-pass"
"#;

fn bench_trap(
    version: &str,
    rate: u64,
    duration: u64,
    dedup: bool,
    keep: bool,
    outage: bool,
) -> anyhow::Result<()> {
    if outage && dedup {
        bail!("--outage counts committed events one per trap: leave --dedup off");
    }
    let mut fleet = Fleet::new()?;
    let path = fleet.dir.path().join("agent.toml");
    let mut cfg = std::fs::read_to_string(&path)?;
    if !cfg.contains(&format!("127.0.0.1:{}", fleet.snmp_port)) {
        bail!("agent example no longer has the SNMP listen line this benchmark rewrites");
    }
    if !dedup {
        let on = "[dedup.snmp_trap]\nwindow = \"5m\"";
        if !cfg.contains(on) {
            bail!("agent example no longer has {on:?}");
        }
        cfg = cfg.replace(on, "[dedup.snmp_trap]\nwindow = \"0s\"");
    }
    cfg.push_str(TRAPGEN_V3_USER);
    std::fs::write(&path, cfg)?;
    if outage {
        fleet.keep = keep;
        let version = version.to_string();
        let port = fleet.snmp_port;
        return outage_run(
            &mut fleet,
            &format!("trap {version}"),
            port,
            move |target| run_trapgen(target, &version, rate, duration),
        );
    }
    fleet.start()?;
    std::thread::sleep(Duration::from_millis(1500));
    let progress = |f: &Fleet| {
        if dedup {
            f.stored_count_sum()
        } else {
            f.stored_metric()
        }
    };
    let before = progress(&fleet)?;
    let drops_before = kernel_drops_since(0);
    let cpu_before = fleet.cpu_secs();
    let target: SocketAddr = format!("127.0.0.1:{}", fleet.snmp_port).parse()?;
    let sent = run_trapgen(target, version, rate, duration)?.count;
    let mut rss_max = 0;
    let (stored, lag) = wait_settled(sent, || {
        rss_max = rss_max.max(fleet.agent_rss_kb().unwrap_or(0));
        Ok(progress(&fleet)? - before)
    })?;
    let kernel_drops = kernel_drops_since(drops_before);
    let (agent_cpu, agg_cpu) = fleet.cpu_secs();
    let agent_cpu = agent_cpu - cpu_before.0;
    println!(
        "trap {version} dedup {}: {sent} sent at {rate}/s, stored {stored} ({}) ({} lost, {:.3}%), kernel rcvbuf drops {kernel_drops}, caught up {:.2}s after the sender stopped; agent CPU {agent_cpu:.2}s ({:.2} µs/trap), aggregator {:.2}s; agent peak RSS {:.1} MB",
        if dedup { "on" } else { "off" },
        if dedup {
            "sum of dedup counts"
        } else {
            "events"
        },
        sent.saturating_sub(stored),
        100.0 * sent.saturating_sub(stored) as f64 / sent.max(1) as f64,
        lag.as_secs_f64(),
        agent_cpu * 1e6 / sent.max(1) as f64,
        agg_cpu - cpu_before.1,
        fleet.agent_rss_peak_kb().unwrap_or(0).max(rss_max) as f64 / 1024.0
    );
    if dedup {
        println!("stored events: {}", fleet.stored_total()?);
    }
    println!("agent drop counters: {}", fleet.agent_drops());
    fleet.keep = keep;
    Ok(())
}

/// Runs `weir-trapgen` against `target`, prints its report and reads back how many traps it
/// sent.
fn run_trapgen(
    target: SocketAddr,
    version: &str,
    rate: u64,
    duration: u64,
) -> anyhow::Result<Sent> {
    let start = Instant::now();
    let out = Command::new(bin_dir()?.join("weir-trapgen"))
        .args(["--target", &target.to_string()])
        .args(["--version", version])
        .args(["--rate", &rate.to_string()])
        .args(["--duration", &duration.to_string()])
        .stderr(Stdio::inherit())
        .output()
        .context("running weir-trapgen (build it with the release profile)")?;
    if !out.status.success() {
        bail!("weir-trapgen failed ({})", out.status);
    }
    let report = String::from_utf8_lossy(&out.stdout);
    print!("{report}");
    let count: u64 = report
        .strip_prefix("sent ")
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .context("no `sent N traps` line from weir-trapgen")?;
    // trapgen sends for `duration`; its start-up is not sending time.
    let elapsed = Duration::from_secs(duration).min(start.elapsed());
    Ok(Sent { count, elapsed })
}

fn peer_udp(
    target: SocketAddr,
    rate: u64,
    duration: u64,
    size: usize,
    out: &Path,
    pid: u32,
) -> anyhow::Result<()> {
    let mut counter = SeqCounter::new(out);
    let cpu_before = cpu_secs_pid(pid);
    let drops_before = kernel_drops_since(0);
    let sent = send_udp(target, rate, Duration::from_secs(duration), size, 0)?;
    let offered = sent.count as f64 / sent.elapsed.as_secs_f64();
    let mut rss_max = 0;
    let (stored, lag) = wait_settled(sent.count, || {
        rss_max = rss_max.max(proc_status_kb(Some(pid), "VmRSS:").unwrap_or(0));
        counter.scan()
    })?;
    let kernel_drops = kernel_drops_since(drops_before);
    let cpu = cpu_secs_pid(pid) - cpu_before;
    println!(
        "peer udp: offered {offered:.0} msg/s for {duration}s ({} sent), delivered {stored} unique ({} lost, {:.3}%, {} duplicates), kernel rcvbuf drops {kernel_drops}, caught up {:.2}s after the sender stopped; pid {pid} CPU {cpu:.2}s ({:.2} µs/msg), peak RSS {:.1} MB",
        sent.count,
        sent.count.saturating_sub(stored),
        100.0 * sent.count.saturating_sub(stored) as f64 / sent.count.max(1) as f64,
        counter.dups,
        lag.as_secs_f64(),
        cpu * 1e6 / sent.count.max(1) as f64,
        proc_status_kb(Some(pid), "VmHWM:")
            .unwrap_or(0)
            .max(rss_max) as f64
            / 1024.0
    );
    Ok(())
}

fn peer_tcp(
    target: SocketAddr,
    count: u64,
    conns: u64,
    size: usize,
    out: &Path,
    pid: u32,
) -> anyhow::Result<()> {
    let mut counter = SeqCounter::new(out);
    let cpu_before = cpu_secs_pid(pid);
    let sender = std::thread::spawn(move || send_tcp(target, count, conns, size));
    let mut rss_max = 0;
    let (stored, last_growth) = wait_settled(count, || {
        rss_max = rss_max.max(proc_status_kb(Some(pid), "VmRSS:").unwrap_or(0));
        counter.scan()
    })?;
    // From the start of sending to the output file's last growth.
    let secs = last_growth.as_secs_f64();
    let sent = sender
        .join()
        .map_err(|_| anyhow::anyhow!("sender panicked"))??;
    let cpu = cpu_secs_pid(pid) - cpu_before;
    println!(
        "peer tcp: {} sent over {conns} connections in {:.2}s, delivered {stored} unique in {secs:.2}s = {:.0} msg/s end to end ({} lost, {} duplicates); pid {pid} peak RSS {:.1} MB, CPU {cpu:.2}s ({:.2} µs/msg)",
        sent.count,
        sent.elapsed.as_secs_f64(),
        stored as f64 / secs,
        sent.count.saturating_sub(stored),
        counter.dups,
        proc_status_kb(Some(pid), "VmHWM:")
            .unwrap_or(0)
            .max(rss_max) as f64
            / 1024.0,
        cpu * 1e6 / stored.max(1) as f64
    );
    Ok(())
}
