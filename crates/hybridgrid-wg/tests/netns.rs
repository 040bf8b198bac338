//! Real userspace devices in throwaway network namespaces: hub `a` with peers `b` and `c`,
//! underlay veths on TEST-NET-1 (192.0.2.0/24), tunnel on TEST-NET-2 (198.51.100.0/24).
//! Nothing touches the root namespace. Needs root and /dev/net/tun; skipped otherwise.
//!
//! Daemons are this test binary re-executed inside `ip netns exec` with [`DAEMON_IF`] set, so
//! no extra binary or feature is needed. Each node has its own socket dir; the real `wg` tool
//! (which only knows /run/wireguard) is pointed at it by a bind mount over /run inside the
//! private mount namespace that `ip netns exec` creates.

// Helpers outside #[test] fns; clippy's allow-unwrap-in-tests does not reach them.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hybridgrid_wg::{
    Backend, DesiredDevice, DesiredPeer, DeviceState, Key, PeerChange, PeerState, UserspaceOptions,
    diff, key_from_base64, key_to_base64, run_userspace_device, wgtool,
};

const DAEMON_IF: &str = "HGWT_DAEMON_IF";
const DAEMON_DIR: &str = "HGWT_DAEMON_SOCKDIR";
const PREFIX: &str = "hgwt-";
const IFNAME: &str = "wg0";

/// Not a test: the daemon entry point when re-executed by [`Testbed::spawn_daemon`].
#[test]
#[ignore = "not a test: the daemon entry point of this binary re-executed by Testbed::spawn_daemon"]
fn daemon_entry() {
    let (Ok(ifname), Ok(dir)) = (std::env::var(DAEMON_IF), std::env::var(DAEMON_DIR)) else {
        return;
    };
    let opts = UserspaceOptions {
        socket_dir: dir.into(),
        ..UserspaceOptions::default()
    };
    if let Err(e) = run_userspace_device(&ifname, &opts) {
        eprintln!("daemon: {e}");
        std::process::exit(1);
    }
}

fn run(program: &str, args: &[&str]) -> Output {
    // Every external call is bounded: a stuck daemon must not hang the test.
    Command::new("timeout")
        .arg("20")
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"))
}

fn run_ok(program: &str, args: &[&str]) -> String {
    let out = run(program, args);
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

fn kill_ns_processes(ns: &str) {
    for pid in run("ip", &["netns", "pids", ns])
        .stdout
        .split(|b| *b == b'\n')
        .filter_map(|l| std::str::from_utf8(l).ok()?.trim().parse::<u32>().ok())
    {
        run("kill", &["-KILL", &pid.to_string()]);
    }
}

/// Owns every namespace, daemon and file of one run; Drop (also on panic) removes them all.
struct Testbed {
    prefix: String,
    root: PathBuf,
    namespaces: Vec<String>,
    daemons: HashMap<String, Child>,
}

impl Testbed {
    fn new() -> Self {
        reap_stale();
        let prefix = format!("{PREFIX}{}", std::process::id());
        let root = std::env::temp_dir().join(&prefix);
        std::fs::create_dir_all(&root).unwrap();
        Testbed {
            prefix,
            root,
            namespaces: Vec::new(),
            daemons: HashMap::new(),
        }
    }

    fn ns(&self, node: &str) -> String {
        format!("{}-{node}", self.prefix)
    }

    fn add_node(&mut self, node: &str) {
        let ns = self.ns(node);
        run_ok("ip", &["netns", "add", &ns]);
        self.namespaces.push(ns);
        self.exec_ok(node, &["ip", "link", "set", "lo", "up"]);
    }

    fn exec(&self, node: &str, args: &[&str]) -> Output {
        let ns = self.ns(node);
        let mut all = vec!["netns", "exec", &ns];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    fn exec_ok(&self, node: &str, args: &[&str]) -> String {
        let ns = self.ns(node);
        let mut all = vec!["netns", "exec", &ns];
        all.extend_from_slice(args);
        run_ok("ip", &all)
    }

    /// A veth created inside `a`'s namespace with its peer end in `b`'s: never in the root one.
    fn veth(&self, a: &str, a_if: &str, a_addr: &str, b: &str, b_if: &str, b_addr: &str) {
        let b_ns = self.ns(b);
        self.exec_ok(
            a,
            &[
                "ip", "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", &b_ns,
            ],
        );
        for (node, ifname, addr) in [(a, a_if, a_addr), (b, b_if, b_addr)] {
            self.exec_ok(node, &["ip", "addr", "add", addr, "dev", ifname]);
            self.exec_ok(node, &["ip", "link", "set", ifname, "up"]);
        }
    }

    fn node_root(&self, node: &str) -> PathBuf {
        self.root.join(node)
    }

    fn socket_dir(&self, node: &str) -> PathBuf {
        self.node_root(node).join("wireguard")
    }

    fn backend(&self, node: &str) -> Backend {
        Backend::Userspace {
            socket_dir: self.socket_dir(node),
        }
    }

    fn log_path(&self, node: &str) -> PathBuf {
        self.root.join(format!("{node}.log"))
    }

    fn spawn_daemon(&mut self, node: &str) {
        std::fs::create_dir_all(self.node_root(node)).unwrap();
        let log = File::create(self.log_path(node)).unwrap();
        let exe = std::env::current_exe().unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns(node)])
            .arg(exe)
            .args([
                "daemon_entry",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(DAEMON_IF, IFNAME)
            .env(DAEMON_DIR, self.socket_dir(node))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.daemons.insert(node.to_owned(), child);
        let sock = self.socket_dir(node).join(format!("{IFNAME}.sock"));
        let deadline = Instant::now() + Duration::from_secs(15);
        while !sock.exists() {
            let exited = self.daemons.get_mut(node).unwrap().try_wait().unwrap();
            if exited.is_some() || Instant::now() > deadline {
                panic!(
                    "daemon {node} did not come up ({exited:?}): {}",
                    std::fs::read_to_string(self.log_path(node)).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then wait (bounded) for a clean exit.
    fn stop_daemon(&mut self, node: &str) -> Option<ExitStatus> {
        let mut child = self.daemons.remove(node)?;
        run("kill", &["-TERM", &child.id().to_string()]);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The real `wg` tool, seeing this node's socket dir as /run/wireguard.
    fn wg_tool(&self, node: &str, args: &[&str]) -> String {
        let root = self.node_root(node);
        let mut all = vec![
            "sh",
            "-c",
            r#"mount --bind "$0" /run && exec timeout 5 wg "$@""#,
            root.to_str().unwrap(),
        ];
        all.extend_from_slice(args);
        self.exec_ok(node, &all)
    }

    fn status(&self, node: &str) -> DeviceState {
        self.backend(node).read_status(IFNAME).unwrap()
    }

    fn ping(&self, from: &str, to: &str) {
        for _ in 0..20 {
            if self
                .exec(from, &["ping", "-c", "1", "-W", "1", to])
                .status
                .success()
            {
                return;
            }
        }
        panic!("no ping from {from} to {to}");
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        let nodes: Vec<String> = self.daemons.keys().cloned().collect();
        for node in nodes {
            self.stop_daemon(&node);
        }
        for ns in &self.namespaces {
            kill_ns_processes(ns);
            run("ip", &["netns", "del", ns]);
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// Removes what an earlier run left when it was SIGKILLed (Drop never ran).
fn reap_stale() {
    let list = run("ip", &["netns", "list"]);
    for line in String::from_utf8_lossy(&list.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !pid_alive(pid) {
            kill_ns_processes(name);
            run("ip", &["netns", "del", name]);
            let _ = std::fs::remove_dir_all(std::env::temp_dir().join(format!("{PREFIX}{pid}")));
        }
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .is_ok_and(|s| s.lines().any(|l| l.starts_with("Uid:\t0\t")))
}

fn genkey() -> (Key, Key) {
    let private = run_ok("wg", &["genkey"]);
    let mut child = Command::new("wg")
        .arg("pubkey")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), private.as_bytes()).unwrap();
    let public = child.wait_with_output().unwrap();
    assert!(public.status.success());
    (
        key_from_base64(&private).unwrap(),
        key_from_base64(&String::from_utf8(public.stdout).unwrap()).unwrap(),
    )
}

fn peer(public_key: Key, endpoint: &str, allowed: &[&str], keepalive: Option<u16>) -> DesiredPeer {
    DesiredPeer {
        public_key,
        endpoint: Some(endpoint.parse::<SocketAddr>().unwrap()),
        allowed_ips: allowed.iter().map(|a| a.parse().unwrap()).collect(),
        persistent_keepalive: keepalive,
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn mesh_in_namespaces() {
    if !is_root() || !Path::new("/dev/net/tun").exists() {
        // Under CI a test that cannot run is a failure, never a silent pass.
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "mesh_in_namespaces cannot run: needs root and /dev/net/tun (CI=true)"
        );
        eprintln!("skipping mesh_in_namespaces: needs root and /dev/net/tun");
        return;
    }
    // Root without the tools is a broken setup, not a reason to skip.
    for (tool, package) in [
        ("ip", "iproute2"),
        ("wg", "wireguard-tools"),
        ("ping", "iputils-ping"),
    ] {
        assert!(
            run("sh", &["-c", &format!("command -v {tool}")])
                .status
                .success(),
            "{tool} missing: apt-get install --no-install-recommends {package}"
        );
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
    let (args, key) = wgtool::set_args(IFNAME, &desired["a"], &changes);
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
