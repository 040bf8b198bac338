//! Running the system tools (`ip`, `nft`, `nsenter`) with their errors captured.

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use crate::LocalError;

fn describe(program: &str, args: &[&str]) -> String {
    let mut s = program.to_owned();
    for a in args {
        s.push(' ');
        s.push_str(a);
    }
    s
}

fn check(cmd: String, out: std::io::Result<Output>) -> Result<String, LocalError> {
    let out = out.map_err(|e| LocalError::Command {
        command: cmd.clone(),
        detail: e.to_string(),
    })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        Err(LocalError::Command {
            command: cmd,
            detail: format!("{} ({})", err.trim(), out.status),
        })
    }
}

/// Runs a program, returns its stdout; a non-zero exit is an error with its stderr.
pub fn run(program: &str, args: &[&str]) -> Result<String, LocalError> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output();
    check(describe(program, args), out)
}

/// Like [`run`] with `input` on stdin.
pub fn run_input(program: &str, args: &[&str], input: &str) -> Result<String, LocalError> {
    let cmd = describe(program, args);
    let child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let out = child.and_then(|mut c| {
        if let Some(mut stdin) = c.stdin.take() {
            stdin.write_all(input.as_bytes())?;
        }
        c.wait_with_output()
    });
    check(cmd, out)
}

/// True if the program ran and exited 0.
pub fn ok(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `ip -n NS -batch -`: many changes to one namespace for one process start.
pub fn ip_batch(ns: Option<&str>, lines: &[String]) -> Result<(), LocalError> {
    let mut args = Vec::new();
    if let Some(ns) = ns {
        args.extend(["-n", ns]);
    }
    args.extend(["-batch", "-"]);
    run_input("ip", &args, &(lines.join("\n") + "\n")).map(drop)
}

/// Loads an nftables ruleset into a namespace (`None`: the current one), atomically.
pub fn nft(ns: Option<&str>, ruleset: &str) -> Result<(), LocalError> {
    match ns {
        Some(ns) => run_input("nsenter", &[&net_of(ns), "--", "nft", "-f", "-"], ruleset).map(drop),
        None => run_input("nft", &["-f", "-"], ruleset).map(drop),
    }
}

/// `--net=/run/netns/NS` for `nsenter`: enters only the network namespace, unlike `ip netns
/// exec`, which also remounts `/sys` for each command (several times the cost at 200 nodes).
pub fn net_of(ns: &str) -> String {
    format!("--net=/run/netns/{ns}")
}

pub fn netns_exists(ns: &str) -> bool {
    Path::new("/run/netns").join(ns).exists()
}

/// All named network namespaces on the host.
pub fn netns_list() -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}
