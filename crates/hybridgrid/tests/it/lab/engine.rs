//! The engine on the local provider: `plan` shows exactly what `up` applies, and drift on the
//! live cluster (a dead WireGuard device, a deleted route, a removed rule) is a change in both.

use std::process::Command;

use serde_json::Value;

use super::{Lab, assert_full_mesh};

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

impl Lab {
    fn planned(&self) -> Value {
        json(&self.hg_ok(&["plan", "-f", self.f(), "--json"]))["changes"].clone()
    }

    fn up_json(&self) -> Value {
        json(&self.hg_ok(&["up", "-f", self.f(), "--json"]))
    }

    /// `plan`'s changes are `up`'s first round, exactly; returns them.
    fn assert_plan_is_up(&self) -> Value {
        let planned = self.planned();
        let report = self.up_json();
        assert_eq!(report["rounds"][0], planned, "{report:#}");
        planned
    }
}

fn kinds(changes: &Value) -> Vec<String> {
    changes
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["change"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn plan_lists_exactly_what_up_applies_and_drift_is_a_change() {
    let Some(mut lab) = Lab::new("two-sites.yaml", "pup") else {
        return;
    };
    // No node supervisor: the drift must stay until `up` (see heal.rs for the supervisor).
    lab.env.push(("HYBRIDGRID_AGENT_PERIOD", "0".into()));
    let first = lab.assert_plan_is_up();
    assert!(kinds(&first).contains(&"create_network".to_owned()));
    assert_full_mesh(&lab, 4, 2);
    assert_eq!(lab.planned(), Value::Array(Vec::new()));

    // The WireGuard device of giessen-gw dies (its userspace daemon killed): plan and up see it.
    let tag = format!("--tag {}giessen-gw", lab.prefix());
    let out = Command::new("pkill")
        .args(["-KILL", "-f", &format!("wg-userspace wg0 {tag}")])
        .status()
        .unwrap();
    assert!(out.success(), "no WireGuard daemon found for giessen-gw");
    std::thread::sleep(std::time::Duration::from_millis(300));
    let drift = lab.assert_plan_is_up();
    let text = drift.to_string();
    assert!(
        text.contains("giessen-gw") && text.contains("create wg0"),
        "{drift:#}"
    );

    // A route deleted by hand on a worker.
    lab.exec_ok("giessen-worker-1", &["ip", "route", "del", "10.10.0.0/24"]);
    let drift = lab.assert_plan_is_up();
    assert!(
        drift.to_string().contains("add route 10.10.0.0/24"),
        "{drift:#}"
    );

    // A security-group rule removed from a node's live rules.
    let ns = format!("{}bielefeld-worker-1", lab.prefix());
    let listing = Command::new("ip")
        .args([
            "netns", "exec", &ns, "nft", "-a", "list", "chain", "inet", "hg_sg", "rules",
        ])
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout).into_owned();
    let handle = listing
        .lines()
        .find(|l| l.contains("accept"))
        .and_then(|l| l.rsplit("# handle ").next())
        .unwrap_or_else(|| panic!("no rule: {listing}"))
        .trim()
        .to_owned();
    let del = Command::new("ip")
        .args([
            "netns", "exec", &ns, "nft", "delete", "rule", "inet", "hg_sg", "rules", "handle",
            &handle,
        ])
        .status()
        .unwrap();
    assert!(del.success());
    let drift = lab.assert_plan_is_up();
    assert!(kinds(&drift).contains(&"add_rule".to_owned()), "{drift:#}");

    // Everything is back: nothing planned, every pair reachable.
    assert_eq!(lab.planned(), Value::Array(Vec::new()));
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
