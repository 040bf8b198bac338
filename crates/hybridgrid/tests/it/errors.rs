//! Errors as a user reads them: a nested error on each path that does not go through the engine
//! (`down`, `exec`, `gc`, `graph`) prints each cause once, and a cluster file that is not UTF-8
//! is a diagnostic with its line and column like every other input error. Each test breaks
//! something early (a state file, a setting, the file's bytes): no root, no namespaces.

// Helpers of an integration test: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// What the settings read; none of them leaks in from the environment the tests run in.
const SETTINGS: [&str; 8] = [
    "HYBRIDGRID_STATE_DIR",
    "HYBRIDGRID_AGENT_PERIOD",
    "HYBRIDGRID_BOOT_TIMEOUT",
    "HYBRIDGRID_AGENT_URL",
    "HYBRIDGRID_AGENT_SHA256",
    "HYBRIDGRID_AGENT_BINARY",
    "HYBRIDGRID_NODE_CHANNEL",
    "OS_CLIENT_CONFIG_FILE",
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `hybridgrid ARGS` with `env` (and no other setting) from the repository's root.
fn hybridgrid(args: &[&str], env: &[(&str, &Path)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hybridgrid"));
    for var in SETTINGS {
        cmd.env_remove(var);
    }
    cmd.args(args)
        .envs(env.iter().copied())
        .current_dir(root())
        .output()
        .unwrap()
}

/// The run failed, and `cause` is in its standard error exactly once.
fn failed_with_cause_once(out: &Output, cause: &str) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{stderr}");
    assert_eq!(
        stderr.matches(cause).count(),
        1,
        "{cause:?} once in:\n{stderr}"
    );
    stderr
}

/// A state folder holding `<cluster>/<file>` with `content`.
fn state_with(cluster: &str, file: &str, content: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join(cluster)).unwrap();
    std::fs::write(dir.path().join(cluster).join(file), content).unwrap();
    dir
}

#[test]
fn non_utf8_cluster_file_names_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cluster.yaml");
    let mut bytes = b"name: demo\nprovider: local\nsites:\n  - name: gi".to_vec();
    bytes.extend_from_slice(b"\xffssen\n    subnet: 10.1.0.0/24\n");
    std::fs::write(&file, bytes).unwrap();
    let shown = file.to_str().unwrap();
    let out = hybridgrid(&["validate", "-f", shown], &[]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = failed_with_cause_once(&out, "not UTF-8");
    assert!(
        stderr.contains(&format!(
            "{shown}:4:13: error: the file is not UTF-8 text: byte 0xff is not valid UTF-8 here"
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("{shown}: 1 error(s); nothing was created")),
        "{stderr}"
    );
    assert!(!stderr.contains("stream did not contain"), "{stderr}");
    let out = hybridgrid(&["validate", "-f", shown, "--json"], &[]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let d = &v["diagnostics"][0];
    assert_eq!(
        (d["line"].clone(), d["column"].clone()),
        (4.into(), 13.into()),
        "{v:#}"
    );
}

/// The ledger's text is not JSON: the state crate's error inside the local provider's.
#[test]
fn nested_error_cause_printed_once_on_down() {
    let state = state_with("demo", "ledger.json", "{not json");
    let out = hybridgrid(
        &["down", "-f", "examples/two-sites.yaml"],
        &[("HYBRIDGRID_STATE_DIR", state.path())],
    );
    let stderr = failed_with_cause_once(&out, "is corrupt");
    assert!(stderr.contains("demo/ledger.json"), "{stderr}");
    assert_eq!(stderr.matches("line 1 column").count(), 1, "{stderr}");
}

/// The ledger has another version: the state crate's error inside the openstack provider's.
#[test]
fn nested_error_cause_printed_once_on_exec() {
    let state = state_with(
        "denbi",
        "openstack-ledger.json",
        r#"{"format_version": 99}"#,
    );
    let out = hybridgrid(
        &[
            "exec",
            "-f",
            "examples/openstack-two-sites.yaml",
            "bielefeld-master",
            "--",
            "true",
        ],
        &[("HYBRIDGRID_STATE_DIR", state.path())],
    );
    let stderr = failed_with_cause_once(&out, "format_version 99");
    assert!(stderr.contains("openstack-ledger.json"), "{stderr}");
}

/// The ledger cannot be read at all (a folder in its place): the I/O error inside the state
/// crate's inside the local provider's, three levels.
#[test]
fn nested_error_cause_printed_once_on_graph() {
    let state = tempfile::tempdir().unwrap();
    let ledger = state.path().join("demo/ledger.json");
    std::fs::create_dir_all(&ledger).unwrap();
    let out = hybridgrid(
        &["graph", "-f", "examples/two-sites.yaml"],
        &[("HYBRIDGRID_STATE_DIR", state.path())],
    );
    let stderr = failed_with_cause_once(&out, "Is a directory");
    assert_eq!(
        stderr.matches(ledger.to_str().unwrap()).count(),
        1,
        "{stderr}"
    );
}

/// `gc` reads nothing but the settings before it sweeps the host: a bad one (once ignored)
/// stops it, naming the variable, the value and the parser's reason once.
#[test]
fn nested_error_cause_printed_once_on_gc() {
    let out = hybridgrid(&["gc"], &[("HYBRIDGRID_BOOT_TIMEOUT", Path::new("soon"))]);
    let stderr = failed_with_cause_once(&out, "invalid digit found in string");
    assert!(
        stderr
            .contains(r#"error: HYBRIDGRID_BOOT_TIMEOUT="soon" is not a whole number of seconds"#),
        "{stderr}"
    );
}
