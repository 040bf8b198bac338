//! `down` for the openstack provider: what the ledger lists, then whatever carries the
//! cluster's tags, names or metadata, in dependency order; what could not be deleted stays in
//! the ledger and in the report.

use std::collections::{BTreeMap, BTreeSet};

use futures::future::join_all;
use hybridgrid_core::diff::Change;
use hybridgrid_core::plan;
use hybridgrid_engine::{DownReport, Event, NotDeleted, Sink};
use serde_json::json;

use crate::api::{self, NET, NOVA, Req, s};
use crate::error::{OsError, Result};
use crate::ledger::Kind;
use crate::provider::OpenStack;
use crate::site::SiteOps;

impl OpenStack {
    /// Deletes everything of the cluster: what the ledger lists, then whatever carries the
    /// cluster's tags, names or metadata (orphans of an interrupted run), in dependency order.
    /// Reports what could not be deleted; the ledger keeps exactly those entries.
    pub(crate) async fn down_async(&self) -> Result<DownReport> {
        let ledger = self.ledger.snapshot();
        let sites = self.sites(&ledger.sites).await?;
        let mut report = DownReport::default();
        for r in join_all(sites.iter().map(down_site)).await {
            report.deleted.extend(r.deleted);
            report.not_deleted.extend(r.not_deleted);
        }
        // Keypairs are per user: delete after all sites are done with them.
        let mut done = BTreeSet::new();
        for ops in &sites {
            if !done.insert(ops.cloud.name.clone()) {
                continue;
            }
            let name = ops.keypair_name();
            match ops
                .cloud
                .delete(
                    "delete keypair",
                    Req::delete(NOVA, format!("os-keypairs/{name}")),
                )
                .await
            {
                Ok(true) => report
                    .deleted
                    .push(format!("{}: keypair {name}", ops.site.name)),
                Ok(false) => {}
                Err(e) => report.not_deleted.push(NotDeleted {
                    site: ops.site.name.clone(),
                    kind: "keypair".into(),
                    name: name.clone(),
                    id: Some(name.clone()),
                    error: e.to_string(),
                }),
            }
        }
        let failed_ids: BTreeSet<String> = report
            .not_deleted
            .iter()
            .filter_map(|n| n.id.clone())
            .collect();
        if report.not_deleted.is_empty() {
            self.ledger.remove_file()?;
        } else {
            self.ledger.update(|d| {
                for site in d.sites.values_mut() {
                    site.resources
                        .retain(|_, r| r.id.as_ref().is_some_and(|id| failed_ids.contains(id)));
                }
                d.sites.retain(|_, s| !s.resources.is_empty());
            })?;
        }
        Ok(report)
    }
}

impl OpenStack {
    /// A site that left the file: its nodes' servers, ports and floating IPs (`RemoveNode`),
    /// then, with `RemoveNetwork`, whatever else carries its tags or names, as `down` finds it.
    /// Returns what could not be deleted, as partial changes.
    pub(crate) async fn remove_site(
        &self,
        ops: &SiteOps,
        changes: Vec<&Change>,
        sink: Sink<'_>,
    ) -> Result<Vec<(Change, String)>> {
        let done = |c: &Change| {
            sink(Event::Applied {
                summary: c.summary(),
                seconds: 0.0,
                details: Vec::new(),
            });
        };
        let net = ops.net_ids().await?;
        for c in &changes {
            if let Change::RemoveNode { node, .. } = c {
                crate::apply::remove_node(ops, node, net.as_ref().map_or("", |n| n.net.as_str()))
                    .await?;
                done(c);
            }
        }
        let mut partial = Vec::new();
        if let Some(whole) = changes
            .iter()
            .find(|c| matches!(c, Change::RemoveNetwork { .. }))
        {
            let report = down_site(ops).await;
            if report.not_deleted.is_empty() {
                self.ledger.update(|d| {
                    d.sites.remove(&ops.site.name);
                })?;
                for c in changes.iter().filter(|c| {
                    matches!(
                        c,
                        Change::RemoveNetwork { .. } | Change::RemoveSecurityGroup { .. }
                    )
                }) {
                    done(c);
                }
            } else {
                let left: Vec<String> = report
                    .not_deleted
                    .iter()
                    .map(|n| format!("{} {}: {}", n.kind, n.name, n.error))
                    .collect();
                partial.push((
                    (*whole).clone(),
                    format!("not deleted: {}", left.join("; ")),
                ));
            }
        }
        Ok(partial)
    }
}

type FailFn<'a> = dyn FnMut(Kind, &str, Option<&str>, &OsError) + 'a;

/// One thing to delete.
#[derive(Debug, Clone)]
struct Doomed {
    kind: Kind,
    name: String,
    id: String,
}

/// Finds by ledger id, by the site's tags and by name; each set deduplicated by id.
async fn down_site(ops: &SiteOps) -> DownReport {
    let mut report = DownReport::default();
    let site = ops.site.name.clone();
    let ledger = ops.ledger.snapshot();
    let entries: Vec<_> = ledger
        .sites
        .get(&site)
        .map(|s| s.resources.values().cloned().collect())
        .unwrap_or_default();
    let mut fail = |kind: Kind, name: &str, id: Option<&str>, e: &OsError| {
        report.not_deleted.push(NotDeleted {
            site: site.clone(),
            kind: kind.as_str().into(),
            name: name.to_owned(),
            id: id.map(str::to_owned),
            error: e.to_string(),
        });
    };
    // Gather.
    let mut found: BTreeMap<Kind, BTreeMap<String, Doomed>> = BTreeMap::new();
    fn add(
        found: &mut BTreeMap<Kind, BTreeMap<String, Doomed>>,
        kind: Kind,
        name: String,
        id: String,
    ) {
        if !id.is_empty() {
            found
                .entry(kind)
                .or_default()
                .insert(id.clone(), Doomed { kind, name, id });
        }
    }
    for r in &entries {
        if let Some(id) = &r.id
            && !matches!(r.kind, Kind::Keypair | Kind::RouterInterface)
        {
            add(&mut found, r.kind, r.name.clone(), id.clone());
        }
    }
    let tag = ops.tag_filter();
    let tagged = [
        (Kind::FloatingIp, "floatingips"),
        (Kind::Port, "ports"),
        (Kind::Router, "routers"),
        (Kind::Subnet, "subnets"),
        (Kind::Network, "networks"),
        (Kind::SecurityGroup, "security-groups"),
    ];
    let mut gather_errors = Vec::new();
    for (kind, collection) in tagged {
        let key = collection.replace('-', "_");
        match ops
            .cloud
            .list(
                &format!("list {collection}"),
                Req::get(NET, collection).q("tags", tag.as_str()),
                &key,
            )
            .await
        {
            Ok(l) => {
                for v in l {
                    let name = if kind == Kind::FloatingIp {
                        s(&v["floating_ip_address"])
                    } else {
                        s(&v["name"])
                    };
                    add(&mut found, kind, name, s(&v["id"]));
                }
            }
            Err(e) => gather_errors.push((kind, e)),
        }
    }
    // By name: resources whose create went through but whose tags or id were never recorded.
    let shape = shape::names(ops);
    for (kind, collection, name) in shape {
        let key = collection.replace('-', "_");
        if let Ok(l) = ops
            .cloud
            .list(
                &format!("list {collection}"),
                Req::get(NET, collection)
                    .q("name", name.as_str())
                    .q("project_id", ops.cloud.project_id.as_str()),
                &key,
            )
            .await
        {
            for v in l {
                add(&mut found, kind, name.clone(), s(&v["id"]));
            }
        }
    }
    let servers = match ops.servers(true).await {
        Ok(l) => l,
        Err(e) => {
            gather_errors.push((Kind::Server, e));
            Vec::new()
        }
    };
    for srv in &servers {
        add(
            &mut found,
            Kind::Server,
            ops.server_name(&srv.node),
            srv.id.clone(),
        );
    }
    // Floating IPs on our ports (created with the port in one call, maybe never tagged).
    let port_ids: Vec<String> = found
        .get(&Kind::Port)
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    for pid in &port_ids {
        if let Ok(l) = ops
            .cloud
            .list(
                "list floating IPs",
                Req::get(NET, "floatingips").q("port_id", pid.as_str()),
                "floatingips",
            )
            .await
        {
            for v in l {
                add(
                    &mut found,
                    Kind::FloatingIp,
                    s(&v["floating_ip_address"]),
                    s(&v["id"]),
                );
            }
        }
    }
    // Relay floating IPs allocated unattached whose tagging never happened: by description.
    let relay_fips: Vec<String> = [plan::Role::Master, plan::Role::Gateway]
        .into_iter()
        .map(|r| ops.fip_name(&plan::relay_name(&site, r)))
        .collect();
    match ops
        .cloud
        .list(
            "list floating IPs",
            Req::get(NET, "floatingips").q("project_id", ops.cloud.project_id.as_str()),
            "floatingips",
        )
        .await
    {
        Ok(l) => {
            for v in l {
                if relay_fips.contains(&s(&v["description"])) {
                    add(
                        &mut found,
                        Kind::FloatingIp,
                        s(&v["floating_ip_address"]),
                        s(&v["id"]),
                    );
                }
            }
        }
        Err(e) => gather_errors.push((Kind::FloatingIp, e)),
    }
    for (kind, e) in gather_errors {
        fail(kind, "(search)", None, &e);
    }
    let take = |found: &mut BTreeMap<Kind, BTreeMap<String, Doomed>>, k: Kind| -> Vec<Doomed> {
        found
            .remove(&k)
            .map(|m| m.into_values().collect())
            .unwrap_or_default()
    };
    let mut deleted = Vec::new();
    let mut note = |d: &Doomed, r: Result<bool>, fail: &mut FailFn<'_>| match r {
        Ok(true) => deleted.push(format!("{site}: {} {} ({})", d.kind.as_str(), d.name, d.id)),
        Ok(false) => {}
        Err(e) => fail(d.kind, &d.name, Some(&d.id), &e),
    };
    // Floating IPs.
    let fips = take(&mut found, Kind::FloatingIp);
    for (d, r) in fips.iter().zip(
        join_all(fips.iter().map(|d| {
            ops.cloud.delete(
                "delete floating IP",
                Req::delete(NET, format!("floatingips/{}", d.id)),
            )
        }))
        .await,
    ) {
        note(d, r, &mut fail);
    }
    // Servers, waiting until they are gone (their ports are freed after).
    let srvs = take(&mut found, Kind::Server);
    for (d, r) in srvs
        .iter()
        .zip(join_all(srvs.iter().map(|d| ops.delete_server(&d.id))).await)
    {
        note(d, r, &mut fail);
    }
    // Ports.
    let ports = take(&mut found, Kind::Port);
    for (d, r) in ports.iter().zip(
        join_all(ports.iter().map(|d| {
            ops.cloud
                .delete("delete port", Req::delete(NET, format!("ports/{}", d.id)))
        }))
        .await,
    ) {
        note(d, r, &mut fail);
    }
    // Routers: detach interfaces, then delete.
    for d in take(&mut found, Kind::Router) {
        let r = async {
            let ifaces = ops
                .cloud
                .list(
                    "list router ports",
                    Req::get(NET, "ports")
                        .q("device_id", d.id.as_str())
                        .q("device_owner", "network:router_interface"),
                    "ports",
                )
                .await?;
            for p in ifaces {
                ops.cloud
                    .call(
                        "remove router interface",
                        &Req::put(
                            NET,
                            format!("routers/{}/remove_router_interface", d.id),
                            json!({ "port_id": s(&p["id"]) }),
                        ),
                        api::Retry::Idempotent,
                    )
                    .await?;
            }
            ops.cloud
                .delete(
                    "delete router",
                    Req::delete(NET, format!("routers/{}", d.id)),
                )
                .await
        }
        .await;
        note(&d, r, &mut fail);
    }
    for (kind, collection) in [
        (Kind::Subnet, "subnets"),
        (Kind::Network, "networks"),
        (Kind::SecurityGroup, "security-groups"),
    ] {
        for d in take(&mut found, kind) {
            let r = ops
                .cloud
                .delete(
                    &format!("delete {}", kind.as_str()),
                    Req::delete(NET, format!("{collection}/{}", d.id)),
                )
                .await;
            note(&d, r, &mut fail);
        }
    }
    report.deleted.extend(deleted);
    report
}

mod shape {
    use crate::ledger::Kind;
    use crate::site::SiteOps;

    /// Neutron resources of a site by their names (for the name search of `down`).
    pub(super) fn names(ops: &SiteOps) -> Vec<(Kind, &'static str, String)> {
        let c = &ops.cluster;
        let site = &ops.site.name;
        let mut v = vec![
            (Kind::Router, "routers", ops.router_name()),
            (
                Kind::SecurityGroup,
                "security-groups",
                format!("{c}-{site}-nodes"),
            ),
            (
                Kind::SecurityGroup,
                "security-groups",
                format!("{c}-{site}-gateway"),
            ),
        ];
        if ops.site.network.is_none() {
            v.push((Kind::Subnet, "subnets", ops.subnet_name()));
            v.push((Kind::Network, "networks", ops.net_name()));
        }
        let ledger = ops.ledger.snapshot();
        if let Some(s) = ledger.sites.get(site) {
            for r in s.resources.values() {
                if r.kind == Kind::Port {
                    v.push((Kind::Port, "ports", r.name.clone()));
                }
            }
        }
        v
    }
}
