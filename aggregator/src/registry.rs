//! What the aggregator knows about agents right now: which are connected, from where, with
//! which software and certificate, and the last status each reported. The durable part (the
//! committed sequence) lives in the store; this is the live view the API merges with it.

use std::collections::HashMap;
use std::sync::Mutex;

use jiff::Timestamp;
use weir_common::wire::AgentStatus;

/// Sessions one agent identity may hold at once. An agent uses one; a second exists briefly
/// while it reconnects before the old one times out.
pub const MAX_SESSIONS_PER_AGENT: u32 = 4;

#[derive(Debug, Clone, Default)]
pub struct AgentLive {
    pub site: String,
    pub name: String,
    /// Open sessions (normally 0 or 1; briefly 2 while an agent reconnects).
    pub sessions: u32,
    pub last_seen: Option<Timestamp>,
    pub remote: Option<String>,
    pub software: Option<String>,
    pub cert_serial: Option<String>,
    pub cert_not_after: Option<Timestamp>,
    pub status: Option<AgentStatus>,
}

/// Live agent state plus the connections, so revoked agents can be disconnected.
#[derive(Debug, Default)]
pub struct Registry {
    agents: Mutex<HashMap<String, AgentLive>>,
    /// Connection handles by connection id, with the certificate serial they presented.
    connections: Mutex<HashMap<usize, (String, quinn::Connection)>>,
}

impl Registry {
    /// Records a new session; refuses (returns `false`) past [`MAX_SESSIONS_PER_AGENT`], so one
    /// certificate cannot hold an unbounded share of the aggregator's connections and memory.
    pub fn connected(&self, live: AgentLive, conn: &quinn::Connection) -> bool {
        let key = format!("{}/{}", live.site, live.name);
        let serial = live.cert_serial.clone().unwrap_or_default();
        let mut agents = self.agents.lock().expect("registry lock");
        let entry = agents.entry(key).or_default();
        if entry.sessions >= MAX_SESSIONS_PER_AGENT {
            return false;
        }
        let sessions = entry.sessions + 1;
        let status = entry.status.take();
        *entry = AgentLive {
            sessions,
            status,
            ..live
        };
        self.connections
            .lock()
            .expect("registry lock")
            .insert(conn.stable_id(), (serial, conn.clone()));
        metrics::gauge!("weir_aggregator_agent_sessions").increment(1.0);
        true
    }

    pub fn disconnected(&self, site: &str, name: &str, conn: &quinn::Connection) {
        let key = format!("{site}/{name}");
        if let Some(a) = self.agents.lock().expect("registry lock").get_mut(&key) {
            a.sessions = a.sessions.saturating_sub(1);
            a.last_seen = Some(Timestamp::now());
        }
        self.connections
            .lock()
            .expect("registry lock")
            .remove(&conn.stable_id());
        metrics::gauge!("weir_aggregator_agent_sessions").decrement(1.0);
    }

    pub fn seen(&self, site: &str, name: &str, status: Option<AgentStatus>) {
        let key = format!("{site}/{name}");
        if let Some(a) = self.agents.lock().expect("registry lock").get_mut(&key) {
            a.last_seen = Some(Timestamp::now());
            if let Some(s) = status {
                a.software = Some(s.software.clone());
                a.status = Some(s);
            }
        }
    }

    pub fn snapshot(&self) -> HashMap<String, AgentLive> {
        self.agents.lock().expect("registry lock").clone()
    }

    /// Closes every connection whose certificate serial is in `revoked`; returns how many.
    pub fn disconnect_revoked(&self, revoked: &[String]) -> usize {
        let conns = self.connections.lock().expect("registry lock");
        let mut n = 0;
        for (serial, conn) in conns.values() {
            if revoked.iter().any(|r| r == serial) {
                conn.close(3u32.into(), b"certificate revoked");
                n += 1;
            }
        }
        n
    }
}
