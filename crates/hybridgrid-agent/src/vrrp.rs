//! A relay pair on this relay: keepalived with the configuration [`hybridgrid_core::vrrp`]
//! writes, the relay's health in the file keepalived watches, and whether this relay is the
//! active one (it holds the pair's virtual address).
//!
//! State folder: `keepalived.conf`, `keepalived.pid` and `keepalived-vrrp.pid`, `keepalived.log`,
//! `relay-health` (`0`: healthy; anything else puts VRRP in FAULT, and the partner takes over).

use std::net::{Ipv4Addr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use hybridgrid_core::node::{NodeConfig, RelayPair, Route, WgInterface};
use hybridgrid_core::vrrp::{HEALTH_FILE, VrrpNode, keepalived_conf, standby_routes};

use crate::AgentError;
use crate::sys::{self, write_atomic};

const CONF_FILE: &str = "keepalived.conf";
const PID_FILE: &str = "keepalived.pid";
const VRRP_PID_FILE: &str = "keepalived-vrrp.pid";
const LOG_FILE: &str = "keepalived.log";

/// keepalived runs with this relay's configuration; a changed configuration is reloaded
/// (SIGHUP: VRRP keeps its state). The health file exists before keepalived reads it.
pub fn ensure(
    pair: &RelayPair,
    wg: Option<&WgInterface>,
    state_dir: &Path,
    exe: &Path,
    tag: &str,
    actions: &mut Vec<String>,
) -> Result<(), AgentError> {
    let lan_if = interface_with(pair.lan_ip)?.ok_or_else(|| AgentError::Command {
        command: "keepalived".into(),
        detail: format!("no interface holds this relay's address {}", pair.lan_ip),
    })?;
    write_health(state_dir, wg.is_some_and(|w| healthy(&w.name)))?;
    let health = state_dir.join(HEALTH_FILE);
    // keepalived appends its words to this line: an empty `--tag` would take the first.
    let tag_arg = match tag.is_empty() {
        true => String::new(),
        false => format!(" --tag {tag}"),
    };
    let notify = format!(
        "{} agent relay-state --state-dir {}{tag_arg}",
        exe.display(),
        state_dir.display()
    );
    let conf = keepalived_conf(
        pair,
        &VrrpNode {
            name: tag,
            lan_if: &lan_if,
            health_file: &health.to_string_lossy(),
            notify: &notify,
        },
    );
    let conf_path = state_dir.join(CONF_FILE);
    let changed = std::fs::read_to_string(&conf_path).ok().as_deref() != Some(conf.as_str());
    if changed {
        write_atomic(&conf_path, conf.as_bytes(), 0o600)?;
    }
    match running(state_dir) {
        Some(pid) if changed => {
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGHUP,
            )
            .map_err(|e| AgentError::Command {
                command: format!("kill -HUP {pid} (keepalived)"),
                detail: e.to_string(),
            })?;
            actions.push("keepalived: configuration reloaded".into());
        }
        Some(_) => {}
        None => {
            // A keepalived that was killed left the address and its routes: the new one starts
            // as the standby, without them.
            release(pair, &lan_if);
            start(state_dir, &conf_path)?;
            actions.push(format!("keepalived: VRRP with {}", pair.partner));
        }
    }
    Ok(())
}

/// keepalived stopped (the node is no longer in a pair); it gives the virtual address up.
pub fn stop(state_dir: &Path, actions: &mut Vec<String>) {
    if let Some(pid) = running(state_dir) {
        sys::stop_processes(&[pid]);
        actions.push("keepalived stopped".into());
    }
    for f in [CONF_FILE, PID_FILE, VRRP_PID_FILE, HEALTH_FILE] {
        let _ = std::fs::remove_file(state_dir.join(f));
    }
}

/// The virtual address and the routes from it, gone from this relay.
fn release(pair: &RelayPair, lan_if: &str) {
    if active(pair) {
        let _ = sys::run("ip", &["addr", "del", &pair.vip.to_string(), "dev", lan_if]);
    }
    for half in ["0.0.0.0/1", "128.0.0.0/1"] {
        let _ = sys::run("ip", &["route", "del", half]);
    }
}

/// Whether keepalived runs for this relay.
pub fn running(state_dir: &Path) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(state_dir.join(PID_FILE))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    (sys::alive(pid) && sys::cmdline(pid).contains("keepalived")).then_some(pid)
}

fn start(state_dir: &Path, conf: &Path) -> Result<(), AgentError> {
    use std::os::unix::process::CommandExt as _;
    let log_path = state_dir.join(LOG_FILE);
    let log = std::fs::File::create(&log_path).map_err(AgentError::io(&log_path))?;
    let log2 = log.try_clone().map_err(AgentError::io(&log_path))?;
    let path = |f: &str| -> PathBuf { state_dir.join(f) };
    // In the foreground of its own process group (the supervisor reaps it), logging to its
    // file: several relays of the local provider share the host's syslog and /run.
    Command::new("keepalived")
        .args([
            "--vrrp",
            "--dont-fork",
            "--log-console",
            "--no-syslog",
            "--log-detail",
        ])
        .arg("-f")
        .arg(conf)
        .arg("-p")
        .arg(path(PID_FILE))
        .arg("-r")
        .arg(path(VRRP_PID_FILE))
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .process_group(0)
        .spawn()
        .map_err(|e| AgentError::Command {
            command: "keepalived".into(),
            detail: e.to_string(),
        })?;
    sys::wait_for("keepalived", Duration::from_secs(10), || running(state_dir)).map(drop)
}

/// The relay's data path as far as this relay can judge it alone: its tunnel device is there
/// and up, and it forwards.
pub fn healthy(wg_if: &str) -> bool {
    let device_up = sys::Link::read(wg_if).is_ok_and(|l| l.up);
    let forwarding =
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").is_ok_and(|f| f.trim() == "1");
    device_up && forwarding
}

/// The health keepalived reads, written only when it changed (keepalived watches the file).
pub fn write_health(state_dir: &Path, healthy: bool) -> Result<(), AgentError> {
    let path = state_dir.join(HEALTH_FILE);
    let value = if healthy { "0\n" } else { "1\n" };
    if std::fs::read_to_string(&path).ok().as_deref() != Some(value) {
        write_atomic(&path, value.as_bytes(), 0o644)?;
    }
    Ok(())
}

/// Whether this relay holds its pair's virtual address.
pub fn active(pair: &RelayPair) -> bool {
    interface_with(pair.vip.addr()).is_ok_and(|i| i.is_some())
}

/// Whether the node's tunnel device gets its peers: not in a pair, or the pair's active relay
/// (it holds the virtual address and its keepalived runs: one that was killed leaves the
/// address behind while the partner takes it).
pub fn speaks(pair: Option<&RelayPair>, state_dir: &Path) -> bool {
    pair.is_none_or(|p| active(p) && running(state_dir).is_some())
}

/// The routes the node applies now: a standby's cross-site routes lead to its partner.
pub fn routes_now(config: &NodeConfig, speaks: bool) -> Vec<Route> {
    match &config.pair {
        Some(pair) if !speaks => standby_routes(&config.routes, pair),
        _ => config.routes.clone(),
    }
}

/// The interface that holds `ip` in this network namespace (no process).
fn interface_with(ip: Ipv4Addr) -> Result<Option<String>, AgentError> {
    let all = nix::ifaddrs::getifaddrs().map_err(|e| AgentError::Command {
        command: "getifaddrs".into(),
        detail: e.to_string(),
    })?;
    Ok(all
        .filter(|a| {
            a.address
                .as_ref()
                .and_then(|s| s.as_sockaddr_in())
                .is_some_and(|s| s.ip() == ip)
        })
        .map(|a| a.interface_name)
        .next())
}

/// One datagram through the tunnel to each peer: WireGuard starts its handshake with every peer
/// at once instead of at the next keepalive (up to its interval), so a relay that just took
/// over is reachable through the tunnel within a round trip.
pub fn start_handshakes(wg: &WgInterface) {
    let Ok(socket) = UdpSocket::bind("0.0.0.0:0") else {
        return;
    };
    for peer in &wg.peers {
        // The peer's tunnel address: its first allowed IP, a /32.
        if let Some(net) = peer.allowed_ips.iter().find(|n| n.prefix_len() == 32) {
            // The discard port: nothing answers, the handshake is what counts.
            let _ = socket.send_to(b"hybridgrid", (net.addr(), 9));
        }
    }
}
