//! The SNMP input: UDP listeners receiving SNMPv1/v2c traps, v2c Informs, and SNMPv3 traps and
//! Informs (USM), each turned into an event (see [`map`]) and handed to the [`Sink`].
//!
//! Hot path, per socket thread (`snmp-udp`): wait for a datagram, then take up to [`BATCH`]
//! without waiting more ([`RECV_BATCH`] per `recvmmsg(2)` call), decode and authenticate each
//! ([`lib_adapter::Processor`], synchronous), map it, encode the record ([`take_datagram`]),
//! and submit the whole batch with one `Sink` hand-over; after a partial batch the thread lets
//! the next traps gather for up to a millisecond ([`udp_batch::Gather`]). Backpressure as for
//! syslog UDP: while the sink waits, datagrams queue in the kernel buffer (`receive_buffer`).
//! Traps lost to a full kernel buffer are counted per socket through `SO_RXQ_OVFL`
//! (`weir_agent_snmp_udp_socket_drops_total{listener}` and
//! `weir_agent_dropped_total{reason="snmp_udp_receive_buffer"}`, reported when the next
//! datagram arrives) and host-wide in `weir_agent_kernel_udp_rcvbuf_errors`.
//!
//! Informs are acknowledged only once their event is durable: a batch holding Informs is
//! submitted with `send_committed`, and the Responses go out after the commit. A sender whose
//! Inform is not acknowledged retries, so nothing acknowledged is lost.
//!
//! Drops (malformed BER, wrong community, unknown user, bad digest, failed decryption, replay,
//! PDUs that are not notifications) are counted in `weir_agent_snmp_dropped_total{reason}` and
//! in the agent's input drops as `snmp_<reason>`, and logged at most once per 10 s per reason.
//!
//! Traps and informs whose tag the aggregator's trap drop policy discards (seed 001
//! `discardtraps`, [`crate::trap_policy`]) are dropped after decoding, before the sink: counted
//! in `weir_agent_dropped_total{reason="discardtraps"}`, logged at debug at most once per 10 s.
//! These are intended drops; an Inform is still answered (at once, or after the commit of the
//! batch it came with) so its sender does not retry.
//!
//! Engine state: this receiver's SNMPv3 engine ID and boot counter are kept in
//! `data_dir/snmp-engine.json`; boots is incremented and written (fsync) on every start, before
//! any Report or Response uses it (RFC 3414 2.2).

pub mod config;
pub mod lib_adapter;
pub mod map;

use std::io;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd as _;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use jiff::Timestamp;
use nix::sys::socket::{MsgFlags, SockaddrStorage, sockopt};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;
use weir_common::Record;

pub use config::SnmpConfig;
use lib_adapter::{LocalEngine, Outcome, Processor};
use weir_common::trap_policy::CompiledPolicy;

use crate::pipeline::Sink;
use crate::queue::Encoded;
use crate::trap_policy::TrapPolicyState;
// Most datagrams taken per `recvmmsg` call: udp_batch::BATCH.
use crate::udp_batch::{self, BATCH as RECV_BATCH};

/// Most datagrams handled per hand-over to the sink.
const BATCH: usize = 256;
/// Largest UDP payload, rounded up.
const DATAGRAM_MAX: usize = 64 << 10;

/// SNMPv3 authentication protocols.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Auth {
    #[default]
    None,
    Md5,
    #[serde(alias = "sha1")]
    Sha,
    Sha224,
    Sha256,
    Sha384,
    Sha512,
}

/// SNMPv3 privacy protocols.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Priv {
    #[default]
    None,
    Des,
    #[serde(alias = "aes128")]
    Aes,
    Aes192,
    Aes256,
    Aes192c,
    Aes256c,
}

/// A USM user with its passwords resolved.
#[derive(Clone, PartialEq, Eq)]
pub struct UserSpec {
    pub name: String,
    pub auth: Auth,
    pub auth_password: String,
    pub privacy: Priv,
    pub priv_password: String,
    /// Sender engine IDs accepted for this user; empty = any.
    pub engine_ids: Vec<Vec<u8>>,
}

impl std::fmt::Debug for UserSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserSpec")
            .field("name", &self.name)
            .field("auth", &self.auth)
            .field("privacy", &self.privacy)
            .finish_non_exhaustive()
    }
}

/// SNMP message version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnmpVersion {
    V1,
    V2c,
    V3,
}

/// The v1 Trap-PDU's own fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V1Fields {
    pub enterprise: String,
    pub agent_addr: Ipv4Addr,
    pub generic: i32,
    pub specific: i32,
}

/// A varbind value with its SNMP type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Typed {
    Integer(i64),
    Octets(Vec<u8>),
    Null,
    Oid(String),
    Ip(Ipv4Addr),
    Counter32(u32),
    Gauge32(u32),
    TimeTicks(u32),
    Counter64(u64),
    Opaque(Vec<u8>),
    Exception(&'static str),
    Other(String),
}

/// A decoded, authenticated trap or Inform, in plain types.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    pub version: SnmpVersion,
    pub inform: bool,
    /// v3 user name.
    pub user: Option<String>,
    /// v3 security level (`noAuthNoPriv`, `authNoPriv`, `authPriv`).
    pub security_level: Option<&'static str>,
    pub request_id: Option<i32>,
    /// sysUpTime.0 (v2c/v3) or the v1 time-stamp, in hundredths of a second.
    pub uptime: Option<u32>,
    /// snmpTrapOID.0; for v1 its RFC 3584 translation.
    pub trap_oid: String,
    pub v1: Option<V1Fields>,
    /// Varbinds after sysUpTime.0 and snmpTrapOID.0 (all of them for v1).
    pub varbinds: Vec<(String, Typed)>,
    /// Bytes after the SNMP message in the datagram (ignored).
    pub trailing_bytes: usize,
}

/// Why a datagram produced no event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    Malformed,
    NotANotification,
    CommunityNotAllowed,
    UnknownUser,
    WrongSecurityLevel,
    EngineNotAllowed,
    BadAuth,
    DecryptFailed,
    NotInTimeWindow,
    UnknownEngine,
    Shutdown,
}

impl DropReason {
    /// The `reason` label of `weir_agent_snmp_dropped_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::NotANotification => "not_a_notification",
            DropReason::CommunityNotAllowed => "community_not_allowed",
            DropReason::UnknownUser => "unknown_user",
            DropReason::WrongSecurityLevel => "wrong_security_level",
            DropReason::EngineNotAllowed => "engine_not_allowed",
            DropReason::BadAuth => "bad_auth",
            DropReason::DecryptFailed => "decrypt_failed",
            DropReason::NotInTimeWindow => "not_in_time_window",
            DropReason::UnknownEngine => "unknown_engine",
            DropReason::Shutdown => "shutdown",
        }
    }

    /// The reason in the agent's input drop counters (shared with other inputs).
    pub fn qualified(self) -> &'static str {
        match self {
            DropReason::Malformed => "snmp_malformed",
            DropReason::NotANotification => "snmp_not_a_notification",
            DropReason::CommunityNotAllowed => "snmp_community_not_allowed",
            DropReason::UnknownUser => "snmp_unknown_user",
            DropReason::WrongSecurityLevel => "snmp_wrong_security_level",
            DropReason::EngineNotAllowed => "snmp_engine_not_allowed",
            DropReason::BadAuth => "snmp_bad_auth",
            DropReason::DecryptFailed => "snmp_decrypt_failed",
            DropReason::NotInTimeWindow => "snmp_not_in_time_window",
            DropReason::UnknownEngine => "snmp_unknown_engine",
            DropReason::Shutdown => "shutdown",
        }
    }

    /// What the operator can do about it.
    fn hint(self) -> &'static str {
        match self {
            DropReason::Malformed => "the sender is broken or this is not SNMP",
            DropReason::NotANotification => "something sends SNMP requests to the trap port",
            DropReason::CommunityNotAllowed => {
                "add the community to [snmp] communities if this device is trusted"
            }
            DropReason::UnknownUser => "add the user to [[snmp.users]] if this device is trusted",
            DropReason::WrongSecurityLevel => {
                "the device's auth/privacy settings differ from [[snmp.users]]"
            }
            DropReason::EngineNotAllowed => "add the engine ID to the user's engine_ids",
            DropReason::BadAuth => "the auth password or protocol differs from the device's",
            DropReason::DecryptFailed => {
                "the privacy password or protocol differs from the device's"
            }
            DropReason::NotInTimeWindow => {
                "a replayed or delayed message, or the device rebooted without raising its engine boots"
            }
            DropReason::UnknownEngine => "the device sent an Inform for another engine ID",
            DropReason::Shutdown => "the agent is stopping",
        }
    }
}

fn count_drop(sink: &Sink, reason: DropReason, peer: SocketAddr, detail: &str) {
    metrics::counter!("weir_agent_snmp_dropped_total", "reason" => reason.as_str()).increment(1);
    sink.drops.count(reason.qualified());
    weir_common::warn_limited!(
        reason.as_str(),
        %peer, reason = reason.as_str(), detail,
        "dropped an SNMP datagram: {}", reason.hint()
    );
}

/// This receiver's persisted engine identity.
#[derive(Debug, Serialize, Deserialize)]
struct EngineFile {
    engine_id: String,
    boots: u32,
}

/// Loads (or creates) `data_dir/snmp-engine.json`, increments boots and writes it back
/// durably. A configured engine ID that differs from the stored one restarts boots at 1.
pub fn load_engine(data_dir: &Path, configured: Option<&str>) -> anyhow::Result<LocalEngine> {
    let path = data_dir.join("snmp-engine.json");
    let stored: Option<EngineFile> = match std::fs::read(&path) {
        Ok(b) => Some(serde_json::from_slice(&b).with_context(|| {
            format!(
                "{} is corrupt; delete it to generate a new SNMP engine ID (v3 senders of Informs must then learn it again)",
                path.display()
            )
        })?),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let configured = configured
        .map(config::parse_engine_id)
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let stored_id = stored
        .as_ref()
        .and_then(|s| config::parse_engine_id(&s.engine_id).ok());
    let (engine_id, boots) = match (configured, stored_id) {
        (Some(c), Some(s)) if c == s => (c, stored.map_or(0, |s| s.boots)),
        (Some(c), _) => (c, 0),
        (None, Some(s)) => (s, stored.map_or(0, |s| s.boots)),
        (None, None) => {
            // RFC 3411 format 5 (octets) under net-snmp's enterprise 8072, 12 random bytes.
            let mut id = vec![0x80, 0x00, 0x1f, 0x88, 0x05];
            id.extend(rand::random::<[u8; 12]>());
            (id, 0)
        }
    };
    // RFC 3414: boots stops at 2^31-1 and the engine must then be re-keyed.
    let boots = boots
        .checked_add(1)
        .filter(|b| *b < i32::MAX as u32)
        .context("SNMP engine boots reached its maximum: set a new [snmp] engine_id")?;
    let file = EngineFile {
        engine_id: lib_adapter::hex(&engine_id),
        boots,
    };
    let tmp = path.with_extension("json.tmp");
    {
        use std::io::Write as _;
        let mut f =
            std::fs::File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
        f.write_all(&serde_json::to_vec_pretty(&file)?)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    if let Ok(d) = std::fs::File::open(data_dir) {
        let _ = d.sync_all();
    }
    Ok(LocalEngine { engine_id, boots })
}

/// Bound SNMP sockets and their processing state, ready to [`spawn`](Listeners::spawn).
#[derive(Debug)]
pub struct Listeners {
    sockets: Vec<(UdpSocket, Processor)>,
    engine: Option<LocalEngine>,
}

impl Listeners {
    /// Loads the engine state, derives user keys and binds every `[snmp] listen` address.
    pub async fn bind(cfg: &SnmpConfig, data_dir: &Path) -> anyhow::Result<Listeners> {
        if cfg.listen.is_empty() {
            return Ok(Listeners {
                sockets: Vec::new(),
                engine: None,
            });
        }
        let engine = load_engine(data_dir, cfg.engine_id.as_deref())?;
        let users = cfg
            .user_specs()
            .map_err(|(field, msg)| anyhow::anyhow!("[snmp] {field}: {msg}"))?;
        if cfg.communities.is_empty() && users.is_empty() {
            tracing::warn!(
                "[snmp] has no communities and no users: every trap will be dropped. Add a community or a [[snmp.users]] entry"
            );
        }
        let mut sockets = Vec::new();
        for &addr in &cfg.listen {
            let sock = UdpSocket::bind(addr).map_err(|e| bind_error(addr, e))?;
            udp_batch::make_blocking(&sock).map_err(|e| bind_error(addr, e))?;
            weir_common::net::grow_receive_buffer(
                socket2::SockRef::from(&sock),
                addr,
                cfg.receive_buffer.0 as usize,
                true,
                "SNMP UDP",
                "lose datagrams (counted in weir_agent_snmp_udp_socket_drops_total)",
            );
            // Per-socket drop counts ride along with received datagrams.
            if let Err(e) = nix::sys::socket::setsockopt(&sock, sockopt::RxqOvfl, &1) {
                tracing::debug!(%addr, error = %e, "SO_RXQ_OVFL unavailable; only the host-wide UDP drop count is exported");
            }
            let users = users.clone();
            let communities = cfg.communities.clone();
            let engine = engine.clone();
            let processor =
                tokio::task::spawn_blocking(move || Processor::new(&communities, &users, engine))
                    .await?
                    .context("setting up SNMPv3 users")?;
            sockets.push((sock, processor));
        }
        Ok(Listeners {
            sockets,
            engine: Some(engine),
        })
    }

    /// The bound addresses (port 0 resolved).
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.sockets
            .iter()
            .filter_map(|(s, _)| s.local_addr().ok())
            .collect()
    }

    /// This receiver's engine ID (hex) and boots, when SNMP is on.
    pub fn engine(&self) -> Option<(String, u32)> {
        self.engine
            .as_ref()
            .map(|e| (lib_adapter::hex(&e.engine_id), e.boots))
    }

    /// Spawns one task per socket on `tracker` (each runs its socket's receive thread); they
    /// stop when `shutdown` is cancelled.
    pub fn spawn(
        self,
        sink: Sink,
        policy: Arc<TrapPolicyState>,
        tracker: &TaskTracker,
        shutdown: CancellationToken,
    ) {
        if let Some(e) = &self.engine {
            tracing::info!(
                engine_id = %lib_adapter::hex(&e.engine_id), boots = e.boots,
                "SNMP engine (v3 Informs must be localized to this engine ID)"
            );
        }
        for (sock, processor) in self.sockets {
            let local = sock.local_addr().ok();
            tracing::info!(addr = ?local, "receiving SNMP traps on UDP");
            let span = tracing::info_span!("snmp_udp", local = ?local);
            tracker.spawn(
                run(
                    sock,
                    processor,
                    sink.clone(),
                    policy.clone(),
                    shutdown.clone(),
                )
                .instrument(span),
            );
        }
    }
}

fn bind_error(addr: SocketAddr, err: io::Error) -> anyhow::Error {
    let hint = match err.kind() {
        io::ErrorKind::AddrInUse => {
            "the port is in use (snmptrapd?): stop it or choose another port in [snmp] listen"
        }
        io::ErrorKind::PermissionDenied => {
            "port 162 needs CAP_NET_BIND_SERVICE (systemd: AmbientCapabilities=CAP_NET_BIND_SERVICE), or use a port of 1024 or above"
        }
        io::ErrorKind::AddrNotAvailable => {
            "that IP address is not on this host: use one of its addresses, or 0.0.0.0 / [::]"
        }
        _ => "check [snmp] listen in the config",
    };
    anyhow::Error::new(err).context(format!(
        "cannot listen for SNMP traps on UDP {addr}: {hint}"
    ))
}

/// What one wakeup's datagrams produced: encoded events for one hand-over to the sink, and the
/// Inform Responses to send once those events are durable.
#[derive(Debug, Default)]
pub struct Batch {
    pub records: Vec<Encoded>,
    pub replies: Vec<(Vec<u8>, SocketAddr)>,
}

/// Handles one datagram (the listener's per-datagram step; public for the cost harness,
/// `agent/examples/trap_cost.rs`): drop (counted), or an event encoded into `batch` with the
/// Inform Response owed once it is durable. Returns a Report to send at once (engine
/// discovery, time synchronisation).
pub fn take_datagram(
    processor: &mut Processor,
    policy: &CompiledPolicy,
    sink: &Sink,
    data: &[u8],
    peer: SocketAddr,
    received_at: Timestamp,
    batch: &mut Batch,
) -> Option<Vec<u8>> {
    match processor.process(data) {
        Outcome::Notification {
            notification,
            reply,
        } => {
            if let Some(r) = reply {
                batch.replies.push((r, peer));
            }
            let classified = map::classify(&notification);
            if !policy.is_empty() && policy.discards(&classified.0) {
                count_discard(sink, &classified.0, peer, policy.version);
                return None;
            }
            let ev = map::to_classified_event(&notification, classified, peer, data, received_at);
            batch
                .records
                .push(sink.encode(&Record::Event(ev), received_at.as_microsecond()));
            None
        }
        Outcome::Report { reply, kind } => {
            metrics::counter!("weir_agent_snmp_reports_total", "kind" => kind).increment(1);
            Some(reply)
        }
        Outcome::Drop { reason, detail } => {
            count_drop(sink, reason, peer, &detail);
            None
        }
    }
}

/// Counts and (at debug, rate-limited) logs a trap dropped by the aggregator's policy.
fn count_discard(sink: &Sink, tag: &str, peer: SocketAddr, version: u64) {
    static GATE: weir_common::telemetry::LogGate =
        weir_common::telemetry::LogGate::new(Duration::from_secs(10));
    sink.drops.count("discardtraps");
    if let Some(suppressed) = GATE.check("discardtraps", std::time::Instant::now()) {
        tracing::debug!(
            %peer, tag, suppressed, policy = format_args!("{version:016x}"),
            "dropped a trap as the aggregator's event definitions ask (dest = discardtraps); intended, not an error"
        );
    }
}

fn send_reply(sock: &UdpSocket, reply: &[u8], peer: SocketAddr) {
    // Never blocks the receive thread: a full send buffer is an error like any other.
    let sent = nix::sys::socket::sendto(
        sock.as_raw_fd(),
        reply,
        &SockaddrStorage::from(peer),
        MsgFlags::MSG_DONTWAIT,
    );
    if let Err(e) = sent {
        // The sender retries an unanswered Inform; the event is already queued.
        metrics::counter!("weir_agent_snmp_reply_errors_total").increment(1);
        weir_common::warn_limited!("snmp_reply", %peer, error = %e, "could not send an SNMP response; the sender will retry");
    }
}

/// Receives on `sock` until `shutdown`, on a thread of its own (`snmp-udp`, see
/// [`udp_batch::on_own_thread`] for why); finishes when that thread does.
async fn run(
    sock: UdpSocket,
    processor: Processor,
    sink: Sink,
    policy: Arc<TrapPolicyState>,
    shutdown: CancellationToken,
) {
    udp_batch::on_own_thread("snmp-udp", sock, move |sock, runtime| {
        receive(&sock, processor, &sink, &policy, &shutdown, &runtime);
    })
    .await;
    tracing::debug!("SNMP listener stopped");
}

/// The receive loop of [`run`]'s thread: up to [`BATCH`] datagrams per hand-over to the sink.
fn receive(
    sock: &UdpSocket,
    mut processor: Processor,
    sink: &Sink,
    policy: &TrapPolicyState,
    shutdown: &CancellationToken,
    runtime: &tokio::runtime::Handle,
) {
    let local = sock.local_addr().map(|a| a.to_string()).unwrap_or_default();
    let socket_drops =
        metrics::counter!("weir_agent_snmp_udp_socket_drops_total", "listener" => local.clone());
    let received_total = metrics::counter!("weir_agent_received_total", "input" => "snmp");
    // Pages of the slots are only touched as far as datagrams fill them.
    let mut bufs = vec![0u8; DATAGRAM_MAX * RECV_BATCH];
    let mut metas = Vec::with_capacity(RECV_BATCH);
    let mut kernel_drops = udp_batch::KernelDrops::default();
    let gather = udp_batch::Gather::for_socket(sock);
    let mut batch = Batch {
        records: Vec::with_capacity(BATCH),
        replies: Vec::new(),
    };
    while !shutdown.is_cancelled() {
        let mut received = 0usize;
        // The policy, receive time and instant of this hand-over, taken when its first
        // datagrams arrive (the wait for them may be long).
        let mut first = None;
        // Several recvmmsg calls, one hand-over to the sink for all of them; only the first
        // waits.
        while received < BATCH {
            let wait = received == 0;
            match udp_batch::recv_batch(sock, &mut bufs, DATAGRAM_MAX, &mut metas, wait) {
                Ok(drops) => {
                    let lost = kernel_drops.observe(drops);
                    if lost > 0 {
                        socket_drops.increment(u64::from(lost));
                        sink.drops
                            .count_n("snmp_udp_receive_buffer", u64::from(lost));
                        weir_common::warn_limited!(
                            "snmp_udp_overflow", %local, lost,
                            "the kernel dropped SNMP datagrams because this socket's receive \
                             buffer was full: raise net.core.rmem_max and [snmp] receive_buffer"
                        );
                    }
                    received += metas.len();
                    let (current, received_at, _) = first.get_or_insert_with(|| {
                        (
                            policy.current(),
                            Timestamp::now(),
                            std::time::Instant::now(),
                        )
                    });
                    let received_at = *received_at;
                    for (m, data) in metas.iter().zip(bufs.chunks_exact(DATAGRAM_MAX)) {
                        let peer = m
                            .peer
                            .unwrap_or(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)));
                        if let Some(report) = take_datagram(
                            &mut processor,
                            current,
                            sink,
                            &data[..m.len],
                            peer,
                            received_at,
                            &mut batch,
                        ) {
                            send_reply(sock, &report, peer);
                        }
                    }
                    if metas.len() < RECV_BATCH {
                        break;
                    }
                }
                // Nothing more waiting, or nothing came within the read timeout.
                Err(e) if udp_batch::is_idle(&e) => break,
                Err(e) => {
                    weir_common::warn_limited!("snmp_udp_recv", error = %e, "receiving SNMP datagrams failed");
                    // Do not spin on a persistent error.
                    std::thread::sleep(Duration::from_millis(10));
                    break;
                }
            }
        }
        if received > 0 {
            received_total.increment(received as u64);
        }
        if !batch.records.is_empty() {
            let records = std::mem::replace(&mut batch.records, Vec::with_capacity(BATCH));
            let n = records.len();
            // Shutdown cancels only the wait for room: the batch then counts as dropped.
            let ok = if batch.replies.is_empty() {
                runtime.block_on(async {
                    tokio::select! {
                        biased;
                        r = sink.send_encoded(records) => r.is_ok(),
                        _ = shutdown.cancelled() => false,
                    }
                })
            } else {
                let accepted = runtime.block_on(async {
                    tokio::select! {
                        biased;
                        r = sink.submit_for_commit(records) => r.ok(),
                        _ = shutdown.cancelled() => None,
                    }
                });
                match accepted {
                    None => false,
                    // The writer commits what it accepted, shutting down or not: wait for
                    // that. Informs are acknowledged only once durable; when the commit failed
                    // (the writer counted why), none is, and their senders retry.
                    Some(committed) => {
                        if !matches!(runtime.block_on(committed), Ok(Ok(_))) {
                            batch.replies.clear();
                        }
                        true
                    }
                }
            };
            if !ok {
                metrics::counter!("weir_agent_snmp_dropped_total", "reason" => "shutdown")
                    .increment(n as u64);
                sink.drops.count_n("shutdown", n as u64);
                break;
            }
        }
        // Informs of stored traps once durable; those of dropped traps at once (nothing to
        // make durable).
        for (r, peer) in batch.replies.drain(..) {
            send_reply(sock, &r, peer);
        }
        // Some traps but not a full batch: let the next ones gather before receiving.
        if let Some((_, _, since)) = first {
            gather.sleep_after(received, BATCH, since);
        }
    }
}

#[cfg(test)]
mod corpus_tests;
#[cfg(test)]
mod listener_tests;
