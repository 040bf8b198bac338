//! One site's changes of a round on OpenStack, as concurrent as their dependencies allow.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use futures::future::try_join_all;
use futures::{FutureExt, TryFutureExt};
use hybridgrid_core::diff::Change;
use hybridgrid_core::plan::{self, Plan};
use hybridgrid_engine::{Event, Sink};
use ipnet::Ipv4Net;

use crate::api::{NET, Req, s};
use crate::error::{OsError, Result};
use crate::ledger::Kind;
use crate::site::SiteOps;

pub(crate) type Created = Vec<(
    String,
    tokio::task::JoinHandle<Result<(f64, Option<String>)>>,
)>;

/// Applies one site's changes. Order: (network and subnet ∥ router ∥ groups) → (router
/// interface ∥ rules ∥ per new node: port with its address pairs → (server ∥ floating IP once
/// the router interface exists)) → floating IPs and pairs of nodes that exist already →
/// removals. Servers are not waited for here.
pub(crate) async fn apply_site(
    ops: &SiteOps,
    plan: &Plan,
    changes: Vec<Change>,
    progress: Sink<'_>,
) -> Result<Created> {
    let changes = changes.as_slice();
    if changes.is_empty() {
        return Ok(Vec::new());
    }
    let report = |summary: String| {
        progress(Event::Applied {
            summary,
            seconds: 0.0,
            details: Vec::new(),
        });
    };
    let done = |c: &Change| report(c.summary());
    let site_plan = plan
        .site(&ops.site.name)
        .ok_or_else(|| OsError::Other(format!("site {} not in the plan", ops.site.name)))?;
    let create_net = changes
        .iter()
        .any(|c| matches!(c, Change::CreateNetwork { .. }));
    let group_names: Vec<String> = site_plan
        .security_groups
        .iter()
        .map(|g| g.name.clone())
        .collect();
    // Network and subnet ∥ router ∥ groups: none needs another.
    let net = async {
        if create_net {
            ops.ensure_net_subnet().await
        } else {
            ops.require_net_ids().await
        }
    };
    let router = async {
        if create_net {
            ops.ensure_router_only().await
        } else {
            Ok(None)
        }
    };
    let new_groups = try_join_all(changes.iter().filter_map(|c| match c {
        Change::CreateSecurityGroup { group, .. } => Some(async move {
            ops.ensure_security_group(group).await?;
            Ok::<_, OsError>(c.summary())
        }),
        _ => None,
    }));
    let (ids, router_id, group_summaries) = tokio::try_join!(net, router, new_groups)?;
    for g in group_summaries {
        report(g);
    }
    let groups = ops.security_groups(&group_names).await?;
    let group_id = |name: &str| -> Result<String> {
        groups
            .get(name)
            .map(|g| s(&g["id"]))
            .ok_or_else(|| OsError::Other(format!("security group {name} not found")))
    };

    let new_nodes: BTreeSet<&String> = changes
        .iter()
        .filter_map(|c| match c {
            Change::CreateNode { node, .. } => Some(node),
            _ => None,
        })
        .collect();
    // Router, rules and nodes in parallel. A new node's floating IP waits for the router
    // interface only, its address pairs for its port only: both start while servers boot.
    let router_ready = async {
        if let Some(router_id) = &router_id {
            ops.ensure_router_interface(router_id, &ids)
                .await
                .map_err(|e| e.to_string())?;
            if let Some(c) = changes
                .iter()
                .find(|c| matches!(c, Change::CreateNetwork { .. }))
            {
                done(c);
            }
        }
        Ok::<_, String>(())
    }
    .shared();
    let router = router_ready.clone().map_err(OsError::Other);
    let rules = async {
        let mut by_group: BTreeMap<&str, Vec<&plan::SgRule>> = BTreeMap::new();
        let mut out = Vec::new();
        for c in changes {
            if let Change::AddRule { group, rule, .. } = c {
                by_group.entry(group.as_str()).or_default().push(rule);
                out.push(c.summary());
            }
        }
        try_join_all(
            by_group
                .iter()
                .map(|(group, rules)| async { ops.add_rules(&group_id(group)?, rules).await }),
        )
        .await?;
        for c in changes {
            if let Change::RemoveRule { group, rule, .. } = c {
                if let Some(g) = groups.get(group.as_str()) {
                    ops.remove_rule(g, rule).await?;
                }
                out.push(c.summary());
            }
        }
        Ok::<_, OsError>(out)
    };
    let nodes = async {
        let new: Vec<&Change> = changes
            .iter()
            .filter(|c| matches!(c, Change::CreateNode { .. }))
            .collect();
        if new.is_empty() {
            return Ok(Vec::new());
        }
        // The keypair, the port, the existing-server check and the flavor and image lookups
        // need nothing of each other.
        let keypair = ops.ensure_keypair().map_err(|e| e.to_string()).shared();
        let futs = new.into_iter().map(|c| {
            let keypair = keypair.clone();
            let ids = &ids;
            let group_id = &group_id;
            let router_ready = router_ready.clone();
            async move {
                let Change::CreateNode { node, .. } = c else {
                    return Ok(None);
                };
                let np = plan
                    .node(node)
                    .ok_or_else(|| OsError::Other(format!("node {node} not in the plan")))?;
                let gids = site_plan
                    .security_groups
                    .iter()
                    .filter(|g| g.members.contains(node))
                    .map(|g| group_id(&g.name))
                    .collect::<Result<Vec<_>>>()?;
                // A new port gets its address pairs in its create call.
                let pairs: Vec<Ipv4Net> = port_changes_of(changes, node)
                    .filter_map(|c| match c {
                        Change::AddAddressPairs { pairs, .. } => Some(pairs.iter().copied()),
                        _ => None,
                    })
                    .flatten()
                    .collect();
                let ((port, new_port), existing, refs, keypair) = tokio::try_join!(
                    ops.ensure_port(np, ids, &gids, &pairs),
                    ops.find_server(node),
                    ops.flavor_and_image(np),
                    keypair.map_err(OsError::Other),
                )?;
                let at = Instant::now();
                let server = async {
                    match existing {
                        Some(_) => Ok(None),
                        None => ops
                            .create_server(plan, np, &port, keypair.as_deref(), refs)
                            .await
                            .map(Some),
                    }
                };
                let port_work = async {
                    let mut out = Vec::new();
                    for c in port_changes_of(changes, node) {
                        match c {
                            Change::AddAddressPairs { pairs, .. } => {
                                if !new_port {
                                    ops.add_address_pairs(&port, pairs).await?;
                                }
                            }
                            Change::AssignPublicIp { .. } | Change::AttachPublicIp { .. } => {
                                // The router's own error is reported by its branch.
                                if router_ready.clone().await.is_err() {
                                    break;
                                }
                                ops.ensure_floating_ip(node, &port, new_port).await?;
                            }
                            _ => continue,
                        }
                        out.push(c.summary());
                    }
                    Ok::<_, OsError>(out)
                };
                let (build, port_done) = tokio::try_join!(server, port_work)?;
                // Wait for ACTIVE in the background while the rest is built.
                let waiter = build.map(|b| (node.clone(), tokio::spawn(b.wait(at))));
                Ok::<_, OsError>(Some((c.summary(), waiter, port_done)))
            }
        });
        try_join_all(futs).await
    };
    let (_, rule_summaries, node_results) = tokio::try_join!(router, rules, nodes)?;
    for r in rule_summaries {
        report(r);
    }
    let mut created = Vec::new();
    for (summary, fresh, port_done) in node_results.into_iter().flatten() {
        for s in std::iter::once(summary).chain(port_done) {
            report(s);
        }
        created.extend(fresh);
    }
    // Floating IPs and address pairs of nodes that existed before this round (a new node's were
    // done with its port above); concurrently per node.
    let servers = ops.servers(false).await?;
    let server_of = |node: &str| {
        servers
            .iter()
            .find(|s| s.node == node)
            .map(|s| s.id.clone())
    };
    let late = changes.iter().filter_map(|c| match c {
        Change::AssignPublicIp { node, .. }
        | Change::AttachPublicIp { node, .. }
        | Change::AddAddressPairs { node, .. }
            if !new_nodes.contains(node) =>
        {
            Some((c, node))
        }
        _ => None,
    });
    let late = try_join_all(late.map(|(c, node)| {
        let ids = &ids;
        let server = server_of(node);
        async move {
            let port = ops
                .node_port(node, server.as_deref(), &ids.net)
                .await?
                .ok_or_else(|| OsError::Other(format!("no port for {node}")))?;
            let port_id = s(&port["id"]);
            match c {
                Change::AssignPublicIp { .. } | Change::AttachPublicIp { .. } => {
                    ops.ensure_floating_ip(node, &port_id, false).await?;
                }
                Change::AddAddressPairs { pairs, .. } => {
                    ops.add_address_pairs(&port_id, pairs).await?;
                }
                _ => {}
            }
            Ok::<_, OsError>(c.summary())
        }
    }))
    .await?;
    for l in late {
        report(l);
    }
    // Nodes that left the file.
    for c in changes {
        if let Change::RemoveNode { node, .. } = c {
            remove_node(ops, node, &ids.net).await?;
            done(c);
        }
    }
    Ok(created)
}

/// The changes to a node's port (floating IP, address pairs), in the plan's order.
fn port_changes_of<'a>(changes: &'a [Change], node: &'a str) -> impl Iterator<Item = &'a Change> {
    changes.iter().filter(move |c| match c {
        Change::AssignPublicIp { node: n, .. }
        | Change::AttachPublicIp { node: n, .. }
        | Change::AddAddressPairs { node: n, .. } => n == node,
        _ => false,
    })
}

pub(crate) async fn remove_node(ops: &SiteOps, node: &str, net_id: &str) -> Result<()> {
    let servers = ops.servers(true).await?;
    let server = servers.iter().find(|s| s.node == node);
    let port = ops
        .node_port(node, server.map(|s| s.id.as_str()), net_id)
        .await?;
    if let Some(p) = &port {
        for f in ops
            .cloud
            .list(
                "list floating IPs",
                Req::get(NET, "floatingips").q("port_id", s(&p["id"])),
                "floatingips",
            )
            .await?
        {
            ops.cloud
                .delete(
                    "delete floating IP",
                    Req::delete(NET, format!("floatingips/{}", s(&f["id"]))),
                )
                .await?;
        }
    }
    // An allocated floating IP never attached to the port.
    for f in ops.fips_named(node).await? {
        ops.cloud
            .delete(
                "delete floating IP",
                Req::delete(NET, format!("floatingips/{}", s(&f["id"]))),
            )
            .await?;
    }
    if let Some(srv) = server {
        ops.delete_server(&srv.id).await?;
    }
    if let Some(p) = &port {
        ops.cloud
            .delete(
                "delete port",
                Req::delete(NET, format!("ports/{}", s(&p["id"]))),
            )
            .await?;
    }
    for kind in [Kind::FloatingIp, Kind::Server, Kind::Port] {
        let name = match kind {
            Kind::FloatingIp => ops.fip_name(node),
            Kind::Server => ops.server_name(node),
            _ => ops.port_name(node),
        };
        ops.ledger.forget(&ops.site.name, kind, &name)?;
    }
    ops.ledger.update(|d| {
        d.delivered.remove(node);
        d.public_keys.remove(node);
    })?;
    Ok(())
}
