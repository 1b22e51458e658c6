//! The agent's copy of the aggregator's SNMP trap drop policy (seed 001 `discardtraps`: traps
//! the aggregator would discard are dropped here, before they are queued or cross the WAN).
//!
//! The forwarder [`install`](TrapPolicyState::install)s each policy the aggregator sends
//! (protocol v2, on connect and after every rule reload there); the SNMP input reads the
//! [`current`](TrapPolicyState::current) one per batch of datagrams. Only traps and informs
//! are affected, never syslog or other inputs.
//!
//! The last policy is kept in `data_dir/trap-policy.json` (written to a temporary file, synced,
//! then renamed), so an agent restarted while the aggregator is unreachable keeps dropping what
//! it dropped before. No file (no policy ever received) drops nothing; an unreadable file is
//! logged and ignored, also dropping nothing. A v1 aggregator never sends a policy: the agent
//! keeps the one it has.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use anyhow::Context as _;
use weir_common::trap_policy::{CompiledPolicy, TrapPolicy};

/// File name of the persisted policy in the data dir.
pub const FILE: &str = "trap-policy.json";

/// The policy in force, shared by the forwarder (writer) and the SNMP listeners (readers).
#[derive(Debug)]
pub struct TrapPolicyState {
    path: PathBuf,
    current: RwLock<Arc<CompiledPolicy>>,
}

impl TrapPolicyState {
    /// Loads the policy persisted in `data_dir`, or none. Never fails: a missing or broken
    /// file means "drop nothing" until the aggregator sends a policy.
    pub fn load(data_dir: &Path) -> Arc<TrapPolicyState> {
        let path = data_dir.join(FILE);
        let compiled = match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<TrapPolicy>(&bytes)
                .map_err(|e| e.to_string())
                .and_then(|p| CompiledPolicy::compile(&p))
            {
                Ok(c) => {
                    tracing::info!(
                        path = %path.display(), version = format_args!("{:016x}", c.version),
                        "loaded the last trap drop policy the aggregator sent (discardtraps); it applies until the aggregator sends a new one"
                    );
                    c
                }
                Err(e) => {
                    tracing::warn!(
                        path = %path.display(), error = %e,
                        "ignoring an unreadable trap drop policy file: every trap is kept until the aggregator sends a policy"
                    );
                    CompiledPolicy::default()
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => CompiledPolicy::default(),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read the trap drop policy file: every trap is kept until the aggregator sends a policy");
                CompiledPolicy::default()
            }
        };
        Arc::new(TrapPolicyState {
            path,
            current: RwLock::new(Arc::new(compiled)),
        })
    }

    /// The policy in force (cheap: an `Arc`).
    pub fn current(&self) -> Arc<CompiledPolicy> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Checks, persists and applies `policy`. Returns `Ok(false)` when it equals the one in
    /// force. A policy that fails its checks is refused and the previous one stays; one that
    /// cannot be written to disk is still applied (and the error returned, to be logged).
    pub fn install(&self, policy: &TrapPolicy) -> anyhow::Result<bool> {
        let compiled = CompiledPolicy::compile(policy)
            .map_err(|e| anyhow::anyhow!("refused the aggregator's trap drop policy: {e}"))?;
        if self.current().version == policy.version && self.path.exists() {
            return Ok(false);
        }
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(compiled);
        let dropped: Vec<&str> = policy.discarded().collect();
        tracing::info!(
            version = format_args!("{:016x}", policy.version),
            ?dropped,
            "new trap drop policy from the aggregator: traps with these tags are dropped here (discardtraps), counted in weir_agent_dropped_total{{reason=\"discardtraps\"}}"
        );
        self.persist(policy).with_context(|| {
            format!(
                "writing {} (the policy applies until the agent restarts)",
                self.path.display()
            )
        })?;
        Ok(true)
    }

    fn persist(&self, policy: &TrapPolicy) -> anyhow::Result<()> {
        let tmp = self.path.with_extension("json.tmp");
        {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&serde_json::to_vec_pretty(policy)?)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent()
            && let Ok(d) = std::fs::File::open(dir)
        {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use weir_common::trap_policy::TagRule;

    use super::*;

    fn policy(tags: &[&str]) -> TrapPolicy {
        TrapPolicy::new(
            tags.iter()
                .map(|t| TagRule {
                    pattern: t.to_string(),
                    discard: true,
                })
                .collect(),
        )
    }

    #[test]
    fn no_file_drops_nothing_and_an_installed_policy_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let s = TrapPolicyState::load(dir.path());
        assert!(s.current().is_empty());
        assert!(s.install(&policy(&["SNMP_WARM_START"])).unwrap());
        assert!(s.current().discards("SNMP_WARM_START"));
        assert!(
            !s.install(&policy(&["SNMP_WARM_START"])).unwrap(),
            "unchanged"
        );
        assert!(!dir.path().join("trap-policy.json.tmp").exists());

        let restarted = TrapPolicyState::load(dir.path());
        assert!(restarted.current().discards("SNMP_WARM_START"));
        assert!(!restarted.current().discards("SNMP_COLD_START"));
        // An empty policy (the definition was removed) is persisted too.
        assert!(restarted.install(&policy(&[])).unwrap());
        assert!(TrapPolicyState::load(dir.path()).current().is_empty());
    }

    #[test]
    fn a_bad_policy_is_refused_and_a_broken_file_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let s = TrapPolicyState::load(dir.path());
        s.install(&policy(&["A"])).unwrap();
        assert!(s.install(&policy(&["*B*"])).is_err());
        assert!(s.current().discards("A"), "the previous policy stays");
        std::fs::write(dir.path().join(FILE), b"{not json").unwrap();
        assert!(TrapPolicyState::load(dir.path()).current().is_empty());
    }
}
