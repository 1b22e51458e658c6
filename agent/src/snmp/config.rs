//! The `[snmp]` section of the agent's config, its checks, and the resolution of password
//! files into the [`UserSpec`]s the receiver uses.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use weir_common::config::{ByteSize, resolve};

use super::{Auth, Priv, UserSpec};

/// SNMP trap and Inform receiver.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnmpConfig {
    /// UDP listen addresses (e.g. `0.0.0.0:162`); empty turns the SNMP input off.
    #[serde(default)]
    pub listen: Vec<SocketAddr>,
    /// SNMPv1/v2c community strings accepted; a trap with any other community is dropped
    /// (counted, reason `community_not_allowed`). An empty list accepts no v1/v2c traps at all
    /// (v3 only): there is no "accept any" setting, because a community is the only check
    /// v1/v2c has.
    #[serde(default = "d_communities")]
    pub communities: Vec<String>,
    /// SNMPv3 USM users (traps and Informs).
    #[serde(default)]
    pub users: Vec<SnmpUserConfig>,
    /// This receiver's SNMPv3 engine ID in hex (5 to 32 bytes), which v3 Informs are
    /// localized to. Default: generated once and kept in `data_dir/snmp-engine.json` with
    /// the engine boot counter.
    #[serde(default)]
    pub engine_id: Option<String>,
    /// Kernel receive buffer asked for on each socket: room for bursts while the queue commits.
    /// What overflows it is counted in `weir_agent_snmp_udp_socket_drops_total`.
    #[serde(default = "d_rcvbuf")]
    pub receive_buffer: ByteSize,
}

/// One SNMPv3 USM user.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnmpUserConfig {
    /// USM user name (1 to 32 bytes).
    pub name: String,
    /// Authentication protocol: none, md5, sha (SHA-1), sha224, sha256, sha384, sha512.
    #[serde(default)]
    pub auth: Auth,
    /// Authentication password (at least 8 characters); or use `auth_password_file`.
    #[serde(default)]
    pub auth_password: Option<String>,
    /// File holding the authentication password (first line), so the config holds no secret.
    #[serde(default)]
    pub auth_password_file: Option<PathBuf>,
    /// Privacy protocol: none, des, aes (AES-128), aes192, aes256 (Blumenthal key extension,
    /// net-snmp's AES192/AES256), aes192c, aes256c (Cisco/Reeder key extension).
    #[serde(default)]
    pub privacy: Priv,
    /// Privacy password (at least 8 characters); or use `privacy_password_file`.
    #[serde(default)]
    pub privacy_password: Option<String>,
    /// File holding the privacy password (first line).
    #[serde(default)]
    pub privacy_password_file: Option<PathBuf>,
    /// Sender engine IDs (hex) this user is accepted from, for traps; empty accepts the user
    /// from any sender engine (keys are localized to each sender's engine ID as it appears).
    #[serde(default)]
    pub engine_ids: Vec<String>,
}

fn d_communities() -> Vec<String> {
    vec!["public".into()]
}
fn d_rcvbuf() -> ByteSize {
    ByteSize(8 << 20)
}

impl Default for SnmpConfig {
    fn default() -> Self {
        SnmpConfig {
            listen: Vec::new(),
            communities: d_communities(),
            users: Vec::new(),
            engine_id: None,
            receive_buffer: d_rcvbuf(),
        }
    }
}

impl SnmpConfig {
    /// Resolves password file paths against the config file's directory.
    pub fn resolve_paths(&mut self, config_file: &Path) {
        for u in &mut self.users {
            if let Some(p) = &u.auth_password_file {
                u.auth_password_file = Some(resolve(config_file, p));
            }
            if let Some(p) = &u.privacy_password_file {
                u.privacy_password_file = Some(resolve(config_file, p));
            }
        }
    }

    /// Checks the section; the error is `(field, message)`. Reads password files.
    pub fn check(&self) -> Result<(), (String, String)> {
        let mut seen = std::collections::HashSet::new();
        for a in &self.listen {
            if !seen.insert(*a) {
                return Err(("snmp.listen".into(), format!("{a} is listed twice")));
            }
        }
        if let Some(e) = &self.engine_id {
            parse_engine_id(e).map_err(|m| ("snmp.engine_id".into(), m))?;
        }
        if let Some(problem) = weir_common::net::receive_buffer_problem(self.receive_buffer.0) {
            return Err(("snmp.receive_buffer".into(), problem.into()));
        }
        let mut names = std::collections::HashSet::new();
        for (i, _) in self.users.iter().enumerate() {
            let spec = self.user_spec(i)?;
            if !names.insert(spec.name.clone()) {
                return Err((
                    format!("snmp.users[{i}].name"),
                    format!("user {:?} is listed twice", spec.name),
                ));
            }
        }
        Ok(())
    }

    /// Every user, passwords read and checked.
    pub fn user_specs(&self) -> Result<Vec<UserSpec>, (String, String)> {
        (0..self.users.len()).map(|i| self.user_spec(i)).collect()
    }

    fn user_spec(&self, i: usize) -> Result<UserSpec, (String, String)> {
        let u = &self.users[i];
        let field = |f: &str| format!("snmp.users[{i}].{f}");
        if u.name.is_empty() || u.name.len() > 32 {
            return Err((field("name"), "must be 1 to 32 bytes".into()));
        }
        let auth_password = password(
            u.auth != Auth::None,
            &u.auth_password,
            &u.auth_password_file,
            &field("auth_password"),
            "auth",
        )?;
        if u.privacy != Priv::None && u.auth == Auth::None {
            return Err((
                field("privacy"),
                "privacy needs authentication: set auth too (SNMPv3 has no privacy without it)"
                    .into(),
            ));
        }
        let priv_password = password(
            u.privacy != Priv::None,
            &u.privacy_password,
            &u.privacy_password_file,
            &field("privacy_password"),
            "privacy",
        )?;
        let mut engine_ids = Vec::new();
        for e in &u.engine_ids {
            engine_ids.push(parse_engine_id(e).map_err(|m| (field("engine_ids"), m))?);
        }
        Ok(UserSpec {
            name: u.name.clone(),
            auth: u.auth,
            auth_password,
            privacy: u.privacy,
            priv_password,
            engine_ids,
        })
    }
}

fn password(
    needed: bool,
    inline: &Option<String>,
    file: &Option<PathBuf>,
    field: &str,
    what: &str,
) -> Result<String, (String, String)> {
    let pw = match (inline, file) {
        (Some(_), Some(_)) => {
            return Err((
                field.into(),
                format!("set {what}_password or {what}_password_file, not both"),
            ));
        }
        (Some(p), None) => p.clone(),
        (None, Some(path)) => std::fs::read_to_string(path)
            .map_err(|e| {
                (
                    format!("{field}_file"),
                    format!("cannot read {}: {e}", path.display()),
                )
            })?
            .lines()
            .next()
            .unwrap_or("")
            .to_string(),
        (None, None) if needed => {
            return Err((
                field.into(),
                format!(
                    "the {what} protocol needs a password ({what}_password or {what}_password_file)"
                ),
            ));
        }
        (None, None) => return Ok(String::new()),
    };
    if !needed {
        return Err((
            field.into(),
            format!("a password is set but the {what} protocol is none"),
        ));
    }
    // RFC 3414 11.2: passwords shorter than 8 characters are refused (net-snmp does too).
    if pw.chars().count() < 8 {
        return Err((
            field.into(),
            "must be at least 8 characters (RFC 3414)".into(),
        ));
    }
    Ok(pw)
}

/// Parses a hex engine ID (`0x` prefix and `:` separators allowed), 5 to 32 bytes.
pub fn parse_engine_id(s: &str) -> Result<Vec<u8>, String> {
    let h: String = s
        .trim()
        .trim_start_matches("0x")
        .trim_start_matches("0X")
        .chars()
        .filter(|c| *c != ':')
        .collect();
    if !h.len().is_multiple_of(2) || !h.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(format!(
            "{s:?} is not hex (e.g. 0x80001f8804776569722d6167656e74)"
        ));
    }
    let b: Vec<u8> = (0..h.len())
        .step_by(2)
        .filter_map(|i| u8::from_str_radix(&h[i..i + 2], 16).ok())
        .collect();
    if !(5..=32).contains(&b.len()) {
        return Err(format!(
            "{s:?} is {} bytes; an engine ID has 5 to 32",
            b.len()
        ));
    }
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(toml_text: &str) -> Result<Vec<UserSpec>, (String, String)> {
        let c: SnmpConfig = toml::from_str(toml_text).unwrap();
        c.check()?;
        c.user_specs()
    }

    #[test]
    fn users_are_checked_and_errors_name_the_field() {
        let ok = user(
            "[[users]]\nname = \"u\"\nauth = \"sha256\"\nauth_password = \"12345678\"\nprivacy = \"aes\"\nprivacy_password = \"abcdefgh\"\nengine_ids = [\"0x8000000001020304\"]\n",
        )
        .unwrap();
        assert_eq!(ok[0].engine_ids[0], vec![0x80, 0, 0, 0, 1, 2, 3, 4]);
        let e = user("[[users]]\nname = \"u\"\nauth = \"md5\"\nauth_password = \"short\"\n")
            .unwrap_err();
        assert_eq!(e.0, "snmp.users[0].auth_password");
        let e =
            user("[[users]]\nname = \"u\"\nprivacy = \"des\"\nprivacy_password = \"12345678\"\n")
                .unwrap_err();
        assert_eq!(e.0, "snmp.users[0].privacy");
        let e = user("[[users]]\nname = \"u\"\nauth = \"sha\"\n").unwrap_err();
        assert!(e.1.contains("needs a password"), "{e:?}");
        let e = user("[[users]]\nname = \"u\"\nauth = \"sha\"\nauth_password = \"12345678\"\n[[users]]\nname = \"u\"\n").unwrap_err();
        assert_eq!(e.0, "snmp.users[1].name");
        let e = user("engine_id = \"0x0102\"\n").unwrap_err();
        assert_eq!(e.0, "snmp.engine_id");
        for size in ["1KiB", "2GiB"] {
            let e = user(&format!("receive_buffer = \"{size}\"\n")).unwrap_err();
            assert_eq!(e.0, "snmp.receive_buffer", "{size}");
        }
        assert!(
            toml::from_str::<SnmpConfig>("[[users]]\nname = \"u\"\nauth = \"sha1024\"\n").is_err()
        );
    }

    #[test]
    fn password_file_is_read() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pw"), "secret-pass\n").unwrap();
        let mut c: SnmpConfig = toml::from_str(
            "[[users]]\nname = \"u\"\nauth = \"sha\"\nauth_password_file = \"pw\"\n",
        )
        .unwrap();
        c.resolve_paths(&dir.path().join("agent.toml"));
        assert_eq!(c.user_specs().unwrap()[0].auth_password, "secret-pass");
    }
}
