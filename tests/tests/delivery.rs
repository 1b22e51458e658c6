//! Happy path at volume: 100k unique events through one agent are stored exactly once, in the
//! order they were sent.

use std::time::{Duration, Instant};

use weir_tests::{
    Agent, Aggregator, Env, assert_seq_increasing, http_client, parse_token, post_events,
    token_events,
};

const TOTAL: u64 = 100_000;
const BULK: u64 = 1_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hundred_thousand_events_stored_once_in_order() {
    let env = Env::new();
    let agg = Aggregator::start(&env.aggregator_config("agg", 0, 0)).await;
    let tls = env.issue_agent("site-a", "agent-1");
    let agent = Agent::start(&env.agent_config("agent", &agg.quic_addr.to_string(), &tls, 0)).await;

    let client = http_client();
    let started = Instant::now();
    // Sequential bulk POSTs: each returns only once its events are committed, so the order in
    // which tokens were sent is well defined.
    for first in (0..TOTAL).step_by(BULK as usize) {
        post_events(&client, agent.http_addr, &token_events(first..first + BULK))
            .await
            .expect("bulk POST");
    }
    eprintln!("posted {TOTAL} events in {:?}", started.elapsed());

    weir_tests::eventually(
        Duration::from_secs(90),
        "every event stored and acknowledged",
        || agg.len() >= TOTAL && agent.queued() == 0,
    )
    .await;
    eprintln!(
        "stored {TOTAL} events {:?} after the first POST",
        started.elapsed()
    );

    let events = agg.events();
    assert_eq!(events.len() as u64, TOTAL, "stored event count");
    // Store order = send order: the n-th stored event carries token n.
    for (i, e) in events.iter().enumerate() {
        assert_eq!(
            parse_token(&e.event.message),
            Some(i as u64),
            "event #{i} in store order: {:?}",
            e.event.message
        );
        assert_eq!((e.site.as_str(), e.agent.as_str()), ("site-a", "agent-1"));
    }
    assert_seq_increasing(&events);
    let agents = agg.store().agents().expect("agents");
    assert_eq!(agents.len(), 1);
    assert_eq!(agents[0].committed_seq, events.last().unwrap().seq);

    agent.stop().await;
    agg.stop().await;
}
