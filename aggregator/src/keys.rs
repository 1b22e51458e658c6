//! Scoped API keys: the keys file, the `keys` CLI's operations and the [`Keyring`] the running
//! API checks requests against.
//!
//! # The keys file
//! `data_dir/api-keys.json` (mode 0600): `{"keys": [{id, name, scopes, sha256, created,
//! revoked}]}`. It is a file of its own, not a redb table, because the aggregator keeps the
//! store open while `weir-aggregator keys ...` edits keys, and redb allows one process per file.
//! Every change is written to a temporary file, fsynced and renamed over the old one, under an
//! advisory lock (`api-keys.json.lock`) so the CLI and the admin API never lose each other's
//! edits. The running aggregator notices a changed file (size, mtime or inode) on the next
//! request and reloads it: no restart.
//!
//! # Why a plain SHA-256
//! Keys are generated here (32 random bytes), never chosen by people, so they cannot be
//! guessed from a dictionary: a fast unsalted hash is as strong as a password hash for them,
//! and keeps each check to one hash. Only the digest is stored; the secret is printed once.
//!
//! # Bootstrap keys
//! Keys in `api.api_key_file` (plain text, one per line) hold every scope: they are the
//! bootstrap/admin keys the quickstart and tests use.

use std::collections::BTreeSet;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, RwLock};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The keys file's name inside `data_dir`.
pub const KEYS_FILE: &str = "api-keys.json";
/// Secrets start with this, so a leaked one is easy to recognize (and to search for).
pub const SECRET_PREFIX: &str = "weir_";

/// What a key may do.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Post events (`POST /api/v1/events`, the Alertmanager webhook).
    Ingest,
    /// Read events, agents, sites, incidents.
    Read,
    /// Act on incidents and alarms.
    Operate,
    /// Manage rules and keys.
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 4] = [Scope::Ingest, Scope::Read, Scope::Operate, Scope::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Ingest => "ingest",
            Scope::Read => "read",
            Scope::Operate => "operate",
            Scope::Admin => "admin",
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Scope {
    type Err = String;
    fn from_str(s: &str) -> Result<Scope, String> {
        Scope::ALL
            .into_iter()
            .find(|sc| sc.as_str() == s.trim())
            .ok_or_else(|| format!("unknown scope {s:?}: expected ingest, read, operate or admin"))
    }
}

/// Parses a comma-separated scope list such as `read,ingest`.
pub fn parse_scopes(s: &str) -> Result<BTreeSet<Scope>, String> {
    let scopes: BTreeSet<Scope> = s
        .split(',')
        .filter(|p| !p.trim().is_empty())
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    if scopes.is_empty() {
        return Err("no scope given: list one or more of ingest, read, operate, admin".into());
    }
    Ok(scopes)
}

/// A set of scopes, cheap to copy and test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ScopeSet(u8);

impl ScopeSet {
    pub fn all() -> ScopeSet {
        ScopeSet(Scope::ALL.iter().fold(0, |a, s| a | s.bit()))
    }
    pub fn contains(self, s: Scope) -> bool {
        self.0 & s.bit() != 0
    }
    pub fn iter(self) -> impl Iterator<Item = Scope> {
        Scope::ALL.into_iter().filter(move |s| self.contains(*s))
    }
}

impl<'a> FromIterator<&'a Scope> for ScopeSet {
    fn from_iter<I: IntoIterator<Item = &'a Scope>>(it: I) -> ScopeSet {
        ScopeSet(it.into_iter().fold(0, |a, s| a | s.bit()))
    }
}

impl fmt::Display for ScopeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.iter().map(Scope::as_str).collect();
        f.write_str(&names.join(","))
    }
}

/// One key as the keys file holds it (never the secret).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRecord {
    /// Stable identifier (`k_` + 12 hex digits), used to revoke and to rate-limit.
    pub id: String,
    /// The operator's name for it (unique among keys not revoked).
    pub name: String,
    pub scopes: BTreeSet<Scope>,
    /// Hex SHA-256 of the secret.
    pub sha256: String,
    pub created: Timestamp,
    /// When it was revoked; a revoked key is answered 401 but kept, so its id is not reused.
    #[serde(default)]
    pub revoked: Option<Timestamp>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    keys: Vec<KeyRecord>,
}

#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    #[error("keys file {path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("keys file {path} is not valid (fix or restore it): {error}")]
    Parse { path: PathBuf, error: String },
    #[error("{0}")]
    Invalid(String),
    #[error("no key with id or name {0:?} (see `weir-aggregator keys list`)")]
    NotFound(String),
}

/// The keys file for a data directory.
pub fn keys_path(data_dir: &Path) -> PathBuf {
    data_dir.join(KEYS_FILE)
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> KeysError + '_ {
    move |error| KeysError::Io {
        path: path.to_path_buf(),
        error,
    }
}

/// Reads the keys file; a missing file holds no keys.
pub fn read_keys(path: &Path) -> Result<Vec<KeyRecord>, KeysError> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(path)(e)),
    };
    let file: KeyFile = serde_json::from_slice(&text).map_err(|e| KeysError::Parse {
        path: path.to_path_buf(),
        error: e.to_string(),
    })?;
    Ok(file.keys)
}

fn write_keys(path: &Path, keys: &[KeyRecord]) -> Result<(), KeysError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut body = serde_json::to_vec_pretty(&serde_json::json!({ "keys": keys }))
        .map_err(|e| KeysError::Invalid(e.to_string()))?;
    body.push(b'\n');
    let tmp = path.with_extension("json.tmp");
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(&tmp).map_err(io_err(&tmp))?;
    f.write_all(&body).map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io_err(path))?;
    // The rename itself is durable only once the directory is synced.
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))?;
    Ok(())
}

/// Runs a read-modify-write of the keys file under its advisory lock.
fn edit<T>(
    path: &Path,
    f: impl FnOnce(&mut Vec<KeyRecord>) -> Result<T, KeysError>,
) -> Result<T, KeysError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    }
    let lock_path = path.with_extension("json.lock");
    let lock = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .map_err(io_err(&lock_path))?;
    lock.lock().map_err(io_err(&lock_path))?;
    let mut keys = read_keys(path)?;
    let out = f(&mut keys)?;
    write_keys(path, &keys)?;
    Ok(out)
}

fn digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Creates a key; returns its record and the secret (shown once, never stored).
pub fn create_key(
    path: &Path,
    name: &str,
    scopes: BTreeSet<Scope>,
    now: Timestamp,
) -> Result<(KeyRecord, String), KeysError> {
    let name = name.trim();
    if name.is_empty() || name.len() > 100 || name.chars().any(char::is_control) {
        return Err(KeysError::Invalid(
            "key name must be 1 to 100 printable characters".into(),
        ));
    }
    if scopes.is_empty() {
        return Err(KeysError::Invalid(
            "a key needs at least one scope: ingest, read, operate or admin".into(),
        ));
    }
    edit(path, |keys| {
        if keys.iter().any(|k| k.revoked.is_none() && k.name == name) {
            return Err(KeysError::Invalid(format!(
                "a key named {name:?} exists; revoke it first or pick another name"
            )));
        }
        let secret = format!("{SECRET_PREFIX}{}", hex::encode(rand::random::<[u8; 32]>()));
        let rec = KeyRecord {
            id: format!("k_{}", hex::encode(rand::random::<[u8; 6]>())),
            name: name.to_string(),
            scopes,
            sha256: hex::encode(digest(&secret)),
            created: now,
            revoked: None,
        };
        keys.push(rec.clone());
        Ok((rec, secret))
    })
}

/// Revokes the key with this id (or, failing that, the live key with this name).
pub fn revoke_key(path: &Path, id_or_name: &str, now: Timestamp) -> Result<KeyRecord, KeysError> {
    edit(path, |keys| {
        let i = keys
            .iter()
            .position(|k| k.id == id_or_name)
            .or_else(|| {
                keys.iter()
                    .position(|k| k.revoked.is_none() && k.name == id_or_name)
            })
            .ok_or_else(|| KeysError::NotFound(id_or_name.to_string()))?;
        if keys[i].revoked.is_none() {
            keys[i].revoked = Some(now);
        }
        Ok(keys[i].clone())
    })
}

/// Who a request's key belongs to and what it may do.
#[derive(Debug, Clone)]
pub struct Principal {
    pub id: Arc<str>,
    pub name: Arc<str>,
    pub scopes: ScopeSet,
}

/// Why a request was not authenticated (all answered 401).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing API key: send X-API-Key or Authorization: Bearer")]
    Missing,
    #[error("unknown API key")]
    Unknown,
    #[error("API key revoked")]
    Revoked,
}

impl AuthError {
    /// The metric `reason` label.
    pub fn reason(self) -> &'static str {
        match self {
            AuthError::Missing => "missing_key",
            AuthError::Unknown => "unknown_key",
            AuthError::Revoked => "revoked_key",
        }
    }
}

#[derive(Debug)]
struct Entry {
    digest: [u8; 32],
    principal: Principal,
    revoked: bool,
}

/// The size, mtime and inode of the keys file: any change means reload.
type Stamp = Option<(u64, std::time::SystemTime, u64)>;

fn stamp(path: &Path) -> Stamp {
    let m = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    let ino = std::os::unix::fs::MetadataExt::ino(&m);
    #[cfg(not(unix))]
    let ino = 0;
    Some((m.len(), m.modified().ok()?, ino))
}

#[derive(Debug, Default)]
struct Loaded {
    stamp: Stamp,
    keys: Vec<Entry>,
}

/// The keys the API accepts: bootstrap keys plus the keys file, reloaded when it changes.
#[derive(Debug)]
pub struct Keyring {
    bootstrap: Vec<Entry>,
    path: Option<PathBuf>,
    loaded: RwLock<Loaded>,
}

impl Keyring {
    /// `bootstrap_lines` is the text of `api.api_key_file`; `path` the keys file (if any).
    pub fn new(bootstrap_lines: &str, path: Option<PathBuf>) -> Keyring {
        let bootstrap = bootstrap_lines
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .enumerate()
            .map(|(i, k)| Entry {
                digest: digest(k),
                principal: Principal {
                    id: format!("bootstrap-{}", i + 1).into(),
                    name: "api_key_file".into(),
                    scopes: ScopeSet::all(),
                },
                revoked: false,
            })
            .collect();
        let ring = Keyring {
            bootstrap,
            path,
            loaded: RwLock::default(),
        };
        ring.refresh();
        ring
    }

    /// The keys file this keyring watches.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Reloads the keys file if it changed since the last load. A file that does not parse is
    /// logged and the keys loaded before stay in force.
    fn refresh(&self) {
        let Some(path) = &self.path else { return };
        let now = stamp(path);
        if self.loaded.read().expect("keyring lock").stamp == now {
            return;
        }
        let keys = match read_keys(path) {
            Ok(k) => k,
            Err(e) => {
                weir_common::warn_limited!("api_keys_reload", error = %e, "cannot reload API keys; the keys loaded before stay in force");
                return;
            }
        };
        let mut entries = Vec::with_capacity(keys.len());
        for k in keys {
            let mut d = [0u8; 32];
            if hex::decode_to_slice(&k.sha256, &mut d).is_err() {
                weir_common::warn_limited!("api_keys_bad_digest", id = %k.id, "API key record has a malformed sha256; it is ignored");
                continue;
            }
            entries.push(Entry {
                digest: d,
                principal: Principal {
                    id: k.id.into(),
                    name: k.name.into(),
                    scopes: k.scopes.iter().collect(),
                },
                revoked: k.revoked.is_some(),
            });
        }
        tracing::info!(path = %path.display(), keys = entries.len(), "API keys loaded");
        *self.loaded.write().expect("keyring lock") = Loaded {
            stamp: now,
            keys: entries,
        };
    }

    /// Checks a presented secret (constant-time against every known digest).
    pub fn authenticate(&self, secret: Option<&str>) -> Result<Principal, AuthError> {
        let secret = secret.ok_or(AuthError::Missing)?;
        self.refresh();
        let d = digest(secret);
        let loaded = self.loaded.read().expect("keyring lock");
        let mut found: Option<&Entry> = None;
        // Every digest is compared, so timing does not say which (or whether one) matched.
        for e in self.bootstrap.iter().chain(loaded.keys.iter()) {
            if bool::from(e.digest.ct_eq(&d)) {
                found = Some(e);
            }
        }
        match found {
            None => Err(AuthError::Unknown),
            Some(e) if e.revoked => Err(AuthError::Revoked),
            Some(e) => Ok(e.principal.clone()),
        }
    }
}

/// Finds the key in `X-API-Key` or `Authorization: Bearer` header values.
pub fn extract<'a>(x_api_key: Option<&'a str>, authorization: Option<&'a str>) -> Option<&'a str> {
    weir_common::ingest::ApiKeys::extract(x_api_key, authorization)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_use_revoke_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = keys_path(dir.path());
        let ring = Keyring::new("boot-key\n", Some(path.clone()));
        let now = Timestamp::now();
        let (rec, secret) =
            create_key(&path, "grafana", parse_scopes("read,ingest").unwrap(), now).unwrap();
        assert!(secret.starts_with(SECRET_PREFIX) && secret.len() == 5 + 64);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains(&secret), "the secret is never stored");
        let p = ring.authenticate(Some(&secret)).unwrap();
        assert_eq!(&*p.id, rec.id);
        assert!(p.scopes.contains(Scope::Read) && p.scopes.contains(Scope::Ingest));
        assert!(!p.scopes.contains(Scope::Admin));
        let boot = ring.authenticate(Some("boot-key")).unwrap();
        assert_eq!(boot.scopes, ScopeSet::all());
        assert_eq!(ring.authenticate(None).unwrap_err(), AuthError::Missing);
        assert_eq!(
            ring.authenticate(Some("weir_nope")).unwrap_err(),
            AuthError::Unknown
        );
        // Same name twice is refused; revoke by name.
        assert!(create_key(&path, "grafana", parse_scopes("read").unwrap(), now).is_err());
        let r = revoke_key(&path, "grafana", now).unwrap();
        assert_eq!(r.id, rec.id);
        assert_eq!(
            ring.authenticate(Some(&secret)).unwrap_err(),
            AuthError::Revoked
        );
        assert!(matches!(
            revoke_key(&path, "nobody", now),
            Err(KeysError::NotFound(_))
        ));
        // The name is free again, and the old key stays revoked.
        let (_, s2) = create_key(&path, "grafana", parse_scopes("read").unwrap(), now).unwrap();
        assert!(ring.authenticate(Some(&s2)).is_ok());
        assert_eq!(read_keys(&path).unwrap().len(), 2);
    }

    #[test]
    fn scopes_parse_and_bad_files_keep_old_keys() {
        assert!(parse_scopes("read,bogus").unwrap_err().contains("bogus"));
        assert!(parse_scopes("").is_err());
        assert_eq!(parse_scopes("admin, read").unwrap().len(), 2);
        let dir = tempfile::tempdir().unwrap();
        let path = keys_path(dir.path());
        let (_, secret) =
            create_key(&path, "a", parse_scopes("read").unwrap(), Timestamp::now()).unwrap();
        let ring = Keyring::new("", Some(path.clone()));
        assert!(ring.authenticate(Some(&secret)).is_ok());
        std::fs::write(&path, "{ not json").unwrap();
        assert!(
            ring.authenticate(Some(&secret)).is_ok(),
            "a broken file does not lock everyone out"
        );
        assert!(matches!(read_keys(&path), Err(KeysError::Parse { .. })));
    }
}
