//! Socket set-up shared by the agent's UDP listeners and the aggregator's QUIC socket.

use std::net::SocketAddr;
use std::ops::RangeInclusive;

/// Receive buffers a config may ask for: less than 64 KiB would shrink the kernel's default
/// (about 208 KiB), more than 1 GiB is a typo.
pub const RECEIVE_BUFFER_RANGE: RangeInclusive<u64> = 64 << 10..=1 << 30;

/// What is wrong with a configured receive buffer of `bytes`, if anything (see
/// [`RECEIVE_BUFFER_RANGE`]).
pub fn receive_buffer_problem(bytes: u64) -> Option<&'static str> {
    (!RECEIVE_BUFFER_RANGE.contains(&bytes)).then_some(
        "must be between 64KiB and 1GiB (less than the kernel's default would shrink it)",
    )
}

/// Asks for `want` bytes of receive buffer on `sock`, the `what` socket (`syslog UDP`,
/// `QUIC socket's`) at `addr`. When `warn_capped` and the kernel grants less (it caps the size at
/// `net.core.rmem_max`), warns, naming the sysctl and `overflow`: what becomes of what the
/// buffer cannot hold. Returns the size granted, when the kernel says.
pub fn grow_receive_buffer(
    sock: socket2::SockRef<'_>,
    addr: SocketAddr,
    want: usize,
    warn_capped: bool,
    what: &str,
    overflow: &str,
) -> Option<usize> {
    if let Err(e) = sock.set_recv_buffer_size(want) {
        tracing::warn!(%addr, error = %e, "could not enlarge the {what} receive buffer; bursts may {overflow}");
        return None;
    }
    // Linux reports twice what it granted (its bookkeeping share): half of the reported size
    // below `want` means capped.
    match sock.recv_buffer_size() {
        Ok(got) => {
            if got / 2 < want && warn_capped {
                tracing::warn!(
                    %addr, requested = want, granted = got / 2,
                    "the kernel capped the {what} receive buffer (net.core.rmem_max), so bursts \
                     may overflow it and {overflow}; raise it with `sysctl -w \
                     net.core.rmem_max={}` and persist it in /etc/sysctl.d/",
                    want.next_power_of_two()
                );
            }
            Some(got / 2)
        }
        Err(e) => {
            tracing::debug!(%addr, error = %e, "could not read back the {what} receive buffer size");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn receive_buffers_between_64_kib_and_1_gib_are_accepted() {
        for ok in [64 << 10, 8 << 20, 1 << 30] {
            assert_eq!(super::receive_buffer_problem(ok), None, "{ok}");
        }
        for bad in [0, (64 << 10) - 1, (1 << 30) + 1] {
            assert!(super::receive_buffer_problem(bad).is_some(), "{bad}");
        }
    }

    /// The socket gets the buffer asked for, not the kernel's default
    /// (`net.core.rmem_default`, 208 KiB on most systems).
    #[test]
    fn a_socket_gets_the_receive_buffer_asked_for() {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = socket.local_addr().unwrap();
        // Below the smallest usual net.core.rmem_max (208 KiB), so never capped.
        let granted =
            super::grow_receive_buffer((&socket).into(), addr, 150_000, true, "test", "be lost");
        assert_eq!(granted, Some(150_000));
        let reported = socket2::SockRef::from(&socket).recv_buffer_size().unwrap();
        assert_eq!(reported, 300_000, "Linux reports twice the size set");
    }
}
