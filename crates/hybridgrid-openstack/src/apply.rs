//! One site's changes of a round on OpenStack, as concurrent as their dependencies allow.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use futures::future::try_join_all;
use futures::{FutureExt, TryFutureExt};
use hybridgrid_core::diff::Change;
use hybridgrid_core::plan::{self, Plan, SitePlan};
use hybridgrid_engine::{Event, Sink};
use ipnet::Ipv4Net;
use serde_json::Value;

use crate::api::{NET, Req, need_id};
use crate::error::{OsError, Result};
use crate::ledger::Kind;
use crate::site::{NetIds, SiteOps};

/// A node this round made: how long its step took (port, lookups and the server's create
/// call), and, when it created the server, the task waiting for it to become ACTIVE (its
/// seconds from the create call, and a note when it was built twice).
pub(crate) struct NewNode {
    pub node: String,
    pub seconds: f64,
    pub active: Option<ActiveWait>,
}

/// A server's wait for ACTIVE: its seconds from the create call, and a note when it was built
/// twice.
pub(crate) type ActiveWait = tokio::task::JoinHandle<Result<(f64, Option<String>)>>;

pub(crate) type Created = Vec<NewNode>;

/// A change done, and how long its step took.
struct Done {
    summary: String,
    seconds: f64,
}

/// Runs `step` and times it as the step of `change`.
async fn timed<T>(change: &Change, step: impl Future<Output = Result<T>>) -> Result<Done> {
    let t = Instant::now();
    step.await?;
    Ok(Done {
        summary: change.summary(),
        seconds: t.elapsed().as_secs_f64(),
    })
}

/// Applies one site's changes. Order: router (from the start) ∥ (network and subnet ∥ groups) →
/// (router interface once the router exists ∥ rules ∥ per new node: port with its address
/// pairs → (server ∥ floating IP once the router interface exists)) → a relay pair's virtual address → floating IPs and pairs of
/// nodes (and of the virtual address) that exist already → removals. Servers are not waited for here.
pub(crate) async fn apply_site(
    ops: &SiteOps,
    plan: &Plan,
    changes: Vec<Change>,
    progress: Sink<'_>,
) -> Result<Created> {
    if changes.is_empty() {
        return Ok(Vec::new());
    }
    let site_plan = plan
        .site(&ops.site.name)
        .ok_or_else(|| OsError::SiteNotInPlan {
            site: ops.site.name.clone(),
        })?;
    let round = SiteRound {
        ops,
        plan,
        site_plan,
        changes: &changes,
        progress,
        started: Instant::now(),
    };
    // Made from the start, beside the network: only the floating IPs wait for it.
    let router: SharedRouter<'_> = round.router_made().map_err(Arc::new).boxed().shared();
    let rest = async {
        let ids = round.network_and_groups().await?;
        let groups = round.groups().await?;
        let created = round
            .router_rules_and_nodes(&ids, &groups, router.clone())
            .await?;
        round.virtual_address(&ids).await?;
        round.ports_of_old_nodes(&ids).await?;
        round.remove_nodes(&ids).await?;
        Ok(created)
    };
    let (_, created) = tokio::try_join!(router.clone().map_err(OsError::Shared), rest)?;
    Ok(created)
}

/// The site's router being made (its id; `None` when the site's network is the user's), for
/// everything that waits for it.
type SharedRouter<'a> = futures::future::Shared<
    futures::future::BoxFuture<'a, std::result::Result<Option<String>, Arc<OsError>>>,
>;

/// One site's round: what each step of [`apply_site`] reads.
struct SiteRound<'a> {
    ops: &'a SiteOps,
    plan: &'a Plan,
    site_plan: &'a SitePlan,
    changes: &'a [Change],
    progress: Sink<'a>,
    /// When the round began on this site (the network's step is timed from here).
    started: Instant,
}

/// The site's security groups as Neutron has them, by the plan's names.
struct Groups<'a> {
    site: &'a str,
    by_name: BTreeMap<String, Value>,
}

impl Groups<'_> {
    fn id(&self, name: &str) -> Result<String> {
        let g = self
            .by_name
            .get(name)
            .ok_or_else(|| OsError::NoSecurityGroup {
                site: self.site.to_owned(),
                group: name.to_owned(),
            })?;
        need_id(g, NET, &format!("security group {name}"))
    }
}

impl SiteRound<'_> {
    fn report(&self, done: impl IntoIterator<Item = Done>) {
        for d in done {
            (self.progress)(Event::Applied {
                summary: d.summary,
                seconds: d.seconds,
                details: Vec::new(),
            });
        }
    }

    fn site(&self) -> String {
        self.ops.site.name.clone()
    }

    /// Whether this round makes the site's network (and so its router).
    fn creates_network(&self) -> bool {
        self.changes
            .iter()
            .any(|c| matches!(c, Change::CreateNetwork { .. }))
    }

    /// Network and subnet ∥ new groups: neither needs the other, and new nodes need both (the
    /// router only their floating IPs: it is made beside the nodes). Reports the groups; the
    /// network's ids.
    async fn network_and_groups(&self) -> Result<NetIds> {
        let ops = self.ops;
        let net = async {
            if self.creates_network() {
                ops.ensure_net_subnet().await
            } else {
                ops.require_net_ids().await
            }
        };
        let new_groups = try_join_all(self.changes.iter().filter_map(|c| match c {
            Change::CreateSecurityGroup { group, .. } => {
                Some(timed(c, ops.ensure_security_group(group)))
            }
            _ => None,
        }));
        let (ids, done) = tokio::try_join!(net, new_groups)?;
        self.report(done);
        Ok(ids)
    }

    async fn groups(&self) -> Result<Groups<'_>> {
        let names: Vec<String> = self
            .site_plan
            .security_groups
            .iter()
            .map(|g| g.name.clone())
            .collect();
        Ok(Groups {
            site: &self.ops.site.name,
            by_name: self.ops.security_groups(&names).await?,
        })
    }

    /// Router and its interface, rules and new nodes in parallel. A new node's floating IP waits
    /// for the router interface only, its address pairs for its port only: both start while
    /// servers boot.
    async fn router_rules_and_nodes(
        &self,
        ids: &NetIds,
        groups: &Groups<'_>,
        router: SharedRouter<'_>,
    ) -> Result<Created> {
        let router_ready = self
            .router_interface(router, ids)
            .map_err(Arc::new)
            .shared();
        // The router's error, once: the nodes waiting for it only stop.
        let router = router_ready.clone().map_err(OsError::Shared);
        let (_, rules, nodes) = tokio::try_join!(
            router,
            self.rules(groups),
            self.new_nodes(ids, groups, router_ready)
        )?;
        self.report(rules);
        let mut created = Vec::new();
        for (done, new) in nodes {
            self.report(done);
            created.push(new);
        }
        Ok(created)
    }

    /// The router with its external gateway, when this round makes the site's network.
    async fn router_made(&self) -> Result<Option<String>> {
        if !self.creates_network() {
            return Ok(None);
        }
        self.ops.ensure_router_only().await
    }

    /// The router's interface on the subnet, once the router is made; reports the network,
    /// which is complete with it.
    async fn router_interface(&self, router: SharedRouter<'_>, ids: &NetIds) -> Result<()> {
        let Some(router_id) = router.await.map_err(OsError::Shared)? else {
            return Ok(());
        };
        self.ops.ensure_router_interface(&router_id, ids).await?;
        if let Some(c) = self
            .changes
            .iter()
            .find(|c| matches!(c, Change::CreateNetwork { .. }))
        {
            self.report([Done {
                summary: c.summary(),
                seconds: self.started.elapsed().as_secs_f64(),
            }]);
        }
        Ok(())
    }

    /// Rules added, a bulk call per group (each rule's seconds are its group's call), then rules
    /// removed, one by one.
    async fn rules(&self, groups: &Groups<'_>) -> Result<Vec<Done>> {
        let mut by_group: BTreeMap<&str, Vec<&plan::SgRule>> = BTreeMap::new();
        for c in self.changes {
            if let Change::AddRule { group, rule, .. } = c {
                by_group.entry(group.as_str()).or_default().push(rule);
            }
        }
        let seconds = try_join_all(by_group.iter().map(|(group, rules)| async move {
            let t = Instant::now();
            self.ops.add_rules(&groups.id(group)?, rules).await?;
            Ok::<_, OsError>((*group, t.elapsed().as_secs_f64()))
        }))
        .await?;
        let seconds: BTreeMap<&str, f64> = seconds.into_iter().collect();
        let mut out = Vec::new();
        for c in self.changes {
            if let Change::AddRule { group, .. } = c {
                out.push(Done {
                    summary: c.summary(),
                    seconds: seconds.get(group.as_str()).copied().unwrap_or_default(),
                });
            }
        }
        for c in self.changes {
            if let Change::RemoveRule { group, rule, .. } = c {
                out.push(
                    timed(c, async {
                        match groups.by_name.get(group.as_str()) {
                            Some(g) => self.ops.remove_rule(g, rule).await,
                            None => Ok(()),
                        }
                    })
                    .await?,
                );
            }
        }
        Ok(out)
    }

    /// Every new node ([`SiteRound::new_node`]), concurrently; the keypair is made once for
    /// all of them, concurrently with their ports and lookups.
    async fn new_nodes(
        &self,
        ids: &NetIds,
        groups: &Groups<'_>,
        router_ready: impl Future<Output = Result<(), Arc<OsError>>> + Clone,
    ) -> Result<Vec<(Vec<Done>, NewNode)>> {
        let new: Vec<(&Change, &String)> = self
            .changes
            .iter()
            .filter_map(|c| match c {
                Change::CreateNode { node, .. } => Some((c, node)),
                _ => None,
            })
            .collect();
        if new.is_empty() {
            return Ok(Vec::new());
        }
        self.quota_headroom(&new).await?;
        let keypair = self.ops.ensure_keypair().map_err(Arc::new).shared();
        let server_group = self.relay_server_group().map_err(Arc::new).shared();
        try_join_all(new.into_iter().map(|(c, node)| {
            let keypair = keypair.clone().map_err(OsError::Shared);
            let in_pair = self.plan.node(node).is_some_and(|n| n.pair.is_some());
            let group = server_group.clone().map_err(OsError::Shared);
            let group = async move {
                match in_pair {
                    true => group.await,
                    false => Ok(None),
                }
            };
            self.new_node(c, node, ids, groups, (keypair, group), router_ready.clone())
        }))
        .await
    }

    /// The site's server group for its relay pair (made when missing), or none without a pair.
    async fn relay_server_group(&self) -> Result<Option<String>> {
        match &self.site_plan.pair {
            Some(_) => self.ops.ensure_server_group().await.map(Some),
            None => Ok(None),
        }
    }

    /// Before any of `new` is made: the site's quotas leave room for all of them, else the
    /// round fails with the shortfall and nothing of them exists.
    async fn quota_headroom(&self, new: &[(&Change, &String)]) -> Result<()> {
        let changes: Vec<Change> = new.iter().map(|(c, _)| (*c).clone()).collect();
        let shortfall = crate::quota::headroom(self.ops, self.plan, &changes).await?;
        if shortfall.is_empty() {
            return Ok(());
        }
        Err(OsError::Quota {
            site: self.ops.site.name.clone(),
            nodes: new
                .iter()
                .map(|(_, n)| n.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            shortfall: shortfall.join("; "),
        })
    }

    /// A new node: its port (with its address pairs), the existing-server check and the flavor
    /// and image lookups, then its server ∥ its port's floating IP once the router is ready.
    /// The CreateNode's step ends with the server's create call; the server's wait for ACTIVE
    /// is a task of its own.
    async fn new_node(
        &self,
        c: &Change,
        node: &String,
        ids: &NetIds,
        groups: &Groups<'_>,
        (keypair, server_group): (
            impl Future<Output = Result<Option<String>>>,
            impl Future<Output = Result<Option<String>>>,
        ),
        router_ready: impl Future<Output = Result<(), Arc<OsError>>> + Clone,
    ) -> Result<(Vec<Done>, NewNode)> {
        let started = Instant::now();
        let ops = self.ops;
        let np = self
            .plan
            .node(node)
            .ok_or_else(|| OsError::NodeNotInPlan { node: node.clone() })?;
        let gids = self
            .site_plan
            .security_groups
            .iter()
            .filter(|g| g.members.contains(node))
            .map(|g| groups.id(&g.name))
            .collect::<Result<Vec<_>>>()?;
        // A new port gets its address pairs in its create call.
        let pairs: Vec<Ipv4Net> = port_changes_of(self.changes, node)
            .filter_map(|c| match c {
                Change::AddAddressPairs { pairs, .. } => Some(pairs.iter().copied()),
                _ => None,
            })
            .flatten()
            .collect();
        let ((port, new_port), existing, refs, keypair, server_group) = tokio::try_join!(
            ops.ensure_port(np, ids, &gids, &pairs),
            ops.find_server(node),
            ops.flavor_and_image(np),
            keypair,
            server_group,
        )?;
        let at = Instant::now();
        let server = async {
            let build = match existing {
                Some(_) => None,
                None => Some(
                    ops.create_server(
                        self.plan,
                        np,
                        &port,
                        (keypair.as_deref(), server_group.as_deref()),
                        refs,
                    )
                    .await?,
                ),
            };
            Ok::<_, OsError>((build, started.elapsed().as_secs_f64()))
        };
        let port_work = self.new_port_changes(node, &port, new_port, router_ready);
        let ((build, seconds), port_done) = tokio::try_join!(server, port_work)?;
        let done = std::iter::once(Done {
            summary: c.summary(),
            seconds,
        })
        .chain(port_done)
        .collect();
        // Wait for ACTIVE in the background while the rest is built.
        let active = build.map(|b| tokio::spawn(b.wait(at)));
        Ok((
            done,
            NewNode {
                node: node.clone(),
                seconds,
                active,
            },
        ))
    }

    /// A new node's port changes: address pairs (already in the create call of a new port)
    /// and its floating IP, once the router interface exists.
    async fn new_port_changes(
        &self,
        node: &str,
        port: &str,
        new_port: bool,
        router_ready: impl Future<Output = Result<(), Arc<OsError>>> + Clone,
    ) -> Result<Vec<Done>> {
        let mut out = Vec::new();
        for c in port_changes_of(self.changes, node) {
            let done = match c {
                Change::AddAddressPairs { pairs, .. } => {
                    timed(c, async {
                        if new_port {
                            return Ok(());
                        }
                        self.ops.add_address_pairs(port, pairs).await
                    })
                    .await?
                }
                Change::AssignPublicIp { .. } | Change::AttachPublicIp { .. } => {
                    // The router's own error is reported by its branch.
                    if router_ready.clone().await.is_err() {
                        break;
                    }
                    timed(c, self.ops.ensure_floating_ip(node, port, new_port)).await?
                }
                _ => continue,
            };
            out.push(done);
        }
        Ok(out)
    }

    /// The site's relay pair's virtual address (its port), before its floating IP is attached.
    async fn virtual_address(&self, ids: &NetIds) -> Result<()> {
        for c in self.changes {
            if let Change::CreateVirtualAddress { name, address, .. } = c {
                let done = timed(c, self.ops.ensure_vip_port(name, *address, ids)).await?;
                self.report([done]);
            }
        }
        Ok(())
    }

    /// Floating IPs and address pairs of nodes that existed before this round (a new node's
    /// were done with its port); concurrently.
    async fn ports_of_old_nodes(&self, ids: &NetIds) -> Result<()> {
        let new_nodes: BTreeSet<&String> = self
            .changes
            .iter()
            .filter_map(|c| match c {
                Change::CreateNode { node, .. } => Some(node),
                _ => None,
            })
            .collect();
        let servers = self.ops.servers(false).await?;
        let late = self.changes.iter().filter_map(|c| match c {
            Change::AssignPublicIp { node, .. }
            | Change::AttachPublicIp { node, .. }
            | Change::AddAddressPairs { node, .. }
                if !new_nodes.contains(node) =>
            {
                let server = servers
                    .iter()
                    .find(|s| s.node == *node)
                    .map(|s| s.id.as_str());
                Some(timed(c, self.old_port_change(c, node, server, ids)))
            }
            _ => None,
        });
        let done = try_join_all(late).await?;
        self.report(done);
        Ok(())
    }

    async fn old_port_change(
        &self,
        c: &Change,
        node: &str,
        server: Option<&str>,
        ids: &NetIds,
    ) -> Result<()> {
        let ops = self.ops;
        let is_pair = self.pair_identity() == Some(node);
        let port = match is_pair {
            true => ops.find_vip_port(node, &ids.net).await?,
            false => ops.node_port(node, server, &ids.net).await?,
        };
        let port = port.ok_or_else(|| OsError::NoPort {
            site: self.site(),
            node: node.to_owned(),
        })?;
        let port_id = need_id(&port, NET, &format!("port of {node}"))?;
        match c {
            Change::AssignPublicIp { .. } | Change::AttachPublicIp { .. } => {
                ops.ensure_floating_ip(node, &port_id, false).await?;
            }
            Change::AddAddressPairs { pairs, .. } => {
                ops.add_address_pairs(&port_id, pairs).await?;
            }
            _ => {}
        }
        Ok(())
    }

    /// The identity of the site's relay pair, if it has one.
    fn pair_identity(&self) -> Option<&str> {
        self.site_plan.pair.as_ref().map(|p| p.identity.as_str())
    }

    /// Nodes that left the file, and virtual addresses, one by one. A single gateway whose name
    /// a new pair goes by leaves its floating IP to the pair.
    async fn remove_nodes(&self, ids: &NetIds) -> Result<()> {
        for c in self.changes {
            let step = match c {
                Change::RemoveNode { node, .. } => {
                    let keep_fip = self.pair_identity() == Some(node.as_str());
                    timed(c, remove_node(self.ops, node, Some(&ids.net), keep_fip)).await?
                }
                Change::RemoveVirtualAddress { name, .. } => {
                    timed(c, self.ops.remove_vip_port(name, &ids.net)).await?
                }
                _ => continue,
            };
            self.report([step]);
        }
        Ok(())
    }
}

pub(crate) async fn delete_fips(ops: &SiteOps, node: &str, fips: &[Value]) -> Result<()> {
    for f in fips {
        let id = need_id(f, NET, &format!("floating IP of {node}"))?;
        ops.cloud
            .delete(
                "delete floating IP",
                Req::delete(NET, format!("floatingips/{id}")),
            )
            .await?;
    }
    Ok(())
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

/// Removes a node: its floating IPs (on its port, and an allocated one never attached, unless
/// `keep_named_fip`: a relay pair now goes by the node's name), its server, its port (on the
/// site's network `net_id`, when there is one), and what the ledger holds of it.
pub(crate) async fn remove_node(
    ops: &SiteOps,
    node: &str,
    net_id: Option<&str>,
    keep_named_fip: bool,
) -> Result<()> {
    let servers = ops.servers(true).await?;
    let server = servers.iter().find(|s| s.node == node);
    let port = match net_id {
        Some(net_id) => {
            ops.node_port(node, server.map(|s| s.id.as_str()), net_id)
                .await?
        }
        None => None,
    };
    let port_id = match &port {
        Some(p) => Some(need_id(p, NET, &format!("port of {node}"))?),
        None => None,
    };
    if let Some(port_id) = &port_id {
        delete_fips(ops, node, &ops.fips_on_port(port_id).await?).await?;
    }
    // An allocated floating IP never attached to the port.
    if !keep_named_fip {
        delete_fips(ops, node, &ops.fips_named(node).await?).await?;
    }
    if let Some(srv) = server {
        ops.delete_server(&srv.id).await?;
    }
    if let Some(port_id) = &port_id {
        ops.cloud
            .delete("delete port", Req::delete(NET, format!("ports/{port_id}")))
            .await?;
    }
    let kinds: &[Kind] = match keep_named_fip {
        true => &[Kind::Server, Kind::Port],
        false => &[Kind::FloatingIp, Kind::Server, Kind::Port],
    };
    for &kind in kinds {
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
