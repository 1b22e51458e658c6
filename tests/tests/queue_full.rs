//! A full agent queue drops the least severe, oldest records first, counts every drop, and
//! reports the drops to the aggregator (as `WEIR_QUEUE_DROPS` events and in the agent status).

use std::collections::BTreeMap;
use std::time::Duration;

use weir_aggregator::store::StoredEvent;
use weir_tests::{
    Agent, Aggregator, Env, api_agents, edit, event_json, eventually, eventually_async,
    free_udp_port, http_client, post_events,
};

const SEVERITIES: [&str; 4] = ["debug", "info", "warning", "error"];
const PER_SEVERITY: usize = 30;
const MAX_RECORDS: usize = 50;

fn message(sev: &str, i: usize) -> String {
    format!("{sev}-{i:02}")
}

/// The policy of `agent/src/queue.rs`, replayed: a record that does not fit evicts the oldest
/// record of the lowest severity present if that severity is not above its own, else it is
/// dropped itself. Returns the survivors in queue order and the drops by reason.
fn model() -> (Vec<String>, BTreeMap<String, u64>) {
    let mut queue: Vec<(usize, String)> = Vec::new();
    let mut drops = BTreeMap::new();
    for (rank, sev) in SEVERITIES.iter().enumerate() {
        for i in 0..PER_SEVERITY {
            if queue.len() == MAX_RECORDS {
                let lowest = queue.iter().map(|(r, _)| *r).min().unwrap();
                if lowest <= rank {
                    let at = queue.iter().position(|(r, _)| *r == lowest).unwrap();
                    queue.remove(at);
                    *drops
                        .entry(format!("queue_full_{}", SEVERITIES[lowest]))
                        .or_insert(0) += 1;
                } else {
                    *drops.entry(format!("queue_full_{sev}")).or_insert(0) += 1;
                    continue;
                }
            }
            queue.push((rank, message(sev, i)));
        }
    }
    (queue.into_iter().map(|(_, m)| m).collect(), drops)
}

fn drop_reports(events: &[StoredEvent]) -> Vec<&StoredEvent> {
    events
        .iter()
        .filter(|e| e.event.tag.as_deref() == Some("WEIR_QUEUE_DROPS"))
        .collect()
}

fn summed_tags(reports: &[&StoredEvent]) -> BTreeMap<String, u64> {
    let mut sum = BTreeMap::new();
    for r in reports {
        for (k, v) in &r.event.tags {
            *sum.entry(k.clone()).or_insert(0) += v
                .parse::<u64>()
                .unwrap_or_else(|_| panic!("drop count {k}={v:?}"));
        }
    }
    sum
}

/// An agent with `max_records = 50` whose aggregator (at the returned port) is not running,
/// after 30 debug, 30 info, 30 warning and 30 error events were posted, in that order.
async fn full_agent(env: &Env) -> (Agent, u16) {
    let quic_port = free_udp_port(); // nothing listens there yet
    let text = env.agent_config_text(
        "agent",
        &format!("127.0.0.1:{quic_port}"),
        &env.issue_agent("site-a", "agent-1"),
        0,
    );
    let text = edit(
        &text,
        "max_records = 20000000",
        &format!("max_records = {MAX_RECORDS}"),
    );
    let text = edit(&text, "max_bytes = \"2GiB\"", "max_bytes = \"1MiB\"");
    let agent = Agent::start(&env.write("agent.toml", &text)).await;
    let client = http_client();
    for sev in SEVERITIES {
        let events: Vec<_> = (0..PER_SEVERITY)
            .map(|i| event_json(&message(sev, i), sev))
            .collect();
        // 202 with some of them dropped: `post_events` reports that as an error.
        let e = post_events(&client, agent.http_addr, &events).await;
        assert!(
            e.is_ok()
                || e.as_ref()
                    .unwrap_err()
                    .to_string()
                    .contains("agent accepted"),
            "{e:?}"
        );
    }
    (agent, quic_port)
}

fn expected() -> (Vec<String>, BTreeMap<String, u64>) {
    let (survivors, drops) = model();
    // The expectation, spelled out: 20 warnings (10..29) and 30 errors survive; 30 debug,
    // 30 info and 10 warnings are dropped.
    assert_eq!(survivors.len(), MAX_RECORDS);
    assert_eq!(survivors[0], "warning-10");
    assert_eq!(survivors[20], "error-00");
    assert_eq!(
        drops,
        BTreeMap::from([
            ("queue_full_debug".into(), 30),
            ("queue_full_info".into(), 30),
            ("queue_full_warning".into(), 10)
        ])
    );
    (survivors, drops)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_keeps_the_most_severe_and_reports_drops() {
    let (survivors, expected_drops) = expected();
    let env = Env::new();
    let (agent, quic_port) = full_agent(&env).await;
    assert_eq!(
        agent.queued_messages(),
        survivors,
        "queue content right after the POSTs"
    );
    assert_eq!(
        agent.queue_stats().drops,
        expected_drops,
        "queue drop counters right after the POSTs"
    );

    let agg = Aggregator::start(&env.aggregator_config("agg", quic_port, 0)).await;
    eventually(
        Duration::from_secs(30),
        "queue drained and every drop reported",
        || {
            agent.queued() == 0
                && summed_tags(&drop_reports(&agg.events())) == agent.queue_stats().drops
        },
    )
    .await;

    // Drop reports never evict (they may exceed the limit briefly), so the drops are exactly
    // the model's and the aggregator stored exactly the survivors, in order.
    let drops = agent.queue_stats().drops;
    assert_eq!(drops, expected_drops, "only the POSTs caused drops");

    let events = agg.events();
    let stored: Vec<String> = events
        .iter()
        .filter(|e| e.event.tag.as_deref() != Some("WEIR_QUEUE_DROPS"))
        .map(|e| e.event.message.clone())
        .collect();
    assert_eq!(
        stored, survivors,
        "the aggregator stored exactly the survivors, in order"
    );

    // The operator sees the same drops in GET /api/v1/agents (from the agent's status).
    let client = reqwest::Client::new();
    eventually_async(
        Duration::from_secs(10),
        "drops shown by GET /api/v1/agents",
        || {
            let client = client.clone();
            let want = expected_drops.clone();
            async move {
                match api_agents(&client, agg.api_addr).await {
                    Ok(list) => {
                        list.len() == 1
                            && list[0].drops == want
                            && list[0].backlog_records == Some(0)
                    }
                    Err(_) => false,
                }
            }
        },
    )
    .await;
    agg.stop().await;
}

/// Regression test for the drop-report feedback loop: with the queue full, no new input and
/// the aggregator down, every drop report (severity error) evicts one queued record to fit, and
/// that eviction is reported by the next report, which evicts another: one real event lost per
/// `drop_report_interval`, forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_full_queue_drops_nothing_more() {
    let (survivors, expected_drops) = expected();
    let env = Env::new();
    let (agent, _) = full_agent(&env).await;
    assert_eq!(agent.queue_stats().drops, expected_drops);
    // Three and a half drop-report intervals with no input and the aggregator down.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert_eq!(
        agent.queue_stats().drops,
        expected_drops,
        "drops while idle"
    );
    let real: Vec<String> = agent
        .queued_messages()
        .into_iter()
        .filter(|m| !m.starts_with("agent queue full"))
        .collect();
    assert_eq!(real, survivors, "no queued event was evicted while idle");
    agent.stop().await;
}
