//! Rendering: the plan as the files a node or cloud would hold, for review (`hybridgrid render`) and
//! for VMs that are configured from files. Pure: paths and contents from the plan alone.
//!
//! Layout, relative to the output folder:
//! - `plan.json`
//! - `common/etc/hosts`: `/etc/hosts` of every node (the same everywhere, so written once)
//! - relays: `etc/wireguard/wg0.conf` (wg-quick), `etc/sysctl.d/90-hybridgrid.conf`,
//!   `etc/nftables.d/hybridgrid-mss.nft`
//! - a relay pair's relays, besides: `etc/keepalived/keepalived.conf`
//! - the other nodes (workers; the master where a pair relays): `etc/hybridgrid/routes.sh`
//! - the master: `etc/slurm/slurm.conf` (workers fetch it: configless slurmd)
//! - `cloud/<site>/security-groups.json`, `cloud/<site>/allowed-address-pairs.json`,
//!   `cloud/<site>/rules.txt`

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::diff::rule_text;
use crate::plan::{NodePlan, Plan, Role, Route, WgInterface};

/// Where the node agent keeps the WireGuard private key it made (mode 0600).
pub const PRIVATE_KEY_PATH: &str = "/var/lib/hybridgrid/wg0.key";
/// The LAN interface a rendered file names (a booted node's agent uses the node's own).
const LAN_INTERFACE: &str = "eth0";
/// Where a cloud relay's agent writes its health for keepalived.
const RELAY_HEALTH_PATH: &str = "/var/lib/hybridgrid/relay-health";
/// What keepalived runs on a change of state, in rendered files.
const RELAY_STATE_PROGRAM: &str =
    "/usr/local/bin/hybridgrid-agent agent relay-state --state-dir /var/lib/hybridgrid";

/// Every rendered file: relative path → content. For large clusters prefer [`render_each`].
pub fn render(plan: &Plan) -> BTreeMap<String, String> {
    let mut files = BTreeMap::new();
    render_each(plan, &mut |path, content| {
        files.insert(path.to_owned(), content);
    });
    files
}

/// Hands each rendered file to `emit` as it is made, so memory stays at one file at a time.
pub fn render_each(plan: &Plan, emit: &mut dyn FnMut(&str, String)) {
    emit("plan.json", plan.to_json() + "\n");
    emit("common/etc/hosts", hosts(plan));
    // The workers of a site share their routes: format them once per site.
    let mut site_routes: BTreeMap<&str, (Vec<Route>, String)> = BTreeMap::new();
    for node in &plan.nodes {
        let dir = format!("nodes/{}/etc", node.name);
        let config = plan.node_config_without_hosts(node);
        if let Some(wg) = &config.wireguard {
            emit(
                &format!("{dir}/wireguard/{}.conf", wg.name),
                wg_quick(plan, node, &config.routes, wg),
            );
            emit(
                &format!("{dir}/sysctl.d/90-hybridgrid.conf"),
                "# hybridgrid: this node relays traffic between sites.\nnet.ipv4.ip_forward = 1\n"
                    .to_owned(),
            );
            emit(
                &format!("{dir}/nftables.d/hybridgrid-mss.nft"),
                mss_clamp(&wg.name),
            );
        }
        if let Some(pair) = &node.pair {
            let vrrp = crate::vrrp::VrrpNode {
                name: &node.name,
                lan_if: LAN_INTERFACE,
                health_file: RELAY_HEALTH_PATH,
                notify: RELAY_STATE_PROGRAM,
            };
            emit(
                &format!("{dir}/keepalived/keepalived.conf"),
                crate::vrrp::keepalived_conf(pair, &vrrp),
            );
        }
        if !node.is_relay() {
            let text = match site_routes.get(node.site.as_str()) {
                Some((routes, text)) if *routes == config.routes => text.clone(),
                _ => {
                    let text = worker_routes(&config.routes);
                    site_routes.insert(&node.site, (config.routes.clone(), text.clone()));
                    text
                }
            };
            emit(&format!("{dir}/hybridgrid/routes.sh"), text);
        }
        // Whether or not the mesh is complete yet (the node's Slurm role waits for it).
        if node.role == Role::Master {
            emit(&format!("{dir}/slurm/slurm.conf"), slurm_conf(plan));
        }
    }
    for site in &plan.sites {
        let dir = format!("cloud/{}", site.name);
        emit(
            &format!("{dir}/security-groups.json"),
            serde_json::to_string_pretty(&site.security_groups).unwrap_or_default() + "\n",
        );
        emit(
            &format!("{dir}/allowed-address-pairs.json"),
            serde_json::to_string_pretty(&site.allowed_address_pairs).unwrap_or_default() + "\n",
        );
        let mut txt = format!("# Cloud rules of site {} ({})\n", site.name, site.subnet);
        for g in &site.security_groups {
            let _ = writeln!(
                txt,
                "\nsecurity group {} (on: {})",
                g.name,
                g.members.join(", ")
            );
            for r in &g.rules {
                let _ = writeln!(txt, "  ingress {}", rule_text(r));
            }
        }
        for p in &site.allowed_address_pairs {
            let list: Vec<String> = p.pairs.iter().map(ToString::to_string).collect();
            let _ = writeln!(
                txt,
                "\nallowed-address pairs on {} ({}): {}",
                p.node,
                p.port_ip,
                list.join(", ")
            );
        }
        emit(&format!("{dir}/rules.txt"), txt);
    }
}

fn header(plan: &Plan, what: &str) -> String {
    format!(
        "# hybridgrid: {what} of cluster {}. Generated from the cluster file: edit that instead.\n",
        plan.cluster
    )
}

/// `/etc/hosts` with every node of the cluster.
pub fn hosts(plan: &Plan) -> String {
    let mut s = String::from("127.0.0.1\tlocalhost\n");
    for (ip, name) in &plan.hosts {
        let _ = writeln!(s, "{ip}\t{name}");
    }
    s
}

/// A wg-quick file. The private key stays on the node: `PostUp` loads it from the node's state.
/// Routing is explicit (`Table = off`) because cross-site routes need `src` = the LAN address.
pub fn wg_quick(plan: &Plan, node: &NodePlan, routes: &[Route], wg: &WgInterface) -> String {
    let mut s = header(plan, &format!("{} of {}", wg.name, node.name));
    s.push_str("# The private key is made on this node and never leaves it; PostUp loads it.\n");
    s.push_str("[Interface]\n");
    let _ = writeln!(s, "Address = {}", wg.address);
    let _ = writeln!(s, "ListenPort = {}", wg.listen_port);
    let _ = writeln!(s, "MTU = {}", wg.mtu);
    s.push_str("Table = off\n");
    let _ = writeln!(s, "PostUp = wg set %i private-key {PRIVATE_KEY_PATH}");
    for r in routes {
        let src = r.src.map(|ip| format!(" src {ip}")).unwrap_or_default();
        let _ = writeln!(
            s,
            "PostUp = ip -4 route replace {} dev %i{src}",
            r.destination
        );
    }
    for p in &wg.peers {
        s.push('\n');
        let _ = writeln!(s, "# {} (site {})", p.node, p.site);
        let allowed: Vec<String> = p.allowed_ips.iter().map(ToString::to_string).collect();
        match p.public_key {
            Some(key) => {
                s.push_str("[Peer]\n");
                let _ = writeln!(s, "PublicKey = {key}");
                match p.endpoint {
                    Some(ep) => {
                        let _ = writeln!(s, "Endpoint = {ep}");
                    }
                    None => {
                        let _ =
                            writeln!(s, "# Endpoint: the public IP of {} once allocated", p.node);
                    }
                }
                let _ = writeln!(s, "AllowedIPs = {}", allowed.join(", "));
                if let Some(k) = p.persistent_keepalive {
                    let _ = writeln!(s, "PersistentKeepalive = {k}");
                }
            }
            None => {
                let _ = writeln!(
                    s,
                    "# pending: {} makes its key during `up`; then this peer is added",
                    p.node
                );
                let _ = writeln!(s, "# AllowedIPs = {}", allowed.join(", "));
            }
        }
    }
    s
}

/// Clamp forwarded SYNs to the route MTU both ways through the tunnel: hosts on the site LAN
/// advertise an MSS for the LAN's MTU, which does not fit through the tunnel.
pub fn mss_clamp(wg_if: &str) -> String {
    format!(
        "# hybridgrid: clamp TCP MSS of traffic forwarded through {wg_if}.\n\
         table inet hybridgrid_mss {{\n\
         \tchain forward {{\n\
         \t\ttype filter hook forward priority mangle; policy accept;\n\
         \t\toifname \"{wg_if}\" tcp flags & (syn | rst) == syn tcp option maxseg size set rt mtu\n\
         \t\tiifname \"{wg_if}\" tcp flags & (syn | rst) == syn tcp option maxseg size set rt mtu\n\
         \t}}\n\
         }}\n"
    )
}

fn worker_routes(routes: &[Route]) -> String {
    let mut s = String::from(
        "#!/bin/sh\n# hybridgrid: other sites and the tunnel are reached through this site's relay.\n",
    );
    for r in routes {
        if let Some(via) = r.via {
            let _ = writeln!(s, "ip -4 route replace {} via {via}", r.destination);
        }
    }
    s
}

/// The controller's `slurm.conf` (see [`crate::slurm_conf::slurm_conf`]).
pub fn slurm_conf(plan: &Plan) -> String {
    crate::slurm_conf::slurm_conf(&plan.cluster, &plan.slurm, &plan.conf_nodes())
}
