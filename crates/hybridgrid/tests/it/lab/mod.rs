//! Lab tests of the local provider: real clusters in network namespaces on this host.
//! Need root: they skip otherwise, and fail under `CI=true` (a skipped lab test is no pass). Each test uses its own cluster name and state directory, so
//! they run in parallel; a guard runs `down` and removes leftovers on drop, also on panic.
#![allow(clippy::unwrap_used, clippy::print_stderr)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use hybridgrid_engine::StatusReport;
use serde_json::Value;

mod crash;
mod engine;
mod failover;
mod failures;
mod heal;
mod on_demand;
mod path;
mod rotate;
mod soak;
mod wan;

mod slurm;

const EXE: &str = env!("CARGO_BIN_EXE_hybridgrid");

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

struct Lab {
    name: String,
    root: PathBuf,
    file: PathBuf,
    /// Extra environment of every `hybridgrid` run (e.g. `HYBRIDGRID_AGENT_PERIOD`).
    env: Vec<(&'static str, String)>,
}

impl Lab {
    /// A cluster from `examples/<example>` renamed to a name unique to this test and process.
    fn new(example: &str, tag: &str) -> Option<Lab> {
        let text = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../examples")
                .join(example),
        )
        .unwrap();
        Lab::with_text(&text, tag)
    }

    /// A cluster of this file text (its `name:` replaced by one unique to the test and process).
    fn with_text(text: &str, tag: &str) -> Option<Lab> {
        if !is_root() {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "lab tests need root; under CI=true a lab test that cannot run fails"
            );
            eprintln!("skipping: lab tests need root");
            return None;
        }
        let name = format!("{tag}{}", std::process::id() % 100_000);
        let root = std::env::temp_dir().join(format!("hg-lab-{name}"));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let text = text
            .lines()
            .map(|l| {
                if l.starts_with("name:") {
                    format!("name: {name}")
                } else {
                    l.to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        let file = root.join("cluster.yaml");
        std::fs::write(&file, text).unwrap();
        Some(Lab {
            name,
            root,
            file,
            env: Vec::new(),
        })
    }

    fn state(&self) -> PathBuf {
        self.root.join("state")
    }

    fn hg(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new("timeout");
        cmd.arg("120")
            .arg(EXE)
            .args(args)
            .env("HYBRIDGRID_STATE_DIR", self.state())
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd.output().unwrap()
    }

    fn hg_ok(&self, args: &[&str]) -> String {
        let out = self.hg(args);
        assert!(
            out.status.success(),
            "hybridgrid {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn f(&self) -> &str {
        self.file.to_str().unwrap()
    }

    fn up(&self) -> String {
        self.hg_ok(&["up", "-f", self.f()])
    }

    fn exec(&self, node: &str, cmd: &[&str]) -> Output {
        let mut args = vec!["exec", "-f", self.f(), node, "--"];
        args.extend(cmd);
        self.hg(&args)
    }

    fn exec_ok(&self, node: &str, cmd: &[&str]) -> String {
        let out = self.exec(node, cmd);
        assert!(
            out.status.success(),
            "{node}: {cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn status(&self, ping: bool) -> StatusReport {
        let mut args = vec!["status", "-f", self.f(), "--json"];
        args.push(if ping { "--all-pairs" } else { "--no-ping" });
        let out = self.hg(&args);
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("status: {e}: {}", String::from_utf8_lossy(&out.stderr)))
    }

    /// SIGKILL to every process in the node's network namespace: the node "reboots".
    fn kill_node(&self, node: &str) {
        let ns = format!("{}{node}", self.prefix());
        let pids = Command::new("ip")
            .args(["netns", "pids", &ns])
            .output()
            .unwrap();
        for pid in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
            let _ = Command::new("kill").args(["-KILL", pid]).status();
        }
    }

    fn prefix(&self) -> String {
        format!("hg-{}-", self.name)
    }

    fn namespaces(&self) -> Vec<String> {
        let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|n| n.starts_with(&self.prefix()))
            .map(str::to_owned)
            .collect()
    }

    /// Live (non-zombie) processes tagged with this cluster.
    fn processes(&self) -> Vec<String> {
        let out = Command::new("ps")
            .args(["-eo", "stat=,args="])
            .output()
            .unwrap();
        let tag = format!("--tag {}", self.prefix());
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains(&tag) && !l.trim_start().starts_with('Z'))
            .map(str::to_owned)
            .collect()
    }

    fn assert_gone(&self) {
        assert_eq!(self.namespaces(), Vec::<String>::new(), "namespaces left");
        assert_eq!(self.processes(), Vec::<String>::new(), "processes left");
        assert!(!self.state().join(&self.name).exists(), "state dir left");
        assert!(
            !Path::new("/run/hybridgrid/owners")
                .join(&self.name)
                .exists(),
            "owner record left"
        );
    }

    /// Bytes through `node`'s tunnel to `peer` (rx + tx), from `status`.
    fn tunnel_bytes(&self, node: &str) -> u64 {
        let s = self.status(false);
        s.tunnels
            .iter()
            .filter(|t| t.node == node)
            .map(|t| t.rx_bytes + t.tx_bytes)
            .sum()
    }
}

/// A 10 Hz ping from `from` to `to` for `seconds`, each reply with its time (`ping -D`).
fn start_ping(lab: &Lab, from: &str, to: &str, seconds: u32) -> Child {
    Command::new(EXE)
        .args(["exec", "-f", lab.f(), from, "--"])
        .args(["ping", "-D", "-n", "-i", "0.1", "-W", "1"])
        .args(["-w", &seconds.to_string(), to])
        .env("HYBRIDGRID_STATE_DIR", lab.state())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// The longest time between two replies (and before the first), in seconds.
fn longest_gap(ping_output: &str) -> f64 {
    let times: Vec<f64> = ping_output
        .lines()
        .filter(|l| l.contains("bytes from"))
        .filter_map(|l| l.strip_prefix('[')?.split(']').next()?.parse().ok())
        .collect();
    assert!(times.len() > 50, "too few replies:\n{ping_output}");
    times.windows(2).map(|w| w[1] - w[0]).fold(0.0, f64::max)
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = self.hg(&["down", "-f", self.f()]);
        for ns in self.namespaces() {
            let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?}: {what}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn assert_full_mesh(lab: &Lab, nodes: usize, relays: usize) {
    let s = lab.status(true);
    assert_eq!(s.nodes.len(), nodes);
    assert!(s.nodes.iter().all(|n| n.up), "{s:#?}");
    assert_eq!(s.reachability.len(), nodes * (nodes - 1));
    let failed: Vec<_> = s.reachability.iter().filter(|r| !r.ok).collect();
    assert!(failed.is_empty(), "unreachable: {failed:?}");
    // Every relay has a recent handshake with every other relay.
    assert_eq!(s.tunnels.len(), relays * (relays - 1), "{:?}", s.tunnels);
    for t in &s.tunnels {
        let age = t.handshake_age_s;
        assert!(age.is_some_and(|a| a < 180), "no recent handshake: {t:?}");
        // `tunnel.preshared_keys` is on by default: the device has the pair's key.
        assert!(t.preshared_key, "no preshared key: {t:?}");
    }
}

#[test]
fn two_sites_up_status_exec_idempotent_down() {
    let Some(lab) = Lab::new("two-sites.yaml", "two") else {
        return;
    };
    let t = Instant::now();
    let out = lab.up();
    eprintln!("up took {:?}: {out}", t.elapsed());
    assert_full_mesh(&lab, 4, 2);

    // Across sites, through the tunnel, by name from /etc/hosts.
    lab.exec_ok(
        "bielefeld-worker-1",
        &["ping", "-c", "2", "-W", "2", "giessen-worker-1"],
    );
    assert_eq!(
        lab.exec_ok("giessen-gw", &["hostname"]).trim(),
        "giessen-gw"
    );
    let wg = lab.exec_ok("giessen-gw", &["wg", "show", "wg0"]);
    assert!(wg.contains("latest handshake"), "{wg}");
    assert!(wg.contains("endpoint: 198.51.100."), "{wg}");

    // A second `up` changes nothing and says so; so does the agent run by hand on a node.
    assert!(lab.up().contains("no changes"));
    let dir = lab.state().join(&lab.name).join("nodes/giessen-gw");
    let config = dir.join("node.json");
    let again = lab.exec_ok(
        "giessen-gw",
        &[
            EXE,
            "agent",
            "apply",
            "--config",
            config.to_str().unwrap(),
            "--state-dir",
            dir.to_str().unwrap(),
        ],
    );
    let report: Value = serde_json::from_str(&again).unwrap();
    assert_eq!(report["actions"], serde_json::json!([]), "{again}");

    // The private key stays in the node's state, mode 0600, and nowhere in the ledger.
    use std::os::unix::fs::PermissionsExt as _;
    let key = dir.join("wg/private.key");
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let private = std::fs::read_to_string(&key).unwrap();
    let ledger = std::fs::read_to_string(lab.state().join(&lab.name).join("ledger.json")).unwrap();
    assert!(ledger.contains("\"format_version\": 1"));
    assert!(!ledger.contains(private.trim()));

    // No namespace has a route out of the cluster's own addresses.
    for ns in lab.namespaces() {
        let routes = Command::new("ip")
            .args(["-n", &ns, "route"])
            .output()
            .unwrap();
        let routes = String::from_utf8_lossy(&routes.stdout).into_owned();
        for r in routes.lines() {
            let dst = r.split_whitespace().next().unwrap_or("");
            assert!(
                dst == "default" && r.contains("via 10.")
                    || dst.starts_with("10.")
                    || dst.starts_with("198.51.100."),
                "{ns}: unexpected route {r}"
            );
        }
    }

    lab.hg_ok(&["down", "-f", lab.f()]);
    lab.assert_gone();
    assert!(lab.hg_ok(&["down", "-f", lab.f()]).contains("nothing"));
}

#[test]
fn three_sites_gateways_talk_directly() {
    let Some(lab) = Lab::new("three-sites.yaml", "tri") else {
        return;
    };
    lab.up();
    assert_full_mesh(&lab, 7, 3);
    for gw in ["bielefeld-master", "giessen-gw", "heidelberg-gw"] {
        let wg = lab.exec_ok(gw, &["wg", "show", "wg0", "latest-handshakes"]);
        let stamps: Vec<u64> = wg
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1)?.parse().ok())
            .collect();
        assert_eq!(stamps.len(), 2, "{gw}: {wg}");
        assert!(stamps.iter().all(|&s| s > 0), "{gw}: {wg}");
    }

    // ~200 KB between giessen and heidelberg: through the gateways, not the master.
    let master_before = lab.tunnel_bytes("bielefeld-master");
    let gw_before = lab.tunnel_bytes("giessen-gw");
    lab.exec_ok(
        "giessen-worker-1",
        &[
            "ping",
            "-q",
            "-c",
            "200",
            "-i",
            "0.005",
            "-s",
            "1000",
            "-W",
            "2",
            "heidelberg-big-1",
        ],
    );
    let master_delta = lab.tunnel_bytes("bielefeld-master") - master_before;
    let gw_delta = lab.tunnel_bytes("giessen-gw") - gw_before;
    assert!(gw_delta > 400_000, "gateway moved only {gw_delta} bytes");
    assert!(
        master_delta < 20_000,
        "the master relayed {master_delta} bytes of giessen↔heidelberg traffic"
    );

    lab.hg_ok(&["down", "-f", lab.f()]);
    lab.assert_gone();
}

#[test]
fn port_security_drops_spoofed_sources() {
    let Some(lab) = Lab::new("two-sites.yaml", "psec") else {
        return;
    };
    lab.up();
    // Resolve the gateway's MAC first, so the spoofed packet itself reaches the switch.
    lab.exec_ok(
        "giessen-worker-1",
        &["ping", "-c", "1", "-W", "2", "10.20.0.5"],
    );
    // A worker with a second address may not send from it: Neutron's anti-spoofing.
    lab.exec_ok(
        "giessen-worker-1",
        &["ip", "addr", "add", "10.20.0.77/24", "dev", "eth0"],
    );
    let spoofed = lab.exec(
        "giessen-worker-1",
        &[
            "ping",
            "-c",
            "2",
            "-W",
            "1",
            "-I",
            "10.20.0.77",
            "10.20.0.5",
        ],
    );
    assert!(!spoofed.status.success(), "a spoofed source got through");
    lab.exec_ok(
        "giessen-worker-1",
        &["ping", "-c", "2", "-i", "0.2", "-W", "2", "10.20.0.5"],
    );
    let drops = hybridgrid_local::drift::spoof_drops_at_switch(&lab.name, "giessen");
    assert!(
        drops.is_some_and(|n| n > 0),
        "giessen's switch counted no spoofed packet"
    );
}

#[test]
fn gc_removes_clusters_whose_ledger_is_gone() {
    let Some(lab) = Lab::new("two-sites.yaml", "gc") else {
        return;
    };
    lab.up();
    assert!(!lab.namespaces().is_empty());
    std::fs::remove_dir_all(lab.state().join(&lab.name)).unwrap();
    let out = lab.hg_ok(&["gc"]);
    assert!(out.contains(&format!("{}inet", lab.prefix())), "{out}");
    lab.assert_gone();
}

#[test]
fn resumes_after_a_node_died() {
    let Some(lab) = Lab::new("two-sites.yaml", "res") else {
        return;
    };
    lab.up();
    // Kill everything in the gateway's namespace: `up` sees it gone and creates it again.
    lab.kill_node("giessen-gw");
    wait_until("the gateway is down", Duration::from_secs(10), || {
        lab.status(false).nodes.iter().any(|n| !n.up)
    });
    let out = lab.up();
    assert!(!out.contains("no changes"), "{out}");
    assert_full_mesh(&lab, 4, 2);
}

/// `ifindex` of wg0 and the bytes received from `peer`, on `node`.
fn wg_identity(lab: &Lab, node: &str, peer_key: &str) -> (String, u64) {
    let ifindex = lab.exec_ok(node, &["cat", "/sys/class/net/wg0/ifindex"]);
    let dump = lab.exec_ok(node, &["wg", "show", "wg0", "transfer"]);
    let rx = dump
        .lines()
        .find(|l| l.starts_with(peer_key))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0);
    (ifindex.trim().to_owned(), rx)
}

#[test]
fn plan_changes_apply_in_place() {
    let Some(lab) = Lab::new("two-sites.yaml", "grow") else {
        return;
    };
    let two = std::fs::read_to_string(&lab.file).unwrap();
    lab.up();
    let gw_key = lab
        .exec_ok("giessen-gw", &["wg", "show", "wg0", "public-key"])
        .trim()
        .to_owned();
    lab.exec_ok(
        "bielefeld-worker-1",
        &["ping", "-c", "3", "-i", "0.2", "giessen-worker-1"],
    );
    let (ifindex, rx) = wg_identity(&lab, "bielefeld-master", &gw_key);
    assert!(rx > 0);

    // A third site: peers are added on the running interface; the existing peer is untouched.
    let three = two.replace(
        "datasets:",
        "  - name: heidelberg\n    subnet: 10.30.0.0/24\n    workers:\n      - count: 1\ndatasets:",
    );
    std::fs::write(&lab.file, &three).unwrap();
    let out = lab.up();
    assert!(!out.contains("no changes"), "{out}");
    let (ifindex2, rx2) = wg_identity(&lab, "bielefeld-master", &gw_key);
    assert_eq!(ifindex, ifindex2, "wg0 was re-created");
    assert!(rx2 >= rx, "the giessen peer was reset: {rx} → {rx2}");
    assert_full_mesh(&lab, 6, 3);
    assert!(lab.up().contains("no changes"));

    // And back: heidelberg's namespaces go, the peer is removed in place.
    std::fs::write(&lab.file, &two).unwrap();
    lab.up();
    assert!(
        lab.namespaces().iter().all(|n| !n.contains("heidelberg")),
        "{:?}",
        lab.namespaces()
    );
    let peers = lab.exec_ok("bielefeld-master", &["wg", "show", "wg0", "peers"]);
    assert_eq!(peers.lines().count(), 1, "{peers}");
    let (ifindex3, _) = wg_identity(&lab, "bielefeld-master", &gw_key);
    assert_eq!(ifindex, ifindex3, "wg0 was re-created");
    assert_full_mesh(&lab, 4, 2);
}

#[test]
fn stateless_security_groups_still_admit_the_cluster() {
    let Some(lab) = Lab::new("two-sites.yaml", "sless") else {
        return;
    };
    lab.hg_ok(&["up", "-f", lab.f(), "--stateless-security-groups"]);
    assert_full_mesh(&lab, 4, 2);
    let sg = hybridgrid_local::drift::security_group(&lab.name, "giessen-gw").unwrap();
    assert!(!sg.contains("ct state"), "{sg}");
    assert!(sg.contains("udp dport 51820"), "{sg}");
}
