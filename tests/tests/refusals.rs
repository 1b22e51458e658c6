//! Refusals: the aggregator stores nothing from a peer without a valid agent certificate (other
//! CA, revoked before or while connected, expired, none at all). The refused agent keeps every
//! event queued and keeps retrying, and delivers everything once it has a valid certificate,
//! without a restart.

use std::time::{Duration, Instant};

use weir_tests::{
    Agent, Aggregator, Env, Relay, eventually, http_client, post_events, raw_event, raw_session,
    tls_with_agent_cert, tls_without_client_cert, token_events,
};

/// The refused agent holds all `n` events, is not connected, the aggregator has stored
/// `stored`, and the agent makes at least two more connection attempts within 4 s.
async fn assert_refused_and_retrying(
    agg: &Aggregator,
    agent: &Agent,
    relay: &Relay,
    n: u64,
    stored: u64,
) {
    let before = relay.connection_attempts();
    eventually(
        Duration::from_secs(6),
        "two more connection attempts",
        || relay.connection_attempts() >= before + 2,
    )
    .await;
    assert!(!agent.connected(), "the agent has no session");
    assert_eq!(agent.queued(), n, "the agent's queue keeps every event");
    assert_eq!(agg.len(), stored, "the aggregator stored nothing new");
}

/// A fleet with a relay in front of the aggregator, and an agent with the certificate in
/// `tls` that has committed 100 events.
async fn refused_fleet(env: &Env, tls: &std::path::Path) -> (Aggregator, Relay, Agent) {
    let agg = Aggregator::start(&env.aggregator_config("agg", 0, 0)).await;
    let relay = Relay::start(agg.quic_addr).await;
    let agent = Agent::start(&env.agent_config("agent", &relay.addr.to_string(), tls, 0)).await;
    post_events(&http_client(), agent.http_addr, &token_events(0..100))
        .await
        .unwrap();
    (agg, relay, agent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_from_another_ca_is_refused_until_replaced() {
    let env = Env::new();
    let other_ca = env.path().join("other-ca");
    weir_certs::init_ca(
        &other_ca,
        &weir_certs::CaOptions {
            common_name: "Rogue CA".into(),
            ..Default::default()
        },
    )
    .unwrap();
    let tls = env.path().join("agent-tls");
    weir_certs::issue_agent(&other_ca, "site-a", "agent-1", &tls, &Default::default()).unwrap();

    let (agg, relay, agent) = refused_fleet(&env, &tls).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_refused_and_retrying(&agg, &agent, &relay, 100, 0).await;

    // A valid certificate, written over the same files: picked up on the next reconnect.
    let opts = weir_certs::IssueOptions {
        force: true,
        ..Default::default()
    };
    weir_certs::issue_agent(&env.ca_dir, "site-a", "agent-1", &tls, &opts).unwrap();
    eventually(
        Duration::from_secs(15),
        "everything delivered with the new certificate",
        || agg.len() == 100 && agent.queued() == 0,
    )
    .await;
    assert!(agent.connected());
    let events = agg.events();
    assert_eq!(weir_tests::token_counts(&events).len(), 100);
    weir_tests::assert_no_duplicates(&events);

    agent.stop().await;
    agg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_before_connecting_is_refused() {
    let env = Env::new();
    let tls = env.issue_agent("site-a", "agent-1");
    env.revoke_agent(&tls);
    let (agg, relay, agent) = refused_fleet(&env, &tls).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_refused_and_retrying(&agg, &agent, &relay, 100, 0).await;
    agent.stop().await;
    agg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_while_connected_is_disconnected_and_refused() {
    let env = Env::new();
    let tls = env.issue_agent("site-a", "agent-1");
    let (agg, relay, agent) = refused_fleet(&env, &tls).await;
    eventually(Duration::from_secs(40), "first 100 delivered", || {
        agg.len() == 100 && agent.queued() == 0
    })
    .await;
    assert!(agent.connected());

    env.revoke_agent(&tls);
    let revoked_at = Instant::now();
    // crl_check_interval is 200 ms: the live session must end within a few seconds (10 s of
    // slack: a loaded 2-core CI machine running every test at once once took more than 3).
    eventually(
        Duration::from_secs(10),
        "the revoked agent's session closed",
        || !agent.connected(),
    )
    .await;
    eprintln!(
        "session closed {:?} after the CRL changed",
        revoked_at.elapsed()
    );

    post_events(&http_client(), agent.http_addr, &token_events(100..200))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_refused_and_retrying(&agg, &agent, &relay, 100, 100).await;
    agent.stop().await;
    agg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_certificate_is_refused() {
    let env = Env::new();
    let now = jiff::Timestamp::now();
    let day = jiff::SignedDuration::from_hours(24);
    let opts = weir_certs::IssueOptions {
        not_before: Some(now - day * 30),
        not_after: Some(now - day),
        ..Default::default()
    };
    let tls = env.issue_agent_with("site-a", "agent-1", &opts);
    let (agg, relay, agent) = refused_fleet(&env, &tls).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_refused_and_retrying(&agg, &agent, &relay, 100, 0).await;
    agent.stop().await;
    agg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_without_certificate_stores_nothing() {
    let env = Env::new();
    let agg = Aggregator::start(&env.aggregator_config("agg", 0, 0)).await;

    // Control: the same hand-written client with a valid agent certificate does store.
    let tls = env.issue_agent("site-a", "agent-1");
    let ok = raw_session(
        agg.quic_addr,
        tls_with_agent_cert(&env.ca_cert, &tls),
        vec![raw_event("control")],
    )
    .await
    .unwrap();
    assert_eq!(
        (ok.identity.as_str(), ok.committed_seq),
        ("site-a/agent-1", 1)
    );
    assert_eq!(agg.len(), 1);

    let refused = raw_session(
        agg.quic_addr,
        tls_without_client_cert(&env.ca_cert),
        vec![raw_event("no-cert-1"), raw_event("no-cert-2")],
    )
    .await;
    let err = refused.expect_err("a client without a certificate must not get a session");
    eprintln!("no-certificate client refused: {err:#}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        agg.len(),
        1,
        "nothing stored from the client without a certificate"
    );
    assert_eq!(agg.events()[0].event.message, "control");
    agg.stop().await;
}

/// `<api.site>/api` is the pseudo-agent of events posted to the aggregator's API, numbered by
/// its store writer: an agent certificate with that identity is refused, or its events and
/// posted ones would share sequences and one side would be dropped as duplicates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_pseudo_agent_identity_is_refused() {
    let env = Env::new();
    let tls = env.issue_agent("central", "api");
    let (agg, relay, agent) = refused_fleet(&env, &tls).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_refused_and_retrying(&agg, &agent, &relay, 100, 0).await;
    agent.stop().await;
    agg.stop().await;
}
