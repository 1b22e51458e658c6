//! First-stage dedup, end to end: repeats are merged at the agent, and the exact count and
//! last_seen reach the aggregator's stored event, even across an agent `kill -9`.

use std::time::Duration;

use serde_json::json;
use tokio::io::AsyncWriteExt as _;
use weir_tests::{
    Agent, Aggregator, Env, Proc, eventually, free_tcp_port, free_udp_port, http_client,
    post_events, read_store,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syslog_repeats_reach_the_aggregator_as_one_event_with_the_exact_count() {
    let env = Env::new();
    let agg = Aggregator::start(&env.aggregator_config("agg", 0, 0)).await;
    let tls = env.issue_agent("site-a", "agent-1");
    let agent = Agent::start(&env.agent_config("agent", &agg.quic_addr.to_string(), &tls, 0)).await;
    let tcp = agent.running().tcp_addrs[0];

    // 1,000 copies of one line and 10 distinct lines, interleaved, over TCP (lossless).
    let mut stream = tokio::net::TcpStream::connect(tcp).await.unwrap();
    let mut text = String::new();
    for i in 0..1_000 {
        text.push_str("<187>Nov 21 10:00:00 core-sw-01 link: Interface Gi0/1 down\n");
        if i % 100 == 0 {
            text.push_str(&format!(
                "<187>Nov 21 10:00:00 core-sw-01 link: distinct line {i}\n"
            ));
        }
    }
    stream.write_all(text.as_bytes()).await.unwrap();
    stream.shutdown().await.unwrap();

    eventually(
        Duration::from_secs(20),
        "11 events stored, the repeated one with count 1000",
        || {
            let events = agg.events();
            events.len() == 11
                && events
                    .iter()
                    .any(|e| e.event.message.contains("Gi0/1 down") && e.event.count == 1_000)
        },
    )
    .await;
    let events = agg.events();
    let hot = events
        .iter()
        .find(|e| e.event.message.contains("Gi0/1 down"))
        .unwrap();
    assert!(hot.event.last_seen >= hot.event.first_seen);
    for e in events
        .iter()
        .filter(|e| e.event.message.contains("distinct"))
    {
        assert_eq!(e.event.count, 1, "distinct lines are not merged");
    }
    agent.stop().await;
    agg.stop().await;
}

/// Counts are queued durably like events: repeats acknowledged by the agent's HTTP input
/// (202 = committed) survive a `kill -9` of the agent while the aggregator is down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_survive_an_agent_kill_during_an_outage() {
    let env = Env::new();
    let quic_port = free_udp_port();
    let agg_config = env.aggregator_config("agg", quic_port, 0);
    let tls = env.issue_agent("site-a", "agent-kill");
    let http_port = free_tcp_port();
    let http: std::net::SocketAddr = format!("127.0.0.1:{http_port}").parse().unwrap();
    // The aggregator is not running yet: everything waits in the agent's queue.
    let config = env.agent_config("agent", &format!("127.0.0.1:{quic_port}"), &tls, http_port);
    let client = http_client();
    let mut agent = Proc::agent(&config, http, env.path()).await;

    let event = json!({
        "source": "billing",
        "hostname": "app-01",
        "severity": "error",
        "event_type": "db_pool_exhausted",
        "message": "connection pool exhausted",
        "tags": { "resource": "pool-main" },
    });
    // The first occurrence alone, then 20 requests of 10 repeats each (the message changes:
    // structured events merge on source + event_type + resource).
    post_events(&client, http, std::slice::from_ref(&event))
        .await
        .unwrap();
    let mut total = 1;
    for round in 0..20 {
        let batch: Vec<_> = (0..10)
            .map(|i| {
                let mut e = event.clone();
                e["message"] = json!(format!("connection pool exhausted ({round}.{i})"));
                e
            })
            .collect();
        post_events(&client, http, &batch).await.unwrap();
        total += 10;
    }
    // At once after the last 202: no time for a flush tick.
    agent.kill9();
    agent.start();
    weir_tests::wait_healthy(http, "agent HTTP up again").await;

    let agg = Aggregator::start(&agg_config).await;
    eventually(
        Duration::from_secs(30),
        "the event stored with its full count",
        || {
            let events = agg.events();
            events.len() == 1 && events[0].event.count == total
        },
    )
    .await;
    let status = agent.terminate(Duration::from_secs(20));
    assert!(status.success(), "{}", agent.stderr());
    agg.stop().await;
    let stored = read_store(&env.aggregator_store("agg"));
    assert_eq!(stored.len(), 1);
    assert_eq!(
        stored[0].event.count, total,
        "the count is stored, not just shown"
    );
}

/// SNMP's default key is the device and the trap: a flood of one trap from one device is one
/// stored event whose count is exactly the number of traps sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trap_flood_is_one_event_with_the_exact_count() {
    let env = Env::new();
    let agg = Aggregator::start(&env.aggregator_config("agg", 0, 0)).await;
    let tls = env.issue_agent("site-a", "agent-1");
    let agent = Agent::start(&env.agent_config("agent", &agg.quic_addr.to_string(), &tls, 0)).await;
    let target = agent.running().trap_addrs[0].to_string();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_weir-trapgen"))
        .args(["--target", &target, "--version", "v2c", "--rate", "400"])
        .args(["--duration", "1", "--first-seq", "0"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually(
        Duration::from_secs(20),
        "one trap event with count 400",
        || {
            let events = agg.events();
            events.len() == 1 && events[0].event.count == 400
        },
    )
    .await;
    let ev = &agg.events()[0].event;
    assert_eq!(ev.input, weir_common::InputKind::SnmpTrap);
    assert_eq!(
        ev.tags
            .get("vb.1.3.6.1.4.1.8072.2.3.2.1")
            .map(String::as_str),
        Some("string:seq=0"),
        "the stored event is the first occurrence"
    );
    agent.stop().await;
    agg.stop().await;
}
