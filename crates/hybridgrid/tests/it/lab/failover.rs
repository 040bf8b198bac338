//! Relay failover (issue 22): a site with `gateway.standby` has two relays sharing its tunnel
//! identity; when the active one dies, or its data path breaks, the standby takes over within
//! seconds, a TCP stream between workers survives, and `up` brings the dead relay back as the
//! standby without a second outage.

use std::process::{Command, Stdio};
use std::time::Duration;

use hybridgrid_core::plan::{Plan, Role};
use hybridgrid_engine::PairState;

use super::{EXE, Lab, longest_gap, start_ping, wait_until};

/// Three sites; a pair at the master site and at b, a single gateway at c.
const CLUSTER: &str = "name: fo
admin_cidrs: [203.0.113.0/24]
tunnel:
  cidr: 10.0.0.0/24
sites:
  - name: a
    master: true
    subnet: 10.61.0.0/24
    gateway:
      standby: true
    workers:
      - count: 1
  - name: b
    subnet: 10.62.0.0/24
    gateway:
      standby: true
    workers:
      - count: 1
  - name: c
    subnet: 10.63.0.0/24
    workers:
      - count: 1
";

const VIP: [(&str, &str); 2] = [("a", "10.61.0.252"), ("b", "10.62.0.252")];

/// Which relays of `site`'s pair hold its virtual address.
fn holders(lab: &Lab, site: &str) -> Vec<String> {
    let vip = VIP.iter().find(|(s, _)| *s == site).unwrap().1;
    [format!("{site}-gw-a"), format!("{site}-gw-b")]
        .into_iter()
        .filter(|r| {
            let out = lab.exec(r, &["ip", "-o", "-4", "addr", "show"]);
            String::from_utf8_lossy(&out.stdout).contains(&format!("inet {vip}/"))
        })
        .collect()
}

/// The relay of `site`'s pair that holds the virtual address, and its partner.
fn active_and_standby(lab: &Lab, site: &str) -> (String, String) {
    let held = holders(lab, site);
    assert_eq!(
        held.len(),
        1,
        "{site}: the virtual address is held by {held:?}"
    );
    let partner = match held[0].ends_with("-a") {
        true => format!("{site}-gw-b"),
        false => format!("{site}-gw-a"),
    };
    (held[0].clone(), partner)
}

fn wait_for_one_active(lab: &Lab, site: &str) -> (String, String) {
    wait_until(
        &format!("one active relay at {site}"),
        Duration::from_secs(20),
        || holders(lab, site).len() == 1,
    );
    active_and_standby(lab, site)
}

/// A relay's death as its cloud would show it: every process gone and its port down.
fn kill_relay(lab: &Lab, relay: &str) {
    lab.kill_node(relay);
    let ns = format!("{}{relay}", lab.prefix());
    let down = Command::new("ip")
        .args(["-n", &ns, "link", "set", "eth0", "down"])
        .status()
        .unwrap();
    assert!(down.success());
}

/// An iperf3 stream from `from` to `to` for `seconds`; the server runs on `to`.
fn start_stream(lab: &Lab, from: &str, to: &str, to_ip: &str, seconds: u32) -> std::process::Child {
    let _server = Command::new(EXE)
        .args(["exec", "-f", lab.f(), to, "--", "iperf3", "-s", "-1", "-D"])
        .env("HYBRIDGRID_STATE_DIR", lab.state())
        .status()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    Command::new(EXE)
        .args(["exec", "-f", lab.f(), from, "--", "iperf3", "-c", to_ip])
        .args(["-t", &seconds.to_string(), "-b", "20M"])
        .env("HYBRIDGRID_STATE_DIR", lab.state())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn gap_of(child: std::process::Child) -> f64 {
    let out = child.wait_with_output().unwrap();
    longest_gap(&String::from_utf8_lossy(&out.stdout))
}

#[test]
fn a_pairs_standby_takes_over_within_5s_and_the_dead_relay_returns_as_standby() {
    let Some(lab) = Lab::with_text(CLUSTER, "fo") else {
        return;
    };
    lab.up();
    let plan: Plan = serde_json::from_str(&lab.hg_ok(&["plan", "-f", lab.f(), "--json"])).unwrap();
    for relay in ["a-gw-a", "a-gw-b", "b-gw-a", "b-gw-b", "c-gw"] {
        let node = plan.node(relay).unwrap_or_else(|| panic!("no {relay}"));
        assert_eq!(node.role, Role::Gateway, "{relay}");
    }
    let status = lab.status(true);
    let failed: Vec<_> = status.reachability.iter().filter(|r| !r.ok).collect();
    assert!(failed.is_empty(), "{failed:?}");
    for site in ["a", "b"] {
        let mut states: Vec<PairState> = status
            .nodes
            .iter()
            .filter(|n| n.site == site)
            .filter_map(|n| n.pair)
            .collect();
        states.sort_by_key(|s| *s == PairState::Standby);
        assert_eq!(states, [PairState::Active, PairState::Standby], "{site}");
    }

    // The active relay of b dies: b's worker still reaches c's within 5 s, and a TCP stream
    // between them survives.
    let (dead, partner) = wait_for_one_active(&lab, "b");
    let ping = start_ping(&lab, "b-worker-1", "10.63.0.6", 20);
    let stream = start_stream(&lab, "b-worker-1", "c-worker-1", "10.63.0.6", 15);
    std::thread::sleep(Duration::from_secs(4));
    kill_relay(&lab, &dead);
    let gap = gap_of(ping);
    eprintln!("b: {dead} died, longest ping gap {gap:.2}s");
    assert!(gap <= 5.0, "b: a gap of {gap:.2}s after {dead} died");
    let out = stream.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the TCP stream broke: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(active_and_standby(&lab, "b").0, partner);

    // `up` brings the dead relay back as the standby, with no gap over a second.
    let ping = start_ping(&lab, "b-worker-1", "10.63.0.6", 15);
    lab.up();
    let gap = gap_of(ping);
    eprintln!("b: {dead} back as standby, longest ping gap {gap:.2}s");
    assert!(gap <= 1.0, "b: a gap of {gap:.2}s while {dead} came back");
    assert_eq!(active_and_standby(&lab, "b"), (partner, dead));

    // At the master site the active relay loses its tunnel device and stops forwarding: it
    // gives the role up.
    let (broken, partner) = wait_for_one_active(&lab, "a");
    let ping = start_ping(&lab, "a-worker-1", "10.63.0.6", 15);
    std::thread::sleep(Duration::from_secs(3));
    lab.exec_ok(
        &broken,
        &[
            "sh",
            "-c",
            "ip link del wg0; sysctl -qw net.ipv4.ip_forward=0",
        ],
    );
    let gap = gap_of(ping);
    eprintln!("a: {broken} lost its data path, longest ping gap {gap:.2}s");
    assert!(gap <= 5.0, "a: a gap of {gap:.2}s after {broken} broke");
    assert_eq!(active_and_standby(&lab, "a").0, partner);

    let status = lab.status(true);
    let failed: Vec<_> = status.reachability.iter().filter(|r| !r.ok).collect();
    assert!(failed.is_empty(), "{failed:?}");
}
