//! The UDP syslog input: one datagram, one message.
//!
//! Each socket has its own receive loop, which takes up to [`BATCH`] datagrams per
//! `recvmmsg(2)` call and hands them to the sink as one submission. With `udp_sockets_per_address` above 1, the
//! address is bound that many times with `SO_REUSEPORT` and the kernel spreads senders over the
//! sockets by their address and port (one sender always lands on the same socket).
//!
//! Loss is visible: datagrams the kernel drops because a socket's receive buffer is full are
//! counted per socket through `SO_RXQ_OVFL` (`weir_agent_syslog_udp_socket_drops_total`, by
//! `listener`, and `weir_agent_dropped_total{reason="udp_receive_buffer"}`, which the agent's
//! status carries to the aggregator), and for the whole host in
//! `weir_agent_kernel_udp_rcvbuf_errors`. The kernel reports a socket's count with the next
//! datagram it delivers, so a burst's loss shows once traffic resumes. A datagram
//! longer than `max_message_bytes` is cut by the kernel to the receive slot and flagged
//! truncated.
//!
//! Each socket has a thread of its own (see [`run`] for why not a task). Between receives the
//! thread lets datagrams gather for a millisecond when a call took some but not a full batch
//! ([`crate::udp_batch::Gather`]), so a steady stream is taken in full batches rather than one
//! or two datagrams per system call.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use jiff::Timestamp;
use nix::sys::socket::sockopt;
use socket2::{Domain, Protocol, Socket, Type};
use tokio_util::sync::CancellationToken;

use super::{encode, submit};
use crate::pipeline::Sink;
use crate::queue::Encoded;
use crate::udp_batch::{Datagram, Gather};

/// Most datagrams taken per `recvmmsg` call and handed over per submission.
pub(super) use crate::udp_batch::BATCH;

/// Binds `count` sockets on `addr` (with `SO_REUSEPORT` when more than one) and asks for a
/// receive buffer of `rcvbuf` bytes on each, warning when the kernel grants less.
pub(super) fn bind(
    addr: SocketAddr,
    count: usize,
    rcvbuf: usize,
) -> io::Result<Vec<std::net::UdpSocket>> {
    let mut out = Vec::with_capacity(count);
    let mut bound = addr;
    for i in 0..count.max(1) {
        let sock = Socket::new(Domain::for_address(bound), Type::DGRAM, Some(Protocol::UDP))?;
        if count > 1 {
            sock.set_reuse_port(true)?;
        }
        weir_common::net::grow_receive_buffer(
            socket2::SockRef::from(&sock),
            addr,
            rcvbuf,
            i == 0,
            "syslog UDP",
            "lose datagrams (counted in weir_agent_syslog_udp_socket_drops_total)",
        );
        sock.bind(&bound.into())?;
        // Port 0: the later sockets join the port the first one got.
        bound = sock.local_addr()?.as_socket().unwrap_or(bound);
        let sock: std::net::UdpSocket = sock.into();
        crate::udp_batch::make_blocking(&sock)?;
        // Per-socket drop counts ride along with received datagrams.
        if let Err(e) = nix::sys::socket::setsockopt(&sock, sockopt::RxqOvfl, &1) {
            tracing::debug!(%addr, error = %e, "SO_RXQ_OVFL unavailable; only the host-wide UDP drop count is exported");
        }
        out.push(sock);
    }
    Ok(out)
}

/// Receives on `sock` until `shutdown`, in batches of up to [`BATCH`] datagrams, on a thread of
/// its own (`syslog-udp`, see [`crate::udp_batch::on_own_thread`] for why); finishes when that
/// thread does.
pub(super) async fn run(
    sock: std::net::UdpSocket,
    max_message: usize,
    parser: std::sync::Arc<super::Parser>,
    sink: Sink,
    shutdown: CancellationToken,
) {
    crate::udp_batch::on_own_thread("syslog-udp", sock, move |sock, runtime| {
        receive(&sock, max_message, &parser, &sink, &shutdown, &runtime);
    })
    .await;
    tracing::debug!("syslog UDP listener stopped");
}

/// The receive loop of [`run`]'s thread.
fn receive(
    sock: &std::net::UdpSocket,
    max_message: usize,
    parser: &super::Parser,
    sink: &Sink,
    shutdown: &CancellationToken,
    runtime: &tokio::runtime::Handle,
) {
    let local = sock.local_addr().map(|a| a.to_string()).unwrap_or_default();
    let socket_drops =
        metrics::counter!("weir_agent_syslog_udp_socket_drops_total", "listener" => local.clone());
    let received = metrics::counter!("weir_agent_received_total", "input" => "syslog_udp");
    // One receive slot per datagram; a longer datagram is cut by the kernel (MSG_TRUNC).
    // The pages of the slots are only touched as far as datagrams fill them.
    let slot = max_message.clamp(1, 64 << 10);
    let mut bufs = vec![0u8; slot * BATCH];
    let mut metas = Vec::with_capacity(BATCH);
    let mut kernel_drops = crate::udp_batch::KernelDrops::default();
    let gather = Gather::for_socket(sock);
    while !shutdown.is_cancelled() {
        let lost = match crate::udp_batch::recv_batch(sock, &mut bufs, slot, &mut metas, true) {
            Ok(drops) => kernel_drops.observe(drops),
            // The read timeout: look at `shutdown`, then wait again.
            Err(e) if crate::udp_batch::is_idle(&e) => continue,
            Err(e) => {
                weir_common::warn_limited!("syslog_udp_recv", %local, error = %e, "receiving syslog datagrams failed");
                // Do not spin on a persistent error.
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        if lost > 0 {
            socket_drops.increment(u64::from(lost));
            // Also a drop like any other: in weir_agent_dropped_total and the agent's status.
            sink.drops.count_n("udp_receive_buffer", u64::from(lost));
            weir_common::warn_limited!(
                "syslog_udp_overflow", %local, lost,
                "the kernel dropped syslog datagrams because this socket's receive buffer was \
                 full: raise net.core.rmem_max and [syslog] udp_receive_buffer, or add \
                 udp_sockets_per_address"
            );
        }
        let since = std::time::Instant::now();
        let received_at = Timestamp::now();
        let mut batch = Vec::with_capacity(metas.len());
        for (m, data) in metas.iter().zip(bufs.chunks_exact(slot)) {
            take_datagram(
                parser,
                &data[..m.len.min(slot)],
                m,
                received_at,
                sink,
                &mut batch,
            );
        }
        if !batch.is_empty() {
            received.increment(batch.len() as u64);
            if !runtime.block_on(submit(sink, batch, shutdown)) {
                break;
            }
        }
        gather.sleep_after(metas.len(), BATCH, since);
    }
}

fn take_datagram(
    parser: &super::Parser,
    data: &[u8],
    meta: &Datagram,
    received_at: Timestamp,
    sink: &Sink,
    batch: &mut Vec<Encoded>,
) {
    if data.iter().all(|b| b.is_ascii_whitespace() || *b == 0) {
        sink.drops.count("empty_message");
        return;
    }
    // IPv4-mapped IPv6 senders (a dual-stack socket) are shown as the IPv4 address they are.
    let peer = meta
        .peer
        .map_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), |a| {
            a.ip().to_canonical()
        });
    batch.push(encode(
        parser,
        sink,
        data,
        meta.truncated,
        peer,
        "syslog_udp",
        received_at,
    ));
}
