//! The command line as a user meets it: exit codes, where messages go, what files appear.

// Helpers of an integration test: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn hybridgrid(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hybridgrid"))
        .args(args)
        .current_dir(root())
        .output()
        .unwrap()
}

#[test]
fn validate_accepts_the_examples() {
    for f in [
        "examples/two-sites.yaml",
        "examples/three-sites.yaml",
        "examples/openstack-two-sites.yaml",
    ] {
        let out = hybridgrid(&["validate", "-f", f]);
        assert!(
            out.status.success(),
            "{f}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("ok"));
    }
}

#[test]
fn validate_reports_every_problem_with_position_and_exits_1() {
    let f = "fixtures/invalid/36-many-problems-at-once.yaml";
    let out = hybridgrid(&["validate", "-f", f]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "{f}:2:11: error: provider: unknown provider `openstak`"
        )),
        "{err}"
    );
    assert!(err.contains("help: did you mean `openstack`?"), "{err}");
    assert!(err.contains("9 error(s); nothing was created"), "{err}");
    assert!(out.stdout.is_empty(), "diagnostics go to stderr");
}

#[test]
fn validate_json_lists_every_problem_with_line_and_key() {
    let f = "fixtures/invalid/36-many-problems-at-once.yaml";
    let out = hybridgrid(&["validate", "-f", f, "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["format_version"], 1);
    assert_eq!(v["ok"], false);
    let d = v["diagnostics"].as_array().unwrap();
    assert_eq!(
        d.iter().filter(|d| d["severity"] == "error").count(),
        9,
        "{v:#}"
    );
    assert!(
        d.iter().any(|d| d["line"] == 2
            && d["column"] == 11
            && d["key"] == "provider"
            && d["help"] == "did you mean `openstack`?"),
        "{v:#}"
    );
    let ok = hybridgrid(&["validate", "-f", "examples/three-sites.yaml", "--json"]);
    assert!(ok.status.success());
    let v: serde_json::Value = serde_json::from_slice(&ok.stdout).unwrap();
    assert_eq!(
        (v["ok"].clone(), v["sites"].clone()),
        (true.into(), 3.into()),
        "{v:#}"
    );
}

#[test]
fn a_missing_file_is_a_clear_error() {
    let out = hybridgrid(&["validate", "-f", "no/such/cluster.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("cannot read cluster file no/such/cluster.yaml")
    );
}

#[test]
fn plan_json_is_a_versioned_document() {
    let out = hybridgrid(&["plan", "-f", "examples/two-sites.yaml", "--json"]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["format_version"], 1);
    let names: Vec<&str> = v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "bielefeld-master",
            "bielefeld-worker-1",
            "giessen-gw",
            "giessen-worker-1"
        ]
    );
}

#[test]
fn plan_summarises_for_humans() {
    let out = hybridgrid(&["plan", "-f", "examples/two-sites.yaml"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("MTU 1370"), "{text}");
    assert!(
        text.contains(
            "+ giessen: allowed-address pairs on giessen-gw's port: 10.0.0.0/24, 10.10.0.0/24"
        ),
        "{text}"
    );
}

#[test]
fn render_writes_reviewable_files() {
    let dir = std::env::temp_dir().join(format!("hg-cli-render-{}", std::process::id()));
    let out = hybridgrid(&[
        "render",
        "-f",
        "examples/three-sites.yaml",
        "--out",
        dir.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for rel in [
        "plan.json",
        "common/etc/hosts",
        "nodes/bielefeld-master/etc/slurm/slurm.conf",
        "nodes/giessen-gw/etc/wireguard/wg0.conf",
        "nodes/heidelberg-big-1/etc/hybridgrid/routes.sh",
        "cloud/heidelberg/rules.txt",
    ] {
        assert!(dir.join(rel).is_file(), "missing {rel}");
    }
    let slurm =
        std::fs::read_to_string(dir.join("nodes/bielefeld-master/etc/slurm/slurm.conf")).unwrap();
    assert!(slurm.contains("PartitionName=heidelberg Nodes=heidelberg-big-1"));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The bash completion loads and completes subcommands and their options; zsh and fish scripts
/// are produced; the manual page is roff and leaves out the node-side commands.
#[test]
fn completions_load_in_bash_and_the_man_page_renders() {
    let exe = env!("CARGO_BIN_EXE_hybridgrid");
    let complete = |words: &str| {
        let script = format!(
            "source <('{exe}' completions bash) && COMP_WORDS=({words}) && \
             COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1)) && \
             _hybridgrid hybridgrid \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\" && \
             echo \"${{COMPREPLY[@]}}\""
        );
        let out = Command::new("bash").args(["-c", &script]).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    assert_eq!(complete("hybridgrid pl"), "plan");
    let all = complete("hybridgrid ''");
    assert!(all.contains("plan") && all.contains("submit"), "{all}");
    assert!(
        !all.contains("wg-userspace") && !all.contains("hold"),
        "hidden stay hidden: {all}"
    );
    assert!(complete("hybridgrid status --").contains("--all-pairs"));
    for shell in ["zsh", "fish"] {
        let out = hybridgrid(&["completions", shell]);
        assert!(out.status.success() && out.stdout.len() > 500, "{shell}");
    }
    let man = String::from_utf8(hybridgrid(&["man"]).stdout).unwrap();
    assert!(man.contains(".TH hybridgrid 1"), "{man}");
    assert!(man.contains("validate") && man.contains("submit"));
    assert!(
        !man.contains("wg\\-userspace"),
        "node-side commands stay hidden"
    );
}
