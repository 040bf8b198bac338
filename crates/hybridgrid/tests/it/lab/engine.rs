//! The engine on the local provider: `plan` shows exactly what `up` applies, and drift on the
//! live cluster (a dead WireGuard device, a deleted route, a removed rule) is a change in both.

use std::process::Command;

use hybridgrid_core::diff::Change;
use hybridgrid_core::plan::Plan;
use hybridgrid_engine::UpReport;
use hybridgrid_local::drift;
use serde::de::DeserializeOwned;

use super::{Lab, assert_full_mesh};

fn json<T: DeserializeOwned>(text: &str) -> T {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

impl Lab {
    fn planned(&self) -> Vec<Change> {
        json::<Plan>(&self.hg_ok(&["plan", "-f", self.f(), "--json"])).changes
    }

    fn up_json(&self) -> UpReport {
        json(&self.hg_ok(&["up", "-f", self.f(), "--json"]))
    }

    /// `plan`'s changes are `up`'s first round, exactly; returns them.
    fn assert_plan_is_up(&self) -> Vec<Change> {
        let planned = self.planned();
        let report = self.up_json();
        assert_eq!(report.rounds.first(), Some(&planned), "{report:#?}");
        planned
    }
}

#[test]
fn plan_lists_exactly_what_up_applies_and_drift_is_a_change() {
    let Some(mut lab) = Lab::new("two-sites.yaml", "pup") else {
        return;
    };
    // No node supervisor: the drift must stay until `up` (see heal.rs for the supervisor).
    lab.env.push(("HYBRIDGRID_AGENT_PERIOD", "0".into()));
    let first = lab.assert_plan_is_up();
    assert!(
        first
            .iter()
            .any(|c| matches!(c, Change::CreateNetwork { .. }))
    );
    assert_full_mesh(&lab, 4, 2);
    assert_eq!(lab.planned(), Vec::new());

    // The WireGuard device of giessen-gw dies (its userspace daemon killed): plan and up see it.
    let tag = format!("--tag {}giessen-gw", lab.prefix());
    let out = Command::new("pkill")
        .args(["-KILL", "-f", &format!("wg-userspace wg0 {tag}")])
        .status()
        .unwrap();
    assert!(out.success(), "no WireGuard daemon found for giessen-gw");
    std::thread::sleep(std::time::Duration::from_millis(300));
    let drift = lab.assert_plan_is_up();
    let text = serde_json::to_string(&drift).unwrap();
    assert!(
        text.contains("giessen-gw") && text.contains("create wg0"),
        "{drift:#?}"
    );

    // A route deleted by hand on a worker.
    lab.exec_ok("giessen-worker-1", &["ip", "route", "del", "10.10.0.0/24"]);
    let drift = lab.assert_plan_is_up();
    assert!(
        serde_json::to_string(&drift)
            .unwrap()
            .contains("add route 10.10.0.0/24"),
        "{drift:#?}"
    );

    // A security-group rule removed from a node's live rules.
    let removed =
        drift::remove_rule(&lab.name, "bielefeld-worker-1", |l| l.contains("accept")).unwrap();
    assert!(removed.is_some(), "no rule to remove");
    let drift = lab.assert_plan_is_up();
    assert!(
        drift.iter().any(|c| matches!(c, Change::AddRule { .. })),
        "{drift:#?}"
    );

    // Everything is back: nothing planned, every pair reachable.
    assert_eq!(lab.planned(), Vec::new());
    assert_full_mesh(&lab, 4, 2);
}

#[test]
fn regression_issue_8_a_corrupt_ledger_is_an_error_not_an_empty_cluster() {
    let Some(lab) = Lab::new("two-sites.yaml", "bad") else {
        return;
    };
    lab.up();
    let ledger = lab.state().join(&lab.name).join("ledger.json");
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&ledger).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the ledger names every resource: root only");
    let good = std::fs::read(&ledger).unwrap();
    std::fs::write(&ledger, b"{\"format_version\": 1, \"cluster\": ").unwrap();
    for cmd in ["plan", "up", "status", "down"] {
        let out = lab.hg(&[cmd, "-f", lab.f()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{cmd}: {err}");
        assert!(
            err.contains(ledger.to_str().unwrap()) && err.contains("is corrupt"),
            "{cmd}: {err}"
        );
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains("create"),
            "{cmd}"
        );
    }
    // Nothing was touched: with the ledger back, the cluster is as it was.
    std::fs::write(&ledger, good).unwrap();
    assert!(lab.up().contains("no changes"));
}

/// One change of a cluster at a time: `up` while another command holds the cluster (here the
/// test, as `rotate` would) waits, says for whom, and goes on once it is free.
#[test]
fn up_waits_for_the_command_that_holds_the_cluster_and_says_which() {
    let Some(lab) = Lab::new("two-sites.yaml", "wait") else {
        return;
    };
    lab.up();
    let dir = lab.state().join(&lab.name);
    let held =
        hybridgrid_engine::state::operation::OperationLock::exclusive(&dir, "rotate", &|_| {
            panic!("nobody else holds it")
        })
        .unwrap();
    let mut child = Command::new(super::EXE)
        .args(["up", "-f", lab.f()])
        .env("HYBRIDGRID_STATE_DIR", lab.state())
        .envs(lab.env.iter().map(|(k, v)| (k, v)))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_secs(2));
    // (On a failure the lock goes with the unwinding test, and this `up` ends by itself.)
    assert!(child.try_wait().unwrap().is_none(), "up did not wait");
    drop(held);
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains(&format!(
            "waiting for `rotate (pid {})` to finish with cluster {}",
            std::process::id(),
            lab.name
        )),
        "{err}"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("no changes"));
}
