//! The custom-script input through a real agent to a real aggregator: every good line of the
//! script's output is stored once, bad lines are counted, and the script's failures never stop
//! the agent.

use std::time::Duration;

use weir_tests::{Agent, Aggregator, Env, agent_metric, eventually};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn script_output_lines_are_stored_and_bad_lines_counted() {
    let env = Env::new();
    let agg = Aggregator::start(&env.aggregator_config("agg", 0, 0)).await;
    let tls = env.issue_agent("site-a", "agent-1");
    let script = env.path().join("probe.sh");
    std::fs::write(
        &script,
        r#"#!/bin/sh
# Interval mode: each run reports the run number (a file counts them) plus one bad line.
n=$(cat runs 2>/dev/null || echo 0); n=$((n+1)); echo $n > runs
echo "{\"source\":\"probe\",\"hostname\":\"db-1\",\"severity\":\"error\",\"event_type\":\"probe_run\",\"message\":\"run $n\",\"tags\":{\"resource\":\"run-$n\"}}"
echo "this is not json"
"#,
    )
    .unwrap();
    let mut perm = std::fs::metadata(&script).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
    std::fs::set_permissions(&script, perm).unwrap();
    let mut text = env.agent_config_text("agent", &agg.quic_addr.to_string(), &tls, 0);
    text.push_str(&format!(
        "\n[[script]]\nname = \"probe\"\ncommand = [\"{}\"]\nmode = \"interval\"\ninterval = \"200ms\"\ntimeout = \"5s\"\n",
        script.display()
    ));
    let agent = Agent::start(&env.write("agent.toml", &text)).await;

    eventually(Duration::from_secs(20), "three script runs stored", || {
        agg.len() >= 3
    })
    .await;
    let events = agg.events();
    for (i, e) in events.iter().take(3).enumerate() {
        assert_eq!(e.event.input, weir_common::InputKind::Script);
        assert_eq!(e.event.source, "probe");
        assert_eq!(
            e.event.tags.get("script").map(String::as_str),
            Some("probe")
        );
        assert_eq!(
            e.event.message,
            format!("run {}", i + 1),
            "in order, once each"
        );
    }
    // The agent's metrics count the bad lines.
    let bad = r#"weir_agent_dropped_total{reason="script_invalid_line"}"#;
    assert!(agent_metric(&agent, bad).await >= 1.0, "{bad} not counted");
    agent.stop().await;
    agg.stop().await;
}
