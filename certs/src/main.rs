//! `weir-certs`: the operator's tool for Weir's private PKI (create the CA, issue aggregator and
//! agent certificates, revoke them, inspect them). All logic lives in the `weir_certs` library;
//! this file parses arguments and prints results.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, CommandFactory, Parser, Subcommand};
use weir_certs::{CaOptions, IssueOptions};

#[derive(Parser)]
#[command(
    name = "weir-certs",
    version,
    about = "Manage Weir's private PKI: the fleet CA, aggregator and agent certificates, revocation",
    long_about = "Manage Weir's private PKI.\n\n\
        Agents and the aggregator authenticate each other with mutual TLS. One fleet CA (kept \
        offline, ideally) signs one server certificate for the aggregator and one client \
        certificate per agent; revoked agents are listed in the CA's crl.pem, which the \
        aggregator reads.",
    after_help = "Typical setup:\n  \
        weir-certs init --out /secure/weir-ca\n  \
        weir-certs issue aggregator --ca /secure/weir-ca --dns agg.example.net --out ./agg\n  \
        weir-certs issue agent --ca /secure/weir-ca --site paris --name gw-01 --out ./gw-01\n  \
        weir-certs revoke --ca /secure/weir-ca ./gw-01/agent.pem"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a new fleet CA (ca.pem, ca.key, crl.pem, issued.json) in a directory.
    #[command(after_help = "Example:\n  weir-certs init --out /secure/weir-ca\n\n\
        Keep ca.key secret and backed up: every later `issue` and `revoke` needs it, and \
        issued.json is the record of what was issued.")]
    Init {
        /// Directory for the CA files (created with mode 0700 if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Common name of the CA certificate.
        #[arg(long, value_name = "NAME", default_value = "Weir fleet CA")]
        cn: String,
        /// Validity of the CA certificate in days.
        #[arg(long, value_name = "N", default_value_t = 3650)]
        days: u32,
        /// Replace an existing CA (every certificate it issued stops being trusted).
        #[arg(long)]
        force: bool,
    },
    /// Issue a certificate signed by the fleet CA.
    #[command(subcommand)]
    Issue(IssueCommand),
    /// Revoke a certificate: add it to the CA's crl.pem so the aggregator refuses it.
    #[command(
        after_help = "Example:\n  weir-certs revoke --ca /secure/weir-ca ./gw-01/agent.pem\n\n\
        Then copy the CA's crl.pem to the aggregator's configured `crl` path; the aggregator \
        reloads it automatically when the file changes. Revoking twice is harmless."
    )]
    Revoke {
        /// The CA directory created by `weir-certs init`.
        #[arg(long, value_name = "DIR")]
        ca: PathBuf,
        /// The certificate (PEM) to revoke, e.g. an agent's agent.pem.
        #[arg(value_name = "CERT")]
        cert: PathBuf,
    },
    /// Print a certificate: subject, serial, validity, SANs and, for agents, the identity.
    #[command(after_help = "Example:\n  weir-certs show ./gw-01/agent.pem")]
    Show {
        /// A PEM certificate file (the first certificate in it is shown).
        #[arg(value_name = "CERT")]
        cert: PathBuf,
    },
    /// Re-issue a certificate before it expires: same subject and names, new key, serial and
    /// validity. Writes next to the old certificate unless --out is given.
    #[command(
        after_help = "Examples:\n  weir-certs renew --ca /secure/weir-ca ./gw-01/agent.pem --bundle gw-01.bundle\n  \
        weir-certs renew --ca /secure/weir-ca /etc/weir/tls/aggregator.pem --out /etc/weir/tls\n\n\
        Renewing in place replaces the certificate and key in CERT's directory (that is what \
        renewing is for). Writing to a different --out refuses to replace existing files there \
        unless --force. The old certificate stays valid until it expires; revoke it if it was \
        compromised. Then install the new files and send SIGHUP (systemctl reload weir-agent)."
    )]
    Renew {
        /// The CA directory created by `weir-certs init`.
        #[arg(long, value_name = "DIR")]
        ca: PathBuf,
        /// The certificate to renew (agent.pem or aggregator.pem).
        #[arg(value_name = "CERT")]
        cert: PathBuf,
        /// Directory for the new files (default: CERT's directory).
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// Validity in days.
        #[arg(long, value_name = "N", default_value_t = 825)]
        days: u32,
        /// Replace existing files in a --out other than CERT's directory.
        #[arg(long)]
        force: bool,
        /// For an agent certificate: also write an enrolment bundle (see `issue agent`).
        #[arg(long, value_name = "FILE")]
        bundle: Option<PathBuf>,
    },
    /// List every certificate the CA issued (its ledger, issued.json) and whether it is revoked.
    #[command(after_help = "Example:\n  weir-certs list --ca /secure/weir-ca")]
    List {
        /// The CA directory created by `weir-certs init`.
        #[arg(long, value_name = "DIR")]
        ca: PathBuf,
    },
    /// Write man pages and shell completions into DIR (used to build the packages).
    #[command(hide = true)]
    GenerateDocs {
        /// Output directory (man/ and completions/ are created in it).
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum IssueCommand {
    /// Issue the aggregator's server certificate (aggregator.pem, aggregator.key, ca.pem).
    #[command(
        after_help = "Example:\n  weir-certs issue aggregator --ca /secure/weir-ca \
        --dns agg.example.net --ip 10.0.0.5 --out ./agg\n\n\
        Agents verify the aggregator against these names: give every DNS name and IP address \
        agents will use to reach it."
    )]
    Aggregator {
        #[command(flatten)]
        common: IssueArgs,
        /// DNS name agents connect to (repeatable).
        #[arg(long, value_name = "NAME")]
        dns: Vec<String>,
        /// IP address agents connect to (repeatable).
        #[arg(long, value_name = "ADDR")]
        ip: Vec<IpAddr>,
    },
    /// Issue an agent's client certificate for SITE/NAME (agent.pem, agent.key, ca.pem).
    #[command(
        after_help = "Example:\n  weir-certs issue agent --ca /secure/weir-ca --site paris \
        --name gw-01 --out ./gw-01\n\n\
        The aggregator identifies the agent as SITE/NAME from this certificate. Names are 1-63 \
        characters of A-Z a-z 0-9 - _, starting with a letter or digit."
    )]
    Agent {
        #[command(flatten)]
        common: IssueArgs,
        /// Site (location) the agent runs at.
        #[arg(long, value_name = "SITE")]
        site: String,
        /// Agent name, unique within its site.
        #[arg(long, value_name = "NAME")]
        name: String,
        /// Also write a single-file enrolment bundle (certificate, key and CA; mode 0600) to
        /// copy to the gateway and install with `weir-agent enroll FILE`.
        #[arg(long, value_name = "FILE")]
        bundle: Option<PathBuf>,
    },
}

#[derive(Args)]
struct IssueArgs {
    /// The CA directory created by `weir-certs init`.
    #[arg(long, value_name = "DIR")]
    ca: PathBuf,
    /// Directory to write the certificate, key and ca.pem to (created if missing).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Validity in days.
    #[arg(long, value_name = "N", default_value_t = 825)]
    days: u32,
    /// Replace existing files in --out.
    #[arg(long)]
    force: bool,
}

impl IssueArgs {
    fn options(&self) -> IssueOptions {
        IssueOptions {
            validity_days: self.days,
            force: self.force,
            ..IssueOptions::default()
        }
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            // Library errors repeat their source in their own message (so they read well when
            // logged alone); skip a cause whose text the previous message already contains.
            let mut previous = err.to_string();
            for cause in err.chain().skip(1) {
                let text = cause.to_string();
                if !previous.contains(&text) {
                    eprintln!("  caused by: {text}");
                }
                previous = text;
            }
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Init {
            out,
            cn,
            days,
            force,
        } => {
            let opts = CaOptions {
                common_name: cn,
                validity_days: days,
                force,
            };
            weir_certs::init_ca(&out, &opts)
                .with_context(|| format!("creating the CA in {}", out.display()))?;
            println!("Created CA {:?} in {}:", opts.common_name, out.display());
            for f in ["ca.pem", "ca.key (keep secret)", "crl.pem", "issued.json"] {
                println!("  {}/{f}", out.display());
            }
            println!(
                "Next: weir-certs issue aggregator --ca {} --dns <HOST> --out <DIR>",
                out.display()
            );
        }
        Command::Issue(IssueCommand::Aggregator { common, dns, ip }) => {
            let issued =
                weir_certs::issue_aggregator(&common.ca, &dns, &ip, &common.out, &common.options())
                    .with_context(|| {
                        format!(
                            "issuing the aggregator certificate into {}",
                            common.out.display()
                        )
                    })?;
            print_issued(&issued, &common);
            println!(
                "Next: point the aggregator's TLS settings at {}, {} and {}/ca.pem",
                issued.cert_path.display(),
                issued.key_path.display(),
                common.out.display()
            );
        }
        Command::Issue(IssueCommand::Agent {
            common,
            site,
            name,
            bundle,
        }) => {
            let issued =
                weir_certs::issue_agent(&common.ca, &site, &name, &common.out, &common.options())
                    .with_context(|| {
                    format!(
                        "issuing the certificate for agent {site}/{name} into {}",
                        common.out.display()
                    )
                })?;
            print_issued(&issued, &common);
            match bundle {
                Some(file) => write_bundle(&common.out, &file, common.force)?,
                None => println!(
                    "Next: copy {} to the gateway of agent {site}/{name} and point its TLS settings at \
                     agent.pem, agent.key and ca.pem (or use --bundle FILE and `weir-agent enroll FILE`)",
                    common.out.display()
                ),
            }
        }
        Command::Renew {
            ca,
            cert,
            out,
            days,
            force,
            bundle,
        } => renew(&ca, &cert, out, days, force, bundle)?,
        Command::GenerateDocs { dir } => weir_certs::docs::write(Cli::command(), &dir)?,
        Command::Revoke { ca, cert } => {
            let revoked = weir_certs::revoke(&ca, &cert)
                .with_context(|| format!("revoking {}", cert.display()))?;
            println!("Revoked serial {}", revoked.serial_hex);
            println!("Wrote {}", revoked.crl_path.display());
            println!(
                "Next: copy it to the aggregator's `crl` path if it is not that file already; the \
                 aggregator reloads the CRL automatically when the file changes."
            );
        }
        Command::Show { cert } => show(&cert)?,
        Command::List { ca } => {
            let ledger = weir_certs::read_ledger(&ca)
                .with_context(|| format!("reading the ledger of the CA in {}", ca.display()))?;
            println!("CRL number {}", ledger.crl_number);
            println!(
                "{:<32}  {:<10}  {:<20}  {:<7}  SUBJECT",
                "SERIAL", "KIND", "NOT AFTER", "STATUS"
            );
            let now = jiff::Timestamp::now();
            for e in &ledger.certs {
                let status = if e.revoked {
                    "revoked"
                } else if e.not_after < now {
                    "expired"
                } else {
                    "valid"
                };
                println!(
                    "{:<32}  {:<10}  {:<20}  {:<7}  {}",
                    e.serial,
                    e.kind.to_string(),
                    e.not_after.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
                    status,
                    e.subject
                );
            }
            if ledger.certs.is_empty() {
                println!("(no certificates issued yet)");
            }
        }
    }
    Ok(())
}

fn write_bundle(dir: &std::path::Path, file: &std::path::Path, force: bool) -> anyhow::Result<()> {
    let b = weir_certs::bundle::Bundle::from_dir(dir)
        .with_context(|| format!("reading the issued files in {}", dir.display()))?;
    b.write(file, force)
        .with_context(|| format!("writing the bundle {}", file.display()))?;
    println!(
        "Wrote {} (mode 0600; it holds the private key)",
        file.display()
    );
    println!(
        "Next: copy it to the gateway of agent {}/{} and run: weir-agent enroll {}",
        b.site,
        b.name,
        file.file_name().unwrap_or_default().to_string_lossy()
    );
    Ok(())
}

fn renew(
    ca: &std::path::Path,
    cert: &std::path::Path,
    out: Option<PathBuf>,
    days: u32,
    force: bool,
    bundle: Option<PathBuf>,
) -> anyhow::Result<()> {
    let certs = weir_certs::tls::load_certs(cert)?;
    let s = weir_certs::summarize(&certs[0])
        .with_context(|| format!("reading the certificate in {}", cert.display()))?;
    let here = cert
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."))
        .to_path_buf();
    let in_place = out.is_none();
    let out = out.unwrap_or(here);
    let args = IssueArgs {
        ca: ca.to_path_buf(),
        out: out.clone(),
        days,
        // Renewing in place replaces the old files by definition.
        force: force || in_place,
    };
    let issued = if let Some(id) = &s.agent {
        weir_certs::issue_agent(ca, &id.site, &id.name, &out, &args.options())
            .with_context(|| format!("renewing the certificate of agent {id}"))?
    } else if s.extended_key_usage.iter().any(|u| u == "serverAuth") {
        weir_certs::issue_aggregator(ca, &s.dns_names, &s.ip_addresses, &out, &args.options())
            .with_context(|| format!("renewing the aggregator certificate {}", s.subject))?
    } else {
        anyhow::bail!(
            "{} is neither an agent nor an aggregator certificate; nothing to renew",
            cert.display()
        );
    };
    println!("Renewed {} (old serial {})", s.subject, s.serial_hex);
    print_issued(&issued, &args);
    match (&s.agent, bundle) {
        (Some(_), Some(file)) => write_bundle(&out, &file, force)?,
        (None, Some(_)) => anyhow::bail!("--bundle is for agent certificates only"),
        _ => println!(
            "Next: install the new files where the service reads them and run `systemctl reload` \
             (SIGHUP) for weir-agent or weir-aggregator; no restart, no lost events."
        ),
    }
    Ok(())
}

fn print_issued(issued: &weir_certs::IssuedCert, args: &IssueArgs) {
    println!("Wrote {}", issued.cert_path.display());
    println!("Wrote {} (mode 0600)", issued.key_path.display());
    println!("Wrote {}/ca.pem", args.out.display());
    println!(
        "Serial {}, valid until {}",
        issued.serial_hex, issued.not_after
    );
}

fn show(path: &std::path::Path) -> anyhow::Result<()> {
    let certs = weir_certs::tls::load_certs(path)?;
    let s = weir_certs::summarize(&certs[0])
        .with_context(|| format!("reading the certificate in {}", path.display()))?;
    println!("File:       {}", path.display());
    println!("Subject:    {}", s.subject);
    println!("Issuer:     {}", s.issuer);
    println!("Serial:     {}", s.serial_hex);
    println!("Not before: {}", s.not_before);
    let expired = if s.not_after < jiff::Timestamp::now() {
        " (EXPIRED)"
    } else {
        ""
    };
    println!("Not after:  {}{expired}", s.not_after);
    println!("CA:         {}", if s.is_ca { "yes" } else { "no" });
    if !s.extended_key_usage.is_empty() {
        println!("Usage:      {}", s.extended_key_usage.join(", "));
    }
    for d in &s.dns_names {
        println!("DNS SAN:    {d}");
    }
    for ip in &s.ip_addresses {
        println!("IP SAN:     {ip}");
    }
    for u in &s.uris {
        println!("URI SAN:    {u}");
    }
    if let Some(id) = &s.agent {
        println!("Agent:      {id} (site {}, name {})", id.site, id.name);
    }
    if certs.len() > 1 {
        println!(
            "({} more certificates in the file not shown)",
            certs.len() - 1
        );
    }
    Ok(())
}
