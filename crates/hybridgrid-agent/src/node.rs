//! The node agent: applies the node's part of the plan ([`NodeConfig`]) on the node it runs on,
//! idempotently. It compares with the live state, so a second run changes nothing, and a changed
//! config changes only the difference (WireGuard peers in place, the interface stays up).
//!
//! State directory (mode 0700): `wg/private.key` (0600, never leaves it), `wg/public.key`,
//! `hosts` (bound to `/etc/hosts`), `applied.json` (the config last applied, for `observe`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hybridgrid_core::keys::{PrivateKey, PublicKey};
use hybridgrid_core::plan::{NodeConfig, Route, WgInterface};
use hybridgrid_wg::{Backend, DesiredDevice, DesiredPeer, PeerChange};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::AgentError;
use crate::sys::{self, write_atomic};

pub const APPLIED_FILE: &str = "applied.json";
pub const PUBLIC_KEY_FILE: &str = "wg/public.key";
pub(crate) const PRIVATE_KEY_FILE: &str = "wg/private.key";
/// The configuration the node keeps (written by the provider, or by `agent rotate-switch`),
/// applied again by the supervisor.
pub const NODE_CONFIG_FILE: &str = "node.json";

/// What one agent run did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentReport {
    pub actions: Vec<String>,
    pub public_key: Option<PublicKey>,
}

/// The config last applied on the node with this state directory.
pub fn read_applied(state_dir: &Path) -> Option<NodeConfig> {
    let text = std::fs::read_to_string(state_dir.join(APPLIED_FILE)).ok()?;
    serde_json::from_str(&text).ok()
}

pub fn read_public_key(state_dir: &Path) -> Option<PublicKey> {
    let text = std::fs::read_to_string(state_dir.join(PUBLIC_KEY_FILE)).ok()?;
    PublicKey::from_base64(text.trim()).ok()
}

/// Applies `config` on this node. `exe` is the hybridgrid binary (for the userspace WireGuard
/// daemon), `tag` names the node in process lists.
///
/// `wait_for_workers`: on the Slurm controller, how long to wait for every planned worker to
/// register before its partitions are set (`up` passes it once it started the workers' slurmd).
pub fn apply(
    config: &NodeConfig,
    state_dir: &Path,
    exe: &Path,
    tag: &str,
    wait_for_workers: Duration,
) -> Result<AgentReport, AgentError> {
    let _lock = lock(state_dir)?;
    apply_locked(config, state_dir, exe, tag, wait_for_workers)
}

/// One agent at a time on a node: `up` and the node's own supervisor both apply. Held until
/// the returned file is dropped.
/// On a fresh node (cloud-init's first run) the state folder does not exist yet: it is made,
/// 0700 (it holds the WireGuard private key).
pub(crate) fn lock(state_dir: &Path) -> Result<std::fs::File, AgentError> {
    if !state_dir.is_dir() {
        use std::os::unix::fs::DirBuilderExt as _;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(state_dir)
            .map_err(AgentError::io(state_dir))?;
    }
    let lock_path = state_dir.join("agent.lock");
    let lock = std::fs::File::create(&lock_path).map_err(AgentError::io(&lock_path))?;
    lock.lock().map_err(AgentError::io(&lock_path))?;
    Ok(lock)
}

pub(crate) fn apply_locked(
    config: &NodeConfig,
    state_dir: &Path,
    exe: &Path,
    tag: &str,
    wait_for_workers: Duration,
) -> Result<AgentReport, AgentError> {
    let mut report = AgentReport::default();
    let applied = read_applied(state_dir);
    let mut config = config.clone();

    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    if hostname.trim() != config.hostname {
        sys::run("hostname", &[&config.hostname])?;
        report.actions.push(format!("hostname {}", config.hostname));
    }

    let hosts_path = state_dir.join("hosts");
    let hosts = hosts_file(&config);
    if std::fs::read_to_string(&hosts_path).ok().as_deref() != Some(hosts.as_str()) {
        // In place, not renamed: the file is bind-mounted on /etc/hosts.
        std::fs::write(&hosts_path, &hosts).map_err(AgentError::io(&hosts_path))?;
        report
            .actions
            .push(format!("/etc/hosts: {} entries", config.hosts.len()));
    }

    // No node follows ICMP redirects, no relay sends them: a relay that forwards before its
    // tunnel routes exist would otherwise redirect workers to the site router, and the workers
    // would keep the redirect for minutes.
    no_redirects(&mut report.actions)?;
    // A relay stops forwarding first and starts only once its tunnel and routes are in place.
    if !config.ip_forward {
        forwarding(false, &mut report.actions)?;
    }

    mss_clamp(config.mss_clamp, applied.as_ref(), &mut report.actions)?;

    // A pair's standby holds the shared key and port but no peers: it sends nothing, so no
    // peer roams to it while its partner is active; its cross-site routes go to the partner.
    let speaks = crate::vrrp::speaks(config.pair.as_ref(), state_dir);
    match &mut config.wireguard {
        Some(wg) => {
            let public = wireguard(wg, speaks, state_dir, exe, tag, &mut report.actions)?;
            if config.pair.is_some() {
                crate::vrrp::note_speaking(state_dir, speaks)?;
            }
            wg.public_key = Some(public);
            report.public_key = Some(public);
        }
        None => {
            if let Some(old) = applied.as_ref().and_then(|a| a.wireguard.as_ref()) {
                stop_wireguard(&old.name, state_dir)?;
                report.actions.push(format!("remove {}", old.name));
            }
        }
    }

    routes(
        &crate::vrrp::routes_now(&config, speaks),
        applied.as_ref().map(|a| a.routes.as_slice()).unwrap_or(&[]),
        &mut report.actions,
    )?;
    if config.ip_forward {
        forwarding(true, &mut report.actions)?;
    }
    match &config.pair {
        Some(pair) => crate::vrrp::ensure(
            pair,
            config.wireguard.as_ref(),
            state_dir,
            exe,
            tag,
            &mut report.actions,
        )?,
        None if applied.as_ref().is_some_and(|a| a.pair.is_some()) => {
            crate::vrrp::stop(state_dir, &mut report.actions);
        }
        None => {}
    }
    crate::slurm::apply(
        &config.slurm,
        &config.hostname,
        (state_dir, exe, tag),
        wait_for_workers,
        &mut report.actions,
    )?;
    crate::store_reads::ensure(state_dir, &mut report.actions)?;

    if applied.as_ref() != Some(&config) {
        let text = serde_json::to_string_pretty(&config).map_err(|source| AgentError::Json {
            path: state_dir.join(APPLIED_FILE),
            source,
        })?;
        write_atomic(&state_dir.join(APPLIED_FILE), text.as_bytes(), 0o644)?;
    }
    Ok(report)
}

fn hosts_file(config: &NodeConfig) -> String {
    let mut s = String::from("127.0.0.1 localhost\n");
    // Until the cluster's hosts arrive (they are not in a cloud node's user data), the node
    // still resolves its own name, as Debian's installer writes it.
    if config.hosts.iter().all(|(_, n)| n != &config.hostname) {
        s.push_str(&format!("127.0.1.1 {}\n", config.hostname));
    }
    for (ip, name) in &config.hosts {
        s.push_str(&format!("{ip} {name}\n"));
    }
    s
}

/// The node's key pair: made here on first use, the private half never leaves `state_dir`.
fn ensure_key(state_dir: &Path) -> Result<(PrivateKey, PublicKey), AgentError> {
    let path = state_dir.join(PRIVATE_KEY_FILE);
    let private = match std::fs::read_to_string(&path) {
        Ok(text) => PrivateKey::from_base64(text.trim())?,
        Err(_) => make_key_file(state_dir, &path)?,
    };
    let public = private.public_key();
    let pub_path = state_dir.join(PUBLIC_KEY_FILE);
    if std::fs::read_to_string(&pub_path).ok().as_deref() != Some(public.to_base64().as_str()) {
        write_atomic(&pub_path, public.to_base64().as_bytes(), 0o644)?;
    }
    Ok((private, public))
}

/// A new private key in `path` (0600, in the 0700 `wg/` folder of `state_dir`), written whole
/// before it gets its name.
pub(crate) fn make_key_file(state_dir: &Path, path: &Path) -> Result<PrivateKey, AgentError> {
    use std::io::Write as _;
    use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
    let dir = state_dir.join("wg");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(AgentError::io(&dir))?;
    let key = PrivateKey::generate()?;
    let tmp = dir.join(".key.tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(AgentError::io(&tmp))?;
    f.write_all(key.to_base64().as_bytes())
        .map_err(AgentError::io(&tmp))?;
    f.sync_all().map_err(AgentError::io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(AgentError::io(path))?;
    Ok(key)
}

/// The node's WireGuard device, made if missing: kernel WireGuard where the module exists (set up
/// over netlink by `wg(8)`), else the embedded userspace device.
fn ensure_device(
    ifname: &str,
    state_dir: &Path,
    exe: &Path,
    tag: &str,
    actions: &mut Vec<String>,
) -> Result<Backend, AgentError> {
    let userspace = Backend::userspace();
    if userspace.read_status(ifname).is_ok() {
        return Ok(userspace);
    }
    let kernel_device = || {
        std::fs::read_to_string(format!("/sys/class/net/{ifname}/uevent"))
            .is_ok_and(|u| u.lines().any(|l| l == "DEVTYPE=wireguard"))
    };
    if kernel_device() {
        return Ok(Backend::Kernel);
    }
    // The benchmarking knob asks for a userspace daemon even where the module exists.
    let userspace_wanted = std::env::var_os(crate::wg_impl::ENV).is_some();
    if !userspace_wanted && sys::run("ip", &["link", "add", ifname, "type", "wireguard"]).is_ok() {
        actions.push(format!("create {ifname} (kernel)"));
        return Ok(Backend::Kernel);
    }
    // A daemon that does not answer (hung, or slow to start) is stopped before a new one
    // starts: two would compete for the port.
    stop_wireguard(ifname, state_dir)?;
    start_userspace_daemon(ifname, state_dir, exe, tag)?;
    sys::wait_for(
        &format!("the WireGuard device {ifname}"),
        Duration::from_secs(10),
        || userspace.read_status(ifname).ok(),
    )?;
    actions.push(format!("start {ifname} (userspace)"));
    Ok(userspace)
}

fn pid_file(state_dir: &Path, ifname: &str) -> PathBuf {
    state_dir.join(format!("{ifname}.pid"))
}

fn wireguard(
    wg: &WgInterface,
    speaks: bool,
    state_dir: &Path,
    exe: &Path,
    tag: &str,
    actions: &mut Vec<String>,
) -> Result<PublicKey, AgentError> {
    let (private, public) = ensure_key(state_dir)?;
    let ifname = wg.name.as_str();
    let mut backend = ensure_device(ifname, state_dir, exe, tag, actions)?;
    if holds_another_key(&backend, ifname, &private) {
        // The userspace device (gotatun 0.10) cannot take a new private key while it runs: its
        // reconnect binds the port again while the old socket still holds it, and the device
        // fails. A new daemon with the new key is the same switch (`rotate`), in a fraction of a
        // second; the address, MTU and routes below are set again.
        stop_wireguard(ifname, state_dir)?;
        backend = ensure_device(ifname, state_dir, exe, tag, actions)?;
        actions.push(format!("{ifname} started again with its new key"));
    }

    // Address, MTU, up: compared with the live link (read without a process).
    let link = sys::Link::read(ifname)?;
    let mut lines = Vec::new();
    for have in link.addresses.iter().filter(|h| **h != wg.address) {
        lines.push(format!("addr del {have} dev {ifname}"));
    }
    if !link.addresses.contains(&wg.address) {
        lines.push(format!("addr add {} dev {ifname}", wg.address));
        actions.push(format!("{ifname} address {}", wg.address));
    }
    if link.mtu != Some(u32::from(wg.mtu)) || !link.up {
        lines.push(format!("link set {ifname} mtu {} up", wg.mtu));
        actions.push(format!("{ifname} MTU {} up", wg.mtu));
    }
    if !lines.is_empty() {
        sys::ip_batch(None, &lines)?;
    }

    let preshared = preshared_keys(wg, state_dir)?;
    let desired = DesiredDevice {
        private_key: *private.as_bytes(),
        listen_port: Some(wg.listen_port),
        fwmark: None,
        // A peer without a key cannot be configured yet; the next plan brings it.
        peers: wg
            .peers
            .iter()
            .filter(|_| speaks)
            .filter_map(|p| {
                Some(DesiredPeer {
                    public_key: *p.public_key?.as_bytes(),
                    endpoint: p.endpoint.map(SocketAddr::V4),
                    allowed_ips: p.allowed_ips.iter().map(|n| IpNet::V4(*n)).collect(),
                    persistent_keepalive: p.persistent_keepalive,
                    preshared_key: preshared.get(&p.node).copied(),
                })
            })
            .collect(),
    };
    let changes = backend.sync(ifname, &desired)?;
    if changes.set_private_key {
        actions.push(format!("{ifname} private key"));
    }
    if let Some(port) = changes.set_listen_port {
        actions.push(format!("{ifname} listen port {port}"));
    }
    for c in &changes.peers {
        let key = PublicKey::from_base64(&hybridgrid_wg::key_to_base64(c.public_key())).ok();
        let name = wg
            .peers
            .iter()
            .find(|p| p.public_key.is_some() && p.public_key == key)
            .map(|p| p.node.clone())
            .unwrap_or_else(|| hybridgrid_wg::key_to_base64(c.public_key()));
        actions.push(match c {
            PeerChange::Add(_) => format!("{ifname}: add peer {name}"),
            PeerChange::Update { .. } => format!("{ifname}: update peer {name}"),
            PeerChange::Remove { .. } => format!("{ifname}: remove peer {name}"),
        });
    }
    Ok(public)
}

/// A running userspace device with a private key other than `private` (a kernel device takes a
/// new key in place; a device without a key takes its first one).
fn holds_another_key(backend: &Backend, ifname: &str, private: &PrivateKey) -> bool {
    matches!(backend, Backend::Userspace { .. })
        && backend
            .read_status(ifname)
            .is_ok_and(|d| d.private_key.is_some_and(|k| k != *private.as_bytes()))
}

/// The pairs' preshared keys the provider delivered, by peer node (none when the plan uses
/// none, or before they arrived: the peer is configured without, as its side is).
fn preshared_keys(
    wg: &WgInterface,
    state_dir: &Path,
) -> Result<std::collections::BTreeMap<String, hybridgrid_wg::Key>, AgentError> {
    if !wg.preshared_keys {
        return Ok(Default::default());
    }
    let path = state_dir.join(hybridgrid_core::node::PRESHARED_KEYS_FILE);
    let Ok(text) = std::fs::read(&path) else {
        return Ok(Default::default());
    };
    let keys: std::collections::BTreeMap<String, String> = serde_json::from_slice(&text)
        .map_err(|_| AgentError::PresharedKeys { path: path.clone() })?;
    keys.into_iter()
        .map(|(peer, k)| {
            hybridgrid_wg::key_from_base64(&k)
                .map(|key| (peer, key))
                .map_err(|_| AgentError::PresharedKeys { path: path.clone() })
        })
        .collect()
}

fn start_userspace_daemon(
    ifname: &str,
    state_dir: &Path,
    exe: &Path,
    tag: &str,
) -> Result<(), AgentError> {
    // A stale TUN from a daemon that died would block the new one.
    let _ = sys::run("ip", &["link", "del", ifname]);
    let child = sys::spawn_daemon(
        crate::wg_impl::daemon_command(exe, ifname, tag),
        &state_dir.join(format!("{ifname}.log")),
        &format!("{} wg-userspace {ifname}", exe.display()),
    )?;
    write_atomic(
        &pid_file(state_dir, ifname),
        child.id().to_string().as_bytes(),
        0o644,
    )
}

fn stop_wireguard(ifname: &str, state_dir: &Path) -> Result<(), AgentError> {
    let pf = pid_file(state_dir, ifname);
    if let Some(pid) = std::fs::read_to_string(&pf)
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        && crate::wg_impl::is_daemon(&sys::cmdline(pid))
    {
        sys::stop_processes(&[pid]);
    }
    let _ = std::fs::remove_file(&pf);
    let _ = sys::run("ip", &["link", "del", ifname]);
    Ok(())
}

fn write_sysctl(path: &str, value: &str, actions: &mut Vec<String>) -> Result<(), AgentError> {
    if std::fs::read_to_string(path).unwrap_or_default().trim() != value {
        std::fs::write(path, value).map_err(AgentError::io(path))?;
        let key = path.trim_start_matches("/proc/sys/").replace('/', ".");
        actions.push(format!("{key}={value}"));
    }
    Ok(())
}

fn forwarding(on: bool, actions: &mut Vec<String>) -> Result<(), AgentError> {
    write_sysctl(
        "/proc/sys/net/ipv4/ip_forward",
        if on { "1" } else { "0" },
        actions,
    )
}

/// `accept_redirects` and `send_redirects` off for `all`, `default` and every interface (the
/// kernel ORs `all` with the interface's own value).
fn no_redirects(actions: &mut Vec<String>) -> Result<(), AgentError> {
    let dir = "/proc/sys/net/ipv4/conf";
    let mut confs: Vec<String> = std::fs::read_dir(dir)
        .map_err(AgentError::io(dir))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    confs.sort();
    for c in confs {
        for key in ["accept_redirects", "send_redirects"] {
            write_sysctl(&format!("{dir}/{c}/{key}"), "0", actions)?;
        }
    }
    Ok(())
}

/// Whether the interface exists in this network namespace (`/proc/net/dev` is per namespace).
pub fn interface_exists(ifname: &str) -> bool {
    std::fs::read_to_string("/proc/net/dev").is_ok_and(|t| interface_listed(&t, ifname))
}

/// Whether `/proc/net/dev`'s text lists `ifname`.
pub fn interface_listed(dev_table: &str, ifname: &str) -> bool {
    dev_table
        .lines()
        .any(|l| l.trim_start().split(':').next() == Some(ifname))
}

/// A relay clamps the TCP MSS of what it forwards to the route's MTU (table `inet hg_node`).
/// Only a node that clamps, or did at its last apply, looks at nftables: a worker's periodic
/// apply starts no `nft` (nothing else makes that table).
fn mss_clamp(
    wanted: bool,
    applied: Option<&NodeConfig>,
    actions: &mut Vec<String>,
) -> Result<(), AgentError> {
    if !wanted && !applied.is_some_and(|a| a.mss_clamp) {
        return Ok(());
    }
    let has_clamp = sys::ok("nft", &["list", "table", "inet", "hg_node"]);
    if wanted && !has_clamp {
        sys::nft(
            None,
            "table inet hg_node {\n  chain forward {\n    type filter hook forward priority mangle; policy accept;\n    tcp flags syn tcp option maxseg size set rt mtu\n  }\n}\n",
        )?;
        actions.push("MSS clamp".into());
    } else if !wanted && has_clamp {
        sys::run("nft", &["delete", "table", "inet", "hg_node"])?;
        actions.push("remove MSS clamp".into());
    }
    Ok(())
}

fn routes(
    wanted: &[Route],
    applied: &[Route],
    actions: &mut Vec<String>,
) -> Result<(), AgentError> {
    let live = crate::routes::LiveRoutes::read(wanted)?;
    let mut lines = Vec::new();
    for r in wanted {
        if !live.has(r) {
            let mut line = format!("route replace {}", r.destination);
            if let Some(via) = r.via {
                line.push_str(&format!(" via {via}"));
            }
            if let Some(dev) = &r.device {
                line.push_str(&format!(" dev {dev}"));
            }
            if let Some(src) = r.src {
                line.push_str(&format!(" src {src}"));
            }
            actions.push(line.clone());
            lines.push(line);
        }
    }
    for r in applied
        .iter()
        .filter(|r| !wanted.iter().any(|w| w.destination == r.destination))
    {
        if live.has_destination(r.destination) {
            lines.push(format!("route del {}", r.destination));
            actions.push(format!("route del {}", r.destination));
        }
    }
    if !lines.is_empty() {
        sys::ip_batch(None, &lines)?;
        // Next-hop exceptions (a redirect learnt earlier) would shadow the new routes.
        let _ = sys::run("ip", &["route", "flush", "cache"]);
    }
    Ok(())
}

pub use hybridgrid_core::wg_status::{WgPeerStatus, WgStatus};

/// Reads the device on this node.
pub fn wg_status(ifname: &str, state_dir: Option<&Path>) -> Result<WgStatus, AgentError> {
    let s = hybridgrid_wg::read_status(ifname)?;
    Ok(WgStatus {
        listen_port: s.listen_port,
        key_age_s: state_dir.and_then(|d| hybridgrid_state::age_s(&d.join(PRIVATE_KEY_FILE))),
        peers: s
            .peers
            .iter()
            .map(|p| WgPeerStatus {
                public_key: hybridgrid_wg::key_to_base64(&p.public_key),
                endpoint: p.endpoint,
                latest_handshake: p.last_handshake_sec,
                rx_bytes: p.rx_bytes,
                tx_bytes: p.tx_bytes,
                preshared_key: p.preshared_key.is_some(),
            })
            .collect(),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    /// What broke on the first real boot: `agent apply` on a fresh node failed with
    /// "/var/lib/hybridgrid/agent.lock: No such file or directory".
    #[test]
    fn lock_on_a_fresh_node_makes_the_state_folder_0700() {
        let tmp = tempfile::tempdir().unwrap();
        let state = tmp.path().join("var/lib/hybridgrid");
        let _lock = super::lock(&state).unwrap();
        assert!(state.join("agent.lock").is_file());
        let mode = std::fs::metadata(&state).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }
}
