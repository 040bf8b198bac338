//! `down` for the openstack provider: what the ledger lists, then whatever carries the
//! cluster's tags, names or metadata, in dependency order; what could not be deleted stays in
//! the ledger and in the report. Each deletion is reported through the sink as it happens.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use futures::future::join_all;
use hybridgrid_core::diff::Change;
use hybridgrid_core::error_chain;
use hybridgrid_core::plan;
use hybridgrid_engine::{DownReport, Event, NotDeleted, Sink};
use serde_json::{Value, json};

use crate::api::{self, NET, NOVA, Req, need_id};
use crate::error::{OsError, Result};
use crate::ledger::Kind;
use crate::provider::OpenStack;
use crate::site::SiteOps;

impl OpenStack {
    /// Deletes everything of the cluster: what the ledger lists, then whatever carries the
    /// cluster's tags, names or metadata (orphans of an interrupted run), in dependency order.
    /// Reports what could not be deleted; the ledger keeps exactly those entries.
    pub(crate) async fn down_async(&self, sink: Sink<'_>) -> Result<DownReport> {
        let ledger = self.ledger.snapshot();
        let sites = self.sites(&ledger.sites).await?;
        // First of all: no on-demand worker is made after `down` started.
        if self.cluster.has_on_demand() {
            self.stop_power_service(&sites, sink).await;
        }
        let mut report = DownReport::default();
        for r in join_all(sites.iter().map(|ops| down_site(ops, sink))).await {
            report.deleted.extend(r.deleted);
            report.not_deleted.extend(r.not_deleted);
        }
        delete_keypairs(&sites, &mut report, sink).await;
        for (site, r) in self.delete_store_keys(&sites).await {
            match r {
                Ok(()) => {
                    let what = format!("{site}: EC2 credential (the object store's S3 keys)");
                    sink(Event::Applied {
                        summary: format!("- {what}"),
                        seconds: 0.0,
                        details: Vec::new(),
                    });
                    report.deleted.push(what);
                }
                Err(e) => report.not_deleted.push(NotDeleted {
                    site,
                    kind: "EC2 credential".into(),
                    name: "the object store's S3 keys".into(),
                    id: None,
                    error: error_chain(&e),
                }),
            }
        }
        self.keep_not_deleted(&report)?;
        Ok(report)
    }

    /// The ledger after `down`: gone when everything was deleted, else only what was not.
    fn keep_not_deleted(&self, report: &DownReport) -> Result<()> {
        if report.not_deleted.is_empty() {
            let cluster_dir = self.opts.state_root.join(&self.cluster.name);
            hybridgrid_engine::preshared::remove(&cluster_dir)?;
            hybridgrid_engine::pair_keys::remove(&cluster_dir)?;
            return self.ledger.remove_file();
        }
        let failed_ids: BTreeSet<&String> = report
            .not_deleted
            .iter()
            .filter_map(|n| n.id.as_ref())
            .collect();
        self.ledger.update(|d| {
            for site in d.sites.values_mut() {
                site.resources
                    .retain(|_, r| r.id.as_ref().is_some_and(|id| failed_ids.contains(id)));
            }
            d.sites.retain(|_, s| !s.resources.is_empty());
        })
    }
}

/// Keypairs are per user: deleted after all sites are done with them, once per cloud.
async fn delete_keypairs(sites: &[SiteOps], report: &mut DownReport, sink: Sink<'_>) {
    let mut done = BTreeSet::new();
    for ops in sites {
        if !done.insert(ops.cloud.name.clone()) {
            continue;
        }
        let name = ops.keypair_name();
        let t = Instant::now();
        match ops
            .cloud
            .delete(
                "delete keypair",
                Req::delete(NOVA, format!("os-keypairs/{name}")),
            )
            .await
        {
            Ok(true) => {
                let line = format!("{}: keypair {name}", ops.site.name);
                sink(Event::Applied {
                    summary: format!("- {line}"),
                    seconds: t.elapsed().as_secs_f64(),
                    details: Vec::new(),
                });
                report.deleted.push(line);
            }
            Ok(false) => {}
            Err(e) => report.not_deleted.push(NotDeleted {
                site: ops.site.name.clone(),
                kind: "keypair".into(),
                name: name.clone(),
                id: Some(name.clone()),
                error: error_chain(&e),
            }),
        }
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
        let done = |c: &Change, t: Instant| {
            sink(Event::Applied {
                summary: c.summary(),
                seconds: t.elapsed().as_secs_f64(),
                details: Vec::new(),
            });
        };
        let net = ops.net_ids().await?;
        for c in &changes {
            if let Change::RemoveNode { node, .. } = c {
                let t = Instant::now();
                crate::apply::remove_node(ops, node, net.as_ref().map(|n| n.net.as_str()), false)
                    .await?;
                done(c, t);
            }
        }
        let Some(whole) = changes
            .iter()
            .find(|c| matches!(c, Change::RemoveNetwork { .. }))
        else {
            return Ok(Vec::new());
        };
        let t = Instant::now();
        // The round reports the site's changes, not each of its resources.
        let report = down_site(ops, &|_: Event| {}).await;
        if !report.not_deleted.is_empty() {
            let left: Vec<String> = report
                .not_deleted
                .iter()
                .map(|n| format!("{} {}: {}", n.kind, n.name, n.error))
                .collect();
            return Ok(vec![(
                (*whole).clone(),
                format!("not deleted: {}", left.join("; ")),
            )]);
        }
        self.ledger.update(|d| {
            d.sites.remove(&ops.site.name);
        })?;
        for c in changes.iter().filter(|c| {
            matches!(
                c,
                Change::RemoveNetwork { .. } | Change::RemoveSecurityGroup { .. }
            )
        }) {
            done(c, t);
        }
        Ok(Vec::new())
    }
}

/// One thing to delete.
#[derive(Debug, Clone)]
struct Doomed {
    kind: Kind,
    name: String,
    id: String,
}

impl Doomed {
    /// How the report names it: `<site>: <kind> <name> (<id>)`.
    fn line(&self, site: &str) -> String {
        format!("{site}: {} {} ({})", self.kind.as_str(), self.name, self.id)
    }
}

/// Deletes a site: finds by ledger id, by the site's tags and by name (each set deduplicated
/// by id), then deletes in dependency order, reporting each deletion through `sink`.
async fn down_site(ops: &SiteOps, sink: Sink<'_>) -> DownReport {
    let mut found = Found::gather(ops).await;
    let mut down = SiteDown {
        ops,
        sink,
        report: DownReport::default(),
    };
    for (kind, e) in std::mem::take(&mut found.errors) {
        down.fail(kind, "(search)", None, &e);
    }
    // Floating IPs; servers, waiting until they are gone (their ports are freed after); ports:
    // each kind concurrently.
    for kind in [Kind::FloatingIp, Kind::Server, Kind::Port] {
        down.remove(found.take(kind), true).await;
    }
    // A relay pair's server group, once its servers are gone.
    down.remove(found.take(Kind::ServerGroup), true).await;
    // Routers (their interfaces detached first), subnets, networks, groups: one by one.
    for kind in [
        Kind::Router,
        Kind::Subnet,
        Kind::Network,
        Kind::SecurityGroup,
    ] {
        down.remove(found.take(kind), false).await;
    }
    down.report
}

/// What `down` found of a site, by kind and id.
#[derive(Debug, Default)]
struct Found {
    by_kind: BTreeMap<Kind, BTreeMap<String, Doomed>>,
    /// Searches that failed: what they looked for may still be there.
    errors: Vec<(Kind, OsError)>,
}

/// Neutron's collections `down` searches by the site's tags: kind, path, key of the answer.
const TAGGED: [(Kind, &str, &str); 6] = [
    (Kind::FloatingIp, "floatingips", "floatingips"),
    (Kind::Port, "ports", "ports"),
    (Kind::Router, "routers", "routers"),
    (Kind::Subnet, "subnets", "subnets"),
    (Kind::Network, "networks", "networks"),
    (Kind::SecurityGroup, "security-groups", "security_groups"),
];

impl Found {
    async fn gather(ops: &SiteOps) -> Found {
        let mut found = Found::default();
        found.add_ledgered(ops);
        found.by_tags(ops).await;
        found.by_names(ops).await;
        found.servers(ops).await;
        found.fips_on_ports(ops).await;
        found.relay_fips(ops).await;
        found.server_group(ops).await;
        found
    }

    /// The site's relay pair's server group (Nova has no tags): by its name.
    async fn server_group(&mut self, ops: &SiteOps) {
        match ops.find_server_group().await {
            Ok(Some(id)) => self.add(Kind::ServerGroup, ops.server_group_name(), id),
            Ok(None) => {}
            Err(e) => self.errors.push((Kind::ServerGroup, e)),
        }
    }

    fn add(&mut self, kind: Kind, name: String, id: String) {
        self.by_kind
            .entry(kind)
            .or_default()
            .insert(id.clone(), Doomed { kind, name, id });
    }

    /// A resource a search listed, named by its `name_field` (by its id when it has none); one
    /// without an id is an error of the search.
    fn add_listed(&mut self, kind: Kind, v: &Value, name_field: &str) {
        match need_id(v, NET, &format!("a {} of the cluster", kind.as_str())) {
            Ok(id) => {
                let name = v[name_field].as_str().unwrap_or(&id).to_owned();
                self.add(kind, name, id);
            }
            Err(e) => self.errors.push((kind, e)),
        }
    }

    fn take(&mut self, kind: Kind) -> Vec<Doomed> {
        self.by_kind
            .remove(&kind)
            .map(|m| m.into_values().collect())
            .unwrap_or_default()
    }

    /// What the ledger recorded with an id (keypairs are deleted per cloud, router interfaces
    /// with their router).
    fn add_ledgered(&mut self, ops: &SiteOps) {
        let ledger = ops.ledger.snapshot();
        let Some(site) = ledger.sites.get(&ops.site.name) else {
            return;
        };
        for r in site.resources.values() {
            if let Some(id) = &r.id
                && !matches!(r.kind, Kind::Keypair | Kind::RouterInterface)
            {
                self.add(r.kind, r.name.clone(), id.clone());
            }
        }
    }

    async fn by_tags(&mut self, ops: &SiteOps) {
        let tag = ops.tag_filter();
        for (kind, collection, key) in TAGGED {
            let listed = ops
                .cloud
                .list(
                    &format!("list {collection}"),
                    Req::get(NET, collection).q("tags", tag.as_str()),
                    key,
                )
                .await;
            match listed {
                Ok(l) => {
                    let name_field = match kind {
                        Kind::FloatingIp => "floating_ip_address",
                        _ => "name",
                    };
                    for v in &l {
                        self.add_listed(kind, v, name_field);
                    }
                }
                Err(e) => self.errors.push((kind, e)),
            }
        }
    }

    /// Resources whose create went through but whose tags or id were never recorded. A failed
    /// search here is not an error: the tags and the ledger found the rest.
    async fn by_names(&mut self, ops: &SiteOps) {
        for (kind, collection, name) in names(ops) {
            let key = TAGGED
                .iter()
                .find(|(k, _, _)| *k == kind)
                .map_or(collection, |(_, _, key)| *key);
            let Ok(l) = ops
                .cloud
                .list(
                    &format!("list {collection}"),
                    Req::get(NET, collection)
                        .q("name", name.as_str())
                        .q("project_id", ops.cloud.project_id.as_str()),
                    key,
                )
                .await
            else {
                continue;
            };
            for v in &l {
                match need_id(v, NET, &format!("{} {name}", kind.as_str())) {
                    Ok(id) => self.add(kind, name.clone(), id),
                    Err(e) => self.errors.push((kind, e)),
                }
            }
        }
    }

    async fn servers(&mut self, ops: &SiteOps) {
        match ops.servers(true).await {
            Ok(l) => {
                for srv in l {
                    self.add(Kind::Server, ops.server_name(&srv.node), srv.id);
                }
            }
            Err(e) => self.errors.push((Kind::Server, e)),
        }
    }

    /// Floating IPs on the ports found (created with the port in one call, maybe never
    /// tagged).
    async fn fips_on_ports(&mut self, ops: &SiteOps) {
        let port_ids: Vec<String> = self
            .by_kind
            .get(&Kind::Port)
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        for pid in &port_ids {
            if let Ok(l) = ops.fips_on_port(pid).await {
                for v in &l {
                    self.add_listed(Kind::FloatingIp, v, "floating_ip_address");
                }
            }
        }
    }

    /// Relay floating IPs (a pair's relays' own too) allocated unattached whose tagging never
    /// happened: by description.
    async fn relay_fips(&mut self, ops: &SiteOps) {
        let site = &ops.site.name;
        let relay_fips: Vec<String> = [plan::Role::Master, plan::Role::Gateway]
            .into_iter()
            .map(|r| plan::relay_name(site, r))
            .chain(plan::pair_relay_names(site))
            .map(|n| ops.fip_name(&n))
            .collect();
        let listed = ops
            .cloud
            .list(
                "list floating IPs",
                Req::get(NET, "floatingips").q("project_id", ops.cloud.project_id.as_str()),
                "floatingips",
            )
            .await;
        match listed {
            Ok(l) => {
                for v in &l {
                    if v["description"]
                        .as_str()
                        .is_some_and(|d| relay_fips.iter().any(|f| f == d))
                    {
                        self.add_listed(Kind::FloatingIp, v, "floating_ip_address");
                    }
                }
            }
            Err(e) => self.errors.push((Kind::FloatingIp, e)),
        }
    }
}

/// Deleting a site's resources: what went, what did not.
struct SiteDown<'a> {
    ops: &'a SiteOps,
    sink: Sink<'a>,
    report: DownReport,
}

impl SiteDown<'_> {
    fn fail(&mut self, kind: Kind, name: &str, id: Option<&str>, e: &OsError) {
        self.report.not_deleted.push(NotDeleted {
            site: self.ops.site.name.clone(),
            kind: kind.as_str().into(),
            name: name.to_owned(),
            id: id.map(str::to_owned),
            error: error_chain(e),
        });
    }

    /// Deletes `doomed`, all at once or one by one; the report in their order.
    async fn remove(&mut self, doomed: Vec<Doomed>, at_once: bool) {
        let results = if at_once {
            join_all(doomed.iter().map(|d| self.delete(d))).await
        } else {
            let mut results = Vec::new();
            for d in &doomed {
                results.push(self.delete(d).await);
            }
            results
        };
        for (d, r) in doomed.iter().zip(results) {
            match r {
                Ok(true) => self.report.deleted.push(d.line(&self.ops.site.name)),
                Ok(false) => {}
                Err(e) => self.fail(d.kind, &d.name, Some(&d.id), &e),
            }
        }
    }

    /// Deletes one resource (`false`: it was gone already), reported through the sink once
    /// deleted.
    async fn delete(&self, d: &Doomed) -> Result<bool> {
        let t = Instant::now();
        let r = delete(self.ops, d).await;
        if let Ok(true) = r {
            (self.sink)(Event::Applied {
                summary: format!("- {}", d.line(&self.ops.site.name)),
                seconds: t.elapsed().as_secs_f64(),
                details: Vec::new(),
            });
        }
        r
    }
}

/// Deletes one resource: a server waits until it is gone; a router's interfaces are detached
/// first.
async fn delete(ops: &SiteOps, d: &Doomed) -> Result<bool> {
    let (what, collection) = match d.kind {
        Kind::Server => return ops.delete_server(&d.id).await,
        Kind::Router => return delete_router(ops, &d.id).await,
        Kind::FloatingIp => ("delete floating IP", "floatingips"),
        Kind::Port => ("delete port", "ports"),
        Kind::Subnet => ("delete subnet", "subnets"),
        Kind::Network => ("delete network", "networks"),
        Kind::SecurityGroup => ("delete security_group", "security-groups"),
        Kind::ServerGroup => return ops.delete_server_group(&d.id).await,
        Kind::Keypair | Kind::RouterInterface => return Ok(false),
    };
    ops.cloud
        .delete(what, Req::delete(NET, format!("{collection}/{}", d.id)))
        .await
}

async fn delete_router(ops: &SiteOps, id: &str) -> Result<bool> {
    let ifaces = ops
        .cloud
        .list(
            "list router ports",
            Req::get(NET, "ports")
                .q("device_id", id)
                .q("device_owner", "network:router_interface"),
            "ports",
        )
        .await?;
    for p in ifaces {
        let port_id = need_id(&p, NET, &format!("interface port of router {id}"))?;
        ops.cloud
            .call(
                "remove router interface",
                &Req::put(
                    NET,
                    format!("routers/{id}/remove_router_interface"),
                    json!({ "port_id": port_id }),
                ),
                api::Retry::Idempotent,
            )
            .await?;
    }
    ops.cloud
        .delete("delete router", Req::delete(NET, format!("routers/{id}")))
        .await
}

/// Neutron resources of a site by their names (for the name search of `down`).
fn names(ops: &SiteOps) -> Vec<(Kind, &'static str, String)> {
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
