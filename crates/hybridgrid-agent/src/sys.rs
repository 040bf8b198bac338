//! The system tools a node runs (`ip`, `nft`, `nsenter`, `wg`) with their errors captured,
//! processes, and the node's state files.

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::AgentError;

fn describe(program: &str, args: &[&str]) -> String {
    let mut s = program.to_owned();
    for a in args {
        s.push(' ');
        s.push_str(a);
    }
    s
}

fn check(cmd: String, out: std::io::Result<Output>) -> Result<String, AgentError> {
    let out = out.map_err(|e| AgentError::Command {
        command: cmd.clone(),
        detail: e.to_string(),
    })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        Err(AgentError::Command {
            command: cmd,
            detail: format!("{} ({})", err.trim(), out.status),
        })
    }
}

/// Runs a program, returns its stdout; a non-zero exit is an error with its stderr.
pub fn run(program: &str, args: &[&str]) -> Result<String, AgentError> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output();
    check(describe(program, args), out)
}

/// Like [`run`] with `input` on stdin.
pub fn run_input(program: &str, args: &[&str], input: &str) -> Result<String, AgentError> {
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

/// The program's stdout if it ran and exited 0.
pub fn ok_stdout(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip -n NS -batch -`: many changes to one namespace for one process start.
pub fn ip_batch(ns: Option<&str>, lines: &[String]) -> Result<(), AgentError> {
    let mut args = Vec::new();
    if let Some(ns) = ns {
        args.extend(["-n", ns]);
    }
    args.extend(["-batch", "-"]);
    run_input("ip", &args, &(lines.join("\n") + "\n")).map(drop)
}

/// Loads an nftables ruleset into a namespace (`None`: the current one), atomically.
pub fn nft(ns: Option<&str>, ruleset: &str) -> Result<(), AgentError> {
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

/// True if the process runs (a zombie does not count).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // State is the field after the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// The process's command line, arguments joined by spaces.
pub fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

/// SIGTERM, up to 3 s to exit, then SIGKILL (a wedged userspace daemon may ignore SIGTERM).
pub fn stop_processes(pids: &[u32]) {
    let own = std::process::id();
    let pids: Vec<u32> = pids
        .iter()
        .copied()
        .filter(|&p| p != own && p > 1)
        .collect();
    for &p in &pids {
        let _ = kill(Pid::from_raw(p as i32), Signal::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    while pids.iter().any(|&p| alive(p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    for &p in pids.iter().filter(|&&p| alive(p)) {
        let _ = kill(Pid::from_raw(p as i32), Signal::SIGKILL);
    }
}

/// Runs `cmd` (stdin empty, output captured) and returns its output if it exits within
/// `limit`; otherwise it is killed and reaped, and the answer is `None`. For small outputs:
/// the pipes are read once it exited.
pub fn output_within(mut cmd: Command, limit: Duration) -> Option<Output> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .ok()?;
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => return child.wait_with_output().ok(),
            Ok(None) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
}

/// Starts `cmd` as a daemon of the agent: its own process group (a signal to the agent's group
/// does not reach it; the supervisor reaps it), no standard input, its output in `log` (made
/// anew). `what` names it in the error.
pub fn spawn_daemon(
    mut cmd: Command,
    log: &Path,
    what: &str,
) -> Result<std::process::Child, AgentError> {
    use std::os::unix::process::CommandExt as _;
    let out = std::fs::File::create(log).map_err(AgentError::io(log))?;
    let err = out.try_clone().map_err(AgentError::io(log))?;
    cmd.stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .map_err(|e| AgentError::Command {
            command: what.to_owned(),
            detail: e.to_string(),
        })
}

/// Appends `line` to the log at `path`; a log that cannot be written is no error (the programs
/// that keep one run where nobody reads their output).
pub fn append_line(path: &Path, line: &str) {
    use std::io::Write as _;
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = writeln!(f, "{line}");
    }
}

/// Polls `check` every 10 ms until it returns `Some`, at most `limit`.
pub fn wait_for<T>(
    what: &str,
    limit: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> Result<T, AgentError> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check() {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            return Err(AgentError::Timeout {
                what: what.to_owned(),
                seconds: limit.as_secs(),
            });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Replaces `path` with `data` atomically with `mode` (`hybridgrid_state::write_atomic`: the
/// same rules on a node as on the user's machine).
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), AgentError> {
    Ok(hybridgrid_state::write_atomic(path, data, mode)?)
}

/// `path` owned by user and group `owner` (both named the same), changed only where it is not:
/// without a process, since the periodic apply runs on every node every period (at 220 nodes,
/// `chown` was 1,612 of the idle cluster's 2,580 programs per 20 s).
pub fn own(path: &str, owner: &str) -> Result<(), AgentError> {
    use std::os::unix::fs::MetadataExt as _;
    let unknown = |what: &str| AgentError::Command {
        command: format!("chown {owner}:{owner} {path}"),
        detail: format!("no {what} {owner} on this node"),
    };
    let uid = nix::unistd::User::from_name(owner)
        .ok()
        .flatten()
        .ok_or_else(|| unknown("user"))?
        .uid
        .as_raw();
    let gid = nix::unistd::Group::from_name(owner)
        .ok()
        .flatten()
        .ok_or_else(|| unknown("group"))?
        .gid
        .as_raw();
    let meta = std::fs::metadata(path).map_err(AgentError::io(path))?;
    if meta.uid() == uid && meta.gid() == gid {
        return Ok(());
    }
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(AgentError::io(path))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests
mod tests {
    use super::*;

    #[test]
    fn own_names_an_owner_the_node_lacks_and_leaves_a_right_owner_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_str().unwrap();
        let e = own(path, "hg-no-such-user").unwrap_err().to_string();
        assert!(e.contains("no user hg-no-such-user"), "{e}");
        use std::os::unix::fs::MetadataExt as _;
        let mine = std::fs::metadata(path).unwrap();
        if mine.uid() == 0 && mine.gid() == 0 {
            own(path, "root").unwrap();
            assert_eq!(std::fs::metadata(path).unwrap().uid(), 0);
        }
    }

    #[test]
    fn a_command_past_its_limit_is_killed_and_answers_nothing() {
        let t = Instant::now();
        let mut slow = Command::new("sleep");
        slow.arg("30");
        assert!(output_within(slow, Duration::from_millis(300)).is_none());
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        let mut quick = Command::new("echo");
        quick.arg("known");
        let out = output_within(quick, Duration::from_secs(10)).unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "known\n");
    }
}

/// A network device as the kernel has it: its IPv4 addresses, MTU and whether it is up, read
/// without a process (`getifaddrs`, `/sys/class/net`) in this process's network namespace.
#[derive(Debug, Default)]
pub struct Link {
    pub addresses: Vec<ipnet::Ipv4Net>,
    pub mtu: Option<u32>,
    pub up: bool,
}

impl Link {
    pub fn read(ifname: &str) -> Result<Link, AgentError> {
        let mut link = Link::default();
        let all = nix::ifaddrs::getifaddrs().map_err(|e| AgentError::Command {
            command: "getifaddrs".into(),
            detail: e.to_string(),
        })?;
        for a in all.filter(|a| a.interface_name == ifname) {
            link.up |= a.flags.contains(nix::net::if_::InterfaceFlags::IFF_UP);
            let ip = a
                .address
                .as_ref()
                .and_then(|s| s.as_sockaddr_in())
                .map(|s| s.ip());
            let mask = a
                .netmask
                .as_ref()
                .and_then(|s| s.as_sockaddr_in())
                .map(|s| s.ip());
            if let (Some(ip), Some(mask)) = (ip, mask)
                && let Ok(net) = ipnet::Ipv4Net::with_netmask(ip, mask)
            {
                link.addresses.push(net);
            }
        }
        let mtu = format!("/sys/class/net/{ifname}/mtu");
        link.mtu = std::fs::read_to_string(&mtu)
            .ok()
            .and_then(|m| m.trim().parse().ok());
        Ok(link)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests
mod link_tests {
    use super::Link;

    #[test]
    fn loopback_is_up_with_its_address_and_mtu() {
        let lo = Link::read("lo").unwrap();
        assert!(lo.up);
        assert!(
            lo.addresses.contains(&"127.0.0.1/8".parse().unwrap()),
            "{lo:?}"
        );
        assert!(lo.mtu.is_some_and(|m| m >= 1500), "{lo:?}");
        let none = Link::read("hg-no-such-device").unwrap();
        assert!(!none.up && none.addresses.is_empty() && none.mtu.is_none());
    }
}
