//! Man pages and shell completions from a binary's clap definition, for the packages
//! (`weir-agent generate-docs DIR` and its siblings; `packaging/build.sh` runs them).

use std::path::Path;

use anyhow::Context;

/// Writes `DIR/man/<name>.1` (plus one page per subcommand, `<name>-<sub>.1`) and
/// `DIR/completions/{<name>.bash,_<name>,<name>.fish}` for `cmd`.
pub fn write(cmd: clap::Command, dir: &Path) -> anyhow::Result<()> {
    let man = dir.join("man");
    let completions = dir.join("completions");
    for d in [&man, &completions] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let mut cmd = cmd;
    cmd.build();
    clap_mangen::generate_to(cmd.clone(), &man)
        .with_context(|| format!("writing man pages to {}", man.display()))?;
    // clap_mangen also writes pages for the built-in `help` subcommand at every level
    // (`weir-certs-issue-help-agent.1`): noise in `man -k`, so drop them.
    for entry in std::fs::read_dir(&man)? {
        let path = entry?.path();
        let stem = path
            .file_stem()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        if stem.split('-').any(|part| part == "help") {
            std::fs::remove_file(&path)?;
        }
    }
    let name = cmd.get_name().to_string();
    for shell in [
        clap_complete::Shell::Bash,
        clap_complete::Shell::Zsh,
        clap_complete::Shell::Fish,
    ] {
        clap_complete::generate_to(shell, &mut cmd, &name, &completions)
            .with_context(|| format!("writing {shell} completions to {}", completions.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn writes_man_pages_and_completions() {
        let dir = tempfile::tempdir().unwrap();
        let cmd = clap::Command::new("demo")
            .about("A demo")
            .subcommand(clap::Command::new("run").about("Runs"));
        super::write(cmd, dir.path()).unwrap();
        let page = std::fs::read_to_string(dir.path().join("man/demo.1")).unwrap();
        assert!(page.contains(".TH demo"), "{page}");
        assert!(dir.path().join("man/demo-run.1").exists());
        assert!(!dir.path().join("man/demo-help.1").exists());
        assert!(dir.path().join("completions/demo.bash").exists());
        assert!(dir.path().join("completions/_demo").exists());
        assert!(dir.path().join("completions/demo.fish").exists());
    }
}
