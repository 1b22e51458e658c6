//! The five-level severity scale every Weir component uses (seed 002), its ordering, and the
//! mapping from syslog priorities and the many spellings operators and devices use.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Event severity, ordered so that a more severe value compares greater:
/// `Debug < Info < Warning < Error < Critical`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(
    feature = "openapi",
    derive(utoipa::ToSchema),
    schema(rename_all = "lowercase")
)]
pub enum Severity {
    Debug,
    Info,
    Warning,
    Error,
    Critical,
}

/// Canonical names, most severe first; error messages list these.
pub const SEVERITY_NAMES: [&str; 5] = ["critical", "error", "warning", "info", "debug"];

/// The aliases [`Severity::from_str`] accepts besides the canonical names.
pub const SEVERITY_ALIASES: &str = "emerg, emergency, alert, crit, fatal (critical); err, major (error); \
warn, minor (warning); notice, normal, informational, information (info)";

impl Severity {
    /// All values, least severe first.
    pub const ALL: [Severity; 5] = [
        Severity::Debug,
        Severity::Info,
        Severity::Warning,
        Severity::Error,
        Severity::Critical,
    ];

    /// The canonical lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Critical => "critical",
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Info => "info",
            Severity::Debug => "debug",
        }
    }

    /// Seed 002's level number: 1 Critical … 5 Debug.
    pub fn level(self) -> u8 {
        match self {
            Severity::Critical => 1,
            Severity::Error => 2,
            Severity::Warning => 3,
            Severity::Info => 4,
            Severity::Debug => 5,
        }
    }

    /// Rank for compact storage: 0 = debug … 4 = critical (the `Ord` order).
    pub fn rank(self) -> u8 {
        self as u8
    }

    /// Inverse of [`Severity::rank`].
    pub fn from_rank(rank: u8) -> Option<Severity> {
        Severity::ALL.get(rank as usize).copied()
    }

    /// Syslog severity (the low three bits of PRI) to Weir severity, exactly as seed 002's table:
    /// 0–2 critical, 3 error, 4 warning, 5–6 info, 7 debug.
    pub fn from_syslog(severity: u8) -> Severity {
        match severity {
            0..=2 => Severity::Critical,
            3 => Severity::Error,
            4 => Severity::Warning,
            5 | 6 => Severity::Info,
            _ => Severity::Debug,
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A severity string that is neither a canonical name nor a known alias.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown severity {value:?}: expected one of critical, error, warning, info, debug \
     (case-insensitive; aliases: {aliases})",
    aliases = SEVERITY_ALIASES
)]
pub struct ParseSeverityError {
    pub value: String,
}

impl FromStr for Severity {
    type Err = ParseSeverityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.trim().to_ascii_lowercase();
        Ok(match lower.as_str() {
            "critical" | "crit" | "emerg" | "emergency" | "alert" | "fatal" => Severity::Critical,
            "error" | "err" | "major" => Severity::Error,
            "warning" | "warn" | "minor" => Severity::Warning,
            "info" | "informational" | "information" | "notice" | "normal" => Severity::Info,
            "debug" => Severity::Debug,
            _ => {
                return Err(ParseSeverityError {
                    value: s.to_string(),
                });
            }
        })
    }
}

// Human-readable formats (JSON, TOML) carry the name; compact formats (postcard) one byte.
impl Serialize for Severity {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.serialize_str(self.as_str())
        } else {
            serializer.serialize_u8(self.rank())
        }
    }
}

impl<'de> Deserialize<'de> for Severity {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if deserializer.is_human_readable() {
            let s = String::deserialize(deserializer)?;
            s.parse().map_err(serde::de::Error::custom)
        } else {
            let rank = u8::deserialize(deserializer)?;
            Severity::from_rank(rank).ok_or_else(|| {
                serde::de::Error::custom(format_args!("invalid severity rank {rank}"))
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_is_by_seriousness() {
        assert!(Severity::Critical > Severity::Error);
        assert!(Severity::Error > Severity::Warning);
        assert!(Severity::Warning > Severity::Info);
        assert!(Severity::Info > Severity::Debug);
        let mut all = Severity::ALL.to_vec();
        all.reverse();
        all.sort();
        assert_eq!(all, Severity::ALL.to_vec());
    }

    #[test]
    fn parses_names_and_aliases_case_insensitively() {
        for (s, want) in [
            ("CRITICAL", Severity::Critical),
            ("emerg", Severity::Critical),
            ("Alert", Severity::Critical),
            ("crit", Severity::Critical),
            ("err", Severity::Error),
            ("MAJOR", Severity::Error),
            ("warn", Severity::Warning),
            ("Minor", Severity::Warning),
            ("notice", Severity::Info),
            ("normal", Severity::Info),
            ("informational", Severity::Info),
            (" info ", Severity::Info),
            ("Debug", Severity::Debug),
        ] {
            assert_eq!(s.parse::<Severity>().unwrap(), want, "{s}");
        }
    }

    #[test]
    fn unknown_severity_lists_accepted_values() {
        let err = "sever".parse::<Severity>().unwrap_err().to_string();
        assert!(err.contains("\"sever\""), "{err}");
        for name in SEVERITY_NAMES {
            assert!(err.contains(name), "{err} lacks {name}");
        }
        assert!(err.contains("emerg"), "{err}");
    }

    #[test]
    fn syslog_mapping_matches_seed_002() {
        let want = [
            Severity::Critical,
            Severity::Critical,
            Severity::Critical,
            Severity::Error,
            Severity::Warning,
            Severity::Info,
            Severity::Info,
            Severity::Debug,
        ];
        for (pri, want) in want.iter().enumerate() {
            assert_eq!(
                Severity::from_syslog(pri as u8),
                *want,
                "syslog severity {pri}"
            );
        }
    }

    #[test]
    fn serde_forms() {
        assert_eq!(
            serde_json::to_string(&Severity::Warning).unwrap(),
            "\"warning\""
        );
        assert_eq!(
            serde_json::from_str::<Severity>("\"WARN\"").unwrap(),
            Severity::Warning
        );
        assert!(serde_json::from_str::<Severity>("\"bogus\"").is_err());
        let bytes = postcard::to_allocvec(&Severity::Critical).unwrap();
        assert_eq!(bytes, vec![4]);
        assert_eq!(
            postcard::from_bytes::<Severity>(&bytes).unwrap(),
            Severity::Critical
        );
        assert!(postcard::from_bytes::<Severity>(&[9]).is_err());
    }
}
