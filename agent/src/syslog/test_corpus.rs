//! The walk over `shared/corpora/syslog` that the parsers' corpus tests share: text files line by
//! line (bytes as they are, UTF-8 or not), JSON Lines also by their `input` field, extracted
//! datagrams (`.bin`) whole.

use std::path::Path;

/// What a walk went through.
pub(super) struct Walked {
    pub files: usize,
    pub inputs: usize,
}

/// Calls `check(path, n, i, input)` for every input of every corpus file, where `n` counts the
/// inputs before this one (over all files) and `i` those before it in its file. `None` when the
/// corpus is absent (a panic instead when `CI=true`, so CI cannot skip it silently).
pub(super) fn walk(mut check: impl FnMut(&Path, usize, usize, &[u8])) -> Option<Walked> {
    let root = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/corpora/syslog"
    ));
    if !root.is_dir() {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("corpus {} is missing (CI=true)", root.display());
        }
        println!("SKIP: corpus {} is absent", root.display());
        return None;
    }
    let mut walked = Walked {
        files: 0,
        inputs: 0,
    };
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let bytes = std::fs::read(&path).unwrap();
            walked.files += 1;
            let mut inputs: Vec<Vec<u8>> = Vec::new();
            if path.extension().is_some_and(|e| e == "bin") {
                inputs.push(bytes);
            } else {
                for line in bytes.split(|&b| b == b'\n') {
                    if path.extension().is_some_and(|e| e == "jsonl")
                        && let Ok(v) = serde_json::from_slice::<serde_json::Value>(line)
                        && let Some(input) = v["input"].as_str()
                    {
                        inputs.push(input.as_bytes().to_vec());
                    }
                    inputs.push(line.to_vec());
                }
            }
            for (i, input) in inputs.iter().enumerate() {
                check(&path, walked.inputs, i, input);
                walked.inputs += 1;
            }
        }
    }
    Some(walked)
}
