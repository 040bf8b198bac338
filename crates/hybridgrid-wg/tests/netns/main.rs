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

mod bulk;
mod mesh;

use std::collections::HashMap;
use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hybridgrid_wg::{
    Backend, DesiredDevice, DesiredPeer, DeviceState, Key, Offload, PeerChange, PeerState,
    UserspaceOptions, diff, key_from_base64, key_to_base64, run_userspace_device, wgtool,
};

const DAEMON_IF: &str = "HGWT_DAEMON_IF";
const DAEMON_DIR: &str = "HGWT_DAEMON_SOCKDIR";
/// The daemon's [`Offload`] (`none`, `tun`, `all`); the default when unset.
const DAEMON_OFFLOAD: &str = "HGWT_DAEMON_OFFLOAD";
const PREFIX: &str = "hgwt-";
const IFNAME: &str = "wg0";

/// Not a test: the daemon entry point when re-executed by [`Testbed::spawn_daemon`].
#[test]
#[ignore = "not a test: the daemon entry point of this binary re-executed by Testbed::spawn_daemon"]
fn daemon_entry() {
    let (Ok(ifname), Ok(dir)) = (std::env::var(DAEMON_IF), std::env::var(DAEMON_DIR)) else {
        return;
    };
    let offload = std::env::var(DAEMON_OFFLOAD).map_or(Offload::default(), |o| o.parse().unwrap());
    let opts = UserspaceOptions {
        socket_dir: dir.into(),
        offload,
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
        // Tests run in parallel in one process: each testbed its own names.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let pid = std::process::id();
        let prefix = format!("{PREFIX}{pid}-{n}");
        let root = std::env::temp_dir()
            .join(format!("{PREFIX}{pid}"))
            .join(n.to_string());
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
        self.spawn_daemon_with(node, Offload::default());
    }

    fn spawn_daemon_with(&mut self, node: &str, offload: Offload) {
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
            .env(DAEMON_OFFLOAD, offload.name())
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
        // The process's folder, once its last testbed is gone.
        if let Some(parent) = self.root.parent() {
            let _ = std::fs::remove_dir(parent);
        }
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

/// Whether `test` can run here (root, /dev/net/tun and the tools); under CI a test that cannot
/// run is a failure, never a silent pass.
#[allow(clippy::print_stderr)] // the skip must be visible in the test's output
fn runnable(test: &str) -> bool {
    if !is_root() || !Path::new("/dev/net/tun").exists() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{test} cannot run: needs root and /dev/net/tun (CI=true)"
        );
        eprintln!("skipping {test}: needs root and /dev/net/tun");
        return false;
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
    true
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
        preshared_key: None,
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}
