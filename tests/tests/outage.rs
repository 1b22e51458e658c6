//! Outages: events committed while the aggregator is unreachable wait in the agent's queue and
//! are delivered exactly once when it is back, whether the link drops (a relay that drops every
//! datagram) or the aggregator itself stops and restarts.

use std::time::Duration;

use weir_tests::{
    Agent, Aggregator, Env, Relay, agent_reports_connected, assert_no_duplicates,
    assert_seq_increasing, eventually, free_udp_port, http_client, parse_token, post_events,
    read_store, token_events,
};

/// Asserts the store holds exactly tokens `0..n`, each once, in token order.
fn assert_exactly(events: &[weir_aggregator::store::StoredEvent], n: u64) {
    assert_no_duplicates(events);
    assert_seq_increasing(events);
    let tokens: Vec<u64> = events
        .iter()
        .filter_map(|e| parse_token(&e.event.message))
        .collect();
    assert_eq!(
        tokens.len(),
        events.len(),
        "every stored event is a test event"
    );
    assert_eq!(
        tokens,
        (0..n).collect::<Vec<_>>(),
        "tokens 0..{n}, each once, in send order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_outage_queues_then_delivers_everything_once() {
    let env = Env::new();
    let agg = Aggregator::start(&env.aggregator_config("agg", 0, 0)).await;
    let relay = Relay::start(agg.quic_addr).await;
    let tls = env.issue_agent("site-a", "agent-1");
    let agent = Agent::start(&env.agent_config("agent", &relay.addr.to_string(), &tls, 0)).await;
    let client = http_client();

    for first in (0..5_000).step_by(1_000) {
        post_events(
            &client,
            agent.http_addr,
            &token_events(first..first + 1_000),
        )
        .await
        .unwrap();
    }
    eventually(
        Duration::from_secs(30),
        "first 5k stored and acknowledged",
        || agg.len() == 5_000 && agent.queued() == 0,
    )
    .await;
    assert!(
        agent_reports_connected(&client, agent.http_addr)
            .await
            .unwrap()
    );

    relay.set_blocked(true);
    // 5k more over ~2.5 s while the link is down.
    for first in (5_000..10_000).step_by(500) {
        post_events(&client, agent.http_addr, &token_events(first..first + 500))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // The agent notices within its idle timeout (5 s) and says so.
    eventually(
        Duration::from_secs(15),
        "the agent reports the link down",
        || !agent.connected(),
    )
    .await;
    assert!(
        !agent_reports_connected(&client, agent.http_addr)
            .await
            .unwrap(),
        "/healthz says not connected"
    );
    assert_eq!(
        agent.queued(),
        5_000,
        "everything sent during the outage is queued"
    );
    assert_eq!(agg.len(), 5_000, "nothing arrived during the outage");
    assert!(
        relay
            .stats
            .dropped
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
    );

    relay.set_blocked(false);
    eventually(
        Duration::from_secs(30),
        "all 10k stored after the link is back",
        || agg.len() >= 10_000 && agent.queued() == 0,
    )
    .await;
    assert!(agent.connected());
    assert_exactly(&agg.events(), 10_000);

    agent.stop().await;
    agg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregator_restart_loses_and_duplicates_nothing() {
    let env = Env::new();
    let port = free_udp_port();
    let agg_config = env.aggregator_config("agg", port, 0);
    let agg = Aggregator::start(&agg_config).await;
    let tls = env.issue_agent("site-a", "agent-1");
    let agent = Agent::start(&env.agent_config("agent", &agg.quic_addr.to_string(), &tls, 0)).await;
    let client = http_client();
    eventually(Duration::from_secs(10), "agent connected", || {
        agent.connected()
    })
    .await;

    for first in (0..5_000).step_by(1_000) {
        post_events(
            &client,
            agent.http_addr,
            &token_events(first..first + 1_000),
        )
        .await
        .unwrap();
    }
    // Stop at once, while batches may still be in flight or unacknowledged.
    agg.stop().await;
    let stored_before = read_store(&env.aggregator_store("agg"));
    assert_no_duplicates(&stored_before);
    let n1 = stored_before.len() as u64;
    eprintln!("{n1} of 5000 stored when the aggregator stopped");

    for first in (5_000..10_000).step_by(1_000) {
        post_events(
            &client,
            agent.http_addr,
            &token_events(first..first + 1_000),
        )
        .await
        .unwrap();
    }
    eventually(
        Duration::from_secs(15),
        "the agent notices the aggregator is gone",
        || !agent.connected(),
    )
    .await;
    // Everything not stored is queued (stored but unacknowledged records may be queued too).
    let queued = agent.queued();
    assert!(
        queued >= 10_000 - n1 && queued <= 10_000,
        "queued {queued}, stored {n1}"
    );

    // Same port, same data dir.
    let agg = Aggregator::start(&agg_config).await;
    assert_eq!(agg.quic_addr.port(), port);
    eventually(
        Duration::from_secs(30),
        "all 10k stored after the restart",
        || agg.len() >= 10_000 && agent.queued() == 0,
    )
    .await;
    assert_exactly(&agg.events(), 10_000);

    agent.stop().await;
    agg.stop().await;
}
