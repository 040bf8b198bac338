//! `plan`'s summary for humans: the cluster, its tunnel, each site with its nodes, then the
//! changes (a new security group's rules summed up on the group's line).

use std::fmt::Write as _;

use hybridgrid_core::diff::Change;
use hybridgrid_core::plan::{NodePlan, Plan, Remote, Role};

pub fn plan_summary(plan: &Plan) -> String {
    let mut s = String::new();
    header(&mut s, plan);
    for site in &plan.sites {
        let _ = writeln!(
            s,
            "\nsite {} {}{}",
            site.name,
            site.subnet,
            if site.master { " (master site)" } else { "" }
        );
        if let Some(pair) = &site.pair {
            let _ = writeln!(
                s,
                "  relay pair {}: {} (virtual address {}, VRRP; one active, one standby)",
                pair.identity,
                pair.relays.join(" and "),
                pair.vip
            );
        }
        for n in plan.nodes.iter().filter(|n| n.site == site.name) {
            node_line(&mut s, n);
        }
    }
    changes(&mut s, plan);
    s
}

/// The cluster's line and the tunnel's.
fn header(s: &mut String, plan: &Plan) {
    // A relay pair is one end of the mesh.
    let mut ends: Vec<&str> = plan
        .nodes
        .iter()
        .filter(|n| n.is_relay())
        .map(NodePlan::mesh_name)
        .collect();
    ends.sort_unstable();
    ends.dedup();
    let relays = ends.len();
    let _ = writeln!(
        s,
        "cluster {} ({} provider): {} sites, {} nodes",
        plan.cluster,
        plan.provider.as_str(),
        plan.sites.len(),
        plan.nodes.len()
    );
    let _ = writeln!(
        s,
        "tunnel {} · UDP {} · MTU {} · keepalive {}s · full mesh of {} sites' relays, {} links",
        plan.tunnel.cidr,
        plan.tunnel.port,
        plan.tunnel.mtu,
        plan.tunnel.keepalive,
        relays,
        relays * relays.saturating_sub(1) / 2
    );
}

/// One node: name, role, LAN address, and what else it has (tunnel, public IP, size).
fn node_line(s: &mut String, n: &NodePlan) {
    let mut extra = String::new();
    if let Some(t) = n.tunnel_ip {
        let _ = write!(extra, "  tunnel {t}");
    }
    if n.is_relay() {
        match n.public_ip {
            Some(ip) => {
                let _ = write!(extra, "  public {ip}");
            }
            None => extra.push_str("  public (allocated by up)"),
        }
    }
    if n.role == Role::Worker {
        let _ = write!(extra, "  {} CPUs, {} MiB", n.cpus, n.memory_mib);
    }
    if n.on_demand {
        extra.push_str("  on demand (Slurm makes it when jobs need it)");
    }
    let _ = writeln!(
        s,
        "  {:<24} {:<8} {:<15}{extra}",
        n.name,
        n.role.as_str(),
        n.lan_ip.to_string()
    );
}

/// The changes, one a line; a new group's rules are summed up on the group's line (`--json`
/// lists each one).
fn changes(s: &mut String, plan: &Plan) {
    if plan.changes.is_empty() {
        s.push_str("\nno changes: the cluster is as planned\n");
        return;
    }
    let _ = writeln!(s, "\n{} changes:", plan.changes.len());
    let new_groups: Vec<&str> = plan
        .changes
        .iter()
        .filter_map(|c| match c {
            Change::CreateSecurityGroup { group, .. } => Some(group.as_str()),
            _ => None,
        })
        .collect();
    for c in &plan.changes {
        match c {
            Change::AddRule { group, .. } if new_groups.contains(&group.as_str()) => {}
            Change::CreateSecurityGroup { group, .. } => {
                let _ = writeln!(s, "  {}{}", c.summary(), new_group_rules(plan, group));
            }
            _ => {
                let _ = writeln!(s, "  {}", c.summary());
            }
        }
    }
}

/// ` with N rules`, and how many more come once the peers' public IPs exist.
fn new_group_rules(plan: &Plan, group: &str) -> String {
    let rules = plan
        .changes
        .iter()
        .filter(|c| matches!(c, Change::AddRule { group: g, .. } if g == group))
        .count();
    let pending = plan
        .sites
        .iter()
        .flat_map(|site| &site.security_groups)
        .filter(|g| g.name == group)
        .flat_map(|g| &g.rules)
        .filter(|r| matches!(r.remote, Remote::PendingPublicIp(_)))
        .count();
    let later = if pending > 0 {
        format!(" (+{pending} once the peers' public IPs exist)")
    } else {
        String::new()
    };
    format!(" with {rules} rules{later}")
}
