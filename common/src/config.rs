//! Helpers every Weir config file uses: loading TOML with errors that name the file, line,
//! column and field; human-friendly durations (`"30s"`, `"5m"`, `"250ms"`) and byte sizes
//! (`"512MiB"`, `"2GB"`, or a plain integer of bytes).

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A config file that could not be read or understood.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {error}")]
    Read {
        path: PathBuf,
        /// Kept in the message, not as a `source`, so a printed chain says it once.
        error: std::io::Error,
    },
    /// A syntax, type, unknown-field or value error, with its location.
    #[error("{path}:{line}:{column}: {message}")]
    Invalid {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    /// A semantic check after parsing (e.g. two listeners on one port).
    #[error("{path}: {field}: {message}")]
    Check {
        path: PathBuf,
        field: String,
        message: String,
    },
}

/// Reads and parses a TOML config file into `T` (whose structs should use
/// `#[serde(deny_unknown_fields)]` so that typos are errors, not silently ignored keys).
pub fn load_toml<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
        path: path.to_path_buf(),
        error,
    })?;
    parse_toml(path, &text)
}

/// Parses TOML text that came from `path` (used for error messages only).
pub fn parse_toml<T: DeserializeOwned>(path: &Path, text: &str) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|e: toml::de::Error| {
        let (line, column) = match e.span() {
            Some(span) => line_col(text, span.start),
            None => (1, 1),
        };
        ConfigError::Invalid {
            path: path.to_path_buf(),
            line,
            column,
            message: e.message().trim().to_string(),
        }
    })
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// Resolves `p` against the directory of the config file, so configs can use relative paths.
pub fn resolve(config_path: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        config_path
            .parent()
            .unwrap_or_else(|| Path::new("."))
            .join(p)
    }
}

/// A duration written as `"250ms"`, `"30s"`, `"5m"`, `"2h"`, `"1d"` or combinations (`"1m30s"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    pub const fn secs(s: u64) -> HumanDuration {
        HumanDuration(Duration::from_secs(s))
    }
    pub const fn millis(ms: u64) -> HumanDuration {
        HumanDuration(Duration::from_millis(ms))
    }
}

impl FromStr for HumanDuration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "invalid duration {s:?}: write a number and a unit, e.g. \"250ms\", \"30s\", \"5m\", \"2h\", \"1d\""
            )
        };
        let mut rest = s.trim();
        if rest.is_empty() {
            return Err(bad());
        }
        let mut total = Duration::ZERO;
        while !rest.is_empty() {
            let digits = rest
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len());
            if digits == 0 {
                return Err(bad());
            }
            let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
            rest = &rest[digits..];
            let unit_len = rest
                .find(|c: char| c.is_ascii_digit())
                .unwrap_or(rest.len());
            let unit = rest[..unit_len].trim();
            rest = &rest[unit_len..];
            let part = match unit {
                "ms" => Duration::from_millis(n),
                "s" => Duration::from_secs(n),
                "m" => Duration::from_secs(n.saturating_mul(60)),
                "h" => Duration::from_secs(n.saturating_mul(3600)),
                "d" => Duration::from_secs(n.saturating_mul(86400)),
                _ => return Err(bad()),
            };
            total = total.saturating_add(part);
        }
        Ok(HumanDuration(total))
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if !ms.is_multiple_of(1000) {
            write!(f, "{ms}ms")
        } else {
            write!(f, "{}s", ms / 1000)
        }
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A byte size written as an integer or a string with a unit: `"64KiB"`, `"512MiB"`, `"1GiB"`,
/// `"10MB"` (powers of 1000 for kB/MB/GB, of 1024 for KiB/MiB/GiB).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let bad = || {
            format!(
                "invalid size {s:?}: write bytes or a number with a unit, e.g. \"64KiB\", \"512MiB\", \"2GiB\""
            )
        };
        if digits == 0 {
            return Err(bad());
        }
        let n: u64 = t[..digits].parse().map_err(|_| bad())?;
        let mult: u64 = match t[digits..].trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "kb" | "k" => 1000,
            "kib" => 1 << 10,
            "mb" | "m" => 1000 * 1000,
            "mib" => 1 << 20,
            "gb" | "g" => 1000 * 1000 * 1000,
            "gib" => 1 << 30,
            "tb" => 1000u64.pow(4),
            "tib" => 1 << 40,
            _ => return Err(bad()),
        };
        n.checked_mul(mult).map(ByteSize).ok_or_else(bad)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(ByteSize(n)),
            Raw::S(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Sample {
        section: Section,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Section {
        timeout: HumanDuration,
        size: ByteSize,
        severity: crate::Severity,
    }

    fn err(text: &str) -> String {
        parse_toml::<Sample>(Path::new("/etc/weir/x.toml"), text)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn good_config_parses() {
        let s: Sample = parse_toml(
            Path::new("x.toml"),
            "[section]\ntimeout = \"1m30s\"\nsize = \"2MiB\"\nseverity = \"WARN\"\n",
        )
        .unwrap();
        assert_eq!(s.section.timeout.0, Duration::from_secs(90));
        assert_eq!(s.section.size.0, 2 << 20);
    }

    #[test]
    fn errors_name_file_line_and_field() {
        let e = err("[section]\ntimeout = \"5s\"\nsize = 10\nseverity = \"loud\"\n");
        assert!(e.starts_with("/etc/weir/x.toml:4:"), "{e}");
        assert!(e.contains("loud") && e.contains("critical"), "{e}");

        let e = err("[section]\ntimeout = \"5 parsecs\"\nsize = 1\nseverity = \"info\"\n");
        assert!(e.starts_with("/etc/weir/x.toml:2:"), "{e}");
        assert!(e.contains("invalid duration"), "{e}");

        let e =
            err("[section]\ntimeout = \"5s\"\nsize = 1\nseverity = \"info\"\ntimout = \"1s\"\n");
        assert!(e.starts_with("/etc/weir/x.toml:5:"), "{e}");
        assert!(e.contains("unknown field `timout`"), "{e}");

        let e = err("[section]\ntimeout = \"5s\"\nseverity = \"info\"\n");
        assert!(e.contains("missing field `size`"), "{e}");
    }

    #[test]
    fn durations_and_sizes() {
        assert_eq!(
            "250ms".parse::<HumanDuration>().unwrap().0,
            Duration::from_millis(250)
        );
        assert_eq!(
            "2h".parse::<HumanDuration>().unwrap().0,
            Duration::from_secs(7200)
        );
        assert!("".parse::<HumanDuration>().is_err());
        assert!("s".parse::<HumanDuration>().is_err());
        assert!("10 fortnights".parse::<HumanDuration>().is_err());
        assert_eq!("64KiB".parse::<ByteSize>().unwrap().0, 65536);
        assert_eq!("1gb".parse::<ByteSize>().unwrap().0, 1_000_000_000);
        assert!("99999999999999TiB".parse::<ByteSize>().is_err());
        assert!("-1".parse::<ByteSize>().is_err());
    }
}
