//! Three devices, a hub and two peers: handshakes, peer updates without a session reset, the
//! `wg` tool against the same device, a clean stop.

use super::*;

#[test]
fn mesh_in_namespaces() {
    if !runnable("mesh_in_namespaces") {
        return;
    }
    let mut tb = Testbed::new();
    for node in ["a", "b", "c"] {
        tb.add_node(node);
    }
    tb.veth("a", "ul-b", "192.0.2.1/30", "b", "ul-a", "192.0.2.2/30");
    tb.veth("a", "ul-c", "192.0.2.5/30", "c", "ul-a", "192.0.2.6/30");

    let keys: HashMap<&str, (Key, Key)> = ["a", "b", "c"].map(|n| (n, genkey())).into();
    let public = |n: &str| keys[n].1;
    let device = |n: &str, peers| DesiredDevice {
        private_key: keys[n].0,
        listen_port: Some(51820),
        fwmark: None,
        peers,
    };
    let mut desired: HashMap<&str, DesiredDevice> = HashMap::new();
    desired.insert(
        "a",
        device(
            "a",
            vec![
                peer(public("b"), "192.0.2.2:51820", &["198.51.100.2/32"], None),
                peer(public("c"), "192.0.2.6:51820", &["198.51.100.3/32"], None),
            ],
        ),
    );
    desired.insert(
        "b",
        device(
            "b",
            vec![peer(
                public("a"),
                "192.0.2.1:51820",
                &["198.51.100.1/32"],
                Some(5),
            )],
        ),
    );
    desired.insert(
        "c",
        device(
            "c",
            vec![peer(
                public("a"),
                "192.0.2.5:51820",
                &["198.51.100.1/32"],
                Some(5),
            )],
        ),
    );

    for (i, node) in ["a", "b", "c"].into_iter().enumerate() {
        tb.spawn_daemon(node);
        let changes = tb.backend(node).sync(IFNAME, &desired[node]).unwrap();
        assert!(changes.set_private_key);
        assert_eq!(changes.set_listen_port, Some(51820));
        assert!(
            changes
                .peers
                .iter()
                .all(|c| matches!(c, PeerChange::Add(_)))
        );
        assert_eq!(changes.peers.len(), desired[node].peers.len());
        // The agent's part: address, MTU, link.
        let addr = format!("198.51.100.{}/24", i + 1);
        tb.exec_ok(node, &["ip", "addr", "add", &addr, "dev", IFNAME]);
        tb.exec_ok(node, &["ip", "link", "set", IFNAME, "mtu", "1420", "up"]);
    }

    tb.ping("a", "198.51.100.2");
    tb.ping("a", "198.51.100.3");
    tb.ping("b", "198.51.100.1");

    // A second daemon on a live socket (from another namespace) must refuse, not steal it.
    tb.add_node("d");
    let out = Command::new("timeout")
        .args(["20", "ip", "netns", "exec", &tb.ns("d")])
        .arg(std::env::current_exe().unwrap())
        .args(["daemon_entry", "--exact", "--ignored", "--nocapture"])
        .env(DAEMON_IF, IFNAME)
        .env(DAEMON_DIR, tb.socket_dir("a"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already served by a running daemon"), "{err}");
    assert_eq!(tb.status("a").listen_port, 51820);

    // The real `wg` tool sees recent handshakes with both peers.
    let hs = tb.wg_tool("a", &["show", IFNAME, "latest-handshakes"]);
    for n in ["b", "c"] {
        let key = key_to_base64(&public(n));
        let line = hs
            .lines()
            .find(|l| l.starts_with(&key))
            .unwrap_or_else(|| panic!("no handshake line for {n} in {hs:?}"));
        let t: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        assert!(
            t + 60 >= now() && t <= now() + 5,
            "stale handshake {t} for {n}"
        );
    }

    let before = tb.status("a");
    let b_before = before.peer(&public("b")).unwrap().clone();
    assert!(b_before.last_handshake_sec > 0 && b_before.rx_bytes > 0 && b_before.tx_bytes > 0);
    assert_eq!(before.listen_port, 51820);
    assert_eq!(
        b_before.endpoint,
        Some("192.0.2.2:51820".parse().unwrap()),
        "observed endpoint must round-trip, or every sync would touch the peer"
    );

    // Change only peer C on A: keepalive and allowed IPs.
    let a = desired.get_mut("a").unwrap();
    a.peers[1].persistent_keepalive = Some(10);
    a.peers[1]
        .allowed_ips
        .push("198.51.100.33/32".parse().unwrap());
    let changes = diff(&before, &desired["a"]);
    assert_eq!(
        changes.peers,
        vec![PeerChange::Update {
            public_key: public("c"),
            endpoint: None,
            allowed_ips: Some(desired["a"].peers[1].allowed_ips.clone()),
            persistent_keepalive: Some(10),
            preshared_key: None,
        }]
    );
    assert!(!changes.set_private_key && changes.set_listen_port.is_none());
    assert_eq!(
        tb.backend("a").sync(IFNAME, &desired["a"]).unwrap(),
        changes
    );

    // gotatun re-adds a changed peer (zeroed counters, new session): B must not be touched.
    let after = tb.status("a");
    let b_after = after.peer(&public("b")).unwrap();
    // gotatun derives the handshake time from "now - age", so it jitters by microseconds.
    let same_handshake = |p: &PeerState| {
        let t =
            |p: &PeerState| p.last_handshake_sec as f64 + f64::from(p.last_handshake_nsec) * 1e-9;
        (t(p) - t(&b_before)).abs() < 0.1
    };
    assert!(same_handshake(b_after), "{b_after:?} vs {b_before:?}");
    assert!(b_after.rx_bytes >= b_before.rx_bytes && b_after.tx_bytes >= b_before.tx_bytes);
    let c_after = after.peer(&public("c")).unwrap();
    assert_eq!(c_after.persistent_keepalive, Some(10));
    let ips = tb.wg_tool("a", &["show", IFNAME, "allowed-ips"]);
    assert!(ips.contains("198.51.100.33/32"), "{ips}");

    // B's session survived: traffic flows without a new handshake and counters kept growing.
    tb.ping("a", "198.51.100.2");
    let b_later = tb.status("a").peer(&public("b")).unwrap().clone();
    assert!(same_handshake(&b_later), "{b_later:?} vs {b_before:?}");
    assert!(b_later.tx_bytes > b_before.tx_bytes && b_later.rx_bytes > b_before.rx_bytes);
    tb.ping("a", "198.51.100.3");

    // Idempotent: a second apply of the same desired state changes nothing.
    for node in ["a", "b", "c"] {
        let changes = tb.backend(node).sync(IFNAME, &desired[node]).unwrap();
        assert!(changes.is_empty(), "{node}: {changes:?}");
    }

    // The kernel backend's wg(8) path, checked against the same device: `wg show dump` parses to
    // what UAPI reports, and the `wg set` it would run applies (here: C's keepalive back to off).
    let via_tool = wgtool::parse_dump(IFNAME, &tb.wg_tool("a", &["show", IFNAME, "dump"])).unwrap();
    let via_uapi = tb.status("a");
    assert_eq!(via_tool.private_key, via_uapi.private_key);
    assert_eq!(via_tool.listen_port, via_uapi.listen_port);
    assert_eq!(via_tool.peers.len(), 2);
    for p in &via_tool.peers {
        let q = via_uapi.peer(&p.public_key).unwrap();
        assert_eq!(
            (p.endpoint, p.persistent_keepalive),
            (q.endpoint, q.persistent_keepalive)
        );
        let mut a = p.allowed_ips.clone();
        let mut b = q.allowed_ips.clone();
        a.sort();
        b.sort();
        assert_eq!(a, b);
    }
    let a = desired.get_mut("a").unwrap();
    a.peers[1].persistent_keepalive = None;
    let changes = diff(&via_uapi, &desired["a"]);
    assert_eq!(changes.peers.len(), 1);
    let (args, key) = wgtool::set_args(IFNAME, &desired["a"], &changes, None);
    assert!(key.is_none());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    tb.wg_tool("a", &args);
    assert_eq!(
        tb.status("a")
            .peer(&public("c"))
            .unwrap()
            .persistent_keepalive,
        None
    );
    assert!(
        tb.backend("a")
            .sync(IFNAME, &desired["a"])
            .unwrap()
            .is_empty()
    );

    // A preshared key on the pair a–b, set through UAPI on a and with `wg` on b: the pair
    // handshakes under it, `wg show` lists it, and it is read back (a second sync is empty).
    let psk = [42u8; 32];
    for node in ["a", "b"] {
        desired.get_mut(node).unwrap().peers[0].preshared_key = Some(psk);
    }
    let changes = tb.backend("a").sync(IFNAME, &desired["a"]).unwrap();
    assert_eq!(changes.peers.len(), 1, "{changes:?}");
    let dir = std::env::temp_dir().join(format!("hg-wg-psk-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("0"), format!("{}\n", key_to_base64(&psk))).unwrap();
    let changes = diff(&tb.status("b"), &desired["b"]);
    let (args, _) = wgtool::set_args(IFNAME, &desired["b"], &changes, Some(&dir));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    tb.wg_tool("b", &args);
    std::fs::remove_dir_all(&dir).unwrap();
    tb.ping("a", "198.51.100.2");
    let listed = tb.wg_tool("b", &["show", IFNAME, "preshared-keys"]);
    assert!(listed.contains(&key_to_base64(&psk)), "{listed}");
    for node in ["a", "b"] {
        assert!(
            tb.backend(node)
                .sync(IFNAME, &desired[node])
                .unwrap()
                .is_empty(),
            "{node}"
        );
    }

    // SIGTERM stops each daemon cleanly: socket file and interface gone.
    for node in ["a", "b", "c"] {
        let status = tb.stop_daemon(node);
        assert!(status.is_some_and(|s| s.success()), "{node}: {status:?}");
        let sock = tb.socket_dir(node).join(format!("{IFNAME}.sock"));
        assert!(!sock.exists(), "{} left behind", sock.display());
        assert!(
            !tb.exec(node, &["ip", "link", "show", IFNAME])
                .status
                .success()
        );
    }
}
