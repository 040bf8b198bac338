//! An ICMP echo from inside a node's network namespace, sent by a thread of this process that
//! entered it: `status` of a 1,050-node cluster probes 3,500 pairs, and a `ping` process for
//! each (started through `nsenter`: two programs) was most of its time.

use std::io::Read as _;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// Echo requests one every this long, until one is answered.
const INTERVAL: Duration = Duration::from_millis(200);

/// Each echo's identifier: a raw socket sees every echo reply of its namespace, and probes run
/// side by side in one namespace.
static NEXT_ID: AtomicU16 = AtomicU16::new(1);

/// Whether `to` answers an echo request sent from the network namespace `ns` (one every 200 ms,
/// for at most `within`). False if the namespace cannot be entered.
pub fn answers(ns: &str, to: Ipv4Addr, within: Duration) -> bool {
    // `setns` changes the calling thread only: a thread of its own enters and ends.
    std::thread::scope(|s| {
        s.spawn(|| echo_from(ns, to, within).unwrap_or(false))
            .join()
            .unwrap_or(false)
    })
}

fn echo_from(ns: &str, to: Ipv4Addr, within: Duration) -> std::io::Result<bool> {
    let netns = std::fs::File::open(format!("/run/netns/{ns}"))?;
    nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET)?;
    let socket = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4))?;
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let target = SockAddr::from(SocketAddrV4::new(to, 0));
    let deadline = Instant::now() + within;
    let mut seq: u16 = 0;
    while Instant::now() < deadline {
        socket.send_to(&echo_request(id, seq), &target)?;
        let next = (Instant::now() + INTERVAL).min(deadline);
        if reply_before(&socket, to, id, next)? {
            return Ok(true);
        }
        seq = seq.wrapping_add(1);
    }
    Ok(false)
}

/// Whether an echo reply from `from` with `id` arrives before `until`.
fn reply_before(socket: &Socket, from: Ipv4Addr, id: u16, until: Instant) -> std::io::Result<bool> {
    let mut buf = [0u8; 1500];
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        socket.set_read_timeout(Some(left))?;
        match (&*socket).read(&mut buf) {
            Ok(n) if is_reply(&buf[..n], from, id) => return Ok(true),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(false);
            }
            Err(e) => return Err(e),
        }
    }
}

/// An ICMP echo request (type 8) with `id` and `seq` and its checksum.
fn echo_request(id: u16, seq: u16) -> [u8; 16] {
    let mut p = [0u8; 16];
    p[0] = 8;
    p[4..6].copy_from_slice(&id.to_be_bytes());
    p[6..8].copy_from_slice(&seq.to_be_bytes());
    p[8..16].copy_from_slice(b"hg-probe");
    let sum = checksum(&p);
    p[2..4].copy_from_slice(&sum.to_be_bytes());
    p
}

/// Whether `packet` (an IPv4 packet as a raw socket reads it) is an echo reply (type 0) from
/// `from` with `id`.
fn is_reply(packet: &[u8], from: Ipv4Addr, id: u16) -> bool {
    let Some(&first) = packet.first() else {
        return false;
    };
    let header = usize::from(first & 0x0f) * 4;
    let (Some(source), Some(icmp)) = (packet.get(12..16), packet.get(header..header + 8)) else {
        return false;
    };
    source == from.octets() && icmp[0] == 0 && icmp[4..6] == id.to_be_bytes()
}

/// The Internet checksum (RFC 1071).
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_checks_out_and_only_the_right_reply_counts() {
        let p = echo_request(7, 1);
        assert_eq!(checksum(&p), 0, "a packet with its checksum sums to zero");
        let mut reply = vec![
            0x45u8, 0, 0, 36, 0, 0, 0, 0, 64, 1, 0, 0, 10, 0, 0, 2, 10, 0, 0, 1,
        ];
        let mut icmp = p;
        icmp[0] = 0;
        reply.extend_from_slice(&icmp);
        let from: Ipv4Addr = "10.0.0.2".parse().unwrap();
        assert!(is_reply(&reply, from, 7));
        assert!(!is_reply(&reply, from, 8), "another probe's reply");
        assert!(!is_reply(&reply, "10.0.0.3".parse().unwrap(), 7));
        reply[20] = 8;
        assert!(!is_reply(&reply, from, 7), "a request is no reply");
        assert!(!is_reply(&reply[..22], from, 7));
    }
}
