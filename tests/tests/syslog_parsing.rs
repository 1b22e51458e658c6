//! Syslog parsing through the real agent: a datagram on loopback UDP, parsed with the
//! configured per-sender time zone and the vendor chain, arrives at the aggregator with its
//! device time, tag and fields.

use std::time::Duration;

use weir_tests::{Agent, Aggregator, Env, edit, eventually, free_tcp_port, free_udp_port};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sender_zone_and_vendor_fields_reach_the_aggregator() {
    let env = Env::new();
    let agg_cfg = env.aggregator_config("agg", free_udp_port(), free_tcp_port());
    let agg = Aggregator::start(&agg_cfg).await;
    let tls = env.issue_agent("site1", "agent1");
    let text = env.agent_config_text("agent1", &agg.quic_addr.to_string(), &tls, 0);
    // Loopback senders are in Berlin; everything else would be New York.
    let text = edit(
        &text,
        "default_timezone = \"UTC\"",
        "default_timezone = \"America/New_York\"\n\
         [[syslog.timezones]]\n\
         sources = [\"127.0.0.0/8\"]\n\
         tz = \"Europe/Berlin\"",
    );
    let cfg = env.write("agent1.toml", &text);
    let agent = Agent::start(&cfg).await;
    let to = agent.running().udp_addrs[0];

    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    // A Cisco line with the year and no zone word: device time in the sender's zone (CEST).
    sock.send_to(
        b"<187>000042: core-sw-01: Jun 30 2025 10:00:00.250: %LINK-3-UPDOWN: Interface Gi0/1, changed state to down",
        to,
    )
    .unwrap();

    eventually(Duration::from_secs(20), "the event is stored", || {
        !agg.events().is_empty()
    })
    .await;
    let stored = agg.events();
    let ev = &stored[0].event;
    assert_eq!(ev.hostname, "core-sw-01");
    assert_eq!(ev.tag.as_deref(), Some("CISCO_LINK_UPDOWN"));
    assert_eq!(ev.severity, weir_common::Severity::Error);
    assert_eq!(ev.tags["cisco.sequence"], "000042");
    assert_eq!(ev.tags["facility"], "local7");
    assert_eq!(
        ev.event_time,
        "2025-06-30T08:00:00.25Z"
            .parse::<jiff::Timestamp>()
            .unwrap()
    );
    agent.stop().await;
    agg.stop().await;
}
