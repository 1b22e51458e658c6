//! `weir-aggregator quickstart`: a working local fleet in one command. Generates a throwaway
//! PKI, commented configs and an API key under one directory (reusing whatever is already
//! there, never overwriting), then runs the aggregator in this process and one agent as a
//! child process (`weir-agent`, found next to this binary).

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use rand::Rng;

/// Ports and location for the quickstart fleet.
#[derive(Debug, Clone)]
pub struct Options {
    pub dir: PathBuf,
    pub api_port: u16,
    pub quic_port: u16,
    pub syslog_port: u16,
    pub trap_port: u16,
    pub agent_http_port: u16,
}

/// What [`init`] wrote or found.
#[derive(Debug)]
pub struct Layout {
    pub aggregator_config: PathBuf,
    pub agent_config: PathBuf,
    pub api_key_file: PathBuf,
}

/// Writes the PKI, configs and API key, keeping any that already exist.
pub fn init(o: &Options) -> anyhow::Result<Layout> {
    let dir = &o.dir;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let ca = dir.join("ca");
    if !ca.join("ca.pem").exists() {
        weir_certs::init_ca(
            &ca,
            &weir_certs::CaOptions {
                common_name: "Weir quickstart CA".into(),
                ..Default::default()
            },
        )?;
    }
    let agg_tls = dir.join("aggregator-tls");
    if !agg_tls.join("aggregator.pem").exists() {
        weir_certs::issue_aggregator(
            &ca,
            &["localhost".to_string()],
            &[
                "127.0.0.1".parse().expect("literal"),
                "::1".parse().expect("literal"),
            ],
            &agg_tls,
            &Default::default(),
        )?;
    }
    let agent_tls = dir.join("agent-tls");
    if !agent_tls.join("agent.pem").exists() {
        weir_certs::issue_agent(&ca, "local", "agent-1", &agent_tls, &Default::default())?;
    }
    let api_key_file = dir.join("api-key");
    if !api_key_file.exists() {
        let key: String = rand::rng()
            .sample_iter(rand::distr::Alphanumeric)
            .take(40)
            .map(char::from)
            .collect();
        write_private(&api_key_file, &format!("{key}\n"))?;
    }
    let aggregator_config = dir.join("aggregator.toml");
    if !aggregator_config.exists() {
        let text = crate::config::example(
            "aggregator-data",
            "aggregator-tls",
            "ca/crl.pem",
            o.quic_port,
            o.api_port,
        );
        std::fs::write(&aggregator_config, text)
            .with_context(|| format!("writing {}", aggregator_config.display()))?;
    }
    let agent_config = dir.join("agent.toml");
    if !agent_config.exists() {
        let text = weir_agent_example(o);
        std::fs::write(&agent_config, text)
            .with_context(|| format!("writing {}", agent_config.display()))?;
    }
    Ok(Layout {
        aggregator_config,
        agent_config,
        api_key_file,
    })
}

fn weir_agent_example(o: &Options) -> String {
    weir_agent::config::example_with_traps(
        "agent-data",
        &format!("127.0.0.1:{}", o.quic_port),
        "agent-tls",
        o.syslog_port,
        o.trap_port,
        o.agent_http_port,
    )
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

/// The `weir-agent` binary next to this one.
pub fn agent_binary() -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe().context("locating this executable")?;
    let agent = me.with_file_name("weir-agent");
    if !agent.exists() {
        bail!(
            "the quickstart runs the agent from {}, which does not exist: build the whole workspace first (cargo build --release --workspace)",
            agent.display()
        );
    }
    Ok(agent)
}

/// How to use the running fleet.
pub fn banner(o: &Options, layout: &Layout) -> String {
    let key = layout.api_key_file.display();
    format!(
        "\nWeir quickstart fleet is running (Ctrl-C stops it). Files in {dir}\n\
         \n  aggregator  API http://127.0.0.1:{api}  agents: QUIC udp/127.0.0.1:{quic}\n\
         \x20 agent       site=local name=agent-1  syslog udp+tcp 127.0.0.1:{syslog}  HTTP http://127.0.0.1:{ahttp}\n\
         \x20             SNMP traps udp/127.0.0.1:{trap} (community public)\n\
         \nSend a test event:\n  logger --server 127.0.0.1 --port {syslog} --udp --tag demo \"hello from weir\"\n\
         \x20 snmptrap -v 2c -c public 127.0.0.1:{trap} '' 1.3.6.1.6.3.1.1.5.3 1.3.6.1.2.1.2.2.1.1.3 i 3\n\
         \nQuery it:\n  curl -s -H \"X-API-Key: $(cat {key})\" 'http://127.0.0.1:{api}/api/v1/events?limit=5'\n\
         \x20 curl -s -H \"X-API-Key: $(cat {key})\" http://127.0.0.1:{api}/api/v1/agents\n",
        dir = o.dir.display(),
        api = o.api_port,
        quic = o.quic_port,
        syslog = o.syslog_port,
        ahttp = o.agent_http_port,
        trap = o.trap_port,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_writes_working_configs_and_keeps_existing_files() {
        let dir = tempfile::tempdir().unwrap();
        let o = Options {
            dir: dir.path().join("qs"),
            api_port: 18083,
            quic_port: 14433,
            syslog_port: 15514,
            trap_port: 11162,
            agent_http_port: 18084,
        };
        let layout = init(&o).unwrap();
        let agg = crate::config::load(&layout.aggregator_config).unwrap();
        assert_eq!(agg.quic.listen.port(), 14433);
        assert!(agg.quic.crl.as_ref().unwrap().exists());
        let agent = weir_agent::config::load(&layout.agent_config).unwrap();
        assert_eq!(
            agent.aggregator.addresses,
            vec!["127.0.0.1:14433".to_string()]
        );
        assert!(agent.aggregator.cert.exists());
        let key = std::fs::read_to_string(&layout.api_key_file).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&layout.api_key_file)
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
        // A second run reuses everything.
        init(&o).unwrap();
        assert_eq!(std::fs::read_to_string(&layout.api_key_file).unwrap(), key);
    }
}
