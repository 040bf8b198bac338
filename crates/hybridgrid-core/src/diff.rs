//! Reconcile: a pure diff from the observed state to the plan, as named changes.
//!
//! The same list is what `hybridgrid plan` prints and what `up` applies, so a second `up` with
//! nothing changed finds an empty list and does nothing. Removals come last: a cluster keeps working
//! while it grows or shrinks.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::keys::PublicKey;
use crate::plan::{NodeConfig, Plan, Remote, Role, SgRule};

/// What exists of a cluster, as a provider found it (its ledger and its cloud).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observed {
    pub nodes: BTreeMap<String, ObservedNode>,
    pub sites: BTreeMap<String, ObservedSite>,
    /// Public IPs allocated for a node but not attached to it (the node may not exist yet):
    /// the plan uses them as the node's endpoint, and attaching one is an `AssignPublicIp`.
    #[serde(default)]
    pub reserved_public_ips: BTreeMap<String, Ipv4Addr>,
}

impl Observed {
    /// The node's public IP: attached, else reserved for it.
    pub fn public_ip(&self, node: &str) -> Option<Ipv4Addr> {
        self.nodes
            .get(node)
            .and_then(|o| o.public_ip)
            .or_else(|| self.reserved_public_ips.get(node).copied())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedNode {
    pub site: String,
    pub public_ip: Option<Ipv4Addr>,
    pub public_key: Option<PublicKey>,
    /// The node configuration its agent last applied, if any.
    pub applied: Option<NodeConfig>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedSite {
    pub network: bool,
    /// Security groups hybridgrid created, by name, with the rules they hold.
    pub security_groups: BTreeMap<String, Vec<SgRule>>,
    /// Allowed-address pairs present on each node's port (the user's own included).
    pub allowed_address_pairs: BTreeMap<String, Vec<Ipv4Net>>,
}

/// One named step from what is to what should be.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum Change {
    CreateNetwork {
        site: String,
    },
    CreateSecurityGroup {
        site: String,
        group: String,
    },
    AddRule {
        site: String,
        group: String,
        rule: SgRule,
    },
    CreateNode {
        site: String,
        node: String,
        role: Role,
    },
    /// Allocates a public IP for the node and attaches it once the node exists.
    AssignPublicIp {
        site: String,
        node: String,
    },
    /// Attaches the public IP already reserved for the node.
    AttachPublicIp {
        site: String,
        node: String,
        ip: Ipv4Addr,
    },
    /// Adds pairs to the port; pairs already there (the user's too) are kept.
    AddAddressPairs {
        site: String,
        node: String,
        pairs: Vec<Ipv4Net>,
    },
    ConfigureNode {
        site: String,
        node: String,
        details: Vec<String>,
    },
    RemoveRule {
        site: String,
        group: String,
        rule: SgRule,
    },
    RemoveNode {
        site: String,
        node: String,
    },
    RemoveSecurityGroup {
        site: String,
        group: String,
    },
    RemoveNetwork {
        site: String,
    },
}

impl Change {
    /// The site the change is made at.
    pub fn site(&self) -> &str {
        match self {
            Change::CreateNetwork { site }
            | Change::CreateSecurityGroup { site, .. }
            | Change::AddRule { site, .. }
            | Change::CreateNode { site, .. }
            | Change::AssignPublicIp { site, .. }
            | Change::AttachPublicIp { site, .. }
            | Change::AddAddressPairs { site, .. }
            | Change::ConfigureNode { site, .. }
            | Change::RemoveRule { site, .. }
            | Change::RemoveNode { site, .. }
            | Change::RemoveSecurityGroup { site, .. }
            | Change::RemoveNetwork { site } => site,
        }
    }

    /// One line for humans, as `plan` prints it.
    pub fn summary(&self) -> String {
        match self {
            Change::CreateNetwork { site } => format!("+ {site}: network, subnet and router"),
            Change::CreateSecurityGroup { site, group } => {
                format!("+ {site}: security group {group}")
            }
            Change::AddRule { site, group, rule } => {
                format!("+ {site}: rule in {group}: {}", rule_text(rule))
            }
            Change::CreateNode { site, node, role } => {
                format!("+ {site}: node {node} ({})", role.as_str())
            }
            Change::AssignPublicIp { site, node } => format!("+ {site}: public IP for {node}"),
            Change::AttachPublicIp { site, node, ip } => {
                format!("+ {site}: attach public IP {ip} to {node}")
            }
            Change::AddAddressPairs { site, node, pairs } => {
                let list: Vec<String> = pairs.iter().map(ToString::to_string).collect();
                format!(
                    "+ {site}: allowed-address pairs on {node}'s port: {}",
                    list.join(", ")
                )
            }
            Change::ConfigureNode {
                site,
                node,
                details,
            } => {
                format!("~ {site}: configure {node}: {}", details.join("; "))
            }
            Change::RemoveRule { site, group, rule } => {
                format!("- {site}: rule in {group}: {}", rule_text(rule))
            }
            Change::RemoveNode { site, node } => format!("- {site}: node {node}"),
            Change::RemoveSecurityGroup { site, group } => {
                format!("- {site}: security group {group}")
            }
            Change::RemoveNetwork { site } => format!("- {site}: network, subnet and router"),
        }
    }
}

/// `udp 51820 from 198.51.100.20/32 (WireGuard from giessen-gw)`.
pub fn rule_text(rule: &SgRule) -> String {
    format!("{} ({})", rule.match_text(), rule.description)
}

/// Every change from `observed` to `plan`, creations first, removals last.
pub fn changes(plan: &Plan, observed: &Observed) -> Vec<Change> {
    let mut out = Vec::new();
    let no_site = ObservedSite::default();
    for site in &plan.sites {
        let seen = observed.sites.get(&site.name).unwrap_or(&no_site);
        if !seen.network {
            out.push(Change::CreateNetwork {
                site: site.name.clone(),
            });
        }
        for group in &site.security_groups {
            let present = seen.security_groups.get(&group.name);
            if present.is_none() {
                out.push(Change::CreateSecurityGroup {
                    site: site.name.clone(),
                    group: group.name.clone(),
                });
            }
            let present_keys: BTreeSet<_> =
                present.into_iter().flatten().map(SgRule::key).collect();
            // A rule whose source is a public IP not allocated yet cannot be created; it becomes a
            // change in the round after the IP exists.
            let actionable = group
                .rules
                .iter()
                .filter(|r| !matches!(r.remote, Remote::PendingPublicIp(_)));
            for rule in actionable {
                if !present_keys.contains(&rule.key()) {
                    out.push(Change::AddRule {
                        site: site.name.clone(),
                        group: group.name.clone(),
                        rule: rule.clone(),
                    });
                }
            }
        }
    }
    for node in &plan.nodes {
        let seen = observed.nodes.get(&node.name);
        if seen.is_none() {
            out.push(Change::CreateNode {
                site: node.site.clone(),
                node: node.name.clone(),
                role: node.role,
            });
        }
        if node.role.is_relay() && seen.and_then(|s| s.public_ip).is_none() {
            out.push(match observed.reserved_public_ips.get(&node.name) {
                Some(ip) => Change::AttachPublicIp {
                    site: node.site.clone(),
                    node: node.name.clone(),
                    ip: *ip,
                },
                None => Change::AssignPublicIp {
                    site: node.site.clone(),
                    node: node.name.clone(),
                },
            });
        }
    }
    for site in &plan.sites {
        let seen = observed.sites.get(&site.name).unwrap_or(&no_site);
        for pairs in &site.allowed_address_pairs {
            let present: BTreeSet<Ipv4Net> = seen
                .allowed_address_pairs
                .get(&pairs.node)
                .into_iter()
                .flatten()
                .copied()
                .collect();
            let missing: Vec<Ipv4Net> = pairs
                .pairs
                .iter()
                .filter(|p| !present.contains(p))
                .copied()
                .collect();
            if !missing.is_empty() {
                out.push(Change::AddAddressPairs {
                    site: site.name.clone(),
                    node: pairs.node.clone(),
                    pairs: missing,
                });
            }
        }
    }
    for node in &plan.nodes {
        let applied = observed
            .nodes
            .get(&node.name)
            .and_then(|n| n.applied.as_ref());
        let details =
            config_differences(applied, &plan.node_config_without_hosts(node), &plan.hosts);
        if !details.is_empty() {
            out.push(Change::ConfigureNode {
                site: node.site.clone(),
                node: node.name.clone(),
                details,
            });
        }
    }
    // Removals: rules hybridgrid made that the plan no longer has, then nodes, groups and networks
    // of sites that left the file.
    for (site_name, seen) in &observed.sites {
        let site = plan.site(site_name);
        for (group_name, rules) in &seen.security_groups {
            let wanted =
                site.and_then(|s| s.security_groups.iter().find(|g| &g.name == group_name));
            let Some(wanted) = wanted else { continue };
            let wanted_keys: BTreeSet<_> = wanted.rules.iter().map(SgRule::key).collect();
            for rule in rules.iter().filter(|r| !wanted_keys.contains(&r.key())) {
                out.push(Change::RemoveRule {
                    site: site_name.clone(),
                    group: group_name.clone(),
                    rule: rule.clone(),
                });
            }
        }
    }
    let planned: BTreeSet<&str> = plan.nodes.iter().map(|n| n.name.as_str()).collect();
    for (name, seen) in &observed.nodes {
        if !planned.contains(name.as_str()) {
            out.push(Change::RemoveNode {
                site: seen.site.clone(),
                node: name.clone(),
            });
        }
    }
    for (site_name, seen) in &observed.sites {
        let site = plan.site(site_name);
        for group_name in seen.security_groups.keys() {
            if site.is_none_or(|s| s.security_groups.iter().all(|g| &g.name != group_name)) {
                out.push(Change::RemoveSecurityGroup {
                    site: site_name.clone(),
                    group: group_name.clone(),
                });
            }
        }
        if site.is_none() && seen.network {
            out.push(Change::RemoveNetwork {
                site: site_name.clone(),
            });
        }
    }
    out
}

/// What the agent would change on a node, in words; empty when the node is as planned. `wanted`
/// comes without hosts (see [`Plan::node_config_without_hosts`]); `hosts` is the plan's list.
pub fn config_differences(
    applied: Option<&NodeConfig>,
    wanted: &NodeConfig,
    hosts: &[(Ipv4Addr, String)],
) -> Vec<String> {
    let Some(applied) = applied else {
        let mut d = vec![format!("hostname, /etc/hosts ({} entries)", hosts.len())];
        if !wanted.routes.is_empty() {
            d.push(format!("{} routes", wanted.routes.len()));
        }
        if let Some(wg) = &wanted.wireguard {
            d.push(format!(
                "{} with {} peers, MTU {}",
                wg.name,
                wg.peers.len(),
                wg.mtu
            ));
        }
        if wanted.ip_forward {
            d.push("IP forwarding and MSS clamp".into());
        }
        return d;
    };
    let mut d = Vec::new();
    if applied.hostname != wanted.hostname {
        d.push(format!(
            "hostname {} → {}",
            applied.hostname, wanted.hostname
        ));
    }
    if applied.hosts != hosts {
        d.push("update /etc/hosts".into());
    }
    if applied.ip_forward != wanted.ip_forward || applied.mss_clamp != wanted.mss_clamp {
        d.push("forwarding/MSS clamp".into());
    }
    for r in wanted.routes.iter().filter(|r| !applied.routes.contains(r)) {
        d.push(format!("add route {}", r.destination));
    }
    for r in applied.routes.iter().filter(|r| !wanted.routes.contains(r)) {
        d.push(format!("remove route {}", r.destination));
    }
    match (&applied.wireguard, &wanted.wireguard) {
        (None, Some(w)) => d.push(format!("create {} with {} peers", w.name, w.peers.len())),
        (Some(a), None) => d.push(format!("remove {}", a.name)),
        (Some(a), Some(w)) => {
            if a.address != w.address || a.listen_port != w.listen_port || a.mtu != w.mtu {
                d.push(format!("{}: address/port/MTU", w.name));
            }
            for p in &w.peers {
                match a.peers.iter().find(|q| q.node == p.node) {
                    None => d.push(format!("add peer {}", p.node)),
                    Some(q) if q != p => d.push(format!("update peer {}", p.node)),
                    Some(_) => {}
                }
            }
            for q in a
                .peers
                .iter()
                .filter(|q| w.peers.iter().all(|p| p.node != q.node))
            {
                d.push(format!("remove peer {}", q.node));
            }
        }
        (None, None) => {}
    }
    if applied.slurm != wanted.slurm {
        d.push("Slurm role".into());
    }
    d
}
