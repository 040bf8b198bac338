//! The command line on an openstack cluster, against the project's OpenStack test bed
//! (`HYBRIDGRID_TESTBED_CLOUDS`, set by `scripts/test.sh`): validate --online, up, plan, down.

// Helpers of an integration test: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::{Command, Output};

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
        Command::new(env!("CARGO_BIN_EXE_hybridgrid"))
            .args(args)
            .arg("-f")
            .arg(&self.file)
            .env("OS_CLIENT_CONFIG_FILE", clouds())
            .env("HYBRIDGRID_STATE_DIR", &self.dir)
            .output()
            .unwrap()
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        let _ = self.hybridgrid(&["down"]);
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

#[test]
fn up_plan_down_through_the_command_line() {
    let run = Run::new("u", "m1.tiny");
    let out = run.hybridgrid(&["validate", "--online"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = run.hybridgrid(&["up"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("4 servers created"), "{}", text(&out));
    let out = run.hybridgrid(&["up"]);
    assert!(text(&out).contains("no changes"), "{}", text(&out));
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
