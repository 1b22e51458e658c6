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
    /// Config file to run with (also where `keys` finds data_dir).
    #[arg(long, short, value_name = "FILE", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

// Parsed once at start-up: boxing a variant would only complicate the match below.
#[allow(clippy::large_enum_variant)]
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
    /// Manage scoped API keys (kept hashed in data_dir/api-keys.json). A running aggregator
    /// picks up changes at its next request; no restart. Needs --config FILE.
    #[command(
        after_help = "Scopes: ingest (POST events, Alertmanager webhook), read (events, agents, sites),\n        operate (act on incidents), admin (rules, keys).\n\nExamples:\n  KEY=$(weir-aggregator keys create --name grafana --scopes read --config agg.toml)\n  weir-aggregator keys list --config agg.toml\n  weir-aggregator keys revoke grafana --config agg.toml"
    )]
    Keys {
        #[command(subcommand)]
        action: KeysCommand,
    },
    /// Correlation rules: check a rule file, or try it on events offline.
    Rules {
        #[command(subcommand)]
        command: RulesCommand,
    },
    /// Write man pages and shell completions into DIR (used to build the packages).
    #[command(hide = true)]
    GenerateDocs {
        /// Output directory (man/ and completions/ are created in it).
        dir: PathBuf,
    },
    /// Read the archive of events aged out of the hot store ([retention] archive_dir).
    #[command(subcommand)]
    Archive(ArchiveCommand),
}

#[derive(Debug, Subcommand)]
enum ArchiveCommand {
    /// Print archived events matching the filters, one JSON object per line (as the API shows
    /// events), oldest day first. Filters combine with AND, as in GET /api/v1/events.
    #[command(
        after_help = "Example:\n  weir-aggregator archive query --dir /var/lib/weir/archive --from 2026-01-01T00:00:00Z --to 2026-01-02T00:00:00Z --severity '>=warning' --site paris --q 'link down'\n\nThe archive may hold an event twice (a crash between archiving and deleting); deduplicate on `id` if that matters."
    )]
    Query {
        /// The archive directory (holds events-YYYY-MM-DD.jsonl.gz).
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// Event time at or after (RFC 3339, e.g. 2026-01-01T00:00:00Z).
        #[arg(long)]
        from: Option<String>,
        /// Event time before (RFC 3339).
        #[arg(long)]
        to: Option<String>,
        /// `error` (exactly) or `>=warning` (at least).
        #[arg(long)]
        severity: Option<String>,
        #[arg(long)]
        site: Option<String>,
        #[arg(long)]
        agent: Option<String>,
        /// A glob, e.g. `core-sw-*`.
        #[arg(long)]
        hostname: Option<String>,
        #[arg(long)]
        source: Option<String>,
        #[arg(long)]
        tag: Option<String>,
        #[arg(long)]
        event_type: Option<String>,
        #[arg(long)]
        correlated_incident: Option<String>,
        /// Case-insensitive text in the message or tag.
        #[arg(long)]
        q: Option<String>,
        /// Events hidden from default views (logonly, suppressed by a rule): include, exclude
        /// or only. The archive is a record, so they are included unless asked otherwise.
        #[arg(long, default_value = "include")]
        hidden: String,
    },
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Create a key. Its secret is printed once, alone on stdout (the rest goes to stderr);
    /// only its SHA-256 is kept.
    Create {
        /// A name to recognize it by (unique among keys not revoked).
        #[arg(long)]
        name: String,
        /// Comma-separated: ingest, read, operate, admin.
        #[arg(long, value_name = "SCOPES")]
        scopes: String,
    },
    /// List keys (id, name, scopes, created, revoked); never prints secrets.
    List,
    /// Revoke a key by id or name: requests with it get 401 from then on.
    Revoke {
        /// The key's id (k_...) or name.
        key: String,
    },
}

#[derive(Debug, Subcommand)]
enum RulesCommand {
    /// Validate a rule file (JSON as in seed 000, or TOML with [[rules]] and [[aggregates]])
    /// and list its rules in evaluation order with their version hashes.
    Check {
        /// The rule file.
        rules: PathBuf,
    },
    /// Replay events through RULES in a fresh engine and print every decision (incidents with
    /// their explanations, suppressions, holds, inhibits) as JSON lines. Nothing is stored,
    /// sent or changed. Events are JSON lines: seed 000 event bodies or items of
    /// `GET /api/v1/events`; each line's stored_at / received_at / timestamp is its arrival.
    #[command(
        after_help = "Example:\n  weir-aggregator rules test rules.json --events events.jsonl\n  curl -s -H 'X-API-Key: KEY' 'http://127.0.0.1:8083/api/v1/events?from=...' | jq -c '.events[]' > events.jsonl"
    )]
    Test {
        /// The rule file.
        rules: PathBuf,
        /// JSON-lines file of events, in arrival order.
        #[arg(long, value_name = "FILE.jsonl")]
        events: PathBuf,
        /// How long the engine waits for out-of-order events (e.g. 10s, 2m).
        #[arg(long, default_value = "10s")]
        lateness: weir_common::config::HumanDuration,
    },
}

// The aggregator allocates and frees many small buffers per event across threads; with glibc's
// allocator a profile showed ~12% of its time in malloc/free, which mimalloc handles with less
// overhead. (The agent keeps glibc: on a small gateway its RSS was lower with glibc and
// MALLOC_ARENA_MAX=1 than with mimalloc, at the same CPU.)
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let thp = disable_transparent_huge_pages();
    let cli = Cli::parse();
    weir_common::telemetry::run_main("weir-aggregator", || {
        if let Err(e) = thp {
            tracing::info!(error = %e, "could not turn transparent huge pages off for this process (prctl); storing costs more CPU until the store cache is full");
        }
        real_main(cli)
    })
}

/// Turns transparent huge pages off for this process, first thing, so every mapping made
/// later (and those mimalloc made already) is faulted in 4 KiB at a time.
///
/// Why: the aggregator's heap grows for as long as the store's page cache fills (`store_cache`,
/// 2 GiB: redb keeps every page a commit writes), and mimalloc asks for huge pages on its
/// arenas (madvise). Each 2 MiB huge page is then zeroed by the kernel on first touch, in the
/// store writer's commit; in a bench-tcp profile that was 3.8% of all the machine's samples
/// (~22% of the aggregator's), against 0.07% for the same growth in 4 KiB faults, and RSS
/// was 396–424 MB instead of 417–474 MB after 500k events. (`MIMALLOC_ALLOW_THP=0` does the
/// same through mimalloc, but only where the environment is set; this holds however it is
/// started, also where the system's THP setting is `always`. Children inherit it: the
/// quickstart's agent, which does not ask for huge pages anyway.)
fn disable_transparent_huge_pages() -> nix::Result<()> {
    #[cfg(target_os = "linux")]
    return nix::sys::prctl::set_thp_disable(true);
    #[cfg(not(target_os = "linux"))]
    Ok(())
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
            // Transformation rules and event definitions: errors name file, line, rule, field.
            let p = weir_aggregator::alarm::Processor::load(&c.processing)?;
            let rules = match &c.correlation.rules {
                Some(path) => {
                    let set = weir_aggregator::correlate::RuleSet::load(path)?;
                    let raw = set.raw();
                    format!(
                        "{} correlation rules, {} aggregates",
                        raw.rules.len(),
                        raw.aggregates.len()
                    )
                }
                None => "correlation off".to_string(),
            };
            println!(
                "{}: OK ({} transformation rules, {} event definitions, {rules})",
                file.display(),
                p.transforms.rules.len(),
                p.definitions.len()
            );
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
        (
            Some(Command::Archive(ArchiveCommand::Query {
                dir,
                from,
                to,
                severity,
                site,
                agent,
                hostname,
                source,
                tag,
                event_type,
                correlated_incident,
                q,
                hidden,
            })),
            _,
        ) => {
            let params = weir_aggregator::query::EventParams {
                severity,
                from,
                to,
                hostname,
                source,
                site,
                agent,
                tag,
                event_type,
                correlated_incident,
                q,
                hidden: Some(hidden),
                ..Default::default()
            };
            let filter = weir_aggregator::query::EventFilter::parse(&params)
                .map_err(|e| anyhow::anyhow!("--{}: {}", e.param.replace('_', "-"), e.message))?;
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            let o = weir_aggregator::archive::query(&dir, &filter, &mut out)
                .with_context(|| format!("reading the archive in {}", dir.display()))?;
            std::io::Write::flush(&mut out)?;
            eprintln!(
                "{} matching events from {} files{}",
                o.matched,
                o.files,
                if o.bad_lines > 0 {
                    format!(" ({} unreadable lines skipped)", o.bad_lines)
                } else {
                    String::new()
                }
            );
            Ok(())
        }
        (Some(Command::Keys { action }), config) => {
            let file = config.context(
                "keys: pass --config FILE (the aggregator's config; keys live in its data_dir)",
            )?;
            let cfg = config::load(&file)?;
            keys_command(&cfg, action)
        }
        (Some(Command::Rules { command }), _) => rules_command(command),
        (Some(Command::GenerateDocs { dir }), _) => weir_certs::docs::write(Cli::command(), &dir),
        (None, Some(file)) => {
            let cfg = config::load(&file)?;
            runtime()?.block_on(async {
                let signals = weir_agent::service::StopSignals::install()?;
                let shutdown = CancellationToken::new();
                let running = weir_aggregator::start(cfg, shutdown.clone()).await?;
                // The store is open and both listeners are bound: tell systemd (Type=notify).
                signals.serve(&running.reloader, &shutdown).await;
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

fn keys_command(cfg: &config::AggregatorConfig, action: KeysCommand) -> anyhow::Result<()> {
    use weir_aggregator::keys;
    let path = keys::keys_path(&cfg.data_dir);
    let now = jiff::Timestamp::now();
    match action {
        KeysCommand::Create { name, scopes } => {
            let scopes = keys::parse_scopes(&scopes).map_err(anyhow::Error::msg)?;
            let (rec, secret) = keys::create_key(&path, &name, scopes, now)?;
            eprintln!(
                "created key {} ({}) with scopes {}; its secret follows, shown this once:",
                rec.id,
                rec.name,
                rec.scopes
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(",")
            );
            println!("{secret}");
        }
        KeysCommand::List => {
            let list = keys::read_keys(&path)?;
            if list.is_empty() {
                eprintln!(
                    "no keys in {} (bootstrap keys in {} hold every scope)",
                    path.display(),
                    cfg.api.api_key_file.display()
                );
            }
            println!(
                "{:<16} {:<24} {:<28} {:<22} REVOKED",
                "ID", "NAME", "SCOPES", "CREATED"
            );
            for k in list {
                let scopes: Vec<&str> = k.scopes.iter().map(|s| s.as_str()).collect();
                println!(
                    "{:<16} {:<24} {:<28} {:<22} {}",
                    k.id,
                    k.name,
                    scopes.join(","),
                    k.created.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
                    k.revoked.map_or("-".to_string(), |t| t.to_string())
                );
            }
        }
        KeysCommand::Revoke { key } => {
            let rec = keys::revoke_key(&path, &key, now)?;
            eprintln!(
                "revoked key {} ({}); requests with it now get 401",
                rec.id, rec.name
            );
        }
    }
    Ok(())
}

fn rules_command(command: RulesCommand) -> anyhow::Result<()> {
    use weir_aggregator::correlate;
    match command {
        RulesCommand::Check { rules } => {
            let set = correlate::RuleSet::load(&rules)?;
            for r in &set.rules {
                println!("{:>6}  {}  {}", r.priority, r.version, r.name);
            }
            for r in &set.disabled {
                println!("{:>6}  disabled          {}", r.priority, r.name);
            }
            for a in &set.aggregates {
                println!("{:>6}  {}  {} (aggregate)", a.priority, a.version, a.name);
            }
            println!("{}: OK", rules.display());
            Ok(())
        }
        RulesCommand::Test {
            rules,
            events,
            lateness,
        } => {
            let config = correlate::EngineConfig {
                allowed_lateness: lateness.0,
                ..correlate::EngineConfig::default()
            };
            let (decisions, s) = correlate::replay::rules_test(&rules, &events, config)?;
            let mut out = std::io::stdout().lock();
            for d in &decisions {
                use std::io::Write;
                serde_json::to_writer(&mut out, d)?;
                writeln!(out)?;
            }
            eprintln!(
                "{} events: {} incidents opened, {} cleared, {} events suppressed, {} inhibited",
                s.events, s.incidents, s.cleared, s.suppressed, s.inhibited
            );
            Ok(())
        }
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
