//! The only place that names `async-snmp` types: BER decoding of SNMP messages, USM
//! (RFC 3414/3826/7860) authentication, decryption and key localization, and the encoding of
//! the replies a notification receiver owes (Inform responses, discovery and time reports).
//!
//! We do not use the crate's `NotificationReceiver`: it owns its socket, receives one datagram
//! per call, keeps no raw bytes, and drops malformed or unauthenticated packets inside its own
//! loop (logging each at WARN), so we could neither count drops by reason nor batch. Instead
//! [`Processor::process`] takes one datagram and returns a [`Outcome`] in plain types: the
//! notification, a reply to send, or a drop reason. It is synchronous and does no I/O.
//!
//! Decoding uses the crate's strict configuration (its tolerant mode logs every accepted
//! anomaly at WARN, which a hostile sender could turn into a log flood); the one tolerance
//! real senders need, bytes after the message, is handled here by trimming to the outer
//! SEQUENCE and reporting how many bytes were cut.
//!
//! USM state: keys are localized per (user, engine ID) and cached (bounded) once a message has
//! authenticated with them, so forged engine IDs cost a derivation each but cannot flush the
//! cache. For traps
//! (the sender is authoritative) the latest boots/time per sender engine is kept (bounded) and
//! older messages are refused as replays (RFC 3414 3.2 step 7b). For Informs this receiver is
//! authoritative: its engine ID, boots (persisted by the caller) and time since start are used.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Instant;

use async_snmp::ber::Decoder;
use async_snmp::message::{
    CommunityMessage, CommunityPdu, MsgFlags, MsgGlobalData, ScopedPdu, V3Message, V3MessageData,
};
use async_snmp::pdu::{GenericTrap, PduType, ResponsePdu};
use async_snmp::v3::{
    DesSaltState, PersistedDesSaltState, PrivKey, SaltCounter, UsmSecurityParams,
};
use async_snmp::{
    AuthProtocol, DecodeConfig, LocalizedKey, MasterKey, MessageSize, Oid, PrivProtocol,
    SecurityLevel, Value, VarBind, Version,
};
use bytes::Bytes;

use super::map::oid_string;
use super::{Auth, DropReason, Notification, Priv, SnmpVersion, Typed, UserSpec, V1Fields};

/// RFC 3414 time window, seconds.
const TIME_WINDOW: u32 = 150;
/// Most (user, engine) localized keys kept; past it the cache is cleared (keys are re-derived,
/// at ~1 ms each for MD5/SHA: cheap next to the bound on memory).
const MAX_LOCALIZED: usize = 4096;
/// Most remote (trap sender) engines whose boots/time are tracked.
const MAX_REMOTE_ENGINES: usize = 8192;
/// msgMaxSize this receiver advertises.
const OUR_MAX_SIZE: usize = 65_507;

/// usmStats OIDs (RFC 3414), for Report PDUs.
const USM_STATS_UNKNOWN_ENGINE_IDS: [u32; 11] = [1, 3, 6, 1, 6, 3, 15, 1, 1, 4, 0];
const USM_STATS_NOT_IN_TIME_WINDOWS: [u32; 11] = [1, 3, 6, 1, 6, 3, 15, 1, 1, 2, 0];

/// What to do with one datagram.
#[derive(Debug)]
pub enum Outcome {
    /// A trap or Inform to turn into an event; `reply` is the Inform's Response, when owed.
    Notification {
        notification: Notification,
        reply: Option<Vec<u8>>,
    },
    /// No event, but a Report to send (engine discovery, time synchronisation).
    Report { reply: Vec<u8>, kind: &'static str },
    /// Dropped: counted and logged by the caller.
    Drop { reason: DropReason, detail: String },
}

fn drop(reason: DropReason, detail: impl Into<String>) -> Outcome {
    Outcome::Drop {
        reason,
        detail: detail.into(),
    }
}

/// A configured USM user with its master keys (password-derived once, at start).
struct User {
    spec_level: SecurityLevel,
    auth_master: Option<MasterKey>,
    priv_master: Option<MasterKey>,
    priv_protocol: Option<PrivProtocol>,
    /// Sender engine IDs this user is accepted from; empty = any.
    engine_ids: Vec<Vec<u8>>,
}

struct Localized {
    auth: LocalizedKey,
    privacy: Option<PrivKey>,
}

/// Latest authenticated boots/time seen from a remote engine, and when.
struct RemoteClock {
    boots: u32,
    time: u32,
    at: Instant,
}

/// This receiver's SNMPv3 identity (RFC 3411 snmpEngineID, snmpEngineBoots) as persisted by
/// the caller; time counts from `start`.
#[derive(Debug, Clone)]
pub struct LocalEngine {
    pub engine_id: Vec<u8>,
    pub boots: u32,
}

/// Per-socket SNMP processing state: the community allow-list, the USM users and caches, and
/// this receiver's engine. Not shared between sockets (no locks on the hot path).
pub struct Processor {
    communities: Vec<Vec<u8>>,
    users: HashMap<Vec<u8>, User>,
    /// Localized keys by sender engine ID, then user name (looked up without allocating).
    localized: HashMap<Vec<u8>, HashMap<Vec<u8>, Arc<Localized>>>,
    /// The last (engine ID, user) looked up and its keys: a trap flood comes from few senders,
    /// so most messages skip the two map lookups.
    last_localized: Option<(Vec<u8>, Vec<u8>, Arc<Localized>)>,
    /// How many keys `localized` holds.
    localized_count: usize,
    remote: HashMap<Vec<u8>, RemoteClock>,
    engine: LocalEngine,
    start: Instant,
    salt: SaltCounter,
    des_salt: Option<DesSaltState>,
    /// RFC 3414 usmStatsUnknownEngineIDs / NotInTimeWindows, reported in Reports.
    unknown_engine_reports: u32,
    time_reports: u32,
}

impl std::fmt::Debug for Processor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Processor")
            .field("users", &self.users.len())
            .field("engine_boots", &self.engine.boots)
            .finish_non_exhaustive()
    }
}

/// Why a user could not be set up (bad protocol/password combination); names the user.
#[derive(Debug, thiserror::Error)]
#[error("SNMP user {user:?}: {message}")]
pub struct UserError {
    pub user: String,
    pub message: String,
}

fn auth_protocol(a: Auth) -> Option<AuthProtocol> {
    Some(match a {
        Auth::None => return None,
        Auth::Md5 => AuthProtocol::Md5,
        Auth::Sha => AuthProtocol::Sha1,
        Auth::Sha224 => AuthProtocol::Sha224,
        Auth::Sha256 => AuthProtocol::Sha256,
        Auth::Sha384 => AuthProtocol::Sha384,
        Auth::Sha512 => AuthProtocol::Sha512,
    })
}

fn priv_protocol(p: Priv) -> Option<PrivProtocol> {
    Some(match p {
        Priv::None => return None,
        Priv::Des => PrivProtocol::Des,
        Priv::Aes => PrivProtocol::Aes128,
        Priv::Aes192 => PrivProtocol::Aes192Blumenthal,
        Priv::Aes256 => PrivProtocol::Aes256Blumenthal,
        Priv::Aes192c => PrivProtocol::Aes192Reeder,
        Priv::Aes256c => PrivProtocol::Aes256Reeder,
    })
}

impl Processor {
    /// Derives every user's master keys (the slow part of USM: ~1 MB of hashing per password).
    pub fn new(
        communities: &[String],
        users: &[UserSpec],
        engine: LocalEngine,
    ) -> Result<Processor, UserError> {
        let mut map = HashMap::new();
        for u in users {
            let err = |message: String| UserError {
                user: u.name.clone(),
                message,
            };
            let auth = auth_protocol(u.auth);
            let privacy = priv_protocol(u.privacy);
            let level = match (auth, privacy) {
                (None, None) => SecurityLevel::NoAuthNoPriv,
                (Some(_), None) => SecurityLevel::AuthNoPriv,
                (Some(_), Some(_)) => SecurityLevel::AuthPriv,
                (None, Some(_)) => return Err(err("privacy needs authentication".into())),
            };
            let auth_master = auth
                .map(|a| MasterKey::from_password(a, u.auth_password.as_bytes()))
                .transpose()
                .map_err(|e| err(format!("auth password: {e}")))?;
            let priv_master = match (auth, privacy) {
                (Some(a), Some(_)) => Some(
                    MasterKey::from_password(a, u.priv_password.as_bytes())
                        .map_err(|e| err(format!("privacy password: {e}")))?,
                ),
                _ => None,
            };
            map.insert(
                u.name.as_bytes().to_vec(),
                User {
                    spec_level: level,
                    auth_master,
                    priv_master,
                    priv_protocol: privacy,
                    engine_ids: u.engine_ids.clone(),
                },
            );
        }
        let des_salt = match engine.boots.checked_sub(1).map(PersistedDesSaltState::new) {
            // Boots are persisted by the caller before this runs: nothing more to store.
            Some(Ok(prev)) => DesSaltState::restart(prev, |_| Ok::<(), std::io::Error>(())).ok(),
            _ => DesSaltState::install(|_| Ok::<(), std::io::Error>(())).ok(),
        };
        Ok(Processor {
            communities: communities.iter().map(|c| c.as_bytes().to_vec()).collect(),
            users: map,
            localized: HashMap::new(),
            localized_count: 0,
            last_localized: None,
            remote: HashMap::new(),
            engine,
            start: Instant::now(),
            salt: SaltCounter::new().map_err(|e| UserError {
                user: String::new(),
                message: format!("no randomness for the AES salt: {e}"),
            })?,
            des_salt,
            unknown_engine_reports: 0,
            time_reports: 0,
        })
    }

    /// Sets this engine's boots and time, for tests replaying captured messages to their engine.
    #[cfg(test)]
    pub(crate) fn set_clock(&mut self, boots: u32, time: u32) -> bool {
        self.engine.boots = boots;
        match Instant::now().checked_sub(std::time::Duration::from_secs(time.into())) {
            Some(s) => {
                self.start = s;
                true
            }
            None => false,
        }
    }

    /// This receiver's (boots, time) now.
    fn clock(&self) -> (u32, u32) {
        let t = self.start.elapsed().as_secs().min(i32::MAX as u64) as u32;
        (self.engine.boots, t)
    }

    /// Processes one datagram. Never panics on any input.
    pub fn process(&mut self, datagram: &[u8]) -> Outcome {
        let (msg, trailing) = match trim_to_message(datagram) {
            Some(x) => x,
            None => return drop(DropReason::Malformed, "not a BER SEQUENCE"),
        };
        let data = Bytes::copy_from_slice(msg);
        let version = match peek_version(msg) {
            Some(v) => v,
            None => return drop(DropReason::Malformed, "no SNMP version"),
        };
        let mut outcome = match version {
            0 | 1 => self.community(data),
            3 => self.v3(data),
            v => drop(DropReason::Malformed, format!("unknown SNMP version {v}")),
        };
        if let Outcome::Notification { notification, .. } = &mut outcome {
            notification.trailing_bytes = trailing;
        }
        outcome
    }

    fn community(&mut self, data: Bytes) -> Outcome {
        let msg = match CommunityMessage::decode(data, DecodeConfig::STRICT) {
            Ok(m) => m.value,
            Err(e) => return drop(DropReason::Malformed, e.to_string()),
        };
        let community = msg.community().as_bytes();
        if !self.communities.iter().any(|c| c == community) {
            return drop(
                DropReason::CommunityNotAllowed,
                format!(
                    "community {:?} is not in [snmp] communities",
                    String::from_utf8_lossy(community)
                ),
            );
        }
        let version = if msg.version() == Version::V1 {
            SnmpVersion::V1
        } else {
            SnmpVersion::V2c
        };
        match msg.pdu() {
            CommunityPdu::TrapV1(trap) => {
                let generic = match trap.generic_trap() {
                    GenericTrap::ColdStart => 0,
                    GenericTrap::WarmStart => 1,
                    GenericTrap::LinkDown => 2,
                    GenericTrap::LinkUp => 3,
                    GenericTrap::AuthenticationFailure => 4,
                    GenericTrap::EgpNeighborLoss => 5,
                    GenericTrap::EnterpriseSpecific => 6,
                    GenericTrap::Unknown(n) => n,
                };
                let trap_oid = match trap.v2_trap_oid() {
                    Ok(o) => oid_string(o.arcs()),
                    Err(e) => return drop(DropReason::Malformed, format!("v1 trap: {e}")),
                };
                Outcome::Notification {
                    notification: Notification {
                        version,
                        inform: false,
                        user: None,
                        security_level: None,
                        request_id: None,
                        uptime: Some(trap.time_stamp()),
                        trap_oid,
                        v1: Some(V1Fields {
                            enterprise: oid_string(trap.enterprise().arcs()),
                            agent_addr: Ipv4Addr::from(trap.agent_addr()),
                            generic,
                            specific: trap.specific_trap(),
                        }),
                        varbinds: convert_varbinds(trap.varbinds()),
                        trailing_bytes: 0,
                    },
                    reply: None,
                }
            }
            CommunityPdu::Standard(pdu) => {
                let inform = match pdu.pdu_type() {
                    PduType::TrapV2 if version == SnmpVersion::V2c => false,
                    PduType::InformRequest if version == SnmpVersion::V2c => true,
                    t => {
                        return drop(
                            DropReason::NotANotification,
                            format!("{t:?} PDU on the trap port"),
                        );
                    }
                };
                let notification = match notification_fields(version, pdu, None, None) {
                    Ok(x) => x,
                    Err(o) => return *o,
                };
                let reply = if inform {
                    match ResponsePdu::success(
                        Version::V2c,
                        pdu.request_id(),
                        pdu.varbinds().to_vec(),
                    )
                    .and_then(|r| CommunityMessage::v2c(msg.community().clone(), r))
                    .and_then(|m| m.encode())
                    {
                        Ok(b) => Some(b.to_vec()),
                        Err(e) => {
                            return drop(DropReason::Malformed, format!("Inform response: {e}"));
                        }
                    }
                } else {
                    None
                };
                Outcome::Notification {
                    notification,
                    reply,
                }
            }
        }
    }

    fn v3(&mut self, data: Bytes) -> Outcome {
        let msg = match V3Message::decode(data.clone(), DecodeConfig::STRICT) {
            Ok(m) => m.value,
            Err(e) => return drop(DropReason::Malformed, e.to_string()),
        };
        let global = msg.global_data().clone();
        let flags = global.msg_flags();
        let level = flags.security_level;
        let usm =
            match UsmSecurityParams::decode(msg.security_params().clone(), DecodeConfig::STRICT) {
                Ok(u) => u.value,
                Err(e) => return drop(DropReason::Malformed, format!("USM parameters: {e}")),
            };
        let engine_id: &[u8] = usm.engine_id();
        let username: &[u8] = usm.username();

        // The PDU type, when readable before authentication and decryption.
        let plain_type = match msg.data() {
            V3MessageData::Plaintext(s) => Some(s.pdu.pdu_type()),
            V3MessageData::Encrypted(_) => None,
        };
        // Engine discovery (RFC 3414 4): a reportable message of the Confirmed Class for an
        // unknown engine ID gets our engine ID, boots and time in a noAuthNoPriv Report.
        // RFC 3412 6.4: a PDU of the Unconfirmed Class (Trap, Report, Response) is processed as
        // if the reportableFlag were zero. Answering one with a Report lost a trap that had the
        // flag set (counted only as a Report sent) and let two engines reflect Reports.
        // An encrypted PDU's class is unknown here: unless its engine ID is empty (a probe), it
        // is authenticated and decrypted with the keys of that engine first, and the Report
        // decided below, so that an authPriv trap with the flag set is not lost either.
        let discovery = flags.reportable && engine_id != self.engine.engine_id;
        let confirmed_plain = plain_type.is_some_and(|t| !is_unconfirmed(t));
        if discovery && (confirmed_plain || (plain_type.is_none() && engine_id.is_empty())) {
            let request_id = match msg.data() {
                V3MessageData::Plaintext(s) => s.pdu.clone().into_raw_parts().0,
                V3MessageData::Encrypted(_) => 0,
            };
            return self.unknown_engine_report(&global, username, request_id);
        }

        // An unauthenticated request, Response or Report is dropped for what it is, whoever
        // sent it (with authentication, a wrong password is the more useful thing to report).
        if level == SecurityLevel::NoAuthNoPriv
            && let Some(t) = plain_type
            && !matches!(t, PduType::TrapV2 | PduType::InformRequest)
        {
            return drop(
                DropReason::NotANotification,
                format!("{t:?} PDU on the trap port"),
            );
        }
        let Some(user) = self.users.get(username) else {
            return drop(
                DropReason::UnknownUser,
                format!(
                    "user {:?} is not in [[snmp.users]]",
                    String::from_utf8_lossy(username)
                ),
            );
        };
        if level != user.spec_level {
            return drop(
                DropReason::WrongSecurityLevel,
                format!(
                    "user {:?} sent {level:?}, configured for {:?}",
                    String::from_utf8_lossy(username),
                    user.spec_level
                ),
            );
        }
        if !user.engine_ids.is_empty() && !user.engine_ids.iter().any(|e| e == engine_id) {
            return drop(
                DropReason::EngineNotAllowed,
                format!(
                    "user {:?} is not configured for engine ID {}",
                    String::from_utf8_lossy(username),
                    hex(engine_id)
                ),
            );
        }
        let authoritative_here = engine_id == self.engine.engine_id;

        let plaintext_scoped: ScopedPdu = if level == SecurityLevel::NoAuthNoPriv {
            match msg.data() {
                V3MessageData::Plaintext(s) => s.clone(),
                V3MessageData::Encrypted(_) => {
                    return drop(DropReason::Malformed, "encrypted data without privacy flag");
                }
            }
        } else {
            // Authenticate the whole message with the key localized to the authoritative engine.
            let (keys, cached) = match self.localize(username, engine_id) {
                Ok(k) => k,
                Err(e) => return drop(DropReason::BadAuth, e),
            };
            let Some((off, len)) = UsmSecurityParams::find_auth_params_offset(&data) else {
                return drop(DropReason::Malformed, "no authentication parameters");
            };
            if len != keys.auth.mac_len() {
                return drop(
                    DropReason::BadAuth,
                    "authentication parameters of the wrong length",
                );
            }
            match async_snmp::v3::auth::verify_message(&keys.auth, &data, off, len) {
                Ok(true) => {}
                _ => {
                    return drop(
                        DropReason::BadAuth,
                        format!(
                            "wrong digest for user {:?} (auth password or protocol differs)",
                            String::from_utf8_lossy(username)
                        ),
                    );
                }
            }
            if !cached {
                self.remember(username, engine_id, &keys);
            }
            // Timeliness (RFC 3414 3.2 step 7), after authentication so forgeries cannot move it.
            if authoritative_here {
                let (boots, now) = self.clock();
                if usm.engine_boots() != boots || usm.engine_time().abs_diff(now) > TIME_WINDOW {
                    self.time_reports = self.time_reports.wrapping_add(1);
                    let auth = Some(keys.auth.clone());
                    return match self.report(
                        &global,
                        username,
                        0,
                        &USM_STATS_NOT_IN_TIME_WINDOWS,
                        self.time_reports,
                        SecurityLevel::AuthNoPriv,
                        auth.as_ref(),
                    ) {
                        Ok(reply) => Outcome::Report {
                            reply,
                            kind: "not_in_time_window",
                        },
                        Err(e) => drop(DropReason::NotInTimeWindow, e),
                    };
                }
            } else if !self.remote_in_window(engine_id, usm.engine_boots(), usm.engine_time()) {
                return drop(
                    DropReason::NotInTimeWindow,
                    format!(
                        "engine {} boots/time {}/{} is older than seen before (replay?)",
                        hex(engine_id),
                        usm.engine_boots(),
                        usm.engine_time()
                    ),
                );
            }
            match msg.data() {
                V3MessageData::Plaintext(s) if level == SecurityLevel::AuthNoPriv => s.clone(),
                V3MessageData::Encrypted(ct) if level == SecurityLevel::AuthPriv => {
                    let Some(pk) = &keys.privacy else {
                        return drop(DropReason::DecryptFailed, "no privacy key");
                    };
                    let plain = match pk.decrypt(
                        ct,
                        usm.engine_boots(),
                        usm.engine_time(),
                        usm.priv_params(),
                    ) {
                        Ok(p) => p,
                        Err(e) => return drop(DropReason::DecryptFailed, e.to_string()),
                    };
                    let mut dec = Decoder::new(plain).with_decode_config(DecodeConfig::STRICT);
                    match ScopedPdu::decode(&mut dec) {
                        Ok(s) => s,
                        Err(e) => {
                            return drop(
                                DropReason::DecryptFailed,
                                format!(
                                    "decrypted data is not a scoped PDU (privacy password or protocol differs?): {e}"
                                ),
                            );
                        }
                    }
                }
                _ => {
                    return drop(
                        DropReason::Malformed,
                        "data does not match the security flags",
                    );
                }
            }
        };

        // The decrypted PDU of a reportable message for another engine (a plaintext one was
        // answered above): a Confirmed-Class PDU, such as an Inform localized to an engine ID we
        // no longer have, learns ours, as it would have in plaintext.
        if discovery && !is_unconfirmed(plaintext_scoped.pdu.pdu_type()) {
            return self.unknown_engine_report(
                &global,
                username,
                plaintext_scoped.pdu.request_id(),
            );
        }
        let inform = match plaintext_scoped.pdu.pdu_type() {
            PduType::TrapV2 => false,
            PduType::InformRequest => true,
            t => {
                return drop(
                    DropReason::NotANotification,
                    format!("{t:?} PDU on the trap port"),
                );
            }
        };
        if inform && !authoritative_here {
            return drop(
                DropReason::UnknownEngine,
                "Inform localized to another engine ID",
            );
        }
        let level_name = match level {
            SecurityLevel::NoAuthNoPriv => "noAuthNoPriv",
            SecurityLevel::AuthNoPriv => "authNoPriv",
            SecurityLevel::AuthPriv => "authPriv",
        };
        let notification = match notification_fields(
            SnmpVersion::V3,
            &plaintext_scoped.pdu,
            Some(String::from_utf8_lossy(username).into_owned()),
            Some(level_name),
        ) {
            Ok(x) => x,
            Err(o) => return *o,
        };
        let reply = if inform {
            match self.v3_response(
                &global,
                username,
                level,
                plaintext_scoped.pdu.request_id(),
                plaintext_scoped.pdu.varbinds().to_vec(),
                &plaintext_scoped,
            ) {
                Ok(b) => Some(b),
                Err(e) => return drop(DropReason::Malformed, format!("Inform response: {e}")),
            }
        } else {
            None
        };
        Outcome::Notification {
            notification,
            reply,
        }
    }

    /// Answers a reportable Confirmed-Class message for another engine ID with our engine ID,
    /// boots and time (`usmStatsUnknownEngineIDs`, RFC 3414 3.2 step 3), in a noAuthNoPriv
    /// Report.
    fn unknown_engine_report(
        &mut self,
        incoming: &MsgGlobalData,
        username: &[u8],
        request_id: i32,
    ) -> Outcome {
        self.unknown_engine_reports = self.unknown_engine_reports.wrapping_add(1);
        match self.report(
            incoming,
            username,
            request_id,
            &USM_STATS_UNKNOWN_ENGINE_IDS,
            self.unknown_engine_reports,
            SecurityLevel::NoAuthNoPriv,
            None,
        ) {
            Ok(reply) => Outcome::Report {
                reply,
                kind: "unknown_engine_id",
            },
            Err(e) => drop(DropReason::Malformed, e),
        }
    }

    /// The keys of `user` localized to `engine_id`, and whether they came from the cache. Keys
    /// derived here are not cached: the caller [`remember`](Self::remember)s them once a message
    /// has authenticated with them, so forged engine IDs cannot flush the cache.
    fn localize(
        &mut self,
        user: &[u8],
        engine_id: &[u8],
    ) -> Result<(Arc<Localized>, bool), String> {
        if let Some((e, u, keys)) = &self.last_localized
            && e == engine_id
            && u == user
        {
            return Ok((keys.clone(), true));
        }
        if let Some(keys) = self.localized(user, engine_id).cloned() {
            self.last_localized = Some((engine_id.to_vec(), user.to_vec(), keys.clone()));
            return Ok((keys, true));
        }
        let u = self.users.get(user).ok_or("unknown user")?;
        let auth_master = u.auth_master.as_ref().ok_or("user has no auth key")?;
        let auth = auth_master.localize(engine_id).map_err(|e| e.to_string())?;
        let privacy = match (&u.priv_master, u.priv_protocol) {
            (Some(m), Some(p)) => {
                Some(PrivKey::from_master_key(m, p, engine_id).map_err(|e| e.to_string())?)
            }
            _ => None,
        };
        Ok((Arc::new(Localized { auth, privacy }), false))
    }

    /// Caches keys that have just authenticated a message (bounded: past [`MAX_LOCALIZED`] the
    /// cache starts again).
    fn remember(&mut self, user: &[u8], engine_id: &[u8], keys: &Arc<Localized>) {
        if self.localized_count >= MAX_LOCALIZED {
            self.localized.clear();
            self.localized_count = 0;
        }
        let previous = self
            .localized
            .entry(engine_id.to_vec())
            .or_default()
            .insert(user.to_vec(), keys.clone());
        if previous.is_none() {
            self.localized_count += 1;
        }
        self.last_localized = Some((engine_id.to_vec(), user.to_vec(), keys.clone()));
    }

    /// The cached keys of `user` for `engine_id`, if localized.
    fn localized(&self, user: &[u8], engine_id: &[u8]) -> Option<&Arc<Localized>> {
        self.localized.get(engine_id)?.get(user)
    }

    /// RFC 3414 3.2 step 7b for a remote authoritative engine: refuse messages older than
    /// the latest seen; remember the latest.
    fn remote_in_window(&mut self, engine_id: &[u8], boots: u32, time: u32) -> bool {
        let now = Instant::now();
        if let Some(c) = self.remote.get_mut(engine_id) {
            let est = c
                .time
                .saturating_add(now.duration_since(c.at).as_secs().min(u32::MAX as u64) as u32);
            if boots < c.boots || (boots == c.boots && time.saturating_add(TIME_WINDOW) < est) {
                return false;
            }
            if boots > c.boots || time > est {
                *c = RemoteClock {
                    boots,
                    time,
                    at: now,
                };
            }
            return true;
        }
        if self.remote.len() >= MAX_REMOTE_ENGINES {
            // Forget the stalest engine: its next message is accepted and re-learned.
            if let Some(k) = self
                .remote
                .iter()
                .min_by_key(|(_, c)| c.at)
                .map(|(k, _)| k.clone())
            {
                self.remote.remove(&k);
            }
        }
        self.remote.insert(
            engine_id.to_vec(),
            RemoteClock {
                boots,
                time,
                at: now,
            },
        );
        true
    }

    #[allow(clippy::too_many_arguments)]
    fn report(
        &self,
        incoming: &MsgGlobalData,
        username: &[u8],
        request_id: i32,
        counter_oid: &[u32],
        counter: u32,
        level: SecurityLevel,
        auth: Option<&LocalizedKey>,
    ) -> Result<Vec<u8>, String> {
        let e = |e: Box<async_snmp::Error>| e.to_string();
        let (boots, time) = self.clock();
        let pdu = ResponsePdu::report(
            request_id,
            vec![VarBind::new(
                Oid::from_slice(counter_oid),
                Value::Counter32(counter),
            )],
        )
        .map_err(e)?;
        let scoped = ScopedPdu::new(self.engine.engine_id.clone(), Bytes::new(), pdu);
        let level = if auth.is_some() {
            level
        } else {
            SecurityLevel::NoAuthNoPriv
        };
        encode_v3(
            incoming.msg_id(),
            level,
            &self.engine.engine_id,
            boots,
            time,
            username,
            scoped,
            auth,
            None,
            false,
        )
    }

    fn v3_response(
        &self,
        incoming: &MsgGlobalData,
        username: &[u8],
        level: SecurityLevel,
        request_id: i32,
        varbinds: Vec<VarBind>,
        scoped_in: &ScopedPdu,
    ) -> Result<Vec<u8>, String> {
        let (boots, time) = self.clock();
        let pdu =
            ResponsePdu::success(Version::V3, request_id, varbinds).map_err(|e| e.to_string())?;
        let scoped = ScopedPdu::new(
            scoped_in.context_engine_id.clone(),
            scoped_in.context_name.clone(),
            pdu,
        );
        let keys = if level == SecurityLevel::NoAuthNoPriv {
            None
        } else {
            self.localized(username, &self.engine.engine_id)
        };
        let privacy = match keys.and_then(|k| k.privacy.as_ref()) {
            Some(pk) if level == SecurityLevel::AuthPriv => Some(Encrypt {
                key: pk,
                salt: &self.salt,
                des: self.des_salt.as_ref(),
            }),
            _ => None,
        };
        encode_v3(
            incoming.msg_id(),
            level,
            &self.engine.engine_id,
            boots,
            time,
            username,
            scoped,
            keys.map(|k| &k.auth),
            privacy,
            false,
        )
    }
}

/// RFC 3416 2.8 / RFC 3412 6.4: the Unconfirmed Class, which never gets a Report.
fn is_unconfirmed(t: PduType) -> bool {
    matches!(
        t,
        PduType::TrapV2 | PduType::Report | PduType::Response | PduType::TrapV1
    )
}

struct Encrypt<'a> {
    key: &'a PrivKey,
    salt: &'a SaltCounter,
    des: Option<&'a DesSaltState>,
}

/// Encodes a v3 message, encrypting and signing as the level asks.
#[allow(clippy::too_many_arguments)]
fn encode_v3(
    msg_id: i32,
    level: SecurityLevel,
    engine_id: &[u8],
    boots: u32,
    time: u32,
    username: &[u8],
    scoped: ScopedPdu,
    auth: Option<&LocalizedKey>,
    privacy: Option<Encrypt<'_>>,
    reportable: bool,
) -> Result<Vec<u8>, String> {
    let e = |e: Box<async_snmp::Error>| e.to_string();
    let size = MessageSize::new(OUR_MAX_SIZE).map_err(|e| e.to_string())?;
    let global = MsgGlobalData::new(msg_id, size, MsgFlags::new(level, reportable)).map_err(e)?;
    let usm = UsmSecurityParams::new(
        Bytes::copy_from_slice(engine_id),
        boots,
        time,
        Bytes::copy_from_slice(username),
    )
    .map_err(e)?;
    match (level, auth) {
        (SecurityLevel::NoAuthNoPriv, _) => {
            Ok(V3Message::new(global, usm.encode().map_err(e)?, scoped)
                .and_then(|m| m.encode())
                .map_err(e)?
                .to_vec())
        }
        (SecurityLevel::AuthNoPriv, Some(key)) => {
            let usm = usm.with_auth_placeholder(key.mac_len()).map_err(e)?;
            let bytes = V3Message::new(global, usm.encode().map_err(e)?, scoped)
                .and_then(|m| m.encode())
                .map_err(e)?;
            sign(key, bytes.to_vec())
        }
        (SecurityLevel::AuthPriv, Some(key)) => {
            let p = privacy.ok_or("no privacy key")?;
            let plain = scoped.encode_to_bytes().map_err(e)?;
            let (ct, params) = match p.key.protocol() {
                PrivProtocol::Des | PrivProtocol::Des3 => p
                    .key
                    .encrypt_des_family(&plain, p.des.ok_or("no DES salt state")?)
                    .map_err(|e| e.to_string())?,
                _ => p
                    .key
                    .encrypt_aes(&plain, boots, time, p.salt)
                    .map_err(|e| e.to_string())?,
            };
            let usm = usm
                .with_auth_placeholder(key.mac_len())
                .and_then(|u| u.with_priv_params(params))
                .map_err(e)?;
            let bytes = V3Message::new_with_opaque_encrypted_scoped_pdu(
                global,
                usm.encode().map_err(e)?,
                ct,
            )
            .and_then(|m| m.encode())
            .map_err(e)?;
            sign(key, bytes.to_vec())
        }
        _ => Err("authentication key missing".into()),
    }
}

fn sign(key: &LocalizedKey, mut bytes: Vec<u8>) -> Result<Vec<u8>, String> {
    let (off, len) =
        UsmSecurityParams::find_auth_params_offset(&bytes).ok_or("no auth parameters")?;
    async_snmp::v3::auth::authenticate_message(key, &mut bytes, off, len)
        .map_err(|e| e.to_string())?;
    Ok(bytes)
}

/// The notification fields of a TrapV2/Inform PDU.
fn notification_fields(
    version: SnmpVersion,
    pdu: &async_snmp::Pdu,
    user: Option<String>,
    security_level: Option<&'static str>,
) -> Result<Notification, Box<Outcome>> {
    let inform = pdu.pdu_type() == PduType::InformRequest;
    let (request_id, varbinds) = (pdu.request_id(), pdu.varbinds());
    // RFC 3416 4.2.6: sysUpTime.0 then snmpTrapOID.0. Tolerate other names, as net-snmp does,
    // but the second must be an OID: it is what the event is about.
    let (uptime, trap_oid) = match varbinds {
        [a, b, ..] => match (&a.value, &b.value) {
            (Value::TimeTicks(t), Value::ObjectIdentifier(o)) => (Some(*t), oid_string(o.arcs())),
            (_, Value::ObjectIdentifier(o)) => (None, oid_string(o.arcs())),
            _ => {
                return Err(Box::new(drop(
                    DropReason::Malformed,
                    "second varbind is not snmpTrapOID.0",
                )));
            }
        },
        _ => {
            return Err(Box::new(drop(
                DropReason::Malformed,
                "fewer than two varbinds",
            )));
        }
    };
    let n = Notification {
        version,
        inform,
        user,
        security_level,
        request_id: Some(request_id),
        uptime,
        trap_oid,
        v1: None,
        varbinds: convert_varbinds(&varbinds[2..]),
        trailing_bytes: 0,
    };
    Ok(n)
}

fn convert_varbinds(vbs: &[VarBind]) -> Vec<(String, Typed)> {
    vbs.iter()
        .map(|vb| {
            let v = match &vb.value {
                Value::Integer(i) => Typed::Integer(i64::from(*i)),
                Value::OctetString(b) => Typed::Octets(b.to_vec()),
                Value::Null => Typed::Null,
                Value::ObjectIdentifier(o) => Typed::Oid(oid_string(o.arcs())),
                Value::IpAddress(a) => Typed::Ip(Ipv4Addr::from(*a)),
                Value::Counter32(n) => Typed::Counter32(*n),
                Value::Gauge32(n) => Typed::Gauge32(*n),
                Value::UInteger32(n) => Typed::Gauge32(*n),
                Value::TimeTicks(n) => Typed::TimeTicks(*n),
                Value::Opaque(b) => Typed::Opaque(b.to_vec()),
                Value::Counter64(n) => Typed::Counter64(*n),
                Value::NoSuchObject => Typed::Exception("noSuchObject"),
                Value::NoSuchInstance => Typed::Exception("noSuchInstance"),
                Value::EndOfMibView => Typed::Exception("endOfMibView"),
                other => Typed::Other(format!("{other:?}")),
            };
            (oid_string(vb.oid.arcs()), v)
        })
        .collect()
}

/// The message's outer SEQUENCE and the count of bytes after it.
fn trim_to_message(d: &[u8]) -> Option<(&[u8], usize)> {
    if d.len() < 2 || d[0] != 0x30 {
        return None;
    }
    let (len, hdr) = if d[1] < 0x80 {
        (d[1] as usize, 2)
    } else {
        let n = (d[1] & 0x7f) as usize;
        if n == 0 || n > 4 || d.len() < 2 + n {
            return None;
        }
        let len = d[2..2 + n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | *b as usize);
        (len, 2 + n)
    };
    let end = hdr.checked_add(len)?;
    if end > d.len() {
        return None;
    }
    Some((&d[..end], d.len() - end))
}

/// The version INTEGER right after the outer SEQUENCE header (small values only).
fn peek_version(m: &[u8]) -> Option<i64> {
    let hdr = if m[1] < 0x80 {
        2
    } else {
        2 + (m[1] & 0x7f) as usize
    };
    let rest = m.get(hdr..)?;
    if rest.len() < 3 || rest[0] != 0x02 || rest[1] == 0 || rest[1] > 4 {
        return None;
    }
    let n = rest[1] as usize;
    let bytes = rest.get(2..2 + n)?;
    Some(bytes.iter().fold(0i64, |acc, b| (acc << 8) | *b as i64))
}

pub(crate) fn hex(b: &[u8]) -> String {
    hex::encode(b)
}

/// Encoders for the load generator and tests (the agent itself never sends traps).
pub mod encode {
    use super::*;

    /// A v2c SNMPv2-Trap with sysUpTime, snmpTrapOID and `varbinds` (OID, string value).
    pub fn v2c_trap(
        community: &str,
        request_id: i32,
        uptime: u32,
        trap_oid: &str,
        varbinds: &[(&str, &str)],
    ) -> Result<Vec<u8>, String> {
        v2c(community, false, request_id, uptime, trap_oid, varbinds)
    }

    /// A v2c InformRequest, like [`v2c_trap`].
    pub fn v2c_inform(
        community: &str,
        request_id: i32,
        uptime: u32,
        trap_oid: &str,
        varbinds: &[(&str, &str)],
    ) -> Result<Vec<u8>, String> {
        v2c(community, true, request_id, uptime, trap_oid, varbinds)
    }

    fn v2c(
        community: &str,
        inform: bool,
        request_id: i32,
        uptime: u32,
        trap_oid: &str,
        varbinds: &[(&str, &str)],
    ) -> Result<Vec<u8>, String> {
        let pdu = trap_pdu(Version::V2c, inform, request_id, uptime, trap_oid, varbinds)?;
        CommunityMessage::v2c(community.as_bytes().to_vec(), pdu)
            .and_then(|m| m.encode())
            .map(|b| b.to_vec())
            .map_err(|e| e.to_string())
    }

    fn trap_pdu(
        version: Version,
        inform: bool,
        request_id: i32,
        uptime: u32,
        trap_oid: &str,
        varbinds: &[(&str, &str)],
    ) -> Result<async_snmp::pdu::NotificationPdu, String> {
        let oid = Oid::parse(trap_oid).map_err(|e| e.to_string())?;
        let mut vbs = Vec::with_capacity(varbinds.len());
        for (o, v) in varbinds {
            vbs.push(VarBind::new(
                Oid::parse(o).map_err(|e| e.to_string())?,
                Value::OctetString(Bytes::copy_from_slice(v.as_bytes())),
            ));
        }
        let pdu = if inform {
            async_snmp::pdu::NotificationPdu::inform(version, request_id, uptime, &oid, vbs)
        } else {
            async_snmp::pdu::NotificationPdu::trap_v2(version, request_id, uptime, &oid, vbs)
        };
        pdu.map_err(|e| e.to_string())
    }

    /// Keys for a v3 sender: localized to the sender's (authoritative) engine ID.
    pub struct V3Sender {
        engine_id: Vec<u8>,
        user: Vec<u8>,
        level: SecurityLevel,
        auth: Option<LocalizedKey>,
        privacy: Option<PrivKey>,
        salt: SaltCounter,
        des: Option<DesSaltState>,
        /// Sets the reportableFlag, as some senders do on traps too.
        reportable: bool,
    }

    impl std::fmt::Debug for V3Sender {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("V3Sender").finish_non_exhaustive()
        }
    }

    impl V3Sender {
        pub fn new(engine_id: &[u8], spec: &UserSpec) -> Result<V3Sender, String> {
            let auth = auth_protocol(spec.auth);
            let privacy = priv_protocol(spec.privacy);
            let level = match (auth, privacy) {
                (None, _) => SecurityLevel::NoAuthNoPriv,
                (Some(_), None) => SecurityLevel::AuthNoPriv,
                (Some(_), Some(_)) => SecurityLevel::AuthPriv,
            };
            let auth_key = auth
                .map(|a| {
                    LocalizedKey::from_password(a, spec.auth_password.as_bytes(), engine_id)
                        .map_err(|e| e.to_string())
                })
                .transpose()?;
            let priv_key = match (auth, privacy) {
                (Some(a), Some(p)) => Some(
                    PrivKey::from_password(a, p, spec.priv_password.as_bytes(), engine_id)
                        .map_err(|e| e.to_string())?,
                ),
                _ => None,
            };
            Ok(V3Sender {
                engine_id: engine_id.to_vec(),
                user: spec.name.as_bytes().to_vec(),
                level,
                auth: auth_key,
                privacy: priv_key,
                salt: SaltCounter::new().map_err(|e| e.to_string())?,
                des: DesSaltState::install(|_| Ok::<(), std::io::Error>(())).ok(),
                reportable: false,
            })
        }

        /// This sender with the reportableFlag set on what it sends (RFC 3412 6.4 says a
        /// receiver ignores it on a trap; some senders set it anyway).
        pub fn reportable(mut self) -> V3Sender {
            self.reportable = true;
            self
        }

        /// An SNMPv2-Trap from this (authoritative) sender at boots/time.
        pub fn trap(
            &self,
            msg_id: i32,
            boots: u32,
            time: u32,
            trap_oid: &str,
            varbinds: &[(&str, &str)],
        ) -> Result<Vec<u8>, String> {
            self.notification(false, msg_id, boots, time, trap_oid, varbinds)
        }

        /// An InformRequest localized to this sender's engine ID (which, for an Inform, should
        /// be the receiver's) at boots/time.
        pub fn inform(
            &self,
            msg_id: i32,
            boots: u32,
            time: u32,
            trap_oid: &str,
            varbinds: &[(&str, &str)],
        ) -> Result<Vec<u8>, String> {
            self.notification(true, msg_id, boots, time, trap_oid, varbinds)
        }

        fn notification(
            &self,
            inform: bool,
            msg_id: i32,
            boots: u32,
            time: u32,
            trap_oid: &str,
            varbinds: &[(&str, &str)],
        ) -> Result<Vec<u8>, String> {
            let pdu = trap_pdu(
                Version::V3,
                inform,
                msg_id,
                time.saturating_mul(100),
                trap_oid,
                varbinds,
            )?;
            let scoped = ScopedPdu::new(self.engine_id.clone(), Bytes::new(), pdu);
            let privacy = self.privacy.as_ref().map(|key| Encrypt {
                key,
                salt: &self.salt,
                des: self.des.as_ref(),
            });
            encode_v3(
                msg_id,
                self.level,
                &self.engine_id,
                boots,
                time,
                &self.user,
                scoped,
                self.auth.as_ref(),
                privacy,
                self.reportable,
            )
        }
    }

    /// Sets the reportableFlag of an encoded noAuthNoPriv v3 message (msgFlags `04 01 00`),
    /// as some senders do on traps (RFC 3412 6.4 says to ignore it there).
    #[cfg(test)]
    pub(crate) fn set_reportable(mut msg: Vec<u8>) -> Vec<u8> {
        let at = msg
            .windows(3)
            .position(|w| w == [4, 1, 0])
            .expect("noAuthNoPriv msgFlags");
        msg[at + 2] = 0x04;
        msg
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_trailing_bytes_and_rejects_truncation() {
        assert_eq!(
            trim_to_message(&[0x30, 1, 0, 9, 9]),
            Some((&[0x30, 1, 0][..], 2))
        );
        assert_eq!(trim_to_message(&[0x30, 5, 0]), None);
        assert_eq!(trim_to_message(&[0x30, 0x85, 1, 1, 1, 1, 1]), None);
        assert_eq!(trim_to_message(&[0x30, 0x81]), None);
        assert_eq!(trim_to_message(&[]), None);
        assert_eq!(peek_version(&[0x30, 3, 2, 1, 3]), Some(3));
        assert_eq!(peek_version(&[0x30, 1, 2]), None);
    }

    const CORPUS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/corpora/snmp/bin");

    fn user(name: &str, auth: Auth, ap: &str, privacy: Priv, pp: &str) -> UserSpec {
        UserSpec {
            name: name.into(),
            auth,
            auth_password: ap.into(),
            privacy,
            priv_password: pp.into(),
            engine_ids: vec![],
        }
    }

    fn engine(id: &str) -> LocalEngine {
        LocalEngine {
            engine_id: super::super::config::parse_engine_id(id).unwrap(),
            boots: 1,
        }
    }

    /// The captured USM vectors with known passwords authenticate and decrypt: a wrong
    /// password gives bad_auth / decrypt_failed, the right one reaches the PDU (these are
    /// Get/Response PDUs, so they end as not_a_notification, after decryption).
    #[test]
    fn usm_vectors_authenticate_and_decrypt() {
        let dir = format!("{CORPUS}/snmpv3-usm-vectors");
        let Ok(pippo) = std::fs::read(format!("{dir}/snmp_usm_pippo_md5_des_getrequest.bin"))
        else {
            eprintln!("skipping: corpus not found at {dir}");
            return;
        };
        let pippo3 = std::fs::read(format!("{dir}/snmp_usm_pippo3_sha1_aes.bin")).unwrap();
        let useruser =
            std::fs::read(format!("{dir}/usm_user_md5_authnopriv_getresponse.bin")).unwrap();
        let users = [
            user("pippo", Auth::Md5, "pippoxxx", Priv::Des, "PIPPOxxx"),
            user("pippo3", Auth::Sha, "pippoxxx", Priv::Aes, "PIPPOxxx"),
            user("user", Auth::Md5, "useruseruser", Priv::None, ""),
        ];
        let reason = |o: Outcome| match o {
            Outcome::Drop { reason, detail } => (reason, detail),
            other => panic!("unexpected {other:?}"),
        };
        // These are requests to (and responses from) their agent's engine: be that engine,
        // at the message's boots and time, as the agent was.
        let at_engine = |bytes: &[u8], users: &[UserSpec]| -> Option<Outcome> {
            let msg = V3Message::decode(Bytes::copy_from_slice(bytes), DecodeConfig::STRICT)
                .ok()?
                .value;
            let usm =
                UsmSecurityParams::decode(msg.security_params().clone(), DecodeConfig::STRICT)
                    .ok()?
                    .value;
            let eng = LocalEngine {
                engine_id: usm.engine_id().to_vec(),
                boots: 1,
            };
            let mut p = Processor::new(&[], users, eng).unwrap();
            p.set_clock(usm.engine_boots(), usm.engine_time())
                .then(|| p.process(bytes))
        };
        for (bytes, name) in [(&pippo, "pippo"), (&pippo3, "pippo3"), (&useruser, "user")] {
            let Some(out) = at_engine(bytes, &users) else {
                eprintln!("skipping {name}: system uptime shorter than the message's engine time");
                continue;
            };
            let (r, d) = reason(out);
            assert_eq!(r, DropReason::NotANotification, "{name}: {d}");
        }
        // pippo3's is a Response and not reportable: as a remote engine, no clock needed.
        let mut p = Processor::new(&[], &users, engine("8000000001020304")).unwrap();
        let (r, d) = reason(p.process(&pippo3));
        assert_eq!(r, DropReason::NotANotification, "{d}");
        assert!(d.contains("Response"), "{d}");

        let wrong = [
            user("pippo3", Auth::Sha, "pippoyyy", Priv::Aes, "PIPPOxxx"),
            user("user", Auth::Md5, "useruserusex", Priv::None, ""),
        ];
        let mut p = Processor::new(&[], &wrong, engine("8000000001020304")).unwrap();
        assert_eq!(reason(p.process(&pippo3)).0, DropReason::BadAuth);
        if let Some(out) = at_engine(&useruser, &wrong) {
            assert_eq!(reason(out).0, DropReason::BadAuth);
        }
        let wrong_priv = [user("pippo3", Auth::Sha, "pippoxxx", Priv::Aes, "PIPPOyyy")];
        let mut p = Processor::new(&[], &wrong_priv, engine("8000000001020304")).unwrap();
        assert_eq!(reason(p.process(&pippo3)).0, DropReason::DecryptFailed);
        let wrong_level = [user("pippo3", Auth::Sha, "pippoxxx", Priv::None, "")];
        let mut p = Processor::new(&[], &wrong_level, engine("8000000001020304")).unwrap();
        assert_eq!(reason(p.process(&pippo3)).0, DropReason::WrongSecurityLevel);
        let mut p = Processor::new(&[], &[], engine("8000000001020304")).unwrap();
        assert_eq!(reason(p.process(&pippo3)).0, DropReason::UnknownUser);
    }

    /// Every auth x privacy combination: what a sender encodes, the receiver authenticates,
    /// decrypts and decodes; a replayed older boots is refused.
    #[test]
    fn v3_traps_round_trip_for_every_protocol() {
        let auths = [
            Auth::Md5,
            Auth::Sha,
            Auth::Sha224,
            Auth::Sha256,
            Auth::Sha384,
            Auth::Sha512,
        ];
        let privs = [
            Priv::None,
            Priv::Des,
            Priv::Aes,
            Priv::Aes192,
            Priv::Aes256,
            Priv::Aes192c,
            Priv::Aes256c,
        ];
        let sender_engine = b"\x80\x00\x1f\x88\x04sender";
        for a in auths {
            for pr in privs {
                let u = user("u1", a, "auth-pass-1", pr, "priv-pass-1");
                let tx = encode::V3Sender::new(sender_engine, &u).unwrap();
                let bytes = tx
                    .trap(
                        42,
                        3,
                        1000,
                        "1.3.6.1.6.3.1.1.5.3",
                        &[("1.3.6.1.2.1.2.2.1.1.7", "seq=1")],
                    )
                    .unwrap();
                let mut p =
                    Processor::new(&[], std::slice::from_ref(&u), engine("8000000001020304"))
                        .unwrap();
                match p.process(&bytes) {
                    Outcome::Notification {
                        notification,
                        reply,
                    } => {
                        assert!(reply.is_none());
                        assert_eq!(notification.trap_oid, "1.3.6.1.6.3.1.1.5.3", "{a:?}/{pr:?}");
                        assert_eq!(notification.user.as_deref(), Some("u1"));
                        assert_eq!(
                            notification.varbinds,
                            vec![(
                                "1.3.6.1.2.1.2.2.1.1.7".to_string(),
                                Typed::Octets(b"seq=1".to_vec())
                            )]
                        );
                    }
                    other => panic!("{a:?}/{pr:?}: {other:?}"),
                }
                let older = tx.trap(43, 2, 5000, "1.3.6.1.6.3.1.1.5.3", &[]).unwrap();
                assert!(
                    matches!(
                        p.process(&older),
                        Outcome::Drop {
                            reason: DropReason::NotInTimeWindow,
                            ..
                        }
                    ),
                    "{a:?}/{pr:?}"
                );
            }
        }
    }

    /// Keys are cached only once a message has authenticated with them: traps forged under
    /// many engine IDs (wrong password) leave the cache empty, a genuine sender adds one entry.
    #[test]
    fn only_authenticated_keys_are_cached() {
        let real = user("u1", Auth::Sha, "auth-pass-1", Priv::Aes, "priv-pass-1");
        let forger = user("u1", Auth::Sha, "guessed-pass", Priv::Aes, "priv-pass-1");
        let mut p =
            Processor::new(&[], std::slice::from_ref(&real), engine("8000000001020304")).unwrap();
        for i in 0..50u32 {
            let mut id = b"\x80\x00\x1f\x88\x04forged".to_vec();
            id.extend_from_slice(&i.to_be_bytes());
            let bytes = encode::V3Sender::new(&id, &forger)
                .unwrap()
                .trap(i as i32, 1, 100, "1.3.6.1.6.3.1.1.5.3", &[])
                .unwrap();
            assert!(matches!(
                p.process(&bytes),
                Outcome::Drop {
                    reason: DropReason::BadAuth,
                    ..
                }
            ));
        }
        assert_eq!(p.localized_count, 0, "forgeries were cached");
        let tx = encode::V3Sender::new(b"\x80\x00\x1f\x88\x04sender", &real).unwrap();
        for (i, time) in [(1, 100), (2, 101)] {
            let bytes = tx.trap(i, 1, time, "1.3.6.1.6.3.1.1.5.3", &[]).unwrap();
            assert!(matches!(p.process(&bytes), Outcome::Notification { .. }));
        }
        assert_eq!(p.localized_count, 1);
    }

    #[test]
    fn v2c_inform_is_answered_and_communities_are_enforced() {
        let inform = encode::v2c_inform(
            "public",
            77,
            5,
            "1.3.6.1.4.1.8072.2.3.0.1",
            &[("1.3.6.1.2.1.1.5.0", "x")],
        )
        .unwrap();
        let mut p = Processor::new(&["public".into()], &[], engine("8000000001020304")).unwrap();
        let Outcome::Notification {
            notification,
            reply,
        } = p.process(&inform)
        else {
            panic!("inform not accepted");
        };
        assert!(notification.inform);
        let reply = CommunityMessage::decode(Bytes::from(reply.unwrap()), DecodeConfig::STRICT)
            .unwrap()
            .value;
        let pdu = reply.pdu().standard().unwrap().clone();
        assert_eq!(pdu.pdu_type(), PduType::Response);
        let (rid, _, vbs) = pdu.into_raw_parts();
        assert_eq!(rid, 77);
        assert_eq!(vbs.len(), 3);
        let mut p = Processor::new(&["private".into()], &[], engine("8000000001020304")).unwrap();
        assert!(matches!(
            p.process(&inform),
            Outcome::Drop {
                reason: DropReason::CommunityNotAllowed,
                ..
            }
        ));
        let mut p = Processor::new(&[], &[], engine("8000000001020304")).unwrap();
        assert!(matches!(
            p.process(&inform),
            Outcome::Drop {
                reason: DropReason::CommunityNotAllowed,
                ..
            }
        ));
    }

    /// Regression: a v3 trap with the reportableFlag set, from its own (remote) engine, was
    /// answered with a discovery Report and lost, counted nowhere but in Reports sent; and a
    /// Report with the flag got a Report back. Unconfirmed-class PDUs never get a Report
    /// (RFC 3412 6.4): the trap is an event, a Report or Response a counted drop.
    #[test]
    fn unconfirmed_pdus_with_the_reportable_flag_get_no_report() {
        use encode::set_reportable;
        let remote = [0x80, 0, 0x1f, 0x88, 4, 1, 2, 3];
        let noauth = user("n", Auth::None, "", Priv::None, "");
        // A linkUp trap, message ID `id`, from `sender`.
        let link_up = |sender: &encode::V3Sender, id| {
            sender
                .trap(
                    id,
                    1,
                    10,
                    "1.3.6.1.6.3.1.1.5.3",
                    &[("1.3.6.1.2.1.1.5.0", "x")],
                )
                .unwrap()
        };
        let trap = link_up(&encode::V3Sender::new(&remote, &noauth).unwrap(), 5);
        let mut p = Processor::new(
            &[],
            std::slice::from_ref(&noauth),
            engine("8000000001020304"),
        )
        .unwrap();
        assert!(matches!(
            p.process(&set_reportable(trap)),
            Outcome::Notification { .. }
        ));
        for pdu in [
            ResponsePdu::report(
                7,
                vec![VarBind::new(
                    Oid::from_slice(&USM_STATS_UNKNOWN_ENGINE_IDS),
                    Value::Counter32(1),
                )],
            )
            .unwrap(),
            ResponsePdu::success(Version::V3, 7, vec![]).unwrap(),
        ] {
            let scoped = ScopedPdu::new(Bytes::copy_from_slice(&remote), Bytes::new(), pdu);
            let msg = encode_v3(
                7,
                SecurityLevel::NoAuthNoPriv,
                &remote,
                1,
                10,
                b"",
                scoped,
                None,
                None,
                false,
            )
            .unwrap();
            for msg in [msg.clone(), set_reportable(msg)] {
                match p.process(&msg) {
                    Outcome::Drop {
                        reason: DropReason::NotANotification,
                        ..
                    } => {}
                    other => panic!("{other:?}"),
                }
            }
        }

        // authPriv (msgFlags 07): the PDU type is known only after decryption, which must come
        // before deciding on a discovery Report, or the trap is answered and lost.
        for privacy in [Priv::Aes, Priv::Des] {
            let secret = user("s", Auth::Sha, "authpass1", privacy, "privpass1");
            let mut p = Processor::new(
                &[],
                std::slice::from_ref(&secret),
                engine("8000000001020304"),
            )
            .unwrap();
            let sender = encode::V3Sender::new(&remote, &secret)
                .unwrap()
                .reportable();
            let trap = link_up(&sender, 6);
            let flags = V3Message::decode(Bytes::from(trap.clone()), DecodeConfig::STRICT)
                .unwrap()
                .value
                .global_data()
                .msg_flags();
            assert!(flags.reportable && flags.security_level == SecurityLevel::AuthPriv);
            match p.process(&trap) {
                Outcome::Notification { notification, .. } => {
                    assert_eq!(notification.security_level, Some("authPriv"));
                }
                other => panic!("{privacy:?}: {other:?}"),
            }
            // A wrong password is a bad digest, not a Report to whoever the source claims to be.
            let wrong = user("s", Auth::Sha, "authpass2", privacy, "privpass1");
            let forged = encode::V3Sender::new(&remote, &wrong)
                .unwrap()
                .reportable()
                .trap(7, 1, 10, "1.3.6.1.6.3.1.1.5.3", &[])
                .unwrap();
            match p.process(&forged) {
                Outcome::Drop {
                    reason: DropReason::BadAuth,
                    ..
                } => {}
                other => panic!("{privacy:?}: {other:?}"),
            }
            // A Confirmed-Class PDU (an Inform localized to an engine ID that is not ours)
            // still learns our engine ID, as in plaintext.
            let inform = sender.inform(8, 1, 10, "1.3.6.1.6.3.1.1.5.3", &[]).unwrap();
            match p.process(&inform) {
                Outcome::Report { kind, .. } => assert_eq!(kind, "unknown_engine_id"),
                other => panic!("{privacy:?}: {other:?}"),
            }
        }
    }

    /// A discovery probe (reportable, empty engine ID) gets a Report carrying our engine ID.
    #[test]
    fn discovery_probe_gets_our_engine_id() {
        let probe = V3Message::discovery_request(9, MessageSize::new(1500).unwrap())
            .unwrap()
            .encode()
            .unwrap();
        let mut p = Processor::new(&[], &[], engine("8000000001020304")).unwrap();
        let Outcome::Report { reply, kind } = p.process(&probe) else {
            panic!("no report");
        };
        assert_eq!(kind, "unknown_engine_id");
        let m = V3Message::decode(Bytes::from(reply), DecodeConfig::STRICT)
            .unwrap()
            .value;
        let usm = UsmSecurityParams::decode(m.security_params().clone(), DecodeConfig::STRICT)
            .unwrap()
            .value;
        assert_eq!(usm.engine_id().as_ref(), &[0x80, 0, 0, 0, 1, 2, 3, 4]);
        assert_eq!(usm.engine_boots(), 1);
        assert_eq!(m.msg_id(), 9);
        assert_eq!(m.pdu().unwrap().pdu_type(), PduType::Report);
    }
}
