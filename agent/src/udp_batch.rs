//! Batched UDP receive, shared by the syslog and SNMP listeners: one `recvmmsg(2)` call takes up
//! to [`BATCH`] datagrams into fixed slots of one buffer, and reports the socket's kernel drop
//! counter (`SO_RXQ_OVFL`, which the listeners turn on when they bind). Each listener socket
//! is read by a thread of its own ([`on_own_thread`]).
//!
//! [`Gather`] decides when a listener lets datagrams gather before its next call. Without it, a
//! listener that keeps up takes each datagram almost as it lands: at 285k datagrams/s from one
//! sender the syslog listener made 184k `recvmmsg` calls and 52k `epoll_wait` calls a second,
//! 1.5 datagrams a call, and those calls were most of its CPU.

use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::os::fd::AsRawFd as _;
use std::time::Duration;

use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrStorage};

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

/// How long a listener thread's receive waits for a first datagram before it looks at its
/// shutdown token again (so an agent stopping waits at most this long for its UDP threads).
const SHUTDOWN_POLL: Duration = Duration::from_millis(200);

/// Runs a UDP listener's receive loop on a thread of its own named `name`, with the caller's
/// tracing span and the runtime's handle (to hand batches to the sink with
/// `Handle::block_on`); resolves when the thread ends, however it ends. `sock` is made
/// blocking, with a [`SHUTDOWN_POLL`] read timeout ([`make_blocking`], at bind time).
///
/// Why a thread and not a task: while a task waits for its socket, tokio keeps the socket
/// registered with epoll, and every datagram that lands wakes a worker thread, even while the
/// task sleeps in [`Gather`]'s pause. A thread blocked in `recvmmsg` is woken once per batch,
/// and while it sleeps in the pause, not at all. Backpressure is the same: while the sink is
/// full the thread waits and datagrams queue in the kernel's receive buffer.
pub(crate) async fn on_own_thread(
    name: &'static str,
    sock: std::net::UdpSocket,
    receive: impl FnOnce(std::net::UdpSocket, tokio::runtime::Handle) + Send + 'static,
) {
    #[cfg(test)]
    let recorder = TEST_RECORDER.with(|r| r.borrow().clone());
    let local = sock.local_addr().map(|a| a.to_string()).unwrap_or_default();
    let span = tracing::Span::current();
    let runtime = tokio::runtime::Handle::current();
    let (done, finished) = tokio::sync::oneshot::channel::<()>();
    let started = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let _span = span.enter();
            #[cfg(test)]
            let _recorder = recorder
                .as_deref()
                .map(|r| metrics::set_default_local_recorder(r));
            receive(sock, runtime);
            let _ = done.send(());
        });
    match started {
        Ok(_) => {
            // Without the message the thread ended by a panic (the sender was dropped).
            if finished.await.is_err() {
                tracing::error!(
                    %local,
                    "the {name} receive thread stopped unexpectedly (a bug: see the panic logged \
                     above); this socket is closed until the agent restarts"
                );
            }
        }
        Err(e) => tracing::error!(
            %local, error = %e,
            "could not start the {name} receive thread, so this socket is closed (senders get \
             ICMP port unreachable, or with several sockets per address the others take their \
             datagrams); free memory or raise the thread limit and restart the agent"
        ),
    }
}

/// Makes a listener's socket blocking, with a [`SHUTDOWN_POLL`] read timeout, for
/// [`on_own_thread`] (at bind time, so a failure stops the agent from starting).
pub(crate) fn make_blocking(sock: &std::net::UdpSocket) -> io::Result<()> {
    sock.set_nonblocking(false)?;
    sock.set_read_timeout(Some(SHUTDOWN_POLL))
}

#[cfg(test)]
thread_local! {
    /// A test's metrics recorder, for the listener threads [`on_own_thread`] starts from the
    /// test's thread (`metrics::set_default_local_recorder` covers only the thread it is
    /// called on).
    pub(crate) static TEST_RECORDER: std::cell::RefCell<
        Option<std::sync::Arc<metrics_exporter_prometheus::PrometheusRecorder>>,
    > = const { std::cell::RefCell::new(None) };
}

/// Whether a blocking receive's error only means nothing came within [`SHUTDOWN_POLL`] (or a
/// signal interrupted it): look at the shutdown token and receive again.
pub(crate) fn is_idle(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

/// Receives up to [`BATCH`] datagrams on a listener thread's blocking socket
/// ([`on_own_thread`]), datagram `i` into `bufs[i * slot..(i + 1) * slot]`, replacing `out` with
/// what arrived. Returns the socket's cumulative kernel drop count when the kernel reported one
/// with these datagrams.
///
/// With `wait`, waits for the first datagram (at most the read timeout: then an error
/// [`is_idle`] accepts), then takes what else is waiting without waiting more
/// (`MSG_WAITFORONE`); without, never waits (`WouldBlock` when nothing is there).
///
/// The slots' pages are only touched as far as datagrams fill them, so a large `slot` costs
/// address space, not memory.
pub(crate) fn recv_batch(
    sock: &std::net::UdpSocket,
    bufs: &mut [u8],
    slot: usize,
    out: &mut Vec<Datagram>,
    wait: bool,
) -> io::Result<Option<u32>> {
    let flags = if wait {
        MsgFlags::MSG_WAITFORONE
    } else {
        MsgFlags::MSG_DONTWAIT
    };
    assert!(
        slot > 0 && bufs.len() >= slot * BATCH,
        "recv_batch needs BATCH slots"
    );
    out.clear();
    // Built per call: a few allocations per batch, not per datagram.
    let mut headers =
        MultiHeaders::<SockaddrStorage>::preallocate(BATCH, Some(nix::cmsg_space!(u32)));
    let mut chunks = bufs.chunks_exact_mut(slot);
    let mut iovs: [[IoSliceMut<'_>; 1]; BATCH] =
        std::array::from_fn(|_| [IoSliceMut::new(chunks.next().expect("BATCH slots"))]);
    let results =
        nix::sys::socket::recvmmsg(sock.as_raw_fd(), &mut headers, iovs.iter_mut(), flags, None)
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
}

/// Longest a listener waits after a receive that took some datagrams but not a full batch,
/// before it receives again: more are probably on their way, and one call then takes them all.
const GATHER_PAUSE: Duration = Duration::from_millis(1);

/// What the kernel charges a receive buffer per microsecond for the fastest stream the wait is
/// sized for: 800k 200-byte datagrams a second, each counted as 1,280 bytes on loopback.
const FILL_BYTES_PER_US: usize = 1024;

/// Shorter waits than this are not worth a sleep (a tiny receive buffer): no wait then.
const GATHER_MIN_PAUSE: Duration = Duration::from_micros(50);

/// When a listener waits for datagrams to gather between receives, and how long: at most
/// [`GATHER_PAUSE`], and never more than half the time the socket's receive buffer takes to
/// fill at [`FILL_BYTES_PER_US`], so the wait itself cannot overflow it (an 8 MiB buffer: the
/// full millisecond; the kernel's 208 KiB default: 208 µs).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Gather {
    pause: Option<Duration>,
}

impl Gather {
    /// Sized for `sock`'s receive buffer (`SO_RCVBUF` as the kernel reports it, which is
    /// what it compares its per-datagram charges with).
    pub(crate) fn for_socket(sock: &impl std::os::fd::AsFd) -> Gather {
        let buffer = socket2::SockRef::from(sock).recv_buffer_size().unwrap_or(0);
        Gather::for_buffer(buffer)
    }

    fn for_buffer(bytes: usize) -> Gather {
        let pause = Duration::from_micros((bytes / FILL_BYTES_PER_US / 2) as u64).min(GATHER_PAUSE);
        Gather {
            pause: (pause >= GATHER_MIN_PAUSE).then_some(pause),
        }
    }

    /// After a receive that took `received` datagrams of at most `batch`: the wait before the
    /// next one. Only when some came but fewer than a full batch: a full batch means more are
    /// waiting (receive at once), none means the socket is drained (wait for the next datagram).
    pub(crate) fn pause_after(&self, received: usize, batch: usize) -> Option<Duration> {
        self.pause.filter(|_| received > 0 && received < batch)
    }

    /// Sleeps what is left of [`Gather::pause_after`] since the receive returned at `since`:
    /// time spent handing the batch over (a sink pushing back, a commit an Inform waits for)
    /// already let datagrams gather, and waiting the whole pause on top of it could overflow
    /// the buffer the pause was sized for.
    pub(crate) fn sleep_after(&self, received: usize, batch: usize, since: std::time::Instant) {
        let left = self
            .pause_after(received, batch)
            .and_then(|p| p.checked_sub(since.elapsed()));
        if let Some(left) = left.filter(|l| !l.is_zero()) {
            std::thread::sleep(left);
        }
    }
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
    fn the_gather_wait_fits_the_receive_buffer() {
        let pause = |bytes| Gather::for_buffer(bytes).pause;
        // 8 MiB asked (16 MiB reported) or 2 MiB reported: the full millisecond.
        assert_eq!(pause(16 << 20), Some(GATHER_PAUSE));
        assert_eq!(pause(2 << 20), Some(GATHER_PAUSE));
        // The kernel's default (212,992 bytes, reported doubled): 208 µs, half its fill time.
        assert_eq!(pause(425_984), Some(Duration::from_micros(208)));
        // A 16 KiB buffer: too small to wait on at all.
        assert_eq!(pause(32 << 10), None);
        assert_eq!(pause(0), None);
    }

    #[test]
    fn the_gather_wait_follows_only_partial_batches() {
        let g = Gather::for_buffer(2 << 20);
        assert_eq!(
            g.pause_after(0, BATCH),
            None,
            "drained: wait for the next datagram"
        );
        assert_eq!(g.pause_after(1, BATCH), Some(GATHER_PAUSE));
        assert_eq!(g.pause_after(BATCH - 1, BATCH), Some(GATHER_PAUSE));
        assert_eq!(g.pause_after(BATCH, BATCH), None, "full: more are waiting");
        assert_eq!(Gather::for_buffer(0).pause_after(1, BATCH), None);
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
