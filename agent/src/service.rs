//! Running as a system service (shared by `weir-agent` and `weir-aggregator`; it lives here
//! because `common` stays free of tokio): systemd readiness and watchdog notifications, SIGHUP reload
//! hooks, and certificate-expiry warnings. Everything here is a no-op outside systemd
//! (`NOTIFY_SOCKET` unset), so the same binary runs from a shell, a container or a unit.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

/// Tells systemd the service is ready (`Type=notify`): call it once listeners are bound and
/// the store or queue is open. `status` is shown by `systemctl status`.
pub fn notify_ready(status: &str) {
    notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Tells systemd the service is stopping (so `systemctl status` says so during the drain).
pub fn notify_stopping() {
    notify(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

fn notify(state: &[NotifyState]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(e) = sd_notify::notify(false, state) {
        tracing::warn!(error = %e, "cannot notify systemd (NOTIFY_SOCKET is set but unusable)");
    }
}

/// The watchdog ping interval systemd asks for: half of `WATCHDOG_USEC`, or `None` when the
/// unit has no `WatchdogSec=` (or the variable is meant for another process).
pub fn watchdog_interval() -> Option<Duration> {
    let mut usec = 0;
    if sd_notify::watchdog_enabled(false, &mut usec) && usec > 0 {
        Some(Duration::from_micros(usec / 2))
    } else {
        None
    }
}

/// Pings the systemd watchdog every half `WATCHDOG_USEC` until `shutdown`. A runtime too
/// wedged to run this task misses its pings and systemd restarts the service (queued events
/// are on disk). Returns at once when no watchdog is configured.
pub async fn run_watchdog(shutdown: CancellationToken) {
    let Some(every) = watchdog_interval() else {
        return;
    };
    tracing::debug!(?every, "pinging the systemd watchdog");
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = tick.tick() => notify(&[NotifyState::Watchdog]),
            _ = shutdown.cancelled() => return,
        }
    }
}

/// What one reload hook did, for the single log line a reload writes.
type Hook = Box<dyn Fn() -> anyhow::Result<String> + Send + Sync>;

/// The things a running service can reload on SIGHUP without a restart. Each subsystem
/// registers a hook; [`Reloader::reload`] runs them all, and one failing hook neither stops
/// the others nor the service (the previous state stays in use).
pub struct Reloader {
    hooks: Mutex<Vec<(&'static str, Hook)>>,
    /// What a reload does not cover (named in the log line so operators know to restart).
    needs_restart: &'static str,
    /// Metric name prefix (`weir_agent`, `weir_aggregator`).
    prefix: &'static str,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.hooks.lock().unwrap().iter().map(|h| h.0).collect();
        f.debug_struct("Reloader").field("hooks", &names).finish()
    }
}

/// The outcome of one [`Reloader::reload`]: what was reloaded and what failed (and why).
#[derive(Debug, Default)]
pub struct Reloaded {
    pub ok: Vec<String>,
    pub failed: Vec<String>,
}

impl Reloader {
    /// A reloader with no hooks; `needs_restart` lists the settings a reload does not apply.
    /// Reloads are counted in `<prefix>_reloads_total` and failed hooks in
    /// `<prefix>_reload_failures_total`.
    pub fn new(prefix: &'static str, needs_restart: &'static str) -> Arc<Reloader> {
        Arc::new(Reloader {
            hooks: Mutex::new(Vec::new()),
            needs_restart,
            prefix,
        })
    }

    /// Adds a hook; it returns a short description of what it reloaded (e.g. "certificate
    /// serial 1A2B, valid until ...") or an error saying why the old state is kept.
    pub fn register(
        &self,
        name: &'static str,
        hook: impl Fn() -> anyhow::Result<String> + Send + Sync + 'static,
    ) {
        self.hooks.lock().unwrap().push((name, Box::new(hook)));
    }

    /// Runs every hook and logs what was reloaded, what failed, and what needs a restart.
    pub fn reload(&self) -> Reloaded {
        let mut out = Reloaded::default();
        for (name, hook) in self.hooks.lock().unwrap().iter() {
            match hook() {
                Ok(what) => out.ok.push(format!("{name} ({what})")),
                Err(e) => out.failed.push(format!("{name}: {e:#}")),
            }
        }
        metrics::counter!(format!("{}_reloads_total", self.prefix)).increment(1);
        if out.failed.is_empty() {
            tracing::info!(
                reloaded = out.ok.join("; "),
                needs_restart = self.needs_restart,
                "SIGHUP: reload done; queued events and open connections are untouched"
            );
        } else {
            metrics::counter!(format!("{}_reload_failures_total", self.prefix))
                .increment(out.failed.len() as u64);
            tracing::error!(
                reloaded = out.ok.join("; "),
                failed = out.failed.join("; "),
                needs_restart = self.needs_restart,
                "SIGHUP: some reloads failed; the previous settings stay in use for those. Fix the files and send SIGHUP again (systemctl reload)"
            );
        }
        out
    }
}

/// SIGTERM and SIGHUP handlers, installed before the service starts: SIGHUP's default action
/// kills the process, so one arriving during start-up (systemd may hold a `reload` until
/// READY) must already be caught. Signals that arrive before [`StopSignals::serve`] wait.
pub struct StopSignals {
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl StopSignals {
    pub fn install() -> std::io::Result<StopSignals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(StopSignals {
            term: signal(SignalKind::terminate())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    /// Tells systemd the service is ready, then starts the watchdog pings (so none precedes
    /// READY), and waits for SIGTERM or SIGINT, running `reloader` on every SIGHUP meanwhile.
    pub async fn serve(self, reloader: &Reloader, shutdown: &CancellationToken) {
        notify_ready("running");
        tokio::spawn(run_watchdog(shutdown.child_token()));
        wait_for_stop(self, reloader).await;
    }
}

/// Waits for SIGTERM or SIGINT, running `reloader` on every SIGHUP meanwhile, and reports
/// readiness after each reload.
async fn wait_for_stop(signals: StopSignals, reloader: &Reloader) {
    let StopSignals { mut term, mut hup } = signals;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            _ = hup.recv() => {
                notify(&[NotifyState::Reloading]);
                let r = reloader.reload();
                let status = if r.failed.is_empty() { "running (reloaded)" } else { "running (last reload failed; see the log)" };
                notify(&[NotifyState::Ready, NotifyState::Status(status)]);
            }
        }
    }
    notify_stopping();
}

/// How far ahead certificate expiry is warned about.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(30 * 86_400);

/// Publishes the seconds until the certificate in `cert` expires as the gauge `metric`, and
/// warns when that is under 30 days (or the file cannot be read). Checks at start, then
/// daily, until `shutdown`; `not_after` reads the certificate's end of validity.
pub async fn watch_cert_expiry(
    metric: &'static str,
    cert: PathBuf,
    not_after: impl Fn(&std::path::Path) -> anyhow::Result<jiff::Timestamp>,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(86_400));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        check_cert_expiry(metric, &cert, &not_after, jiff::Timestamp::now());
    }
}

/// End of validity of the first certificate in a PEM file.
pub fn cert_not_after(path: &std::path::Path) -> anyhow::Result<jiff::Timestamp> {
    let certs = weir_certs::tls::load_certs(path)?;
    let first = certs
        .first()
        .ok_or_else(|| anyhow::anyhow!("{} holds no certificate", path.display()))?;
    Ok(weir_certs::cert_not_after(first)?)
}

/// What a reload hook says about the certificate it loaded: "PATH: serial S, N days left;
/// `when`". With `metric`, the expiry gauge is refreshed (and a near expiry warned about).
pub fn describe_reloaded_cert(
    path: &std::path::Path,
    metric: Option<&'static str>,
    when: &str,
) -> anyhow::Result<String> {
    let certs = weir_certs::tls::load_certs(path)?;
    let first = certs
        .first()
        .ok_or_else(|| anyhow::anyhow!("{} holds no certificate", path.display()))?;
    let serial = weir_certs::cert_serial_hex(first)?;
    let now = jiff::Timestamp::now();
    let left = match metric {
        Some(m) => check_cert_expiry(m, path, &cert_not_after, now),
        None => weir_certs::cert_not_after(first)
            .ok()
            .map(|end| end.as_second() - now.as_second()),
    };
    Ok(format!(
        "{}: serial {serial}, {} days left; {when}",
        path.display(),
        left.unwrap_or(0) / 86_400
    ))
}

/// One expiry check (see [`watch_cert_expiry`]); returns the seconds left, if readable.
pub fn check_cert_expiry(
    metric: &'static str,
    cert: &std::path::Path,
    not_after: &dyn Fn(&std::path::Path) -> anyhow::Result<jiff::Timestamp>,
    now: jiff::Timestamp,
) -> Option<i64> {
    match not_after(cert) {
        Ok(end) => {
            let left = end.as_second() - now.as_second();
            metrics::gauge!(metric).set(left as f64);
            if left <= 0 {
                tracing::error!(cert = %cert.display(), not_after = %end, "the certificate has EXPIRED: the QUIC link refuses it. Renew it now (weir-certs renew) and send SIGHUP (systemctl reload)");
            } else if left < EXPIRY_WARNING.as_secs() as i64 {
                tracing::warn!(cert = %cert.display(), not_after = %end, days_left = left / 86_400, "the certificate expires soon: renew it (weir-certs renew), install it, and send SIGHUP (systemctl reload)");
            }
            Some(left)
        }
        Err(e) => {
            tracing::warn!(cert = %cert.display(), error = format!("{e:#}"), "cannot read the certificate to check its expiry");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reload_runs_every_hook_and_reports_failures_without_stopping() {
        let r = Reloader::new("weir_test", "everything else");
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let c = calls.clone();
        r.register("first", move || {
            c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Ok("fine".into())
        });
        r.register("broken", || anyhow::bail!("bad file"));
        let c = calls.clone();
        r.register("last", move || {
            c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Ok("also fine".into())
        });
        let out = r.reload();
        assert_eq!(calls.load(std::sync::atomic::Ordering::Relaxed), 2);
        assert_eq!(out.ok, vec!["first (fine)", "last (also fine)"]);
        assert_eq!(out.failed, vec!["broken: bad file"]);
    }

    #[test]
    fn expiry_is_seconds_left_or_none_when_unreadable() {
        let now = jiff::Timestamp::from_second(1_000_000).unwrap();
        let end =
            |_: &std::path::Path| Ok(jiff::Timestamp::from_second(1_000_000 + 86_400).unwrap());
        let p = std::path::Path::new("agent.pem");
        assert_eq!(
            check_cert_expiry("weir_test_expiry", p, &end, now),
            Some(86_400)
        );
        let expired = |_: &std::path::Path| Ok(jiff::Timestamp::from_second(10).unwrap());
        assert_eq!(
            check_cert_expiry("weir_test_expiry", p, &expired, now),
            Some(10 - 1_000_000)
        );
        let unreadable =
            |_: &std::path::Path| -> anyhow::Result<jiff::Timestamp> { anyhow::bail!("no file") };
        assert_eq!(
            check_cert_expiry("weir_test_expiry", p, &unreadable, now),
            None
        );
    }
}
