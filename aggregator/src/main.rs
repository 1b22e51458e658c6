//! The `weir-aggregator` binary: parse the command line, set up logging, load the config, run.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use weir_aggregator::{config, quickstart};

/// Weir aggregator: stores every agent's events exactly once and serves the NOC's REST API.
///
/// Agents connect over mutual-TLS QUIC with certificates from the fleet CA (see weir-certs).
/// Run with --config FILE, or try `weir-aggregator quickstart` for a local fleet in one step.
#[derive(Debug, Parser)]
#[command(
    version,
    after_help = "Examples:\n  weir-aggregator --config /etc/weir/aggregator.toml\n  weir-aggregator check-config /etc/weir/aggregator.toml\n  weir-aggregator quickstart --dir ./weir-quickstart\n\nLogging: set RUST_LOG (e.g. RUST_LOG=weir_aggregator=debug)."
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
    /// Check a config file (syntax, types, unknown keys, referenced files) and exit.
    CheckConfig {
        /// The config file.
        file: PathBuf,
    },
    /// Create a throwaway PKI, configs and an API key, then run the aggregator and one agent
    /// on 127.0.0.1 (existing files in DIR are reused, never overwritten).
    Quickstart {
        /// Directory for everything the quickstart writes.
        #[arg(long, default_value = "./weir-quickstart")]
        dir: PathBuf,
        /// Write the files and exit without starting anything.
        #[arg(long)]
        init_only: bool,
        /// REST API port.
        #[arg(long, default_value_t = 8083)]
        api_port: u16,
        /// QUIC port agents connect to.
        #[arg(long, default_value_t = 4433)]
        quic_port: u16,
        /// Agent syslog port (UDP and TCP), an unprivileged stand-in for 514.
        #[arg(long, default_value_t = 5514)]
        syslog_port: u16,
        /// Agent SNMP trap port, an unprivileged stand-in for 162.
        #[arg(long, default_value_t = 1162)]
        trap_port: u16,
        /// Agent local HTTP port (metrics, JSON ingest).
        #[arg(long, default_value_t = 8084)]
        agent_http_port: u16,
    },
    /// Write man pages and shell completions into DIR (used to build the packages).
    #[command(hide = true)]
    GenerateDocs {
        /// Output directory (man/ and completions/ are created in it).
        dir: PathBuf,
    },
}

// The aggregator allocates and frees many small buffers per event across threads; with glibc's
// allocator a profile showed ~12% of its time in malloc/free, which mimalloc handles with less
// overhead. (The agent keeps glibc: on a small gateway its RSS was lower with glibc and
// MALLOC_ARENA_MAX=2 than with mimalloc, at the same CPU.)
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    weir_common::telemetry::run_main("weir-aggregator", || real_main(cli))
}

fn real_main(cli: Cli) -> anyhow::Result<()> {
    match (cli.command, cli.config) {
        (Some(Command::CheckConfig { file }), _) => {
            let c = config::load(&file)?;
            for p in [&c.quic.ca, &c.quic.cert, &c.quic.key, &c.api.api_key_file] {
                anyhow::ensure!(
                    p.exists(),
                    "{}: referenced file {} does not exist",
                    file.display(),
                    p.display()
                );
            }
            weir_aggregator::ingest::server_config(&c.quic)
                .with_context(|| format!("{}: [quic] TLS files", file.display()))?;
            println!("{}: OK", file.display());
            Ok(())
        }
        (
            Some(Command::Quickstart {
                dir,
                init_only,
                api_port,
                quic_port,
                syslog_port,
                trap_port,
                agent_http_port,
            }),
            _,
        ) => {
            let o = quickstart::Options {
                dir,
                api_port,
                quic_port,
                syslog_port,
                trap_port,
                agent_http_port,
            };
            let layout = quickstart::init(&o)?;
            if init_only {
                println!(
                    "wrote {} and {} (API key in {})",
                    layout.aggregator_config.display(),
                    layout.agent_config.display(),
                    layout.api_key_file.display()
                );
                return Ok(());
            }
            let agent_bin = quickstart::agent_binary()?;
            runtime()?.block_on(async {
                let cfg = config::load(&layout.aggregator_config)?;
                let shutdown = CancellationToken::new();
                let running = weir_aggregator::start(cfg, shutdown.clone()).await?;
                let mut agent = tokio::process::Command::new(&agent_bin)
                    .arg("--config")
                    .arg(&layout.agent_config)
                    .kill_on_drop(true)
                    .spawn()
                    .with_context(|| format!("starting {}", agent_bin.display()))?;
                println!("{}", quickstart::banner(&o, &layout));
                tokio::select! {
                    _ = wait_for_signal() => {}
                    status = agent.wait() => tracing::error!(?status, "the quickstart agent exited; stopping"),
                }
                #[allow(clippy::cast_possible_wrap)]
                if let Some(pid) = agent.id() {
                    // Ask the agent to stop cleanly (SIGTERM) before we stop the aggregator.
                    let _ = std::process::Command::new("kill").arg("-TERM").arg(pid.to_string()).status();
                    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), agent.wait()).await;
                }
                shutdown.cancel();
                running.join().await;
                Ok(())
            })
        }
        (Some(Command::GenerateDocs { dir }), _) => weir_certs::docs::write(Cli::command(), &dir),
        (None, Some(file)) => {
            let cfg = config::load(&file)?;
            runtime()?.block_on(async {
                let shutdown = CancellationToken::new();
                let running = weir_aggregator::start(cfg, shutdown.clone()).await?;
                // The store is open and both listeners are bound: tell systemd (Type=notify).
                weir_agent::service::notify_ready("running");
                weir_agent::service::wait_for_stop(&running.reloader).await?;
                tracing::info!("shutting down");
                shutdown.cancel();
                running.join().await;
                Ok(())
            })
        }
        (None, None) => anyhow::bail!(
            "nothing to do: pass --config FILE, or try `weir-aggregator quickstart` (see --help)"
        ),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")
}

async fn wait_for_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
