//! The `weir-agent` binary: parse the command line, set up logging, load the config, run.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use weir_agent::config;

/// Weir site agent: receives syslog (and, soon, SNMP traps) from local devices, commits every
/// event to a durable queue, and forwards the queue to the aggregator over mutual-TLS QUIC.
///
/// Events wait in the queue (data_dir/queue.redb) through aggregator outages and restarts, and
/// leave it only when the aggregator has stored them.
#[derive(Debug, Parser)]
#[command(
    version,
    after_help = "Examples:\n  weir-agent --config /etc/weir/agent.toml\n  weir-agent check-config /etc/weir/agent.toml\n  weir-agent example-config > agent.toml\n\nLogging: set RUST_LOG (e.g. RUST_LOG=weir_agent=debug)."
)]
struct Cli {
    /// Config file to run with.
    #[arg(long, short, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check a config file (syntax, types, unknown keys, TLS files) and exit.
    CheckConfig {
        /// The config file.
        file: PathBuf,
    },
    /// Print an example config with every key commented.
    ExampleConfig,
    /// Install an enrolment bundle from `weir-certs issue agent --bundle`: writes the CA,
    /// certificate and key into the TLS directory (key mode 0600) and points the config at them.
    #[command(
        after_help = "Example (on the gateway, as root):\n  weir-agent enroll /tmp/paris-gw-01.bundle\n  systemctl start weir-agent\n\nThe config keeps its comments and other settings; only aggregator.ca/cert/key change.\nRe-enrolling (a renewed certificate) replaces the files; then `systemctl reload weir-agent`."
    )]
    Enroll {
        /// The bundle file (written by `weir-certs issue agent ... --bundle FILE`).
        bundle: PathBuf,
        /// The agent config file to update.
        #[arg(long, value_name = "FILE", default_value = "/etc/weir/agent.toml")]
        config: PathBuf,
        /// Where to put ca.pem, agent.pem and agent.key.
        #[arg(long, value_name = "DIR", default_value = "/etc/weir/tls")]
        tls_dir: PathBuf,
        /// The user the service runs as: run as root, enroll gives it the key and its primary
        /// group read access to the directory (a warning says so when the user is missing).
        #[arg(long, value_name = "USER", default_value = "weir")]
        user: String,
    },
    /// Write man pages and shell completions into DIR (used to build the packages).
    #[command(hide = true)]
    GenerateDocs {
        /// Output directory (man/ and completions/ are created in it).
        dir: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    weir_common::telemetry::run_main("weir-agent", || real_main(cli))
}

fn real_main(cli: Cli) -> anyhow::Result<()> {
    match (cli.command, cli.config) {
        (Some(Command::CheckConfig { file }), _) => {
            let c = config::load(&file)?;
            for p in [&c.aggregator.ca, &c.aggregator.cert, &c.aggregator.key] {
                anyhow::ensure!(
                    p.exists(),
                    "{}: {} does not exist: the agent is not enrolled yet. Run `weir-agent enroll BUNDLE` with the bundle from `weir-certs issue agent --bundle`",
                    file.display(),
                    p.display()
                );
            }
            weir_certs::tls::client_config(
                &c.aggregator.ca,
                &c.aggregator.cert,
                &c.aggregator.key,
                &[weir_common::wire::ALPN],
            )
            .with_context(|| format!("{}: [aggregator] TLS files", file.display()))?;
            if let Some(k) = &c.http.api_key_file {
                weir_common::ingest::ApiKeys::load(k)
                    .map_err(anyhow::Error::msg)
                    .with_context(|| format!("{}: http.api_key_file", file.display()))?;
            }
            println!("{}: OK", file.display());
            Ok(())
        }
        (Some(Command::ExampleConfig), _) => {
            print!(
                "{}",
                config::example(
                    "/var/lib/weir-agent",
                    "aggregator.example.net:4433",
                    "/etc/weir/tls",
                    514,
                    8083
                )
            );
            Ok(())
        }
        (
            Some(Command::Enroll {
                bundle,
                config,
                tls_dir,
                user,
            }),
            _,
        ) => {
            let done = weir_agent::enroll::enroll(&bundle, &config, &tls_dir, Some(&user))?;
            println!("{done}");
            Ok(())
        }
        (Some(Command::GenerateDocs { dir }), _) => weir_certs::docs::write(Cli::command(), &dir),
        (None, Some(file)) => {
            let cfg = config::load(&file)?;
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the runtime")?;
            rt.block_on(async {
                let signals = weir_agent::service::StopSignals::install()?;
                let shutdown = CancellationToken::new();
                let running = weir_agent::start(cfg, shutdown.clone()).await?;
                // Listeners are bound and the queue is open: tell systemd (Type=notify).
                signals.serve(&running.reloader, &shutdown).await;
                tracing::info!("shutting down: stopping inputs, committing the queue, finishing in-flight batches");
                shutdown.cancel();
                if tokio::time::timeout(std::time::Duration::from_secs(15), running.join()).await.is_err() {
                    tracing::warn!("shutdown took longer than 15s; exiting (queued events are safe and will be sent on restart)");
                }
                Ok(())
            })
        }
        (None, None) => anyhow::bail!("nothing to do: pass --config FILE (see --help)"),
    }
}
