//! Config errors from the real binaries: a typo'd key stops the agent with a message naming the
//! file, the line and the field; `check-config` accepts good files.

use std::process::Command;
use std::time::Duration;

use weir_tests::{Env, Proc, binary, edit};

#[test]
fn typo_in_agent_config_names_file_line_and_field() {
    let env = Env::new();
    let tls = env.issue_agent("site-a", "agent-1");
    let good = env.agent_config_text("agent", "127.0.0.1:4433", &tls, 0);
    let bad = edit(
        &good,
        "batch_max_records = 2000",
        "batch_max_recrods = 2000",
    );
    let path = env.write("agent-typo.toml", &bad);
    let line = bad
        .lines()
        .position(|l| l.starts_with("batch_max_recrods"))
        .unwrap()
        + 1;

    // Running with it: exits (does not start), non-zero, and says where and what.
    let mut p = Proc::spawn(
        "weir-agent",
        [std::ffi::OsStr::new("--config"), path.as_os_str()],
        "agent-typo",
        env.path(),
    );
    let status = p
        .wait_timeout(Duration::from_secs(20))
        .expect("the agent exits on a bad config");
    assert!(!status.success(), "exit status {status}");
    let stderr = p.stderr();
    let want = format!("{}:{line}:", path.display());
    assert!(stderr.contains(&want), "stderr names {want}: {stderr}");
    assert!(
        stderr.contains("batch_max_recrods"),
        "stderr names the field: {stderr}"
    );

    // check-config says the same.
    let out = Command::new(binary("weir-agent"))
        .arg("check-config")
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&want) && stderr.contains("batch_max_recrods"),
        "{stderr}"
    );
}

#[test]
fn check_config_accepts_good_files() {
    let env = Env::new();
    let tls = env.issue_agent("site-a", "agent-1");
    let agent = env.agent_config("agent", "127.0.0.1:4433", &tls, 0);
    let aggregator = env.aggregator_config("agg", 4433, 8083);
    for (bin, file) in [("weir-agent", &agent), ("weir-aggregator", &aggregator)] {
        let out = Command::new(binary(bin))
            .arg("check-config")
            .arg(file)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{bin} check-config: {}\n{stdout}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The aggregator adds what it loaded: "OK (N transformation rules, ...)".
        assert!(
            stdout
                .trim()
                .starts_with(&format!("{}: OK", file.display())),
            "{bin} check-config output: {stdout}"
        );
    }
}
