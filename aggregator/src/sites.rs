//! `GET /api/v1/sites`: each site's agents summed up, from the same data as `/api/v1/agents`.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::api::{AgentView, ApiError, ApiState, agent_views};

/// One site as the API shows it.
#[derive(Debug, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct SiteView {
    pub site: String,
    /// Agents the aggregator knows at this site (stored or connected).
    pub agents: usize,
    pub connected_agents: usize,
    /// At least one agent of the site is connected.
    pub connected: bool,
    /// Latest time any of its agents was seen.
    pub last_seen: Option<Timestamp>,
    /// Events queued at the site's agents, as last reported (connected agents only).
    pub backlog_records: u64,
    pub backlog_bytes: u64,
    /// The oldest queued event's age at any of its agents.
    pub oldest_queued_age_seconds: Option<f64>,
    /// Drops by reason, summed over its agents.
    pub drops: BTreeMap<String, u64>,
    /// The soonest any of its agents' certificates expires.
    pub earliest_cert_not_after: Option<Timestamp>,
}

/// Sums agents per site (agents come sorted by site).
pub fn summarize(agents: &[AgentView]) -> Vec<SiteView> {
    let mut sites: BTreeMap<&str, SiteView> = BTreeMap::new();
    for a in agents {
        let s = sites.entry(&a.site).or_insert_with(|| SiteView {
            site: a.site.clone(),
            agents: 0,
            connected_agents: 0,
            connected: false,
            last_seen: None,
            backlog_records: 0,
            backlog_bytes: 0,
            oldest_queued_age_seconds: None,
            drops: BTreeMap::new(),
            earliest_cert_not_after: None,
        });
        s.agents += 1;
        if a.connected {
            s.connected_agents += 1;
            s.connected = true;
        }
        s.last_seen = s.last_seen.max(a.last_seen);
        s.backlog_records = s
            .backlog_records
            .saturating_add(a.backlog_records.unwrap_or(0));
        s.backlog_bytes = s.backlog_bytes.saturating_add(a.backlog_bytes.unwrap_or(0));
        if let Some(age) = a.oldest_queued_age_seconds {
            s.oldest_queued_age_seconds =
                Some(s.oldest_queued_age_seconds.map_or(age, |m| m.max(age)));
        }
        for (reason, n) in &a.drops {
            let d = s.drops.entry(reason.clone()).or_default();
            *d = d.saturating_add(*n);
        }
        if let Some(t) = a.cert_not_after {
            s.earliest_cert_not_after = Some(s.earliest_cert_not_after.map_or(t, |m| m.min(t)));
        }
    }
    sites.into_values().collect()
}

#[utoipa::path(
    get,
    path = "/api/v1/sites",
    tag = "fleet",
    summary = "Sites: their agents summed up",
    responses(
        (status = 200, description = "Every site, sorted by name", body = Vec<SiteView>)
    )
)]
pub async fn list_sites(State(state): State<ApiState>) -> Result<Json<Vec<SiteView>>, ApiError> {
    let agents = agent_views(&state).await?;
    Ok(Json(summarize(&agents)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(site: &str, connected: bool, backlog: Option<u64>, age: Option<f64>) -> AgentView {
        AgentView {
            site: site.into(),
            name: "a".into(),
            connected,
            last_seen: Some(Timestamp::from_second(if connected { 20 } else { 10 }).unwrap()),
            remote: None,
            software: None,
            last_sequence: 0,
            backlog_records: backlog,
            backlog_bytes: backlog.map(|b| b * 100),
            oldest_queued_age_seconds: age,
            drops: BTreeMap::from([("queue_full".to_string(), 2)]),
            cert_serial: None,
            cert_not_after: connected.then(|| Timestamp::from_second(1000).unwrap()),
            first_seen: None,
        }
    }

    #[test]
    fn sites_sum_their_agents() {
        let sites = summarize(&[
            agent("lyon", false, None, None),
            agent("paris", true, Some(5), Some(3.0)),
            agent("paris", false, Some(7), Some(9.5)),
        ]);
        assert_eq!(sites.len(), 2);
        let lyon = &sites[0];
        assert_eq!(
            (lyon.agents, lyon.connected_agents, lyon.connected),
            (1, 0, false)
        );
        assert_eq!(lyon.oldest_queued_age_seconds, None);
        let paris = &sites[1];
        assert_eq!(paris.site, "paris");
        assert_eq!(
            (paris.agents, paris.connected_agents, paris.connected),
            (2, 1, true)
        );
        assert_eq!(paris.backlog_records, 12);
        assert_eq!(paris.backlog_bytes, 1200);
        assert_eq!(paris.oldest_queued_age_seconds, Some(9.5));
        assert_eq!(paris.drops["queue_full"], 4);
        assert_eq!(paris.last_seen, Some(Timestamp::from_second(20).unwrap()));
        assert_eq!(
            paris.earliest_cert_not_after,
            Some(Timestamp::from_second(1000).unwrap())
        );
    }
}
