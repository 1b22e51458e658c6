//! Names and what can be read back out of a certificate.
//!
//! An agent's identity is `site/name`. It is written into its certificate three times (subject
//! CN = name, subject OU = site, and a URI SAN `weir://agent/<site>/<name>`), but only the URI SAN
//! is authoritative: [`agent_identity`] reads it and nothing else, so a certificate without it is
//! never mistaken for an agent. Both parts are restricted by [`validate_name`] to characters that
//! cannot contain `/`, so the URI cannot be ambiguous.

use std::fmt;
use std::net::IpAddr;

use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

use crate::CertError;

/// URI SAN prefix that marks an agent certificate.
pub(crate) const AGENT_URI_PREFIX: &str = "weir://agent/";

/// The rule enforced by [`validate_name`], quoted in its errors.
const NAME_RULE: &str =
    "must be 1 to 63 characters of A-Z, a-z, 0-9, '-' or '_', starting with a letter or digit";

/// Who an agent is: the site (gateway location) it runs at and its name within that site.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AgentIdentity {
    pub site: String,
    pub name: String,
}

impl AgentIdentity {
    /// The URI SAN that encodes this identity.
    pub(crate) fn uri(&self) -> String {
        format!("{AGENT_URI_PREFIX}{}/{}", self.site, self.name)
    }

    fn from_uri(uri: &str) -> Option<AgentIdentity> {
        let rest = uri.strip_prefix(AGENT_URI_PREFIX)?;
        let (site, name) = rest.split_once('/')?;
        validate_name("site", site).ok()?;
        validate_name("agent", name).ok()?;
        Some(AgentIdentity {
            site: site.to_owned(),
            name: name.to_owned(),
        })
    }
}

impl fmt::Display for AgentIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.site, self.name)
    }
}

/// Checks a site or agent name: 1..=63 chars of `[A-Za-z0-9_-]`, first char alphanumeric.
///
/// `kind` ("site", "agent") is only used in the error message.
pub fn validate_name(kind: &str, value: &str) -> Result<(), CertError> {
    let ok = (1..=63).contains(&value.len())
        && value.starts_with(|c: char| c.is_ascii_alphanumeric())
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(CertError::InvalidName {
            kind: kind.to_owned(),
            value: value.to_owned(),
            rule: NAME_RULE,
        })
    }
}

pub(crate) fn parse(cert_der: &[u8]) -> Result<X509Certificate<'_>, CertError> {
    let (rest, cert) = x509_parser::parse_x509_certificate(cert_der)
        .map_err(|e| CertError::InvalidCert(format!("not a DER X.509 certificate: {e}")))?;
    if !rest.is_empty() {
        return Err(CertError::InvalidCert(format!(
            "{} trailing bytes after the certificate",
            rest.len()
        )));
    }
    Ok(cert)
}

/// Reads the agent identity from the certificate's `weir://agent/<site>/<name>` URI SAN.
///
/// Errors if there is no such SAN, if there is more than one, or if either part breaks the
/// naming rule. The subject CN/OU are deliberately ignored.
pub fn agent_identity(cert_der: &[u8]) -> Result<AgentIdentity, CertError> {
    let cert = parse(cert_der)?;
    let sans = sans(&cert)?;
    let mut found = None;
    for uri in sans.uris.iter().filter(|u| u.starts_with(AGENT_URI_PREFIX)) {
        let id = AgentIdentity::from_uri(uri)
            .ok_or_else(|| CertError::NotAgent(format!("malformed agent URI SAN {uri:?}")))?;
        if found.replace(id).is_some() {
            return Err(CertError::NotAgent(
                "more than one agent URI SAN".to_owned(),
            ));
        }
    }
    found.ok_or_else(|| {
        CertError::NotAgent(format!(
            "subject {:?} has no agent URI SAN",
            cert.subject().to_string()
        ))
    })
}

/// The end of the certificate's validity period.
pub fn cert_not_after(cert_der: &[u8]) -> Result<jiff::Timestamp, CertError> {
    let cert = parse(cert_der)?;
    to_timestamp(cert.validity().not_after.timestamp())
}

/// The certificate's serial number as lowercase hex without separators or leading zero bytes;
/// the same form `issued.json` and `weir-certs show` use.
pub fn cert_serial_hex(cert_der: &[u8]) -> Result<String, CertError> {
    let cert = parse(cert_der)?;
    Ok(serial_hex(cert.raw_serial()))
}

/// Serial numbers (as [`cert_serial_hex`] writes them) listed in a DER-encoded CRL. The
/// aggregator uses this to close live sessions of agents revoked while connected.
pub fn crl_revoked_serials(crl_der: &[u8]) -> Result<Vec<String>, CertError> {
    let (_, crl) = x509_parser::parse_x509_crl(crl_der)
        .map_err(|e| CertError::InvalidCert(format!("not a CRL: {e}")))?;
    Ok(crl
        .iter_revoked_certificates()
        .map(|r| serial_hex(r.raw_serial()))
        .collect())
}

pub(crate) fn serial_hex(raw: &[u8]) -> String {
    let first = raw
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(raw.len().saturating_sub(1));
    raw[first..].iter().map(|b| format!("{b:02x}")).collect()
}

fn to_timestamp(secs: i64) -> Result<jiff::Timestamp, CertError> {
    jiff::Timestamp::from_second(secs)
        .map_err(|e| CertError::InvalidCert(format!("validity time out of range: {e}")))
}

/// What `weir-certs show` prints about a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertSummary {
    pub subject: String,
    pub issuer: String,
    pub serial_hex: String,
    pub not_before: jiff::Timestamp,
    pub not_after: jiff::Timestamp,
    pub is_ca: bool,
    pub dns_names: Vec<String>,
    pub ip_addresses: Vec<IpAddr>,
    pub uris: Vec<String>,
    /// Extended key usages by name ("serverAuth", "clientAuth", ...).
    pub extended_key_usage: Vec<String>,
    /// Set when the certificate is a Weir agent certificate.
    pub agent: Option<AgentIdentity>,
}

/// Reads the fields shown by `weir-certs show`.
pub fn summarize(cert_der: &[u8]) -> Result<CertSummary, CertError> {
    let cert = parse(cert_der)?;
    let sans = sans(&cert)?;
    let mut eku = Vec::new();
    if let Ok(Some(ext)) = cert.extended_key_usage() {
        let e = ext.value;
        for (set, name) in [
            (e.any, "any"),
            (e.server_auth, "serverAuth"),
            (e.client_auth, "clientAuth"),
            (e.code_signing, "codeSigning"),
            (e.email_protection, "emailProtection"),
            (e.time_stamping, "timeStamping"),
            (e.ocsp_signing, "ocspSigning"),
        ] {
            if set {
                eku.push(name.to_owned());
            }
        }
        eku.extend(e.other.iter().map(|oid| oid.to_id_string()));
    }
    Ok(CertSummary {
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        serial_hex: serial_hex(cert.raw_serial()),
        not_before: to_timestamp(cert.validity().not_before.timestamp())?,
        not_after: to_timestamp(cert.validity().not_after.timestamp())?,
        is_ca: cert.is_ca(),
        dns_names: sans.dns,
        ip_addresses: sans.ips,
        uris: sans.uris,
        extended_key_usage: eku,
        agent: agent_identity(cert_der).ok(),
    })
}

#[derive(Default)]
struct Sans {
    dns: Vec<String>,
    ips: Vec<IpAddr>,
    uris: Vec<String>,
}

fn sans(cert: &X509Certificate<'_>) -> Result<Sans, CertError> {
    let ext = cert
        .subject_alternative_name()
        .map_err(|e| CertError::InvalidCert(format!("bad subjectAltName extension: {e}")))?;
    let mut out = Sans::default();
    let Some(ext) = ext else { return Ok(out) };
    for name in &ext.value.general_names {
        match name {
            GeneralName::DNSName(d) => out.dns.push((*d).to_owned()),
            GeneralName::URI(u) => out.uris.push((*u).to_owned()),
            GeneralName::IPAddress(bytes) => {
                if let Ok(b) = <[u8; 4]>::try_from(*bytes) {
                    out.ips.push(IpAddr::from(b));
                } else if let Ok(b) = <[u8; 16]>::try_from(*bytes) {
                    out.ips.push(IpAddr::from(b));
                }
            }
            _ => {}
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_rule() {
        for ok in ["a", "A", "0", "gw-01", "site_2", &"x".repeat(63)] {
            validate_name("site", ok).unwrap();
        }
        for bad in ["", "-a", "_a", "a/b", "a b", "é", "a.b", &"x".repeat(64)] {
            let err = validate_name("agent", bad).unwrap_err().to_string();
            assert!(err.contains("agent"), "{err}");
            assert!(err.contains(&format!("{bad:?}")), "{err}");
            assert!(err.contains("1 to 63"), "{err}");
        }
    }

    #[test]
    fn uri_round_trip_and_rejects() {
        let id = AgentIdentity {
            site: "paris".into(),
            name: "gw-1".into(),
        };
        assert_eq!(id.to_string(), "paris/gw-1");
        assert_eq!(AgentIdentity::from_uri(&id.uri()), Some(id));
        assert_eq!(AgentIdentity::from_uri("weir://agent/a/b/c"), None);
        assert_eq!(AgentIdentity::from_uri("weir://agent/a"), None);
        assert_eq!(AgentIdentity::from_uri("weir://agent//b"), None);
        assert_eq!(AgentIdentity::from_uri("https://agent/a/b"), None);
    }

    #[test]
    fn serial_hex_strips_leading_zero_bytes() {
        assert_eq!(serial_hex(&[0x00, 0x80, 0x01]), "8001");
        assert_eq!(serial_hex(&[0x7f, 0x00]), "7f00");
        assert_eq!(serial_hex(&[0x00]), "00");
    }

    #[test]
    fn garbage_is_not_a_certificate() {
        assert!(matches!(
            agent_identity(b"nope"),
            Err(CertError::InvalidCert(_))
        ));
    }
}
