//! First-stage dedup reaches the alarms: a real agent merges repeated syslog lines into one
//! event plus count updates, and the alarm that event raised counts every line sent.

use std::time::Duration;

use serde_json::Value;
use tokio::io::AsyncWriteExt as _;
use weir_tests::{API_KEY, Agent, Aggregator, Env, eventually, http_client};

/// Retags the repeated line LINK_DOWN: the built-in `*_DOWN` definition then raises alarm
/// `LINK_DOWN:<site>:<hostname>` from it.
const TRANSFORMS: &str = r#"
[[transform]]
name = "link-down"
message = "Interface Gi0/1 down"
set_tag = "LINK_DOWN"
"#;

async fn alarms(api: &str) -> Value {
    let resp = http_client()
        .get(format!("{api}/api/v1/alarms?tag=LINK_DOWN"))
        .header("x-api-key", API_KEY)
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
    resp.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alarm_counts_every_line_the_agent_deduplicated() {
    let env = Env::new();
    let transforms = env.write("transforms.toml", TRANSFORMS);
    let text = env.aggregator_config_text("agg", 0, 0).replacen(
        "# transforms = \"transforms.toml\"",
        &format!("transforms = \"{}\"", transforms.display()),
        1,
    );
    assert!(
        text.contains("transforms = \"/"),
        "the example config changed"
    );
    let agg = Aggregator::start(&env.write("agg.toml", &text)).await;
    let tls = env.issue_agent("site-a", "agent-1");
    let agent = Agent::start(&env.agent_config("agent", &agg.quic_addr.to_string(), &tls, 0)).await;
    let api = format!("http://{}", agg.api_addr);

    // Two rounds over TCP (lossless), the second after the first has reached the alarm: its
    // repeats arrive only as count updates for the event already stored.
    let mut sent = 0u64;
    for (round, n) in [(1, 300u64), (2, 200)] {
        let mut stream = tokio::net::TcpStream::connect(agent.running().tcp_addrs[0])
            .await
            .unwrap();
        let mut text = String::new();
        for _ in 0..n {
            text.push_str("<187>Nov 21 10:00:00 core-sw-01 link: Interface Gi0/1 down\n");
        }
        stream.write_all(text.as_bytes()).await.unwrap();
        stream.shutdown().await.unwrap();
        sent += n;
        eventually(
            Duration::from_secs(30),
            &format!("round {round}: the stored event counts {sent}"),
            || {
                let events = agg.events();
                events.len() == 1 && events[0].event.count == sent
            },
        )
        .await;
    }
    // The event and its alarm are updated in one transaction: no waiting for the alarm.
    let page = alarms(&api).await;
    assert_eq!(page["total"], 1, "{page}");
    let alarm = &page["alarms"][0];
    assert_eq!(
        alarm["reduction_key"], "LINK_DOWN:site-a:core-sw-01",
        "{alarm}"
    );
    assert_eq!(alarm["count"], sent, "the alarm counts every line: {alarm}");
    assert_eq!(alarm["status"], "open");
    let event = &agg.events()[0];
    assert_eq!(
        event.event.tags.get("weir.alarm").map(String::as_str),
        Some("LINK_DOWN:site-a:core-sw-01"),
        "the event names the alarm it raised"
    );
    agent.stop().await;
    agg.stop().await;
}
