//! `up` killed part-way, then `up` again converges and `down` leaves nothing; `down` finds the
//! cluster's ledger from another state directory.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::{EXE, Lab, assert_full_mesh};

/// `up` with `HYBRIDGRID_CRASH_AFTER=n`: it must die by SIGKILL.
fn up_crashing_after(lab: &Lab, n: usize) {
    let out = Command::new(EXE)
        .args(["up", "-f", lab.f()])
        .env("HYBRIDGRID_STATE_DIR", lab.state())
        .env("HYBRIDGRID_CRASH_AFTER", n.to_string())
        .output()
        .unwrap();
    use std::os::unix::process::ExitStatusExt as _;
    assert_eq!(
        out.status.signal(),
        Some(9),
        "up did not crash after {n} changes: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

fn converges_and_goes(lab: &Lab) {
    let out = lab.up();
    assert!(!out.contains("no changes"), "{out}");
    assert_full_mesh(lab, 4, 2);
    let again = lab.up();
    assert!(again.contains("no changes"), "{again}");
    lab.hg_ok(&["down", "-f", lab.f()]);
    lab.assert_gone();
}

#[test]
fn up_killed_after_n_changes_then_up_converges_and_down_leaves_nothing() {
    for n in [1, 5, 20, 45] {
        let Some(lab) = Lab::new("two-sites.yaml", &format!("cr{n}x")) else {
            return;
        };
        up_crashing_after(&lab, n);
        converges_and_goes(&lab);
    }
}

#[test]
fn up_killed_at_a_random_moment_then_up_converges() {
    let Some(lab) = Lab::new("two-sites.yaml", "rnd") else {
        return;
    };
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    // Somewhere in the first ~1.2 s: namespaces, nodes, agents or the second round.
    let delay = Duration::from_millis(100 + u64::from(nanos % 1100));
    eprintln!("killing up after {delay:?}");
    let mut child = Command::new(EXE)
        .args(["up", "-f", lab.f()])
        .env("HYBRIDGRID_STATE_DIR", lab.state())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while t.elapsed() < delay {
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = child.kill();
    let _ = child.wait();
    let out = lab.up();
    assert_full_mesh(&lab, 4, 2);
    assert!(lab.up().contains("no changes"), "{out}");
    lab.hg_ok(&["down", "-f", lab.f()]);
    lab.assert_gone();
}

#[test]
fn down_with_another_state_dir_finds_the_ledger_through_the_owner_record() {
    let Some(lab) = Lab::new("two-sites.yaml", "own") else {
        return;
    };
    lab.up();
    let other = lab.root.join("elsewhere");
    let out = Command::new(EXE)
        .args(["down", "-f", lab.f()])
        .env("HYBRIDGRID_STATE_DIR", &other)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("the owner record names"), "{stderr}");
    lab.assert_gone();

    // Without an owner record, `down` refuses to say "nothing" while the namespaces exist.
    lab.up();
    std::fs::remove_file(std::path::Path::new("/run/hybridgrid/owners").join(&lab.name)).unwrap();
    let out = Command::new(EXE)
        .args(["down", "-f", lab.f()])
        .env("HYBRIDGRID_STATE_DIR", &other)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("HYBRIDGRID_STATE_DIR") && stderr.contains("hybridgrid gc"),
        "{stderr}"
    );
    lab.hg_ok(&["down", "-f", lab.f()]);
    lab.assert_gone();
}

/// The Swift servers of this lab's stores: `(pid, network namespace)`, found by the state
/// directory on their command lines, wherever they run.
fn store_servers(lab: &Lab) -> Vec<(u32, String)> {
    let state = lab.state().display().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd);
            cmd.contains("swift-") && cmd.contains(&state)
        })
        .map(|pid| {
            let ns = std::fs::read_link(format!("/proc/{pid}/ns/net"))
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            (pid, ns)
        })
        .collect()
}

/// What broke: an `up` killed while making giessen's store left its servers running in a
/// namespace the next `up` replaced; their PID files looked alive, so the new namespace got no
/// proxy and `up` failed waiting for it.
#[test]
fn regression_a_store_made_again_runs_its_servers_in_its_new_namespace() {
    let Some(lab) = Lab::new("two-sites.yaml", "sto") else {
        return;
    };
    lab.up();
    let before = store_servers(&lab);
    assert_eq!(before.len(), 4, "{before:?}");
    hybridgrid_local::drift::lose_store_network(&lab.name, "giessen").unwrap();
    let out = lab.up();
    assert!(!out.contains("no changes"), "{out}");
    let after = store_servers(&lab);
    assert_eq!(
        after.len(),
        4,
        "the old servers were not stopped: {after:?}"
    );
    assert!(after.iter().all(|(_, ns)| ns == &after[0].1), "{after:?}");
    assert!(
        !after.iter().any(|a| before.contains(a)),
        "{before:?} {after:?}"
    );
    lab.hg_ok(&["data", "ls", "-f", lab.f(), "genomes"]);
    // `down` right after such a loss stops the servers no named namespace holds.
    hybridgrid_local::drift::lose_store_network(&lab.name, "giessen").unwrap();
    lab.hg_ok(&["down", "-f", lab.f()]);
    lab.assert_gone();
    super::wait_until("no store server left", Duration::from_secs(5), || {
        store_servers(&lab).is_empty()
    });
}
