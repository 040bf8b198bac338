//! The command line on an openstack cluster, against the project's OpenStack test bed
//! (`HYBRIDGRID_TESTBED_CLOUDS`, set by `scripts/test.sh`): validate --online, up, plan, down.

// Helpers of an integration test: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

fn clouds() -> PathBuf {
    std::env::var_os("HYBRIDGRID_TESTBED_CLOUDS").map(PathBuf::from).unwrap_or_else(|| {
        panic!(
            "HYBRIDGRID_TESTBED_CLOUDS is not set: run scripts/test.sh, or start the test bed with \
             `testbed/openstack/up.sh DIR` and export HYBRIDGRID_TESTBED_CLOUDS=DIR/clouds.yaml"
        )
    })
}

struct Run {
    dir: PathBuf,
    file: PathBuf,
}

impl Run {
    /// `tag` keeps clusters of concurrent tests apart: `down` also deletes by cluster tag.
    fn new(tag: &str, flavor: &str) -> Run {
        let name = format!("cli{tag}{}", std::process::id() % 100_000);
        let dir = std::env::temp_dir().join(format!("hg-cli-os-{name}-{flavor}"));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("cluster.yaml");
        let site = |n: &str, cloud: &str, net: &str, master: bool| {
            format!(
                "  - name: {n}\n    cloud: {cloud}\n    subnet: {net}\n    master: {master}\n    external_network: public\n    gateway: {{ flavor: m1.tiny, image: fake-image }}\n    workers:\n      - {{ count: 1, flavor: {flavor}, image: fake-image }}\n"
            )
        };
        let text = format!(
            "name: {name}\nprovider: openstack\nssh_public_key: \"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGr1CQ0VZ2Wx3dIU9kBLhLa2o86l9BBrJkq1nTQdwp8X test\"\nsites:\n{}{}",
            site("a", "site-a", "10.41.0.0/24", true),
            site("b", "site-b", "10.42.0.0/24", false)
        );
        std::fs::write(&file, text).unwrap();
        Run { dir, file }
    }

    fn hybridgrid(&self, args: &[&str]) -> Output {
        self.with_clouds(&clouds(), args)
    }

    fn with_clouds(&self, clouds: &Path, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_hybridgrid"))
            .args(args)
            .arg("-f")
            .arg(&self.file)
            .env("OS_CLIENT_CONFIG_FILE", clouds)
            // fake-image boots on the test bed's fake host: no relay key to wait for
            .env("HYBRIDGRID_BOOT_TIMEOUT", "0")
            // The fake host's servers never boot: no SSH to them.
            .env("HYBRIDGRID_NODE_CHANNEL", "off")
            .env("HYBRIDGRID_STATE_DIR", &self.dir)
            .output()
            .unwrap()
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        // Without a test bed the test has failed already: a second panic here would abort.
        if std::env::var_os("HYBRIDGRID_TESTBED_CLOUDS").is_some() {
            let _ = self.hybridgrid(&["down"]);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn validate_online_names_a_flavor_the_cloud_lacks() {
    let run = Run::new("v", "m1.huge");
    let out = run.hybridgrid(&["validate", "--online"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("m1.huge"), "{}", text(&out));
}

/// A dataset's bucket that does not exist yet is a warning (`up` makes it), not an error; once
/// it exists (made here through Swift's API) `validate --online` says nothing of it.
#[test]
fn validate_online_warns_of_a_bucket_not_made_yet() {
    let run = Run::new("d", "m1.tiny");
    let bucket = format!("hg-validate-{}", std::process::id());
    let mut text_file = std::fs::read_to_string(&run.file).unwrap();
    text_file.push_str(&format!(
        "datasets:\n  - {{ name: reads, site: b, bucket: {bucket} }}\n"
    ));
    std::fs::write(&run.file, text_file).unwrap();
    let out = run.hybridgrid(&["validate", "--online"]);
    assert!(out.status.success(), "{}", text(&out));
    let warning = format!("warning: site b: bucket `{bucket}` does not exist");
    assert!(text(&out).contains(&warning), "{}", text(&out));
    let swift = |verb: &str| {
        let out = Command::new("openstack")
            .args(["--os-cloud", "site-b", "container", verb, &bucket])
            .env("OS_CLIENT_CONFIG_FILE", clouds())
            .output()
            .unwrap();
        assert!(out.status.success(), "container {verb}: {}", text(&out));
    };
    swift("create");
    let out = run.hybridgrid(&["validate", "--online"]);
    swift("delete");
    assert!(out.status.success(), "{}", text(&out));
    assert!(!text(&out).contains("warning"), "{}", text(&out));
}

#[test]
fn up_plan_down_through_the_command_line() {
    let run = Run::new("u", "m1.tiny");
    let out = run.hybridgrid(&["validate", "--online"]);
    assert!(out.status.success(), "{}", text(&out));
    // `plan` lists exactly what `up` applies in its first round.
    let out = run.hybridgrid(&["plan", "--json"]);
    let planned: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let out = run.hybridgrid(&["up", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["rounds"][0], planned["changes"], "{report:#}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.matches(" ACTIVE after ").count(), 4, "{stderr}");
    let out = run.hybridgrid(&["up"]);
    assert!(text(&out).contains("no changes"), "{}", text(&out));
    // Every server ACTIVE: the nodes are up (tunnels need the node channel: none listed).
    let out = run.hybridgrid(&["status", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["nodes"].as_array().unwrap().len(), 4, "{status:#}");
    let out = run.hybridgrid(&["plan", "--json"]);
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        plan["changes"],
        serde_json::json!([]),
        "the plan sees the cloud as it is"
    );
    assert!(
        plan["nodes"][0]["public_ip"].is_string(),
        "the master's floating IP is observed"
    );
    let out = run.hybridgrid(&["down"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("nothing of the cluster is left"),
        "{}",
        text(&out)
    );
}

/// `status` of a cluster whose servers do not exist: every node down, exit 1.
#[test]
fn status_of_a_cluster_not_up_exits_1() {
    let run = Run::new("s", "m1.tiny");
    let out = run.hybridgrid(&["status", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        status["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["up"] == false),
        "{status:#}"
    );
}

/// Regression (issue 8): a refused credential failed only after six retries (~16 s), and `plan`
/// of an unreachable cloud planned "as if nothing existed" with exit 0.
#[test]
fn regression_issue_8_a_wrong_password_or_an_unreachable_cloud_is_an_error() {
    let run = Run::new("p", "m1.tiny");
    let good = std::fs::read_to_string(clouds()).unwrap();
    let wrong = run.dir.join("wrong-password.yaml");
    std::fs::write(&wrong, good.replace("site-b-pass", "not-the-password")).unwrap();
    for cmd in ["plan", "up", "status"] {
        let t = Instant::now();
        let out = run.with_clouds(&wrong, &[cmd]);
        let secs = t.elapsed().as_secs_f64();
        assert_eq!(out.status.code(), Some(1), "{cmd}: {}", text(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("cloud `site-b`"), "{cmd}: {err}");
        assert!(
            secs < 8.0,
            "{cmd}: a refused credential took {secs:.1}s: {err}"
        );
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains("changes"),
            "{cmd}"
        );
    }
    // Keystone not answering at all (nothing listens on port 9 of loopback).
    let gone = run.dir.join("unreachable.yaml");
    std::fs::write(
        &gone,
        good.replace("http://203.0.113.1:5000/v3", "http://127.0.0.1:9/v3"),
    )
    .unwrap();
    let out = run.with_clouds(&gone, &["plan"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot connect to cloud `site-"), "{err}");
    assert!(out.stdout.is_empty(), "no plan: {}", text(&out));
}
