//! Reconcile: a pure diff from the observed state to the plan, as named changes.
//!
//! The same list is what `hybridgrid plan` prints and what `up` applies, so a second `up` with
//! nothing changed finds an empty list and does nothing. Removals come last: a cluster keeps working
//! while it grows or shrinks.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

pub use crate::change::{Change, rule_text};
use crate::node::{NodeConfig, Remote, SgRule};
pub use crate::observed::{Observed, ObservedNode, ObservedSite};
use crate::plan::{NodePlan, Plan, SitePlan};

/// Every change from `observed` to `plan`, creations first, removals last.
pub fn changes(plan: &Plan, observed: &Observed) -> Vec<Change> {
    changes_waking(plan, observed, &BTreeSet::new())
}

/// As [`changes`], with the on-demand workers in `waking` made and configured like any node.
/// The others that do not exist are asleep (powered down in Slurm): no drift.
///
/// In this order: each site's network, WAN and security groups with their rules; nodes and
/// their public IPs; allowed-address pairs; node configurations; then the removals — rules
/// hybridgrid made that the plan no longer has, then nodes, groups and networks of sites that
/// left the file.
pub fn changes_waking(plan: &Plan, observed: &Observed, waking: &BTreeSet<String>) -> Vec<Change> {
    let awake: Vec<&NodePlan> = plan
        .nodes
        .iter()
        .filter(|node| {
            !node.on_demand
                || observed.nodes.contains_key(&node.name)
                || waking.contains(&node.name)
        })
        .collect();
    let mut out = Vec::new();
    for site in &plan.sites {
        site_network_and_groups(site, observed, &mut out);
    }
    // openstack reaches each relay of a pair at a public IP of its own (`own_public_ip`).
    let own_ips = plan.provider == crate::model::Provider::OpenStack;
    for node in &awake {
        node_and_public_ip(node, own_ips, observed, &mut out);
    }
    for site in &plan.sites {
        pair_address(site, observed, &mut out);
    }
    for site in &plan.sites {
        address_pairs(site, observed, &mut out);
    }
    for node in &awake {
        node_config(plan, node, observed, &mut out);
    }
    removed_rules(plan, observed, &mut out);
    removed_nodes(plan, observed, &mut out);
    removed_groups_and_networks(plan, observed, &mut out);
    out
}

/// The site's network, its WAN, its security groups and their rules.
fn site_network_and_groups(site: &SitePlan, observed: &Observed, out: &mut Vec<Change>) {
    let no_site = ObservedSite::default();
    let seen = observed.sites.get(&site.name).unwrap_or(&no_site);
    if !seen.network {
        out.push(Change::CreateNetwork {
            site: site.name.clone(),
        });
    }
    if seen.wan != site.wan {
        out.push(Change::SetWan {
            site: site.name.clone(),
            wan: site.wan,
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
        let present_keys: BTreeSet<_> = present.into_iter().flatten().map(SgRule::key).collect();
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

/// The node, and a relay's public IP (the one reserved for it, if any); with `own_ips`, a pair's
/// relay's own.
fn node_and_public_ip(node: &NodePlan, own_ips: bool, observed: &Observed, out: &mut Vec<Change>) {
    let seen = observed.nodes.get(&node.name);
    if seen.is_none() {
        out.push(Change::CreateNode {
            site: node.site.clone(),
            node: node.name.clone(),
            role: node.role,
        });
    }
    // A pair's relays share their virtual address's public IP (`pair_address`).
    let wants_own = node.is_relay() && (node.pair.is_none() || own_ips);
    if wants_own && seen.and_then(|s| s.public_ip).is_none() {
        out.push(public_ip(&node.site, &node.name, observed));
    }
}

/// The public IP `name` lacks: the one reserved for it, or a new one.
fn public_ip(site: &str, name: &str, observed: &Observed) -> Change {
    match observed.reserved_public_ips.get(name) {
        Some(ip) => Change::AttachPublicIp {
            site: site.to_owned(),
            node: name.to_owned(),
            ip: *ip,
        },
        None => Change::AssignPublicIp {
            site: site.to_owned(),
            node: name.to_owned(),
        },
    }
}

/// A relay pair's virtual address and its public IP.
fn pair_address(site: &SitePlan, observed: &Observed, out: &mut Vec<Change>) {
    let Some(pair) = &site.pair else {
        return;
    };
    let seen = observed
        .sites
        .get(&site.name)
        .and_then(|s| s.virtual_addresses.get(&pair.identity));
    if seen.is_none_or(|v| v.address != pair.vip) {
        out.push(Change::CreateVirtualAddress {
            site: site.name.clone(),
            name: pair.identity.clone(),
            address: pair.vip,
        });
    }
    if seen.and_then(|v| v.public_ip).is_none() {
        out.push(public_ip(&site.name, &pair.identity, observed));
    }
}

/// The allowed-address pairs each port of the site lacks.
fn address_pairs(site: &SitePlan, observed: &Observed, out: &mut Vec<Change>) {
    let no_site = ObservedSite::default();
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

/// The node's configuration, where what it applied differs from the plan.
fn node_config(plan: &Plan, node: &NodePlan, observed: &Observed, out: &mut Vec<Change>) {
    let applied = observed
        .nodes
        .get(&node.name)
        .and_then(|n| n.applied.as_ref());
    let details = config_differences(applied, &plan.node_config_without_hosts(node), &plan.hosts);
    if !details.is_empty() {
        out.push(Change::ConfigureNode {
            site: node.site.clone(),
            node: node.name.clone(),
            details,
        });
    }
}

/// Rules hybridgrid made in a planned group that the plan no longer has.
fn removed_rules(plan: &Plan, observed: &Observed, out: &mut Vec<Change>) {
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
}

/// Nodes the plan no longer has.
fn removed_nodes(plan: &Plan, observed: &Observed, out: &mut Vec<Change>) {
    let planned: BTreeSet<&str> = plan.nodes.iter().map(|n| n.name.as_str()).collect();
    for (name, seen) in &observed.nodes {
        if !planned.contains(name.as_str()) {
            out.push(Change::RemoveNode {
                site: seen.site.clone(),
                node: name.clone(),
            });
        }
    }
    for (site, seen) in &observed.sites {
        let pair = plan.site(site).and_then(|s| s.pair.as_ref());
        for name in seen.virtual_addresses.keys() {
            if pair.is_none_or(|p| p.identity != *name) {
                out.push(Change::RemoveVirtualAddress {
                    site: site.clone(),
                    name: name.clone(),
                });
            }
        }
    }
}

/// Groups the plan no longer has, and the networks of sites that left the file.
fn removed_groups_and_networks(plan: &Plan, observed: &Observed, out: &mut Vec<Change>) {
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
        if let Some(p) = &wanted.pair {
            d.push(format!("VRRP with {} for {}", p.partner, p.vip));
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
    if applied.store_client != wanted.store_client {
        d.push("object store client".into());
    }
    if applied.pair != wanted.pair {
        d.push(match &wanted.pair {
            Some(p) => format!("VRRP with {} for {}", p.partner, p.vip),
            None => "no VRRP".into(),
        });
    }
    d
}
