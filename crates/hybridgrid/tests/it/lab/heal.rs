//! A cluster that heals itself: each node's supervisor brings back a dead WireGuard device, Slurm
//! daemon or deleted route within a second or two and re-applies its configuration on a short
//! period; after a gateway's reboot, `up` leaves every pair reachable at once (no ICMP redirect
//! sends workers to the site router meanwhile).

use std::process::Command;
use std::time::{Duration, Instant};

use super::{Lab, assert_full_mesh, wait_until};

/// The first process whose command line matches `pattern` (`pgrep -f`).
fn pid_matching(pattern: &str) -> Option<u32> {
    let out = Command::new("pgrep")
        .args(["-f", pattern])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
}

fn wg_daemon_pid(lab: &Lab, node: &str) -> Option<u32> {
    pid_matching(&format!("wg-userspace wg0 --tag {}{node}$", lab.prefix()))
}

fn handshake_with(lab: &Lab, node: &str) -> bool {
    let out = lab.exec(node, &["wg", "show", "wg0", "latest-handshakes"]);
    out.status.success()
        && String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .nth(1)
            .and_then(|t| t.parse::<u64>().ok())
            .is_some_and(|t| t > 0)
}

#[test]
fn a_killed_wireguard_device_comes_back_within_5s_without_up() {
    let Some(lab) = Lab::new("two-sites.yaml", "wgk") else {
        return;
    };
    lab.up();
    let old = wg_daemon_pid(&lab, "giessen-gw").expect("giessen-gw runs a userspace device");
    assert!(
        Command::new("kill")
            .args(["-KILL", &old.to_string()])
            .status()
            .unwrap()
            .success()
    );
    let t = Instant::now();
    wait_until("giessen-gw's wg0 back", Duration::from_secs(5), || {
        wg_daemon_pid(&lab, "giessen-gw").is_some_and(|p| p != old)
            && lab
                .exec("giessen-gw", &["wg", "show", "wg0"])
                .status
                .success()
    });
    eprintln!("wg0 back after {:?}", t.elapsed());
    // The tunnel works again: a fresh handshake and a cross-site ping.
    wait_until(
        "a handshake on the new device",
        Duration::from_secs(10),
        || handshake_with(&lab, "giessen-gw"),
    );
    lab.exec_ok(
        "giessen-worker-1",
        &["ping", "-c", "1", "-W", "2", "bielefeld-worker-1"],
    );
}

/// The supervisor looks for the planned routes every second: a deleted one is back long before
/// the period (a minute here) would bring it.
#[test]
fn a_route_deleted_by_hand_is_restored_within_seconds_whatever_the_period() {
    let Some(mut lab) = Lab::new("two-sites.yaml", "rte") else {
        return;
    };
    lab.env.push(("HYBRIDGRID_AGENT_PERIOD", "60".into()));
    lab.up();
    lab.exec_ok("giessen-worker-1", &["ip", "route", "del", "10.10.0.0/24"]);
    let t = Instant::now();
    wait_until("the route back", Duration::from_secs(5), || {
        lab.exec_ok("giessen-worker-1", &["ip", "-4", "route", "show"])
            .contains("10.10.0.0/24 via 10.20.0.5")
    });
    eprintln!("route back after {:?}", t.elapsed());
    lab.exec_ok(
        "giessen-worker-1",
        &["ping", "-c", "1", "-W", "2", "bielefeld-worker-1"],
    );
}

/// Regression (issue 11): after a gateway's reboot, worker pairs across the sites stayed broken
/// for minutes: the new gateway forwarded before its tunnel routes existed, redirected the
/// workers to the site router, and they kept the redirect.
#[test]
fn regression_issue_11_after_a_gateways_reboot_and_up_every_pair_is_reachable_within_10s() {
    let Some(lab) = Lab::new("two-sites.yaml", "rbt") else {
        return;
    };
    lab.up();
    // Traffic across the sites while the gateway goes away, as a running cluster has.
    let _ = lab.exec(
        "giessen-worker-1",
        &["ping", "-c", "2", "-i", "0.2", "-W", "1", "10.10.0.6"],
    );
    lab.kill_node("giessen-gw");
    // Workers keep sending across the sites meanwhile.
    let _ = lab.exec(
        "giessen-worker-1",
        &["ping", "-c", "3", "-i", "0.2", "-W", "1", "10.10.0.6"],
    );
    let out = lab.up();
    assert!(!out.contains("no changes"), "{out}");
    let t = Instant::now();
    wait_until("every pair reachable", Duration::from_secs(10), || {
        let s = lab.status(true);
        !s.reachability.is_empty() && s.reachability.iter().all(|x| x.ok)
    });
    eprintln!("every pair reachable {:?} after up", t.elapsed());
    assert_full_mesh(&lab, 4, 2);
    let cache = lab.exec_ok("giessen-worker-1", &["ip", "-4", "route", "show", "cache"]);
    assert!(!cache.contains("redirected"), "{cache}");
}

/// The pid in a node's pid file (its `/run` is private to the node).
fn pid_file(lab: &Lab, node: &str, file: &str) -> Option<u32> {
    let out = lab.exec(node, &["cat", file]);
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

#[test]
fn killed_slurm_daemons_come_back_within_5s_without_up() {
    let Some(lab) = Lab::new("two-sites.yaml", "slk") else {
        return;
    };
    lab.up();
    for (node, file) in [
        ("giessen-worker-1", "/run/slurm/slurmd.pid"),
        ("giessen-worker-1", "/run/munge/munged.pid"),
        ("bielefeld-master", "/run/slurm/slurmctld.pid"),
    ] {
        let old = pid_file(&lab, node, file).unwrap_or_else(|| panic!("{node}: no {file}"));
        lab.exec_ok(node, &["kill", "-KILL", &old.to_string()]);
        let t = Instant::now();
        wait_until(
            &format!("{node}: {file} back"),
            Duration::from_secs(5),
            || {
                pid_file(&lab, node, file).is_some_and(|p| {
                    p != old
                        && lab
                            .exec(node, &["kill", "-0", &p.to_string()])
                            .status
                            .success()
                })
            },
        );
        eprintln!("{node}: {file} back after {:?}", t.elapsed());
    }
    // Slurm works again: the worker is idle and runs a job.
    wait_until("giessen-worker-1 idle", Duration::from_secs(30), || {
        let out = lab.exec("bielefeld-master", &["sinfo", "-h", "-N", "-o", "%N %T"]);
        String::from_utf8_lossy(&out.stdout).contains("giessen-worker-1 idle")
    });
    lab.exec_ok(
        "bielefeld-master",
        &["srun", "-p", "giessen", "-t", "1", "hostname"],
    );
}

/// Issue 25: the supervisor of an idle worker — its one-second look and its periodic apply
/// (three of them here) — starts no process in 30 s: routes come from `/proc/net/route`, a node
/// that never clamps does not ask nftables, and slurmctld is asked whether it still knows the
/// node only every few minutes (not in the first two after `up`).
#[test]
fn an_idle_workers_agent_starts_no_process_in_30s() {
    let Some(lab) = Lab::new("two-sites.yaml", "quiet") else {
        return;
    };
    lab.up();
    super::slurm::wait_idle(&lab, &["giessen-worker-1"]);
    let supervisor = pid_matching(&format!("hold --tag {}giessen-worker-1 ", lab.prefix()))
        .expect("giessen-worker-1's supervisor")
        .to_string();
    let traced = Command::new("timeout")
        .args([
            "30",
            "strace",
            "-f",
            "-qq",
            "-e",
            "trace=execve",
            "-p",
            &supervisor,
        ])
        .output()
        .unwrap();
    let trace = String::from_utf8_lossy(&traced.stderr);
    // `timeout` ended a strace that followed the supervisor all along.
    assert_eq!(traced.status.code(), Some(124), "strace: {trace}");
    let started: Vec<&str> = trace.lines().filter(|l| l.contains("execve(")).collect();
    assert!(
        started.is_empty(),
        "the idle worker's agent started: {started:#?}"
    );
}
