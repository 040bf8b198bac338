//! A bulk TCP transfer through the tunnel with each data path ([`Offload`]): every byte arrives
//! intact (the GSO split and GRO coalescing rewrite headers and checksums), and with the TUN
//! offloads the kernel really hands the device super-frames and takes coalesced writes.

use std::hash::{DefaultHasher, Hasher};
use std::io::{BufRead, Read, Write};
use std::net::{TcpListener, TcpStream};

use super::*;

/// Which end of the transfer a re-executed test binary is (`sink ADDR` or `source ADDR`).
const TCP_ROLE: &str = "HGWT_TCP_ROLE";
const TCP_ADDR: &str = "HGWT_TCP_ADDR";
const BYTES: u64 = 48 << 20;
const TUNNEL_MTU: u64 = 1420;

/// Deterministic bytes, the same in both processes: xorshift64.
fn fill(state: &mut u64, buf: &mut [u8]) {
    for chunk in buf.chunks_mut(8) {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
    }
}

/// Not a test: one end of the transfer when re-executed by [`transfer`]. Prints
/// `HGWT-RESULT BYTES HASH` on a line of its own.
#[test]
#[ignore = "not a test: the TCP ends of bulk_tcp_through_each_data_path, re-executed in a namespace"]
fn tcp_entry() {
    let (Ok(role), Ok(addr)) = (std::env::var(TCP_ROLE), std::env::var(TCP_ADDR)) else {
        return;
    };
    let mut hasher = DefaultHasher::new();
    let mut buf = vec![0u8; 256 << 10];
    let mut total = 0u64;
    if role == "sink" {
        let listener = TcpListener::bind(&addr).unwrap();
        println!("\nHGWT-LISTENING");
        let (mut stream, _) = listener.accept().unwrap();
        loop {
            let n = stream.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            hasher.write(&buf[..n]);
            total += n as u64;
        }
    } else {
        let mut stream = TcpStream::connect(&addr).unwrap();
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        while total < BYTES {
            fill(&mut state, &mut buf);
            stream.write_all(&buf).unwrap();
            hasher.write(&buf);
            total += buf.len() as u64;
        }
    }
    println!("\nHGWT-RESULT {total} {:x}", hasher.finish());
}

fn counter(tb: &Testbed, node: &str, name: &str) -> u64 {
    let path = format!("/sys/class/net/{IFNAME}/statistics/{name}");
    tb.exec_ok(node, &["cat", &path]).trim().parse().unwrap()
}

/// Sends [`BYTES`] from `a` to `b` through the tunnel; returns what each end counted and hashed.
fn transfer(tb: &Testbed) -> (String, String) {
    let exe = std::env::current_exe().unwrap();
    let end = |node: &str, role: &str| {
        Command::new("timeout")
            .args(["60", "ip", "netns", "exec", &tb.ns(node)])
            .arg(&exe)
            .args(["bulk::tcp_entry", "--exact", "--ignored", "--nocapture"])
            .env(TCP_ROLE, role)
            .env(TCP_ADDR, "198.51.100.2:5001")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut sink = end("b", "sink");
    let mut out = std::io::BufReader::new(sink.stdout.take().unwrap());
    let mut line = String::new();
    // Until the sink listens.
    while !line.contains("HGWT-LISTENING") {
        line.clear();
        assert!(
            out.read_line(&mut line).unwrap() > 0,
            "the sink ended before listening"
        );
    }
    let source = end("a", "source").wait_with_output().unwrap();
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    assert!(sink.wait().unwrap().success(), "sink failed: {rest}");
    assert!(source.status.success(), "source failed");
    let result = |s: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix("HGWT-RESULT "))
            .unwrap_or_default()
            .to_owned()
    };
    (
        result(&String::from_utf8_lossy(&source.stdout)),
        result(&rest),
    )
}

#[test]
fn bulk_tcp_through_each_data_path_arrives_intact() {
    if !runnable("bulk_tcp_through_each_data_path_arrives_intact") {
        return;
    }
    for offload in [Offload::None, Offload::Tun, Offload::All] {
        let mut tb = Testbed::new();
        for node in ["a", "b"] {
            tb.add_node(node);
        }
        tb.veth("a", "ul-b", "192.0.2.1/30", "b", "ul-a", "192.0.2.2/30");
        let keys: HashMap<&str, (Key, Key)> = ["a", "b"].map(|n| (n, genkey())).into();
        for (i, (node, other, endpoint)) in [("a", "b", "192.0.2.2"), ("b", "a", "192.0.2.1")]
            .into_iter()
            .enumerate()
        {
            tb.spawn_daemon_with(node, offload);
            let tunnel_peer = format!("198.51.100.{}/32", 2 - i);
            let device = DesiredDevice {
                private_key: keys[node].0,
                listen_port: Some(51820),
                fwmark: None,
                peers: vec![peer(
                    keys[other].1,
                    &format!("{endpoint}:51820"),
                    &[&tunnel_peer],
                    None,
                )],
            };
            tb.backend(node).sync(IFNAME, &device).unwrap();
            let addr = format!("198.51.100.{}/24", i + 1);
            tb.exec_ok(node, &["ip", "addr", "add", &addr, "dev", IFNAME]);
            let mtu = TUNNEL_MTU.to_string();
            tb.exec_ok(node, &["ip", "link", "set", IFNAME, "mtu", &mtu, "up"]);
        }
        tb.ping("a", "198.51.100.2");

        let (sent, received) = transfer(&tb);
        let name = offload.name();
        assert!(
            sent.starts_with(&format!("{BYTES} ")),
            "{name}: sent {sent:?}"
        );
        assert_eq!(sent, received, "{name}: the bytes changed on the way");

        // What the kernel handed the device (a's wg0 TX) and what the device wrote (b's RX),
        // per packet: above the MTU only when frames are super-frames.
        let per_packet = |node: &str, dir: &str| {
            counter(&tb, node, &format!("{dir}_bytes"))
                / counter(&tb, node, &format!("{dir}_packets")).max(1)
        };
        let (read_size, write_size) = (per_packet("a", "tx"), per_packet("b", "rx"));
        // The underlay veth counts a segmented send as one packet of all its datagrams.
        let sent = |what: &str| {
            let path = format!("/sys/class/net/ul-b/statistics/tx_{what}");
            tb.exec_ok("a", &["cat", &path])
                .trim()
                .parse::<u64>()
                .unwrap()
        };
        let udp_size = sent("bytes") / sent("packets").max(1);
        eprintln!(
            "{name}: mean TUN read {read_size} B, TUN write {write_size} B, UDP send {udp_size} B"
        );
        if offload == Offload::None {
            assert!(read_size <= TUNNEL_MTU && write_size <= TUNNEL_MTU);
        } else {
            assert!(
                read_size > 4 * TUNNEL_MTU,
                "{name}: reads of {read_size} B: no TSO"
            );
            assert!(
                write_size > 2 * TUNNEL_MTU,
                "{name}: writes of {write_size} B: no GRO"
            );
        }
        if offload == Offload::All {
            assert!(
                udp_size > 4 * 1500,
                "{name}: UDP sends of {udp_size} B: no segmentation"
            );
        } else {
            assert!(udp_size <= 1500, "{name}: UDP sends of {udp_size} B");
        }
    }
}
