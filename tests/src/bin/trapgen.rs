//! `weir-trapgen`: SNMP trap load generator. Pre-encodes every trap (each with a unique
//! `seq=N` varbind, so loss and duplicates can be counted at the receiver), then sends them at
//! a fixed rate over UDP.
//!
//! ```text
//! weir-trapgen --target 127.0.0.1:1162 --version v2c --rate 1000 --duration 5
//! weir-trapgen --target 127.0.0.1:11162 --version v3 --user weir --auth sha \
//!     --auth-password weir-auth-pass --privacy aes --privacy-password weir-priv-pass \
//!     --engine-id 0x80001f8804776569722d6c6f616467656e --rate 1000 --duration 5
//! ```
//! The v3 defaults match `shared/peers/run-snmptrapd.sh` (user `weir`, SHA/AES, its engine ID).

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use weir_agent::snmp::lib_adapter::encode;
use weir_agent::snmp::{Auth, Priv, UserSpec};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Version {
    V2c,
    V3,
}

#[derive(Debug, Parser)]
#[command(about = "SNMP trap load generator (unique seq=N varbind per trap)")]
struct Cli {
    /// Receiver address.
    #[arg(long)]
    target: SocketAddr,
    #[arg(long, value_enum, default_value = "v2c")]
    version: Version,
    /// Traps per second (0 = as fast as possible).
    #[arg(long, default_value_t = 10_000)]
    rate: u64,
    /// Seconds to send for.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// First seq number.
    #[arg(long, default_value_t = 0)]
    first_seq: u64,
    /// v2c community.
    #[arg(long, default_value = "public")]
    community: String,
    /// v3 user.
    #[arg(long, default_value = "weir")]
    user: String,
    /// v3 auth protocol: none, md5, sha, sha224, sha256, sha384, sha512.
    #[arg(long, default_value = "sha")]
    auth: String,
    #[arg(long, default_value = "weir-auth-pass")]
    auth_password: String,
    /// v3 privacy protocol: none, des, aes, aes192, aes256, aes192c, aes256c.
    #[arg(long, default_value = "aes")]
    privacy: String,
    #[arg(long, default_value = "weir-priv-pass")]
    privacy_password: String,
    /// The sender's (authoritative) engine ID, hex.
    #[arg(long, default_value = "0x80001f8804776569722d6c6f616467656e")]
    engine_id: String,
    /// Trap OID sent.
    #[arg(long, default_value = "1.3.6.1.4.1.8072.2.3.0.1")]
    trap_oid: String,
}

fn parse<T: serde::de::DeserializeOwned>(what: &str, s: &str) -> anyhow::Result<T> {
    serde_json::from_value(serde_json::Value::String(s.to_ascii_lowercase()))
        .with_context(|| format!("unknown {what} protocol {s:?}"))
}

fn main() -> std::process::ExitCode {
    weir_common::telemetry::run_main("weir-trapgen", || run(Cli::parse()))
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let total = if cli.rate == 0 {
        1_000_000
    } else {
        cli.rate * cli.duration
    };
    let started = Instant::now();
    let traps: Vec<Vec<u8>> = match cli.version {
        Version::V2c => (0..total)
            .map(|i| {
                let seq = format!("seq={}", cli.first_seq + i);
                encode::v2c_trap(
                    &cli.community,
                    i as i32,
                    i as u32,
                    &cli.trap_oid,
                    &[("1.3.6.1.4.1.8072.2.3.2.1", &seq)],
                )
                .map_err(anyhow::Error::msg)
            })
            .collect::<anyhow::Result<_>>()?,
        Version::V3 => {
            let spec = UserSpec {
                name: cli.user.clone(),
                auth: parse::<Auth>("auth", &cli.auth)?,
                auth_password: cli.auth_password.clone(),
                privacy: parse::<Priv>("privacy", &cli.privacy)?,
                priv_password: cli.privacy_password.clone(),
                engine_ids: vec![],
            };
            let engine = weir_agent::snmp::config::parse_engine_id(&cli.engine_id)
                .map_err(anyhow::Error::msg)?;
            let sender = encode::V3Sender::new(&engine, &spec).map_err(anyhow::Error::msg)?;
            (0..total)
                .map(|i| {
                    let seq = format!("seq={}", cli.first_seq + i);
                    sender
                        .trap(
                            i as i32,
                            1,
                            (i / cli.rate.max(1)) as u32,
                            &cli.trap_oid,
                            &[("1.3.6.1.4.1.8072.2.3.2.1", &seq)],
                        )
                        .map_err(anyhow::Error::msg)
                })
                .collect::<anyhow::Result<_>>()?
        }
    };
    eprintln!(
        "encoded {total} traps ({} bytes each) in {:?}",
        traps.first().map_or(0, Vec::len),
        started.elapsed()
    );
    let sock = UdpSocket::bind(if cli.target.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    })?;
    let started = Instant::now();
    let mut errors = 0u64;
    for (i, t) in traps.iter().enumerate() {
        if cli.rate > 0 {
            // Pace by schedule, sleeping only when ahead: bursts stay small.
            let due = Duration::from_secs_f64(i as f64 / cli.rate as f64);
            let now = started.elapsed();
            if due > now + Duration::from_millis(1) {
                std::thread::sleep(due - now);
            }
        }
        if sock.send_to(t, cli.target).is_err() {
            errors += 1;
        }
    }
    let took = started.elapsed();
    println!(
        "sent {} traps in {:.2}s ({:.0}/s), {errors} send errors, seq {}..{}",
        traps.len(),
        took.as_secs_f64(),
        traps.len() as f64 / took.as_secs_f64(),
        cli.first_seq,
        cli.first_seq + total
    );
    if errors > 0 {
        bail!("{errors} sends failed");
    }
    Ok(())
}
