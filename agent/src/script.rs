//! The custom-script input (seed 000): run a configured command, on an interval or as a
//! long-running process, and read one JSON event (seed 000's schema, or an array of them) per
//! line of its standard output.
//!
//! A bad line (not JSON, a schema error, too long, not UTF-8) is counted
//! (`weir_agent_dropped_total{reason="script_invalid_line"|"script_line_too_long"}`) and logged
//! with the script's name and the line number; it never stops the script. Standard error is
//! logged (rate-limited). Backpressure: the next line is read only when the queue has taken the
//! previous one, so a fast script is slowed by its pipe filling up, not by loss.
//!
//! The command runs without a shell (`command = ["/path/prog", "arg"]`), with standard input
//! closed, as the agent's user. On agent shutdown a running script is killed.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use jiff::Timestamp;
use serde::Deserialize;
use tokio::io::{AsyncBufRead, AsyncBufReadExt as _, AsyncReadExt as _, BufReader};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use weir_common::config::{ByteSize, HumanDuration};
use weir_common::{InputKind, Record};

use crate::pipeline::Sink;

/// How a script is run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Started every `interval`; killed after `timeout`. Runs never overlap.
    Interval,
    /// Started once and kept running; restarted after `restart_delay` (doubling to 5 minutes
    /// while it keeps failing fast) when it exits.
    LongRunning,
}

/// One `[[script]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptConfig {
    /// A short name for logs, metrics and the `script` tag on its events.
    pub name: String,
    /// The program and its arguments (no shell). A relative program path is resolved against
    /// the config file's directory.
    pub command: Vec<String>,
    #[serde(default = "d_mode")]
    pub mode: Mode,
    /// Interval mode: time between starts.
    #[serde(default = "d_interval")]
    pub interval: HumanDuration,
    /// Interval mode: a run taking longer is killed (counted as `script_timeout`).
    #[serde(default = "d_timeout")]
    pub timeout: HumanDuration,
    /// Long-running mode: first wait before a restart.
    #[serde(default = "d_restart")]
    pub restart_delay: HumanDuration,
    /// Longest output line; longer lines are dropped and counted.
    #[serde(default = "d_line")]
    pub max_line_bytes: ByteSize,
    /// Working directory (default: the agent's data directory).
    #[serde(default)]
    pub working_dir: Option<PathBuf>,
}

fn d_mode() -> Mode {
    Mode::Interval
}
fn d_interval() -> HumanDuration {
    HumanDuration::secs(60)
}
fn d_timeout() -> HumanDuration {
    HumanDuration::secs(30)
}
fn d_restart() -> HumanDuration {
    HumanDuration::secs(5)
}
fn d_line() -> ByteSize {
    ByteSize(64 << 10)
}

impl ScriptConfig {
    /// Checks one entry; the error names the field (`script[i].field`).
    pub fn check(&self, i: usize) -> Result<(), (String, String)> {
        let field = |f: &str| format!("script[{i}].{f}");
        if self.name.trim().is_empty() {
            return Err((field("name"), "give the script a name".into()));
        }
        if self.command.is_empty() || self.command[0].trim().is_empty() {
            return Err((
                field("command"),
                "give the program and its arguments, e.g. [\"/usr/local/bin/check\", \"--json\"]"
                    .into(),
            ));
        }
        for (f, d) in [
            ("interval", self.interval),
            ("timeout", self.timeout),
            ("restart_delay", self.restart_delay),
        ] {
            if d.0.is_zero() {
                return Err((field(f), "must be longer than zero".into()));
            }
        }
        if self.max_line_bytes.0 == 0 || self.max_line_bytes.0 > (4 << 20) {
            return Err((
                field("max_line_bytes"),
                "must be between 1 byte and 4MiB".into(),
            ));
        }
        Ok(())
    }
}

/// Starts one task per configured script.
pub fn spawn(
    scripts: &[ScriptConfig],
    default_dir: &std::path::Path,
    sink: Sink,
    tracker: &TaskTracker,
    shutdown: CancellationToken,
) {
    for cfg in scripts {
        let mut cfg = cfg.clone();
        if cfg.working_dir.is_none() {
            cfg.working_dir = Some(default_dir.to_path_buf());
        }
        tracker.spawn(run(cfg, sink.clone(), shutdown.clone()));
    }
}

async fn run(cfg: ScriptConfig, sink: Sink, shutdown: CancellationToken) {
    match cfg.mode {
        Mode::Interval => {
            let mut tick = tokio::time::interval(cfg.interval.0);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = shutdown.cancelled() => return,
                }
                run_once(&cfg, &sink, &shutdown, Some(cfg.timeout.0)).await;
            }
        }
        Mode::LongRunning => {
            let mut delay = cfg.restart_delay.0;
            loop {
                let started = std::time::Instant::now();
                run_once(&cfg, &sink, &shutdown, None).await;
                if shutdown.is_cancelled() {
                    return;
                }
                // A script that ran a while earns a fresh backoff.
                if started.elapsed() > Duration::from_secs(60) {
                    delay = cfg.restart_delay.0;
                }
                tracing::warn!(script = %cfg.name, restart_in = ?delay, "long-running script exited; restarting it");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.cancelled() => return,
                }
                delay = (delay * 2).min(Duration::from_secs(300));
            }
        }
    }
}

fn failed(script: &str, reason: &'static str) {
    metrics::counter!("weir_agent_script_failures_total", "script" => script.to_string(), "reason" => reason)
        .increment(1);
}

/// One run: start, read its output until it ends (or the timeout / shutdown), reap it.
async fn run_once(
    cfg: &ScriptConfig,
    sink: &Sink,
    shutdown: &CancellationToken,
    timeout: Option<Duration>,
) {
    let mut cmd = Command::new(&cfg.command[0]);
    cmd.args(&cfg.command[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(dir) = &cfg.working_dir {
        cmd.current_dir(dir);
    }
    let mut child: Child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            failed(&cfg.name, "spawn");
            weir_common::warn_limited!(
                "script_spawn",
                script = %cfg.name,
                command = ?cfg.command,
                error = %e,
                "cannot start the script: check the command path and that the agent's user may execute it"
            );
            return;
        }
    };
    let stdout = child.stdout.take().expect("stdout is piped");
    let stderr = child.stderr.take().expect("stderr is piped");
    let name = cfg.name.clone();
    let max_line = cfg.max_line_bytes.0 as usize;
    let stderr_task = tokio::spawn(async move {
        // Bounded like stdout: a script must not grow the agent's memory with one endless line.
        let mut reader = BufReader::new(stderr);
        let mut buf = Vec::new();
        while let Ok(Some(line)) = next_line(&mut reader, &mut buf, max_line).await {
            let text = match line {
                Line::Complete => String::from_utf8_lossy(buf.trim_ascii()).into_owned(),
                Line::TooLong => format!("(a line longer than {max_line} bytes)"),
            };
            weir_common::warn_limited!("script_stderr", script = %name, stderr = %text, "script wrote to standard error");
        }
    });
    let read = read_events(
        BufReader::new(stdout),
        &cfg.name,
        cfg.max_line_bytes.0 as usize,
        sink,
    );
    let deadline = async {
        match timeout {
            Some(t) => tokio::time::sleep(t).await,
            None => std::future::pending().await,
        }
    };
    let outcome = tokio::select! {
        r = read => Some(r),
        _ = deadline => {
            failed(&cfg.name, "timeout");
            weir_common::warn_limited!("script_timeout", script = %cfg.name, timeout = ?timeout, "script ran past its timeout and was killed; raise `timeout` or make it faster");
            None
        }
        _ = shutdown.cancelled() => None,
    };
    let _ = child.start_kill();
    match child.wait().await {
        Ok(status) if !status.success() && outcome.is_some() => {
            failed(&cfg.name, "exit_status");
            weir_common::warn_limited!("script_exit", script = %cfg.name, %status, "script exited with an error status");
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(script = %cfg.name, error = %e, "could not reap the script"),
    }
    stderr_task.abort();
    if let Some(lines) = outcome {
        tracing::debug!(script = %cfg.name, lines, "script run finished");
    }
}

/// What [`next_line`] read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Line {
    /// A line (without a trailing newline at end of output) is in the buffer.
    Complete,
    /// A line longer than the limit was read and discarded; the buffer holds at most the limit.
    TooLong,
}

/// Reads the next line into `buf` (cleared first), holding at most `max_line + 1` bytes
/// however long the line is. `None` at end of output.
async fn next_line<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
    max_line: usize,
) -> std::io::Result<Option<Line>> {
    buf.clear();
    let n = reader
        .take(max_line as u64 + 1)
        .read_until(b'\n', buf)
        .await?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() == Some(&b'\n') || buf.len() <= max_line {
        return Ok(Some(Line::Complete));
    }
    // Too long: skip to the end of this line, a bounded chunk at a time.
    loop {
        buf.clear();
        let n = reader.take(64 << 10).read_until(b'\n', buf).await?;
        if n == 0 || buf.last() == Some(&b'\n') {
            buf.clear();
            return Ok(Some(Line::TooLong));
        }
    }
}

/// Reads lines until end of output, submitting the events of each good line. Returns the
/// number of lines read.
async fn read_events<R: AsyncBufRead + Unpin>(
    mut reader: R,
    script: &str,
    max_line: usize,
    sink: &Sink,
) -> u64 {
    let mut line_no = 0u64;
    let mut buf = Vec::with_capacity(1024);
    loop {
        let line = match next_line(&mut reader, &mut buf, max_line).await {
            Ok(Some(line)) => line,
            Ok(None) => return line_no,
            Err(e) => {
                tracing::warn!(script, error = %e, "error reading the script's output");
                return line_no;
            }
        };
        line_no += 1;
        if line == Line::TooLong {
            sink.drops.count("script_line_too_long");
            weir_common::warn_limited!(
                "script_line_too_long",
                script,
                line = line_no,
                max_line,
                "script output line too long; dropped"
            );
            continue;
        }
        let line = buf.trim_ascii();
        if line.is_empty() {
            continue;
        }
        match weir_common::ingest::parse_events(line) {
            Ok(events) => {
                let now = Timestamp::now();
                metrics::counter!("weir_agent_received_total", "input" => "script")
                    .increment(events.len() as u64);
                let records = events
                    .into_iter()
                    .map(|e| {
                        let mut ev = e.into_event(InputKind::Script, now);
                        ev.tags.insert("script".into(), script.to_string());
                        Record::Event(ev)
                    })
                    .collect();
                if sink.send(records, now).await.is_err() {
                    return line_no;
                }
            }
            Err(errors) => {
                sink.drops.count("script_invalid_line");
                let first = errors
                    .first()
                    .map(|e| format!("{}: {}", e.pointer, e.message))
                    .unwrap_or_default();
                weir_common::warn_limited!(
                    "script_invalid_line",
                    script,
                    line = line_no,
                    error = %first,
                    "script wrote a line that is not a valid event (one JSON event per line, seed 000 schema); dropped"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dedup::DedupRules;
    use crate::pipeline;

    fn script(dir: &std::path::Path, body: &str) -> ScriptConfig {
        let path = dir.join("s.sh");
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        let mut perm = std::fs::metadata(&path).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
        std::fs::set_permissions(&path, perm).unwrap();
        ScriptConfig {
            name: "t".into(),
            command: vec![path.display().to_string()],
            mode: Mode::Interval,
            interval: HumanDuration::secs(3600),
            timeout: HumanDuration::secs(5),
            restart_delay: HumanDuration::secs(1),
            max_line_bytes: ByteSize(256),
            working_dir: Some(dir.to_path_buf()),
        }
    }

    #[test]
    fn checks_name_fields() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = script(dir.path(), "true");
        c.command.clear();
        assert_eq!(c.check(2).unwrap_err().0, "script[2].command");
        let mut c = script(dir.path(), "true");
        c.interval = HumanDuration::secs(0);
        assert_eq!(c.check(0).unwrap_err().0, "script[0].interval");
    }

    #[tokio::test]
    async fn good_lines_become_events_bad_lines_are_counted_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let long = "x".repeat(400);
        let cfg = script(
            dir.path(),
            &format!(
                r#"echo '{{"source":"disk","hostname":"h1","severity":"warning","message":"93% used"}}'
echo 'not json'
echo '{{"source":"disk","hostname":"h1","severity":"bogus","message":"m"}}'
echo '{long}'
echo ''
echo '[{{"source":"a","hostname":"h","severity":"info","message":"one"}},{{"source":"a","hostname":"h","severity":"info","message":"two"}}]'
echo 'oops' >&2
exit 3"#
            ),
        );
        let (sink, mut rx) = pipeline::channel(100, DedupRules::default());
        let shutdown = CancellationToken::new();
        run_once(&cfg, &sink, &shutdown, Some(Duration::from_secs(5))).await;
        let drops = sink.drops.snapshot();
        assert_eq!(drops.get("script_invalid_line"), Some(&2), "{drops:?}");
        assert_eq!(drops.get("script_line_too_long"), Some(&1), "{drops:?}");
        drop(sink);
        let mut n = 0;
        while let Some(sub) = rx.recv_for_test().await {
            n += sub;
        }
        assert_eq!(n, 3, "one event, then an array of two");
    }

    #[tokio::test]
    async fn long_lines_are_skipped_with_bounded_memory() {
        let mut input = vec![b'x'; 4 << 20];
        input.extend_from_slice(b"\nshort\nlast");
        let mut reader = BufReader::new(&input[..]);
        let mut buf = Vec::new();
        assert_eq!(
            next_line(&mut reader, &mut buf, 256).await.unwrap(),
            Some(Line::TooLong)
        );
        assert!(buf.capacity() <= 256 << 10, "held {} bytes", buf.capacity());
        assert_eq!(
            next_line(&mut reader, &mut buf, 256).await.unwrap(),
            Some(Line::Complete)
        );
        assert_eq!(buf, b"short\n");
        assert_eq!(
            next_line(&mut reader, &mut buf, 256).await.unwrap(),
            Some(Line::Complete)
        );
        assert_eq!(buf, b"last");
        assert_eq!(next_line(&mut reader, &mut buf, 256).await.unwrap(), None);
    }

    #[tokio::test]
    async fn an_endless_stderr_line_does_not_stop_the_events() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = script(
            dir.path(),
            r#"head -c 3000000 /dev/zero | tr '\0' x >&2
echo '{"source":"a","hostname":"h","severity":"info","message":"after"}'"#,
        );
        let (sink, mut rx) = pipeline::channel(100, DedupRules::default());
        run_once(
            &cfg,
            &sink,
            &CancellationToken::new(),
            Some(Duration::from_secs(10)),
        )
        .await;
        drop(sink);
        assert_eq!(rx.recv_for_test().await, Some(1));
    }

    #[tokio::test]
    async fn a_script_past_its_timeout_is_killed() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = script(dir.path(), "sleep 30");
        cfg.timeout = HumanDuration::millis(200);
        let (sink, _rx) = pipeline::channel(100, DedupRules::default());
        let t = std::time::Instant::now();
        run_once(&cfg, &sink, &CancellationToken::new(), Some(cfg.timeout.0)).await;
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    }
}
