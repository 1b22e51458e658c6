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
//! closed, as the agent's user, in its own process group. On a timeout the group is killed;
//! what the script wrote before is still read and submitted for up to a second, and what the
//! queue could not take by then, or a line the kill cut short, is counted
//! (`weir_agent_dropped_total{reason="script_killed_unread"}`) and logged: never lost silently.
//! On agent shutdown the group is killed too, but the queue writer stops taking records at once,
//! so what the script wrote and was not yet submitted is counted as `reason="shutdown"` and
//! logged instead.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
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

/// How long, once a script is killed (timeout or shutdown), its output is still read and
/// submitted; what the queue cannot take by then is counted as `script_killed_unread`.
const DRAIN_GRACE: Duration = Duration::from_secs(1);

/// One run: start, read its output until it ends (or the timeout / shutdown), reap it.
///
/// On a timeout the script and its children (its process group) are killed, and what it wrote
/// before is still read and submitted for up to [`DRAIN_GRACE`]; what remains after that (a
/// queue that does not take it, a line cut short by the kill) is counted as
/// `script_killed_unread`. On shutdown the group is killed as well, but the queue writer closes
/// its channel on the same signal: from then on nothing can be submitted, and what the script
/// wrote (in flight, buffered or still in the pipe) is counted as `shutdown`.
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
        // Its own process group, so a kill reaches the children holding its output open.
        .process_group(0)
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
    let mut out = Output::new(BufReader::new(stdout), max_line);
    let killed = AtomicBool::new(false);
    let deadline = async {
        match timeout {
            Some(t) => tokio::time::sleep(t).await,
            None => std::future::pending().await,
        }
    };
    let mut ended = None;
    {
        // Not cancelled by the kill: it goes on reading what the script wrote until then.
        let read = read_events(&mut out, &cfg.name, sink, &killed);
        tokio::pin!(read);
        tokio::select! {
            r = &mut read => ended = Some(r),
            _ = deadline => {
                failed(&cfg.name, "timeout");
                weir_common::warn_limited!("script_timeout", script = %cfg.name, timeout = ?timeout, "script ran past its timeout and was killed; raise `timeout` or make it faster");
            }
            _ = shutdown.cancelled() => {}
        }
        if ended.is_none() {
            killed.store(true, Ordering::Relaxed);
            kill_group(&mut child, &cfg.name);
            if let Ok(r) = tokio::time::timeout(DRAIN_GRACE, &mut read).await {
                ended = Some(r);
            }
        }
    }
    match ended {
        Some(Ended::Eof) => {}
        Some(Ended::Closed) => {
            // The agent is stopping and the queue takes nothing more: stop the script, and
            // count what it wrote instead of leaving it in the pipe uncounted.
            if !killed.swap(true, Ordering::Relaxed) {
                kill_group(&mut child, &cfg.name);
            }
            let lost = out.count_left().await;
            count_shutdown(sink, &cfg.name, lost);
        }
        None => {
            // The queue did not take the rest in time (or a process outside the group holds
            // the output open): count what is left instead of losing it silently.
            let lost = out.count_left().await;
            if shutdown.is_cancelled() {
                count_shutdown(sink, &cfg.name, lost);
            } else if lost > 0 {
                sink.drops.count_n("script_killed_unread", lost);
                weir_common::warn_limited!(
                    "script_killed_unread",
                    script = %cfg.name,
                    lost,
                    "dropped output of a killed script that the queue could not take in time (lines, or events of a line already read); check the queue and the aggregator link, or raise the script's `timeout`"
                );
            }
        }
    }
    let _ = child.start_kill();
    match child.wait().await {
        Ok(status) if !status.success() && !killed.load(Ordering::Relaxed) => {
            failed(&cfg.name, "exit_status");
            weir_common::warn_limited!("script_exit", script = %cfg.name, %status, "script exited with an error status");
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(script = %cfg.name, error = %e, "could not reap the script"),
    }
    stderr_task.abort();
    tracing::debug!(script = %cfg.name, lines = out.line_no, "script run finished");
}

/// Counts (as `shutdown`) and logs what a script wrote that the stopping agent could not take.
fn count_shutdown(sink: &Sink, script: &str, lost: u64) {
    if lost == 0 {
        return;
    }
    sink.drops.count_n("shutdown", lost);
    weir_common::warn_limited!(
        "script_shutdown",
        script,
        lost,
        "dropped a script's output that was not yet queued when the agent stopped (lines, or events of a line already read)"
    );
}

/// Kills the script's process group (it and the children it started), or at least the script.
fn kill_group(child: &mut Child, script: &str) {
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        let group = nix::unistd::Pid::from_raw(pid);
        match nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL) {
            Ok(()) => return,
            Err(e) => {
                tracing::debug!(script, error = %e, "could not kill the script's process group")
            }
        }
    }
    let _ = child.start_kill();
}

/// A script's standard output and how far it has been read. Kept outside the reading future,
/// so that what that future held when it was given up can still be counted.
struct Output<R> {
    reader: R,
    /// The line being read (a partial one when the read was given up).
    buf: Vec<u8>,
    max_line: usize,
    /// Lines read so far.
    line_no: u64,
    /// Records parsed from a line and waiting for the queue to take them.
    in_flight: u64,
}

impl<R: AsyncBufRead + Unpin> Output<R> {
    fn new(reader: R, max_line: usize) -> Self {
        Output {
            reader,
            buf: Vec::with_capacity(1024),
            max_line,
            line_no: 0,
            in_flight: 0,
        }
    }

    /// Counts what was not submitted: the records in flight, a partial line, and the
    /// non-blank lines still buffered or in the pipe (read until its end, a pause of
    /// 100 ms, or [`DRAIN_GRACE`], whichever is first: bounded in time and memory).
    async fn count_left(&mut self) -> u64 {
        let mut lost = std::mem::take(&mut self.in_flight);
        let mut open =
            self.buf.last() != Some(&b'\n') && self.buf.iter().any(|b| !b.is_ascii_whitespace());
        self.buf.clear();
        let until = tokio::time::Instant::now() + DRAIN_GRACE;
        loop {
            let wait = until
                .saturating_duration_since(tokio::time::Instant::now())
                .min(Duration::from_millis(100));
            let chunk = match tokio::time::timeout(wait, self.reader.fill_buf()).await {
                Ok(Ok(chunk)) if !chunk.is_empty() => chunk,
                _ => break,
            };
            for &b in chunk {
                if b == b'\n' {
                    lost += u64::from(open);
                    open = false;
                } else if !b.is_ascii_whitespace() {
                    open = true;
                }
            }
            let n = chunk.len();
            self.reader.consume(n);
        }
        lost + u64::from(open)
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

/// How [`read_events`] stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// The output ended (or could not be read any more): everything read was handled.
    Eof,
    /// The queue writer is gone (the agent is stopping): the records of the last line read are
    /// still counted in `in_flight`, and the rest of the output was not read.
    Closed,
}

/// Reads lines until end of output, submitting the events of each good line. Once `killed` is
/// set, a last line without its newline that is not a valid event is counted as cut short by
/// the kill (`script_killed_unread`).
async fn read_events<R: AsyncBufRead + Unpin>(
    out: &mut Output<R>,
    script: &str,
    sink: &Sink,
    killed: &AtomicBool,
) -> Ended {
    let max_line = out.max_line;
    loop {
        let line = match next_line(&mut out.reader, &mut out.buf, max_line).await {
            Ok(Some(line)) => line,
            Ok(None) => return Ended::Eof,
            Err(e) => {
                tracing::warn!(script, error = %e, "error reading the script's output");
                return Ended::Eof;
            }
        };
        out.line_no += 1;
        let line_no = out.line_no;
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
        let cut_short = out.buf.last() != Some(&b'\n');
        let line = out.buf.trim_ascii();
        if line.is_empty() {
            continue;
        }
        match weir_common::ingest::parse_events(line) {
            Ok(events) => {
                let now = Timestamp::now();
                metrics::counter!("weir_agent_received_total", "input" => "script")
                    .increment(events.len() as u64);
                let records: Vec<Record> = events
                    .into_iter()
                    .map(|e| {
                        let mut ev = e.into_event(InputKind::Script, now);
                        ev.tags.insert("script".into(), script.to_string());
                        Record::Event(ev)
                    })
                    .collect();
                // The line now lives in `records` (counted by `in_flight`): it must not be
                // counted again as a partial line if this future is given up.
                out.buf.clear();
                out.in_flight = records.len() as u64;
                if sink.send(records, now).await.is_err() {
                    // Only when the agent stops: nothing more can be submitted; the caller
                    // counts these records and the rest of the output.
                    return Ended::Closed;
                }
                out.in_flight = 0;
            }
            Err(_) if cut_short && killed.load(Ordering::Relaxed) => {
                sink.drops.count("script_killed_unread");
                weir_common::warn_limited!(
                    "script_killed_unread",
                    script,
                    line = line_no,
                    "the script was killed in the middle of a line; that line was dropped"
                );
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
    use crate::queue::Queue;

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

    /// Prints `n` events at once, then hangs (in a child of the shell, as scripts do).
    fn burst_then_hang(n: usize) -> String {
        format!(
            r#"i=0
while [ $i -lt {n} ]; do
  echo '{{"source":"s","hostname":"h","severity":"info","message":"m'$i'"}}'
  i=$((i+1))
done
sleep 30"#
        )
    }

    /// Records that reach `rx` once it is read after `after`, until every sink is gone.
    fn consume_after(
        mut rx: pipeline::SinkReceiver,
        after: Duration,
    ) -> tokio::task::JoinHandle<usize> {
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            let mut n = 0;
            while let Some(sub) = rx.recv_for_test().await {
                n += sub;
            }
            n
        })
    }

    /// Runs the script `body`, killed by its 300 ms timeout, into a queue of `capacity`
    /// submissions that takes nothing until `after`. Returns the queue's consumer (the
    /// submissions it got) and the drops counted.
    async fn killed_run(
        body: &str,
        capacity: usize,
        after: Duration,
    ) -> (
        tokio::task::JoinHandle<usize>,
        std::collections::BTreeMap<String, u64>,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = script(dir.path(), body);
        cfg.timeout = HumanDuration::millis(300);
        let (sink, rx) = pipeline::channel(capacity, DedupRules::default());
        let got = consume_after(rx, after);
        run_once(&cfg, &sink, &CancellationToken::new(), Some(cfg.timeout.0)).await;
        (got, sink.drops.snapshot())
    }

    /// Regression: the lines a script printed before it was killed for its timeout were lost
    /// uncounted while the queue held the reader back. They are submitted once it has room.
    #[tokio::test]
    async fn lines_written_before_a_timeout_kill_are_submitted() {
        // The queue takes nothing until after the kill.
        let (got, drops) = killed_run(&burst_then_hang(8), 2, Duration::from_millis(600)).await;
        assert_eq!(got.await.unwrap(), 8, "{drops:?}");
        assert!(drops.is_empty(), "{drops:?}");
    }

    /// Regression: when the queue still cannot take them after the kill, the lines in flight
    /// and in the pipe are counted as `script_killed_unread`, not discarded silently.
    #[tokio::test]
    async fn lines_a_blocked_queue_cannot_take_after_a_kill_are_counted() {
        let (got, drops) = killed_run(&burst_then_hang(8), 2, Duration::from_secs(3600)).await;
        got.abort();
        // Two fit in the channel; the rest could not be submitted.
        assert_eq!(drops.get("script_killed_unread"), Some(&6), "{drops:?}");
    }

    /// Regression: a line cut short by the kill vanished; now it is counted.
    #[tokio::test]
    async fn a_partial_last_line_at_the_kill_is_counted() {
        let (got, drops) = killed_run(
            r#"printf '{"source":"s","hostname":"h","severity":"info","message":"whole"}\n{"source":"s","hostn'
sleep 30"#,
            100,
            Duration::ZERO,
        )
        .await;
        assert_eq!(got.await.unwrap(), 1);
        assert_eq!(drops.get("script_killed_unread"), Some(&1), "{drops:?}");
    }

    /// Regression: a last line without its newline that parsed once the kill ended the output,
    /// and that a full queue then did not take, was counted twice (in flight, and as a partial
    /// line still in the buffer).
    #[tokio::test]
    async fn a_parsed_last_line_the_queue_cannot_take_is_counted_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = script(
            dir.path(),
            r#"printf '{"source":"s","hostname":"h","severity":"info","message":"x"}'
sleep 30"#,
        );
        cfg.timeout = HumanDuration::millis(300);
        let (sink, rx) = pipeline::channel(1, DedupRules::default());
        // Fill the channel; nothing reads it.
        let ev = weir_common::ingest::parse_events(
            br#"{"source":"f","hostname":"h","severity":"info","message":"fill"}"#,
        )
        .unwrap()
        .remove(0)
        .into_event(InputKind::Script, Timestamp::now());
        sink.send(vec![Record::Event(ev)], Timestamp::now())
            .await
            .unwrap();
        run_once(&cfg, &sink, &CancellationToken::new(), Some(cfg.timeout.0)).await;
        let drops = sink.drops.snapshot();
        drop(rx);
        assert_eq!(drops.get("script_killed_unread"), Some(&1), "{drops:?}");
        assert_eq!(drops.len(), 1, "{drops:?}");
    }

    /// Regression: on agent shutdown the queue writer closes the channel on the same signal, so
    /// every send fails; only the line being sent was counted and the rest of the script's output
    /// vanished uncounted. Real writer and queue: what is not queued is counted as `shutdown`.
    #[tokio::test]
    async fn on_shutdown_what_the_queue_no_longer_takes_is_counted() {
        let dir = tempfile::tempdir().unwrap();
        let n = 20;
        let cfg = script(
            dir.path(),
            &format!(
                r#"i=0
while [ $i -lt {n} ]; do
  echo '{{"source":"s","hostname":"h","severity":"info","message":"m'$i'"}}'
  i=$((i+1))
done
touch written
sleep 30"#
            ),
        );
        let queue = Queue::open_roomy(&dir.path().join("queue.redb"));
        // Room for one record: the script's reader waits for the writer with the rest unread.
        let (sink, rx) = pipeline::channel(1, DedupRules::default());
        let shutdown = CancellationToken::new();
        let run = tokio::spawn({
            let (cfg, sink, shutdown) = (cfg.clone(), sink.clone(), shutdown.clone());
            async move { run_once(&cfg, &sink, &shutdown, None).await }
        });
        let written = dir.path().join("written");
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !written.exists() {
            assert!(std::time::Instant::now() < deadline, "the script never ran");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The agent stops: the writer sees the same token as the script's task.
        let (committed, _) = tokio::sync::watch::channel(0);
        let writer = tokio::spawn(pipeline::run_writer(
            queue.clone(),
            rx,
            committed,
            pipeline::WriterOptions::for_tests(),
            shutdown.clone(),
        ));
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(20), run)
            .await
            .expect("the run ends")
            .unwrap();
        tokio::time::timeout(Duration::from_secs(20), writer)
            .await
            .expect("the writer stops")
            .unwrap();
        let queued = queue.stats().unwrap().records;
        let drops = sink.drops.snapshot();
        let counted = drops.get("shutdown").copied().unwrap_or(0);
        assert!(queued <= 1, "queued {queued}");
        assert_eq!(queued + counted, n, "queued {queued}, dropped {drops:?}");
    }

    /// A timeout kills the script's children too: a `sleep` left behind held the output
    /// open (and piled up, one per run).
    #[tokio::test]
    async fn a_timeout_kills_the_scripts_children() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = script(
            dir.path(),
            "sleep 30 &
echo $! > child.pid
wait",
        );
        cfg.timeout = HumanDuration::millis(300);
        let (sink, _rx) = pipeline::channel(100, DedupRules::default());
        run_once(&cfg, &sink, &CancellationToken::new(), Some(cfg.timeout.0)).await;
        let pid = std::fs::read_to_string(dir.path().join("child.pid")).unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        // Gone, or a zombie waiting for a reaper that is not us.
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid.trim()));
        if let Ok(stat) = stat {
            let state = stat.rsplit(')').next().unwrap_or("").trim_start();
            assert!(state.starts_with('Z'), "the child still runs: {stat}");
        }
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
