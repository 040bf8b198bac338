//! The emulated cloud: namespaces, bridges, veths, router NAT, security groups and port security.
//! Every function here is safe to re-run after a crash part-way (it first removes what a
//! previous attempt may have left).

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use hybridgrid_core::plan::SgRule;
use ipnet::Ipv4Net;

use crate::LocalError;
use crate::names::{self, BRIDGE, LAN_IF, ROUTER_PORT, SG_CHAIN, SG_TABLE, WAN_IF};
use crate::sh;

/// Creates an empty namespace with `lo` up, replacing a partial one from an earlier attempt.
pub fn fresh_netns(ns: &str) -> Result<(), LocalError> {
    if sh::netns_exists(ns) {
        remove_netns(ns)?;
    }
    sh::run("ip", &["netns", "add", ns])?;
    sh::run("ip", &["-n", ns, "link", "set", "lo", "up"])?;
    // IPv6 stays off: the emulated clouds are IPv4, and it keeps the ports quiet.
    sh::run(
        "ip",
        &[
            "netns",
            "exec",
            ns,
            "sysctl",
            "-qw",
            "net.ipv6.conf.all.disable_ipv6=1",
            "net.ipv6.conf.default.disable_ipv6=1",
        ],
    )?;
    Ok(())
}

/// Stops every process in the namespace, then deletes it. Idempotent.
pub fn remove_netns(ns: &str) -> Result<(), LocalError> {
    if !sh::netns_exists(ns) {
        return Ok(());
    }
    // A process being started as the others stop (a supervisor restarting a daemon that then
    // forks into the background) would outlive the namespace's name, where nothing finds it:
    // stop until none is left.
    for _ in 0..10 {
        let pids = netns_pids(ns);
        if pids.is_empty() {
            break;
        }
        stop_processes(&pids);
    }
    sh::run("ip", &["netns", "del", ns]).map(drop)
}

/// Processes whose network namespace is `ns`.
pub fn netns_pids(ns: &str) -> Vec<u32> {
    sh::run("ip", &["netns", "pids", ns])
        .map(|out| {
            out.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

pub use hybridgrid_agent::sys::{alive, cmdline, stop_processes};

/// The live processes on this host that `matches` (a process id), by a walk of `/proc`.
pub fn live_pids(matches: impl Fn(u32) -> bool) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| matches(pid) && alive(pid))
        .collect()
}

pub fn create_inet(cluster: &str) -> Result<(), LocalError> {
    let ns = names::ns_inet(cluster);
    fresh_netns(&ns)?;
    sh::ip_batch(
        Some(&ns),
        &[
            format!("link add {BRIDGE} type bridge"),
            format!("link set {BRIDGE} up"),
        ],
    )
}

/// What a site's network needs to know.
#[derive(Debug, Clone)]
pub struct SiteSpec<'a> {
    pub cluster: &'a str,
    pub site: &'a str,
    pub index: u32,
    pub subnet: Ipv4Net,
    pub router_ip: Ipv4Addr,
    pub router_public_ip: Ipv4Addr,
    pub mtu: u16,
}

/// The Neutron network (switch) and router of one site, joined to the cluster's internet.
pub fn create_site(s: &SiteSpec<'_>) -> Result<(), LocalError> {
    let sw = names::ns_switch(s.cluster, s.site);
    let rt = names::ns_router(s.cluster, s.site);
    let inet = names::ns_inet(s.cluster);
    let inet_port = names::inet_port(s.index);
    // A partial router from an earlier attempt also leaves its internet port behind.
    let _ = sh::run("ip", &["-n", &inet, "link", "del", &inet_port]);
    fresh_netns(&sw)?;
    fresh_netns(&rt)?;
    let mtu = s.mtu;
    sh::ip_batch(
        Some(&sw),
        &[
            format!("link add {BRIDGE} mtu {mtu} type bridge"),
            format!("link set {BRIDGE} up"),
            format!("link add {ROUTER_PORT} mtu {mtu} type veth peer name {LAN_IF} netns {rt}"),
            format!("link set {ROUTER_PORT} master {BRIDGE} up"),
        ],
    )?;
    sh::ip_batch(
        Some(&inet),
        &[
            format!("link add {inet_port} type veth peer name {WAN_IF} netns {rt}"),
            format!("link set {inet_port} master {BRIDGE} up"),
        ],
    )?;
    sh::ip_batch(
        Some(&rt),
        &[
            format!("link set {LAN_IF} mtu {mtu} up"),
            format!(
                "addr add {}/{} dev {LAN_IF}",
                s.router_ip,
                s.subnet.prefix_len()
            ),
            format!("link set {WAN_IF} up"),
            format!(
                "addr add {}/{} dev {WAN_IF}",
                s.router_public_ip,
                names::INTERNET.prefix_len()
            ),
        ],
    )?;
    sh::run(
        "ip",
        &[
            "netns",
            "exec",
            &rt,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ],
    )?;
    render_router(s.cluster, s.site, &[])
}

/// The router's NAT: 1:1 floating IP ↔ LAN address for each `(lan, floating)`, SNAT for the rest.
/// Like many cloud edges it passes no IP fragments (before reassembly): a tunnel MTU too large
/// for the underlay fails here as on the seed's clouds instead of being fragmented silently.
pub fn render_router(
    cluster: &str,
    site: &str,
    floating: &[(Ipv4Addr, Ipv4Addr)],
) -> Result<(), LocalError> {
    let rt = names::ns_router(cluster, site);
    // The router answers ARP for its floating IPs.
    let wanted: Vec<String> = floating
        .iter()
        .map(|(_, fip)| format!("{fip}/32"))
        .collect();
    let present = sh::run(
        "ip",
        &["-n", &rt, "-o", "-4", "addr", "show", "dev", WAN_IF],
    )?;
    let mut lines = Vec::new();
    for addr in present.split_whitespace().filter(|w| w.ends_with("/32")) {
        if !wanted.iter().any(|w| w == addr) {
            lines.push(format!("addr del {addr} dev {WAN_IF}"));
        }
    }
    for w in &wanted {
        if !present.split_whitespace().any(|p| p == w) {
            lines.push(format!("addr add {w} dev {WAN_IF}"));
        }
    }
    if !lines.is_empty() {
        sh::ip_batch(Some(&rt), &lines)?;
    }
    let mut pre = String::new();
    let mut post = String::new();
    for (lan, fip) in floating {
        let _ = writeln!(pre, "    ip daddr {fip} counter dnat to {lan}");
        let _ = writeln!(
            post,
            "    oifname \"{WAN_IF}\" ip saddr {lan} counter snat to {fip}"
        );
    }
    let ruleset = format!(
        "table ip hg_nat\ndelete table ip hg_nat\ntable ip hg_nat {{\n  chain pre {{\n    type nat hook prerouting priority dstnat; policy accept;\n{pre}  }}\n  chain post {{\n    type nat hook postrouting priority srcnat; policy accept;\n{post}    oifname \"{WAN_IF}\" masquerade\n  }}\n  chain nofrag {{\n    type filter hook prerouting priority -450; policy accept;\n    ip frag-off & 0x3fff != 0 counter drop comment \"fragment\"\n  }}\n}}\n"
    );
    sh::nft(Some(&rt), &ruleset)
}

/// What a node's port needs to know.
#[derive(Debug, Clone)]
pub struct NodeSpec<'a> {
    pub cluster: &'a str,
    pub site: &'a str,
    pub node: &'a str,
    pub lan_ip: Ipv4Addr,
    pub subnet: Ipv4Net,
    pub router_ip: Ipv4Addr,
    pub mtu: u16,
    pub port: &'a str,
    pub mac: &'a str,
}

/// The node's namespace and its port on the site switch.
pub fn create_node_net(n: &NodeSpec<'_>) -> Result<(), LocalError> {
    let ns = names::ns_node(n.cluster, n.node);
    let sw = names::ns_switch(n.cluster, n.site);
    let _ = sh::run("ip", &["-n", &sw, "link", "del", n.port]);
    fresh_netns(&ns)?;
    let mtu = n.mtu;
    sh::ip_batch(
        Some(&sw),
        &[
            format!(
                "link add {} mtu {mtu} type veth peer name {LAN_IF} netns {ns}",
                n.port
            ),
            format!("link set {} master {BRIDGE} up", n.port),
        ],
    )?;
    sh::ip_batch(
        Some(&ns),
        &[
            format!("link set {LAN_IF} address {} mtu {mtu} up", n.mac),
            format!(
                "addr add {}/{} dev {LAN_IF}",
                n.lan_ip,
                n.subnet.prefix_len()
            ),
            format!("route add default via {}", n.router_ip),
        ],
    )
}

/// Starts the process that holds the node's machine (`crate::machine`: its network namespace
/// entered, mount and UTS namespaces of its own, hostname, private `/run/wireguard`,
/// `/etc/hosts` bound from the node's state, a Slurm node's folders). It is also the node's
/// supervisor (`agent::supervise`, every `supervise`; zero: none). Returns its PID once it
/// holds the machine.
pub fn start_holder(
    machine: &crate::machine::Machine,
    exe: &Path,
    supervise: Duration,
) -> Result<u32, LocalError> {
    use std::os::unix::process::CommandExt as _;
    let state_dir = &machine.state_dir;
    let hosts = state_dir.join("hosts");
    if !hosts.exists() {
        std::fs::write(&hosts, "127.0.0.1 localhost\n").map_err(LocalError::io(&hosts))?;
    }
    let ready = state_dir.join(crate::machine::READY_FILE);
    let _ = std::fs::remove_file(&ready);
    let log =
        std::fs::File::create(state_dir.join("holder.log")).map_err(LocalError::io(state_dir))?;
    let log2 = log.try_clone().map_err(LocalError::io(state_dir))?;
    let role = crate::machine::slurm_word(machine.slurm);
    let child = Command::new(exe)
        .args(["hold", "--tag", &machine.netns, "--state-dir"])
        .arg(state_dir)
        .args(["--period", &supervise.as_secs().to_string()])
        .args(["--hostname", &machine.hostname, "--slurm", role])
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        // Its own process group: a Ctrl-C on `up` must not stop the cluster.
        .process_group(0)
        .spawn()
        .map_err(|e| LocalError::Command {
            command: format!("{} hold --tag {}", exe.display(), machine.netns),
            detail: e.to_string(),
        })?;
    let pid = child.id();
    let node = &machine.hostname;
    wait_for(
        &format!("the holder of {node}"),
        Duration::from_secs(10),
        || {
            if !alive(pid) {
                return Some(Err(LocalError::HolderExited {
                    node: node.to_owned(),
                    log: std::fs::read_to_string(state_dir.join("holder.log"))
                        .unwrap_or_default()
                        .trim()
                        .to_owned(),
                }));
            }
            let said = std::fs::read_to_string(&ready).ok()?;
            (said.trim() == pid.to_string()).then_some(Ok(()))
        },
    )??;
    drop(child);
    Ok(pid)
}

/// Polls `check` every 10 ms until it returns `Some`, at most `limit`.
pub fn wait_for<T>(
    what: &str,
    limit: Duration,
    check: impl FnMut() -> Option<T>,
) -> Result<T, LocalError> {
    Ok(hybridgrid_agent::sys::wait_for(what, limit, check)?)
}

/// A port on a site switch and what may leave it.
#[derive(Debug, Clone)]
pub struct Port {
    pub name: String,
    pub mac: String,
    pub ip: Ipv4Addr,
    pub pairs: Vec<Ipv4Net>,
}

/// Neutron port security on the site switch: a frame from a port must carry the port's MAC and
/// its fixed IP or one of its allowed-address pairs. Counters show what was dropped.
pub fn render_port_security(cluster: &str, site: &str, ports: &[Port]) -> Result<(), LocalError> {
    let table = names::PORTSEC_TABLE;
    let mut t =
        format!("table bridge {table}\ndelete table bridge {table}\ntable bridge {table} {{\n");
    for p in ports {
        let id = p.name.replace('-', "_");
        let aap = names::aap_set(&id);
        let elements = if p.pairs.is_empty() {
            String::new()
        } else {
            let list: Vec<String> = p.pairs.iter().map(ToString::to_string).collect();
            format!(" elements = {{ {} }};", list.join(", "))
        };
        let _ = write!(
            t,
            "  set {aap} {{ type ipv4_addr; flags interval;{elements} }}\n  chain {id} {{\n    ether saddr != {mac} counter drop comment \"mac spoof\"\n    arp saddr ip {ip} accept\n    arp saddr ip @{aap} accept\n    ether type arp counter drop comment \"arp spoof\"\n    ip saddr {ip} accept\n    ip saddr @{aap} counter accept comment \"allowed-address pair\"\n    counter drop comment \"ip spoof\"\n  }}\n",
            mac = p.mac,
            ip = p.ip
        );
    }
    t.push_str("  chain pre {\n    type filter hook prerouting priority filter; policy accept;\n");
    for p in ports {
        let _ = writeln!(
            t,
            "    iifname \"{}\" jump {}",
            p.name,
            p.name.replace('-', "_")
        );
    }
    t.push_str("  }\n}\n");
    sh::nft(Some(&names::ns_switch(cluster, site)), &t)
}

/// A security group rule as nftables; `None` while its remote is not known yet. The match is
/// written as `nft list` prints it back, which is what `observe` and `doctor` compare.
fn sg_rule(rule: &SgRule) -> Option<String> {
    let m = crate::live::rule_match(rule)?;
    let comment = rule.description.replace('"', "'");
    Some(format!("    {m} counter accept comment \"{comment}\"\n"))
}

/// The node's security groups on its port: default-deny ingress (to the node and through it),
/// stateful unless `stateless`.
pub fn render_security_groups(
    cluster: &str,
    node: &str,
    rules: &[&SgRule],
    stateless: bool,
) -> Result<(), LocalError> {
    let mut body = String::new();
    for r in rules {
        if let Some(line) = sg_rule(r) {
            body.push_str(&line);
        }
    }
    let ct = if stateless {
        ""
    } else {
        "    ct state established,related accept\n    ct state invalid drop\n"
    };
    let hook = |name: &str, hook: &str| {
        format!(
            "  chain {name} {{\n    type filter hook {hook} priority filter; policy accept;\n    iifname != \"{LAN_IF}\" accept\n{ct}    jump {SG_CHAIN}\n    counter drop comment \"security group default deny\"\n  }}\n"
        )
    };
    let ruleset = format!(
        "table inet {SG_TABLE}\ndelete table inet {SG_TABLE}\ntable inet {SG_TABLE} {{\n  chain {SG_CHAIN} {{\n{body}  }}\n{}{}}}\n",
        hook("ingress", "input"),
        hook("forward", "forward"),
    );
    sh::nft(Some(&names::ns_node(cluster, node)), &ruleset)
}
