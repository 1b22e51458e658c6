//! The agent ↔ aggregator protocol, carried on one bidirectional QUIC stream per connection.
//!
//! Framing: every frame is a 4-byte big-endian length followed by that many bytes of postcard.
//! A length above [`MAX_FRAME_LEN`] is a protocol error (the peer is closed), so a hostile or
//! broken peer cannot make the other side allocate without bound.
//!
//! Conversation:
//! 1. The agent sends [`AgentFrame::Hello`] with the protocol versions it speaks.
//! 2. The aggregator answers [`AggregatorFrame::HelloAck`] with the chosen version and the
//!    highest agent sequence number it has durably committed for this agent (from its store),
//!    or [`AggregatorFrame::Refused`].
//! 3. The agent streams [`AgentFrame::Batch`]es in sequence order, without waiting for acks
//!    (several are in flight), resuming after the committed sequence, and sends
//!    [`AgentFrame::Status`] now and then.
//! 4. The aggregator answers [`AggregatorFrame::Ack`] with the highest sequence committed, once
//!    the batch is durable. An ack is the only success signal: the agent deletes records from its
//!    queue only on an ack, so a record is lost only if it was never committed by the agent.
//!
//! 5. From version 2: right after the `HelloAck`, and again whenever its event definitions are
//!    reloaded, the aggregator sends [`AggregatorFrame::TrapPolicy`]: the SNMP trap tags the
//!    agent drops before queueing them (seed 001 `discardtraps`, see [`crate::trap_policy`]).
//!
//! The aggregator ignores records at or below its committed sequence, so a redelivered batch is
//! acknowledged without storing anything twice.
//!
//! Compatibility: `Hello` and `HelloAck`/`Refused` are the first variants and keep their shape in
//! every protocol version, so that versions can always be negotiated; everything else may change
//! with [`PROTOCOL_VERSION`]. postcard encodes an enum variant by its index, so new frames are
//! appended at the end of their enum and are only sent to a peer that negotiated the version
//! that introduced them: version 1 frames decode unchanged in version 2.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize, de::DeserializeOwned};

/// The newest protocol version this build speaks (2 added [`AggregatorFrame::TrapPolicy`]).
pub const PROTOCOL_VERSION: u16 = 2;
/// The first protocol version with [`AggregatorFrame::TrapPolicy`].
pub const TRAP_POLICY_VERSION: u16 = 2;
/// The oldest protocol version this build still speaks.
pub const MIN_PROTOCOL_VERSION: u16 = 1;
/// ALPN protocol id used on the QUIC connection.
pub const ALPN: &[u8] = b"weir/1";
/// Largest frame either side accepts (bytes after the length prefix).
pub const MAX_FRAME_LEN: usize = 32 * 1024 * 1024;
/// Bytes of the length prefix.
pub const HEADER_LEN: usize = 4;

/// Frames the agent sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AgentFrame {
    Hello(Hello),
    Batch(Batch),
    Status(AgentStatus),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    pub min_version: u16,
    pub max_version: u16,
    /// e.g. `weir-agent 0.1.0`.
    pub software: String,
    /// The sequence number the agent will give its next record. If the aggregator has committed
    /// more than this, the agent's queue was restored from an old copy; the aggregator warns.
    pub next_seq: u64,
}

/// A run of queued records, in increasing sequence order (gaps are allowed: records the agent
/// had to drop when its queue was full never get sent, and their drops are reported instead).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    pub first_seq: u64,
    pub last_seq: u64,
    pub records: Vec<WireRecord>,
}

/// One queued record: its agent sequence number and its postcard bytes
/// ([`crate::Record::to_bytes`]) exactly as stored in the agent's queue, so the agent forwards
/// without decoding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WireRecord {
    pub seq: u64,
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
}

/// [`AgentFrame`] as the aggregator decodes it: the same encoding (same variants, same
/// fields), but a batch's record payloads borrow from the frame's bytes instead of each being
/// copied into its own allocation. The agent encodes batches from it too, borrowing the
/// payloads from its queue, so a record is copied once, into the frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AgentFrameRef<'a> {
    Hello(Hello),
    #[serde(borrow)]
    Batch(BatchRef<'a>),
    Status(AgentStatus),
}

/// [`Batch`], borrowing its records' payloads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchRef<'a> {
    pub first_seq: u64,
    pub last_seq: u64,
    #[serde(borrow)]
    pub records: Vec<WireRecordRef<'a>>,
}

/// [`WireRecord`], borrowing its payload.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct WireRecordRef<'a> {
    pub seq: u64,
    #[serde(borrow, with = "serde_bytes")]
    pub payload: &'a [u8],
}

impl Batch {
    /// The batch as [`BatchRef`] (what the aggregator's ingest takes).
    pub fn borrowed(&self) -> BatchRef<'_> {
        BatchRef {
            first_seq: self.first_seq,
            last_seq: self.last_seq,
            records: self
                .records
                .iter()
                .map(|r| WireRecordRef {
                    seq: r.seq,
                    payload: &r.payload,
                })
                .collect(),
        }
    }
}

/// The agent's view of itself, sent after the hello and then periodically.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AgentStatus {
    pub software: String,
    /// Records in the queue not yet acknowledged.
    pub backlog_records: u64,
    pub backlog_bytes: u64,
    /// Receive time of the oldest queued record, microseconds since the epoch (0 when empty).
    pub oldest_queued_us: i64,
    /// Cumulative drops since the agent's queue was created, by reason
    /// (e.g. `queue_full_debug`, `malformed_syslog`).
    pub drops: BTreeMap<String, u64>,
    /// Cumulative records committed to the queue since the agent process started.
    pub committed_total: u64,
}

/// Frames the aggregator sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AggregatorFrame {
    HelloAck(HelloAck),
    Refused(Refused),
    Ack(Ack),
    /// Version 2 and later: which SNMP traps the agent drops before queueing them. Replaces
    /// any earlier policy; an empty one drops nothing.
    TrapPolicy(crate::trap_policy::TrapPolicy),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HelloAck {
    pub version: u16,
    /// Highest sequence of this agent the aggregator has durably stored (0 = none).
    pub committed_seq: u64,
    /// The identity the aggregator read from the agent's certificate, `site/name`.
    pub identity: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Refused {
    pub reason: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// Every record of this agent with a sequence at or below this is durably stored.
    pub committed_seq: u64,
}

/// What can go wrong reading or writing a frame.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    FrameTooLarge { len: usize, max: usize },
    #[error("malformed frame: {0}")]
    Malformed(#[from] postcard::Error),
}

/// Picks the protocol version for an agent offering `min..=max`, or `None` if the ranges do not
/// overlap.
pub fn negotiate(agent_min: u16, agent_max: u16) -> Option<u16> {
    let v = agent_max.min(PROTOCOL_VERSION);
    (v >= agent_min.max(MIN_PROTOCOL_VERSION) && agent_min <= agent_max).then_some(v)
}

/// Appends one length-prefixed frame to `out`.
pub fn encode_frame<T: Serialize>(frame: &T, out: &mut Vec<u8>) -> Result<(), WireError> {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER_LEN]);
    let mut buf = std::mem::take(out);
    buf = postcard::to_extend(frame, buf)?;
    *out = buf;
    let len = out.len() - start - HEADER_LEN;
    if len > MAX_FRAME_LEN {
        out.truncate(start);
        return Err(WireError::FrameTooLarge {
            len,
            max: MAX_FRAME_LEN,
        });
    }
    out[start..start + HEADER_LEN].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(())
}

/// The body length announced by a frame header, checked against [`MAX_FRAME_LEN`].
pub fn frame_len(header: [u8; HEADER_LEN]) -> Result<usize, WireError> {
    let len = u32::from_be_bytes(header) as usize;
    if len > MAX_FRAME_LEN {
        return Err(WireError::FrameTooLarge {
            len,
            max: MAX_FRAME_LEN,
        });
    }
    Ok(len)
}

/// Decodes a frame body (the bytes after the header).
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, WireError> {
    Ok(postcard::from_bytes(body)?)
}

/// Decodes a frame body into a type that borrows from it ([`AgentFrameRef`]).
pub fn decode_body_ref<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, WireError> {
    Ok(postcard::from_bytes(body)?)
}

/// Decodes the first frame in `buf`: `Ok(None)` if `buf` does not hold a whole frame yet,
/// otherwise the frame and the number of bytes it used.
pub fn decode_frame<T: DeserializeOwned>(buf: &[u8]) -> Result<Option<(T, usize)>, WireError> {
    let Some(header) = buf.get(..HEADER_LEN) else {
        return Ok(None);
    };
    let len = frame_len(header.try_into().expect("slice of HEADER_LEN"))?;
    let Some(body) = buf.get(HEADER_LEN..HEADER_LEN + len) else {
        return Ok(None);
    };
    Ok(Some((decode_body(body)?, HEADER_LEN + len)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Event, InputKind, Record, Severity};
    use proptest::prelude::*;

    fn batch(n: u64) -> AgentFrame {
        let t = jiff::Timestamp::from_second(1_700_000_000).unwrap();
        let records = (1..=n)
            .map(|seq| WireRecord {
                seq,
                payload: Record::Event(Event::new(
                    InputKind::Syslog,
                    "syslog",
                    "h",
                    Severity::Info,
                    format!("m{seq}"),
                    t,
                ))
                .to_bytes(),
            })
            .collect();
        AgentFrame::Batch(Batch {
            first_seq: 1,
            last_seq: n,
            records,
        })
    }

    /// A frame body decodes borrowed exactly when it decodes owned, to the same frame.
    fn same_as_owned(body: &[u8]) {
        let owned = decode_body::<AgentFrame>(body).ok();
        let borrowed = decode_body_ref::<AgentFrameRef<'_>>(body).ok();
        let borrowed = borrowed.map(|f| match f {
            AgentFrameRef::Hello(h) => AgentFrame::Hello(h),
            AgentFrameRef::Status(s) => AgentFrame::Status(s),
            AgentFrameRef::Batch(b) => AgentFrame::Batch(Batch {
                first_seq: b.first_seq,
                last_seq: b.last_seq,
                records: b
                    .records
                    .iter()
                    .map(|r| WireRecord {
                        seq: r.seq,
                        payload: r.payload.to_vec(),
                    })
                    .collect(),
            }),
        });
        assert_eq!(borrowed, owned, "{body:?}");
    }

    #[test]
    fn borrowed_batches_encode_like_owned_ones() {
        let AgentFrame::Batch(b) = batch(3) else {
            unreachable!()
        };
        assert_eq!(
            postcard::to_allocvec(&b.borrowed()).unwrap(),
            postcard::to_allocvec(&b).unwrap()
        );
        let mut buf = Vec::new();
        encode_frame(&AgentFrame::Batch(b.clone()), &mut buf).unwrap();
        let f: AgentFrameRef<'_> = decode_body_ref(&buf[HEADER_LEN..]).unwrap();
        assert_eq!(f, AgentFrameRef::Batch(b.borrowed()));
    }

    /// The agent encodes batches borrowed: the bytes must be exactly an owned batch's, or
    /// old aggregators could not read new agents.
    #[test]
    fn borrowed_frames_encode_like_owned_ones() {
        let frame = batch(5);
        let AgentFrame::Batch(b) = &frame else {
            unreachable!()
        };
        let (mut owned, mut borrowed) = (Vec::new(), Vec::new());
        encode_frame(&frame, &mut owned).unwrap();
        encode_frame(&AgentFrameRef::Batch(b.borrowed()), &mut borrowed).unwrap();
        assert_eq!(owned, borrowed);
        let status = AgentStatus {
            backlog_records: 3,
            ..Default::default()
        };
        let (mut owned, mut borrowed) = (Vec::new(), Vec::new());
        encode_frame(&AgentFrame::Status(status.clone()), &mut owned).unwrap();
        encode_frame(&AgentFrameRef::Status(status), &mut borrowed).unwrap();
        assert_eq!(owned, borrowed);
    }

    #[test]
    fn frames_round_trip_back_to_back() {
        let frames = vec![
            AgentFrame::Hello(Hello {
                min_version: 1,
                max_version: 1,
                software: "weir-agent test".into(),
                next_seq: 9,
            }),
            batch(3),
            AgentFrame::Status(AgentStatus::default()),
        ];
        let mut buf = Vec::new();
        for f in &frames {
            encode_frame(f, &mut buf).unwrap();
        }
        let mut at = 0;
        let mut got = Vec::new();
        while let Some((f, used)) = decode_frame::<AgentFrame>(&buf[at..]).unwrap() {
            got.push(f);
            at += used;
        }
        assert_eq!(at, buf.len());
        assert_eq!(got, frames);
    }

    #[test]
    fn partial_frames_wait_for_more() {
        let mut buf = Vec::new();
        encode_frame(&batch(2), &mut buf).unwrap();
        for cut in 0..buf.len() {
            assert!(decode_frame::<AgentFrame>(&buf[..cut]).unwrap().is_none());
        }
    }

    #[test]
    fn oversize_header_is_refused_before_allocating() {
        let header = ((MAX_FRAME_LEN + 1) as u32).to_be_bytes();
        assert!(matches!(
            frame_len(header),
            Err(WireError::FrameTooLarge { .. })
        ));
        assert!(decode_frame::<AgentFrame>(&header).is_err());
    }

    /// The frames exactly as a version 1 build declared them.
    mod v1 {
        use serde::{Deserialize, Serialize};

        #[derive(Debug, Clone, Serialize, Deserialize)]
        pub enum AggregatorFrame {
            HelloAck(super::HelloAck),
            Refused(super::Refused),
            Ack(super::Ack),
        }
    }

    fn v1_frame(kind: u8, seq: u64, text: String) -> (v1::AggregatorFrame, AggregatorFrame) {
        match kind % 3 {
            0 => {
                let h = HelloAck {
                    version: 1,
                    committed_seq: seq,
                    identity: text,
                };
                (
                    v1::AggregatorFrame::HelloAck(h.clone()),
                    AggregatorFrame::HelloAck(h),
                )
            }
            1 => {
                let r = Refused { reason: text };
                (
                    v1::AggregatorFrame::Refused(r.clone()),
                    AggregatorFrame::Refused(r),
                )
            }
            _ => {
                let a = Ack { committed_seq: seq };
                (v1::AggregatorFrame::Ack(a), AggregatorFrame::Ack(a))
            }
        }
    }

    #[test]
    fn trap_policy_round_trips_and_a_v1_decoder_refuses_it_cleanly() {
        use crate::trap_policy::{TagRule, TrapPolicy};
        let p = AggregatorFrame::TrapPolicy(TrapPolicy::new(vec![TagRule {
            pattern: "SNMP_WARM_START".into(),
            discard: true,
        }]));
        let mut buf = Vec::new();
        encode_frame(&p, &mut buf).unwrap();
        let (got, used) = decode_frame::<AggregatorFrame>(&buf).unwrap().unwrap();
        assert_eq!((got, used), (p, buf.len()));
        // Never sent to a v1 agent; if it were, the agent sees a malformed frame, not a panic.
        assert!(decode_frame::<v1::AggregatorFrame>(&buf).is_err());
    }

    #[test]
    fn negotiation() {
        assert_eq!(negotiate(1, 1), Some(1));
        assert_eq!(negotiate(1, 2), Some(2));
        assert_eq!(negotiate(2, 2), Some(2));
        assert_eq!(negotiate(1, 7), Some(PROTOCOL_VERSION));
        assert_eq!(negotiate(PROTOCOL_VERSION + 1, PROTOCOL_VERSION + 3), None);
        assert_eq!(negotiate(3, 2), None);
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = decode_frame::<AgentFrame>(&bytes);
            let _ = decode_frame::<AggregatorFrame>(&bytes);
            let _ = decode_body::<AgentFrame>(&bytes);
        }

        #[test]
        fn borrowed_frames_decode_exactly_what_owned_frames_do(
            flip in 0usize..4096, val in any::<u8>(), cut in 0usize..4096, n in 1u64..5,
            garbage in proptest::collection::vec(any::<u8>(), 0..512),
        ) {
            same_as_owned(&garbage);
            let mut buf = Vec::new();
            encode_frame(&batch(n), &mut buf).unwrap();
            let body = buf.split_off(HEADER_LEN);
            same_as_owned(&body);
            let mut mutated = body.clone();
            let i = flip % mutated.len();
            mutated[i] = val;
            same_as_owned(&mutated);
            mutated.truncate(cut % mutated.len());
            same_as_owned(&mutated);
        }

        #[test]
        fn mutated_frames_never_panic(flip in 0usize..4096, val in any::<u8>(), n in 1u64..5) {
            let mut buf = Vec::new();
            encode_frame(&batch(n), &mut buf).unwrap();
            let i = flip % buf.len();
            buf[i] = val;
            if let Ok(Some((AgentFrame::Batch(b), _))) = decode_frame::<AgentFrame>(&buf) {
                for r in b.records { let _ = Record::from_bytes(&r.payload); }
            }
        }

        #[test]
        fn v1_encoded_frames_decode_unchanged(kind in any::<u8>(), seq in any::<u64>(), text in ".{0,40}") {
            let (old, new) = v1_frame(kind, seq, text);
            let mut buf = Vec::new();
            encode_frame(&old, &mut buf).unwrap();
            let (f, used) = decode_frame::<AggregatorFrame>(&buf).unwrap().unwrap();
            prop_assert_eq!(used, buf.len());
            prop_assert_eq!(f, new.clone());
            // And what a v2 aggregator sends a v1 agent decodes there.
            let mut buf = Vec::new();
            encode_frame(&new, &mut buf).unwrap();
            prop_assert!(decode_frame::<v1::AggregatorFrame>(&buf).unwrap().is_some());
        }

        #[test]
        fn trap_policies_from_arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            // Variant index 3 (TrapPolicy) followed by arbitrary bytes.
            let mut body = vec![3u8];
            body.extend(bytes);
            if let Ok(AggregatorFrame::TrapPolicy(p)) = decode_body::<AggregatorFrame>(&body) {
                let _ = crate::trap_policy::CompiledPolicy::compile(&p).map(|c| c.discards("X"));
            }
        }

        #[test]
        fn acks_round_trip(seq in any::<u64>()) {
            let mut buf = Vec::new();
            encode_frame(&AggregatorFrame::Ack(Ack { committed_seq: seq }), &mut buf).unwrap();
            let (f, used) = decode_frame::<AggregatorFrame>(&buf).unwrap().unwrap();
            prop_assert_eq!(used, buf.len());
            prop_assert_eq!(f, AggregatorFrame::Ack(Ack { committed_seq: seq }));
        }
    }
}

/// Reading and writing frames on any `futures-io` stream (quinn's streams implement it).
pub mod io {
    use futures_util::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
    use serde::{Serialize, de::DeserializeOwned};

    use super::{HEADER_LEN, WireError, decode_body, encode_frame, frame_len};

    #[derive(Debug, thiserror::Error)]
    pub enum FrameIoError {
        #[error(transparent)]
        Wire(#[from] WireError),
        #[error("stream ended in the middle of a frame")]
        Truncated,
        #[error("{0}")]
        Io(#[from] std::io::Error),
    }

    /// Reads one frame; `Ok(None)` on a clean end of stream between frames. `buf` is reused
    /// between calls to avoid an allocation per frame.
    pub async fn read_frame<R, T>(r: &mut R, buf: &mut Vec<u8>) -> Result<Option<T>, FrameIoError>
    where
        R: AsyncRead + Unpin,
        T: DeserializeOwned,
    {
        if !read_frame_body(r, buf).await? {
            return Ok(None);
        }
        Ok(Some(decode_body(buf)?))
    }

    /// Reads one frame's body into `buf` (replacing its contents), for a caller that decodes
    /// it borrowed ([`super::decode_body_ref`]); `false` on a clean end of stream between
    /// frames.
    pub async fn read_frame_body<R>(r: &mut R, buf: &mut Vec<u8>) -> Result<bool, FrameIoError>
    where
        R: AsyncRead + Unpin,
    {
        let mut header = [0u8; HEADER_LEN];
        let mut got = 0;
        while got < HEADER_LEN {
            let n = r.read(&mut header[got..]).await?;
            if n == 0 {
                return if got == 0 {
                    Ok(false)
                } else {
                    Err(FrameIoError::Truncated)
                };
            }
            got += n;
        }
        let len = frame_len(header)?;
        buf.clear();
        // Grow the buffer as bytes arrive rather than to the announced length up front, so a
        // peer that announces a large frame and sends little costs only what it sent.
        const CHUNK: usize = 1024 * 1024;
        while buf.len() < len {
            let start = buf.len();
            buf.resize(start + (len - start).min(CHUNK), 0);
            r.read_exact(&mut buf[start..])
                .await
                .map_err(|e| match e.kind() {
                    std::io::ErrorKind::UnexpectedEof => FrameIoError::Truncated,
                    _ => FrameIoError::Io(e),
                })?;
        }
        Ok(true)
    }

    /// Encodes and writes one frame. `buf` is scratch space reused between calls.
    pub async fn write_frame<W, T>(
        w: &mut W,
        frame: &T,
        buf: &mut Vec<u8>,
    ) -> Result<(), FrameIoError>
    where
        W: AsyncWrite + Unpin,
        T: Serialize,
    {
        buf.clear();
        encode_frame(frame, buf)?;
        w.write_all(buf).await?;
        Ok(())
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use crate::wire::{Ack, AggregatorFrame};
        use futures_util::io::Cursor;

        #[test]
        fn write_then_read() {
            let mut out = Cursor::new(Vec::new());
            let mut scratch = Vec::new();
            let frames = [
                AggregatorFrame::Ack(Ack { committed_seq: 1 }),
                AggregatorFrame::Ack(Ack { committed_seq: 2 }),
            ];
            futures_executor_block_on(async {
                for f in &frames {
                    write_frame(&mut out, f, &mut scratch).await.unwrap();
                }
                let bytes = out.into_inner();
                let mut r = Cursor::new(bytes.clone());
                for f in &frames {
                    let got: AggregatorFrame =
                        read_frame(&mut r, &mut scratch).await.unwrap().unwrap();
                    assert_eq!(&got, f);
                }
                assert!(
                    read_frame::<_, AggregatorFrame>(&mut r, &mut scratch)
                        .await
                        .unwrap()
                        .is_none()
                );
                let mut cut = Cursor::new(bytes[..bytes.len() - 1].to_vec());
                read_frame::<_, AggregatorFrame>(&mut cut, &mut scratch)
                    .await
                    .unwrap();
                assert!(matches!(
                    read_frame::<_, AggregatorFrame>(&mut cut, &mut scratch).await,
                    Err(FrameIoError::Truncated)
                ));
            });
        }

        /// A minimal executor: the futures here never pend (in-memory cursors).
        fn futures_executor_block_on<F: std::future::Future>(f: F) -> F::Output {
            use std::task::{Context, Poll, Waker};
            let mut f = std::pin::pin!(f);
            let mut cx = Context::from_waker(Waker::noop());
            match f.as_mut().poll(&mut cx) {
                Poll::Ready(v) => v,
                Poll::Pending => panic!("in-memory I/O should not pend"),
            }
        }
    }
}
