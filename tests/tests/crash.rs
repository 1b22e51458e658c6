//! Crashes: `kill -9` of the agent or of the aggregator at random moments while events flow.
//! Every event whose POST was answered 202 is stored exactly once; no event is ever stored twice.

use std::collections::HashMap;
use std::time::Duration;

use rand::Rng;
use weir_tests::{
    Agent, Aggregator, Env, Proc, Sender, SenderLog, api_agents, assert_no_duplicates,
    assert_seq_increasing, eventually, eventually_async, free_tcp_port, free_udp_port, healthy,
    http_client, read_store, token_counts,
};

const ROUNDS: usize = 5;
const BATCH: u64 = 100;

fn random_ms(lo: u64, hi: u64) -> Duration {
    Duration::from_millis(rand::rng().random_range(lo..=hi))
}

/// Checks the stored events against what the sender was told.
fn check(events: &[weir_aggregator::store::StoredEvent], log: &SenderLog) {
    assert_no_duplicates(events);
    assert_seq_increasing(events);
    let counts = token_counts(events);
    let missing: Vec<u64> = log
        .accepted
        .iter()
        .copied()
        .filter(|t| !counts.contains_key(t))
        .collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged (202) tokens were not stored, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    let accepted: std::collections::HashSet<u64> = log.accepted.iter().copied().collect();
    let failed: std::collections::HashSet<u64> = log.failed.iter().copied().collect();
    let unknown: Vec<u64> = counts
        .keys()
        .copied()
        .filter(|t| !accepted.contains(t) && !failed.contains(t))
        .collect();
    assert!(
        unknown.is_empty(),
        "stored tokens that were never sent: {unknown:?}"
    );
    let extra = counts.len() - accepted.len();
    eprintln!(
        "{} POSTs ok, {} failed; {} tokens acknowledged, all stored once; {extra} of {} tokens from failed POSTs stored once",
        log.posts_ok,
        log.posts_failed,
        accepted.len(),
        failed.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_killed_repeatedly_loses_and_duplicates_nothing() {
    let env = Env::new();
    let agg = Aggregator::start(&env.aggregator_config("agg", 0, 0)).await;
    let tls = env.issue_agent("site-a", "agent-crash");
    let http_port = free_tcp_port();
    let config = env.agent_config("agent", &agg.quic_addr.to_string(), &tls, http_port);
    let http: std::net::SocketAddr = format!("127.0.0.1:{http_port}").parse().unwrap();

    let mut agent = Proc::agent(&config, http, env.path()).await;

    let sender = Sender::start(http, BATCH, 0, Duration::from_millis(10));
    for round in 0..ROUNDS {
        tokio::time::sleep(random_ms(200, 1500)).await;
        agent.kill9();
        eprintln!(
            "round {round}: killed the agent, {} events stored so far",
            agg.len()
        );
        tokio::time::sleep(random_ms(0, 200)).await;
        agent.start();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let log = sender.stop().await;
    assert!(
        log.accepted.len() as u64 >= 10 * BATCH,
        "the sender got too few events in ({}): the test proves little",
        log.accepted.len()
    );

    // Drain: every acknowledged token arrives, and then the store stops changing.
    let want: Vec<u64> = log.accepted.clone();
    eventually(
        Duration::from_secs(60),
        "every acknowledged token stored",
        || {
            if agg.len() < want.len() as u64 {
                return false;
            }
            let counts = token_counts(&agg.events());
            want.iter().all(|t| counts.contains_key(t))
        },
    )
    .await;
    let mut last = agg.len();
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let now = agg.len();
        if now == last {
            break;
        }
        last = now;
    }
    let status = agent.terminate(Duration::from_secs(20));
    assert!(
        status.success(),
        "agent exits cleanly on SIGTERM: {status}\n{}",
        agent.stderr()
    );
    check(&agg.events(), &log);
    agg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregator_killed_repeatedly_loses_and_duplicates_nothing() {
    let env = Env::new();
    let (quic_port, api_port) = (free_udp_port(), free_tcp_port());
    let agg_config = env.aggregator_config("agg", quic_port, api_port);
    let api: std::net::SocketAddr = format!("127.0.0.1:{api_port}").parse().unwrap();
    let client = http_client();
    let mut agg = Proc::spawn(
        "weir-aggregator",
        [std::ffi::OsStr::new("--config"), agg_config.as_os_str()],
        "weir-aggregator",
        env.path(),
    );
    eventually_async(Duration::from_secs(20), "aggregator API up", || {
        healthy(&client, api)
    })
    .await;

    let tls = env.issue_agent("site-a", "agent-1");
    // A 3 s idle timeout (instead of 5 s): each round waits for the agent to notice the dead
    // session.
    let text = env.agent_config_text("agent", &format!("127.0.0.1:{quic_port}"), &tls, 0);
    let text = weir_tests::edit(&text, "idle_timeout = \"5s\"", "idle_timeout = \"3s\"");
    let agent = Agent::start(&env.write("agent.toml", &text)).await;
    eventually(Duration::from_secs(10), "agent connected", || {
        agent.connected()
    })
    .await;

    // ~2k events/s: each round takes several seconds (idle timeout, store recovery), and the
    // backlog must drain at the end.
    let sender = Sender::start(agent.http_addr, BATCH, 0, Duration::from_millis(50));
    for round in 0..ROUNDS {
        // Kill while a session is live and batches are flowing.
        tokio::time::sleep(random_ms(200, 1500)).await;
        agg.kill9();
        eprintln!(
            "round {round}: killed the aggregator, agent queue holds {}",
            agent.queued()
        );
        tokio::time::sleep(random_ms(0, 300)).await;
        agg.start();
        // The agent notices the dead session within its idle timeout, then connects to the
        // new process (whose registry starts empty).
        eventually_async(
            Duration::from_secs(20),
            "the agent connected to the restarted aggregator",
            || async {
                api_agents(&client, api)
                    .await
                    .is_ok_and(|list| list.iter().any(|a| a.connected))
            },
        )
        .await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let log = sender.stop().await;
    assert_eq!(
        log.posts_failed, 0,
        "the agent stayed up: every POST succeeds"
    );
    assert!(
        log.accepted.len() as u64 >= 10 * BATCH,
        "the sender got too few events in ({})",
        log.accepted.len()
    );

    eventually(
        Duration::from_secs(60),
        "the agent's queue drained (everything acknowledged)",
        || agent.queued() == 0,
    )
    .await;
    agent.stop().await;
    let status = agg.terminate(Duration::from_secs(20));
    assert!(
        status.success(),
        "aggregator exits cleanly on SIGTERM: {status}\n{}",
        agg.stderr()
    );

    let events = read_store(&env.aggregator_store("agg"));
    check(&events, &log);
    let counts: HashMap<u64, usize> = token_counts(&events);
    assert_eq!(
        counts.len(),
        log.accepted.len(),
        "exactly the sent tokens are stored"
    );
}
