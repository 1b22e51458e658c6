//! Batched UDP receive, shared by the syslog and SNMP listeners: one `recvmmsg(2)` call takes up
//! to [`BATCH`] datagrams into fixed slots of one buffer, and reports the socket's kernel drop
//! counter (`SO_RXQ_OVFL`, which the listeners turn on when they bind).

use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::os::fd::AsRawFd as _;

use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrStorage};
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Most datagrams one call takes.
pub(crate) const BATCH: usize = 64;

/// One received datagram: its bytes are the first `len` bytes of its slot.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Datagram {
    /// Bytes received, at most the slot's size.
    pub len: usize,
    /// The sender; `None` for an address family other than IPv4 or IPv6.
    pub peer: Option<SocketAddr>,
    /// The datagram was longer than its slot and was cut (`MSG_TRUNC`).
    pub truncated: bool,
}

/// Receives up to [`BATCH`] datagrams without waiting, datagram `i` into
/// `bufs[i * slot..(i + 1) * slot]`, replacing `out` with what arrived. Returns the socket's
/// cumulative kernel drop count when the kernel reported one with these datagrams.
/// `WouldBlock` when nothing is waiting.
///
/// The slots' pages are only touched as far as datagrams fill them, so a large `slot` costs
/// address space, not memory.
pub(crate) fn recv_batch(
    sock: &UdpSocket,
    bufs: &mut [u8],
    slot: usize,
    out: &mut Vec<Datagram>,
) -> io::Result<Option<u32>> {
    assert!(
        slot > 0 && bufs.len() >= slot * BATCH,
        "recv_batch needs BATCH slots"
    );
    out.clear();
    let fd = sock.as_raw_fd();
    sock.try_io(Interest::READABLE, || {
        // Built per call (a few allocations per batch, not per datagram): nix's headers hold
        // raw pointers, so they cannot live across an await in a Send task.
        let mut headers =
            MultiHeaders::<SockaddrStorage>::preallocate(BATCH, Some(nix::cmsg_space!(u32)));
        let mut chunks = bufs.chunks_exact_mut(slot);
        let mut iovs: [[IoSliceMut<'_>; 1]; BATCH] =
            std::array::from_fn(|_| [IoSliceMut::new(chunks.next().expect("BATCH slots"))]);
        let results = nix::sys::socket::recvmmsg(
            fd,
            &mut headers,
            iovs.iter_mut(),
            MsgFlags::MSG_DONTWAIT,
            None,
        )
        .map_err(io::Error::from)?;
        let mut drops = None;
        for r in results {
            if let Ok(cmsgs) = r.cmsgs() {
                for c in cmsgs {
                    if let nix::sys::socket::ControlMessageOwned::RxqOvfl(n) = c {
                        // In arrival order: the last is the newest (the counter wraps).
                        drops = Some(n);
                    }
                }
            }
            out.push(Datagram {
                len: r.bytes.min(slot),
                peer: r.address.as_ref().and_then(socket_addr),
                truncated: r.flags.contains(MsgFlags::MSG_TRUNC),
            });
        }
        Ok(drops)
    })
}

/// The sender, with an IPv6 address's scope id and flow info kept: a reply to a link-local
/// sender (`fe80::1%eth0`) needs its scope.
fn socket_addr(a: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(a) = a.as_sockaddr_in() {
        return Some(SocketAddr::V4((*a).into()));
    }
    a.as_sockaddr_in6().map(|a| SocketAddr::V6((*a).into()))
}

/// A socket's cumulative kernel drop counter (`SO_RXQ_OVFL`, a `u32` that wraps), turned into
/// the drops since the last report.
#[derive(Debug, Default)]
pub(crate) struct KernelDrops {
    last: u32,
}

impl KernelDrops {
    /// Datagrams the kernel dropped since the last call, given what [`recv_batch`] returned.
    pub(crate) fn observe(&mut self, reported: Option<u32>) -> u32 {
        let Some(n) = reported else { return 0 };
        let lost = n.wrapping_sub(self.last);
        self.last = n;
        lost
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_drops_count_across_the_counter_wrapping() {
        let mut k = KernelDrops::default();
        assert_eq!(k.observe(None), 0);
        assert_eq!(k.observe(Some(5)), 5);
        assert_eq!(k.observe(Some(5)), 0);
        assert_eq!(k.observe(Some(u32::MAX - 1)), u32::MAX - 6);
        assert_eq!(k.observe(Some(3)), 5, "wrapped: MAX-1 -> 3 is 5 drops");
    }

    #[test]
    fn ipv6_senders_keep_their_scope() {
        let v6: std::net::SocketAddrV6 = "[fe80::1]:162".parse().unwrap();
        let v6 = std::net::SocketAddrV6::new(*v6.ip(), v6.port(), 0, 7);
        let storage = SockaddrStorage::from(SocketAddr::V6(v6));
        assert_eq!(socket_addr(&storage), Some(SocketAddr::V6(v6)));
        let v4: SocketAddr = "192.0.2.1:514".parse().unwrap();
        assert_eq!(socket_addr(&SockaddrStorage::from(v4)), Some(v4));
    }
}
