//! The underlay side of the userspace device with UDP segmentation offload (`UDP_SEGMENT`): a
//! run of same-sized datagrams to one peer leaves in one `sendmsg`, as one packet through the
//! kernel's stack (veths, bridges, the routers' NAT), cut into datagrams only where a device
//! needs it. gotatun already receives with `UDP_GRO` and sends with `sendmmsg`; `sendmmsg`
//! still costs the kernel one trip through the stack per datagram.
//!
//! Receiving, binding and single sends stay gotatun's own socket.

use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use gotatun::packet::Packet;
use gotatun::udp::socket::{UdpSocket, UdpSocketFactory};
use gotatun::udp::{UdpSend, UdpTransportFactory, UdpTransportFactoryParams};
use nix::sys::socket::{ControlMessage, MsgFlags, SockaddrStorage, sendmsg};
use tokio::io::Interest;

/// The kernel's limit on segments per send (`UDP_MAX_SEGMENTS`).
const MAX_SEGMENTS: usize = 64;
/// Bytes of payload per send: under IPv4's 65,507, with room to spare.
const MAX_SEND_BYTES: usize = 65_000;

/// gotatun's socket factory, whose sockets send runs with `UDP_SEGMENT`.
pub(crate) struct GsoUdpFactory(pub(crate) UdpSocketFactory);

impl UdpTransportFactory for GsoUdpFactory {
    type Send = GsoUdpSend;
    type Recv = UdpSocket;

    async fn bind(
        &mut self,
        params: &UdpTransportFactoryParams,
    ) -> io::Result<(Self::Send, Self::Recv)> {
        let (send, recv) = self.0.bind(params).await?;
        let send = GsoUdpSend {
            socket: send,
            gso_works: Arc::new(AtomicBool::new(true)),
        };
        Ok((send, recv))
    }
}

#[derive(Clone)]
pub(crate) struct GsoUdpSend {
    socket: UdpSocket,
    /// Cleared for good when the kernel refuses segmentation on this socket (EIO: no checksum
    /// offload on the route), as wireguard-go does.
    gso_works: Arc<AtomicBool>,
}

/// Splits `packets` into runs that one segmented send can carry: same destination, every
/// datagram as long as the first but the last, which may be shorter; at most [`MAX_SEGMENTS`]
/// and [`MAX_SEND_BYTES`]. Returns the runs' lengths, in order.
pub(crate) fn segment_runs(packets: &[(usize, SocketAddr)]) -> Vec<usize> {
    let mut runs = Vec::new();
    let mut i = 0;
    while i < packets.len() {
        let (size, dst) = packets[i];
        let mut end = i + 1;
        let mut bytes = size;
        while end < packets.len() && end - i < MAX_SEGMENTS {
            let (next, next_dst) = packets[end];
            if next_dst != dst || next > size || bytes + next > MAX_SEND_BYTES || size == 0 {
                break;
            }
            bytes += next;
            end += 1;
            if next < size {
                break;
            }
        }
        runs.push(end - i);
        i = end;
    }
    runs
}

impl GsoUdpSend {
    /// One `sendmsg` of `run` with `UDP_SEGMENT`; `Ok(false)` if the kernel refused to segment.
    async fn send_segmented(&self, run: &[(Packet, SocketAddr)]) -> io::Result<bool> {
        let Some((first, dst)) = run.first() else {
            return Ok(true);
        };
        let Ok(segment) = u16::try_from(first.len()) else {
            return Ok(false);
        };
        let iov: Vec<IoSlice<'_>> = run.iter().map(|(p, _)| IoSlice::new(&p[..])).collect();
        let addr = SockaddrStorage::from(*dst);
        let socket = self.socket.socket();
        let fd = socket.as_raw_fd();
        let sent = socket
            .async_io(Interest::WRITABLE, || {
                sendmsg(
                    fd,
                    &iov,
                    &[ControlMessage::UdpGsoSegments(&segment)],
                    MsgFlags::MSG_DONTWAIT,
                    Some(&addr),
                )
                .map_err(io::Error::from)
            })
            .await;
        match sent {
            Ok(_) => Ok(true),
            // EIO: the route cannot segment (no checksum offload); EINVAL: a segment is larger
            // than the route's MTU allows. Both: send this run datagram by datagram.
            Err(e) if e.raw_os_error() == Some(libc::EIO) => {
                if self.gso_works.swap(false, Ordering::Relaxed) {
                    tracing::warn!("UDP segmentation offload refused (EIO); sending datagrams");
                }
                Ok(false)
            }
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

impl UdpSend for GsoUdpSend {
    type SendManyBuf = <UdpSocket as UdpSend>::SendManyBuf;

    async fn send_to(&self, packet: Packet, destination: SocketAddr) -> io::Result<()> {
        self.socket.send_to(packet, destination).await
    }

    /// Sends in order: datagrams that cannot go segmented (runs of one, runs the kernel refused)
    /// wait in `plain` only until the next segmented run, which flushes them first. A failed send
    /// does not stop the others (other peers' routes are fine); the first error is returned.
    async fn send_many_to(
        &self,
        buf: &mut Self::SendManyBuf,
        packets: &mut Vec<(Packet, SocketAddr)>,
    ) -> io::Result<()> {
        if !self.gso_works.load(Ordering::Relaxed) {
            return self.socket.send_many_to(buf, packets).await;
        }
        let shape: Vec<(usize, SocketAddr)> = packets.iter().map(|(p, a)| (p.len(), *a)).collect();
        let mut queued = packets.drain(..);
        let mut plain: Vec<(Packet, SocketAddr)> = Vec::new();
        let mut first_error = None;
        for len in segment_runs(&shape) {
            let run: Vec<(Packet, SocketAddr)> = queued.by_ref().take(len).collect();
            if len == 1 || !self.gso_works.load(Ordering::Relaxed) {
                plain.extend(run);
                continue;
            }
            if !plain.is_empty()
                && let Err(e) = self.socket.send_many_to(buf, &mut plain).await
            {
                plain.clear();
                first_error.get_or_insert(e);
            }
            match self.send_segmented(&run).await {
                Ok(true) => {}
                Ok(false) => plain.extend(run),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        drop(queued);
        if !plain.is_empty()
            && let Err(e) = self.socket.send_many_to(buf, &mut plain).await
        {
            first_error.get_or_insert(e);
        }
        first_error.map_or(Ok(()), Err)
    }

    fn max_number_of_packets_to_send(&self) -> usize {
        self.socket.max_number_of_packets_to_send()
    }

    fn local_addr(&self) -> io::Result<Option<SocketAddr>> {
        UdpSend::local_addr(&self.socket)
    }

    fn set_fwmark(&self, mark: u32) -> io::Result<()> {
        self.socket.set_fwmark(mark)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use gotatun::udp::socket::SockOpt;
    use std::time::Duration;

    /// Regression: datagrams that could not go segmented (a run of one) were sent after the
    /// segmented runs behind them, reordering a peer's packets.
    #[tokio::test]
    async fn a_peer_gets_its_datagrams_in_order_segmented_or_not() {
        let bind = || {
            let r = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            r.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            r
        };
        let (ra, rb) = (bind(), bind());
        let (a, b) = (ra.local_addr().unwrap(), rb.local_addr().unwrap());
        let socket = UdpSocket::bind("127.0.0.1:0".parse().unwrap(), SockOpt::default()).unwrap();
        let send = GsoUdpSend {
            socket,
            gso_works: Arc::new(AtomicBool::new(true)),
        };
        // (destination, size): a lone short one, a run, one to b, a run ending shorter.
        let plan = [
            (a, 500),
            (a, 1200),
            (a, 1200),
            (a, 1200),
            (b, 300),
            (a, 1200),
        ]
        .into_iter()
        .chain([(a, 1200), (a, 700)]);
        let mut packets: Vec<(Packet, SocketAddr)> = plan
            .enumerate()
            .map(|(seq, (dst, size))| {
                let mut bytes = BytesMut::zeroed(size);
                bytes[0] = seq as u8;
                (Packet::from_bytes(bytes), dst)
            })
            .collect();
        let mut buf = Default::default();
        send.send_many_to(&mut buf, &mut packets).await.unwrap();
        let received = |r: &std::net::UdpSocket, n: usize| {
            let mut got = Vec::new();
            let mut data = [0u8; 2048];
            for _ in 0..n {
                let len = r.recv(&mut data).unwrap();
                got.push((data[0], len));
            }
            got
        };
        assert_eq!(
            received(&ra, 7),
            vec![
                (0, 500),
                (1, 1200),
                (2, 1200),
                (3, 1200),
                (5, 1200),
                (6, 1200),
                (7, 700)
            ]
        );
        assert_eq!(received(&rb, 1), vec![(4, 300)]);
        assert!(send.gso_works.load(Ordering::Relaxed), "loopback segments");
    }

    fn a(port: u16) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, 1], port))
    }

    #[test]
    fn a_run_ends_at_a_shorter_datagram_another_peer_or_the_segment_limit() {
        let p = |size, port| (size, a(port));
        let runs = segment_runs(&[
            p(1400, 1),
            p(1400, 1),
            p(900, 1), // shorter: ends the run, included
            p(1400, 1),
            p(1400, 2), // another peer
            p(1400, 2),
            p(1500, 2), // longer: cannot follow
        ]);
        assert_eq!(runs, vec![3, 1, 2, 1]);
        let many = vec![p(1000, 1); 100];
        assert_eq!(segment_runs(&many), vec![64, 36]);
        let big = vec![p(1400, 1); 60];
        // 46 × 1,400 = 64,400 ≤ 65,000 < 47 × 1,400
        assert_eq!(segment_runs(&big), vec![46, 14]);
        assert_eq!(segment_runs(&[]), Vec::<usize>::new());
    }
}
