//! `apply` for the local provider: each change of the plan made in the emulated cloud.
//! Security groups and port security of a site are rendered once per batch of changes.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hybridgrid_core::diff::Change;
use hybridgrid_core::plan::{NodePlan, Plan, Role, SgRule};
use hybridgrid_engine::{Event, Sink};

use crate::agent::{self, AgentReport};
use crate::infra::{self, NodeSpec, Port, SiteSpec};
use crate::ledger::{Ledger, NodeEntry, ObjState, SiteEntry};
use crate::provider::Local;
use crate::{LocalError, names, sh};

/// Changes applied at once within a group of independent changes.
const PARALLEL: usize = 8;

impl Local {
    /// Applies `changes` in order; runs of the same kind of change run in parallel.
    pub(crate) fn apply_changes(
        &self,
        plan: &Plan,
        changes: &[Change],
        progress: Sink<'_>,
    ) -> Result<(), LocalError> {
        // The style of the security groups this `up` asks for (observe saw the difference).
        if let Some(stateless) = self.opts.stateless_security_groups {
            self.record(|l| l.stateless_security_groups = stateless)?;
        }
        // The emulated internet is part of the first site's network (observe reports no site
        // network without it).
        let networks = changes
            .iter()
            .any(|c| matches!(c, Change::CreateNetwork { .. }));
        if networks
            && (self.lock().inet != Some(ObjState::Ready)
                || !sh::netns_exists(&names::ns_inet(&self.cluster.name)))
        {
            let ns = names::ns_inet(&self.cluster.name);
            self.record(|l| {
                l.record_namespace(&ns);
                l.inet = Some(ObjState::Creating);
            })?;
            let t = Instant::now();
            infra::create_inet(&self.cluster.name)?;
            // Routers of existing sites lost their uplink with the old internet: their sites
            // are built again (observe reported their nodes missing, so they are made again too).
            let sites: Vec<String> = self.lock().sites.keys().cloned().collect();
            for site in &sites {
                infra::remove_netns(&names::ns_router(&self.cluster.name, site))?;
                infra::remove_netns(&names::ns_switch(&self.cluster.name, site))?;
            }
            self.record(|l| l.inet = Some(ObjState::Ready))?;
            progress(Event::Note(format!(
                "emulated internet 198.51.100.0/24 ({:.2}s)",
                t.elapsed().as_secs_f64()
            )));
        }
        let dirty: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());
        let mut i = 0;
        while i < changes.len() {
            let kind = std::mem::discriminant(&changes[i]);
            let j = changes[i..]
                .iter()
                .position(|c| std::mem::discriminant(c) != kind)
                .map_or(changes.len(), |k| i + k);
            let configure = matches!(changes[i], Change::ConfigureNode { .. });
            if configure {
                self.flush(plan, &dirty)?;
            }
            let mut errors = Vec::new();
            for chunk in changes[i..j].chunks(PARALLEL) {
                std::thread::scope(|s| {
                    let handles: Vec<_> = chunk
                        .iter()
                        .map(|c| {
                            let dirty = &dirty;
                            s.spawn(move || {
                                let t = Instant::now();
                                (c, self.apply_one(plan, c, dirty), t.elapsed().as_secs_f64())
                            })
                        })
                        .collect();
                    for h in handles {
                        match h.join() {
                            Ok((c, Ok(details), seconds)) => {
                                progress(Event::Applied {
                                    summary: c.summary(),
                                    seconds,
                                    details,
                                });
                                crate::crash::applied_one();
                            }
                            Ok((c, Err(e), _)) => {
                                progress(Event::Failed {
                                    summary: c.summary(),
                                    error: e.to_string(),
                                });
                                errors.push(e);
                            }
                            Err(_) => {
                                errors.push(LocalError::Other("a worker thread panicked".into()))
                            }
                        }
                    }
                });
            }
            if !errors.is_empty() {
                let count = errors.len();
                let first = errors.remove(0);
                return Err(if count == 1 {
                    first
                } else {
                    LocalError::Failed {
                        count,
                        first: Box::new(first),
                    }
                });
            }
            if configure {
                self.services(plan, progress)?;
            }
            i = j;
        }
        self.flush(plan, &dirty)?;
        Ok(())
    }

    /// After nodes are configured: once the WireGuard mesh is complete (every relay knows every
    /// peer's key and endpoint), the master's results store and Slurm on every running node.
    /// Before that a round's configure sets up the network only; the next round finds the Slurm
    /// daemons missing and comes back here.
    fn services(&self, plan: &Plan, progress: Sink<'_>) -> Result<(), LocalError> {
        if !plan.mesh_complete() {
            return Ok(());
        }
        // slurmd on the other sites reaches slurmctld through the tunnels.
        for (a, b) in self.wait_handshakes(plan, Duration::from_secs(20)) {
            progress(Event::Note(format!(
                "no WireGuard handshake yet between {a} and {b}"
            )));
        }
        let t = Instant::now();
        // The workers' agents started their slurmd: the controller's agent waits for them to
        // register and puts them into their partitions.
        let master = plan.nodes.iter().find(|n| n.role == Role::Master);
        let slurm = match master {
            Some(m) => self.agent_apply(m, Duration::from_secs(30))?.actions,
            None => Vec::new(),
        };
        let started: Vec<String> = slurm
            .into_iter()
            .filter(|a| a.starts_with("partition"))
            .collect();
        if !started.is_empty() {
            progress(Event::Note(format!(
                "{} ({:.2}s)",
                started.join("; "),
                t.elapsed().as_secs_f64()
            )));
        }
        Ok(())
    }

    fn apply_one(
        &self,
        plan: &Plan,
        change: &Change,
        dirty: &Mutex<BTreeSet<String>>,
    ) -> Result<Vec<String>, LocalError> {
        let c = &self.cluster.name;
        let mark = |site: &str| {
            dirty
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(site.to_owned());
        };
        let missing = |what: &str| LocalError::Other(format!("{what} is not in the plan"));
        match change {
            Change::CreateNetwork { site } => {
                let sp = plan.site(site).ok_or_else(|| missing(site))?;
                let (sw, rt) = (names::ns_switch(c, site), names::ns_router(c, site));
                // Ready before this change: the switch and router (with the nodes' ports on
                // them) stay, and only what is missing (the data store) is made.
                let was_ready = self
                    .lock()
                    .sites
                    .get(site)
                    .is_some_and(|e| e.state == ObjState::Ready);
                let entry = self.record(|l| {
                    let index = l
                        .sites
                        .get(site)
                        .map_or_else(|| l.free_site_index(), |s| s.index);
                    l.record_namespace(&sw);
                    l.record_namespace(&rt);
                    let e = l.sites.entry(site.clone()).or_insert_with(|| SiteEntry {
                        index,
                        state: ObjState::Creating,
                        subnet: sp.subnet,
                        router_ip: sp.router_ip,
                        router_public_ip: names::router_public_ip(index)
                            .unwrap_or(Ipv4Addr::UNSPECIFIED),
                        underlay_mtu: sp.underlay_mtu,
                        security_groups: BTreeMap::new(),
                        allowed_address_pairs: BTreeMap::new(),
                        floating_ips: BTreeMap::new(),
                    });
                    e.state = ObjState::Creating;
                    e.clone()
                })?;
                if names::router_public_ip(entry.index).is_none() {
                    return Err(LocalError::Other(format!(
                        "the local provider emulates at most {} sites",
                        names::MAX_SITES
                    )));
                }
                let mut details = vec![format!(
                    "router {} ↔ {}",
                    entry.router_ip, entry.router_public_ip
                )];
                // Only the data store is missing: the switch and router (and the nodes'
                // ports on them) stay.
                let built = was_ready && sh::netns_exists(&sw) && sh::netns_exists(&rt);
                if built {
                    details.clear();
                } else {
                    infra::create_site(&SiteSpec {
                        cluster: c,
                        site,
                        index: entry.index,
                        subnet: entry.subnet,
                        router_ip: entry.router_ip,
                        router_public_ip: entry.router_public_ip,
                        mtu: entry.underlay_mtu,
                    })?;
                    self.record(|l| {
                        if let Some(s) = l.sites.get_mut(site) {
                            s.state = ObjState::Ready;
                        }
                    })?;
                    // A router created again lost its NAT.
                    self.render_router(site)?;
                }
                let store = crate::datastore::ensure_site(self, plan, site, &|ns| {
                    self.record(|l| l.record_namespace(ns))
                })?;
                details.extend(store);
                mark(site);
                Ok(details)
            }
            Change::SetWan { site, wan } => {
                let index = self
                    .lock()
                    .sites
                    .get(site)
                    .map(|e| e.index)
                    .ok_or_else(|| missing(site))?;
                crate::wan::ensure(
                    c,
                    site,
                    index,
                    wan.as_ref(),
                    &self.opts.exe,
                    self.cluster_dir(),
                )
            }
            Change::CreateSecurityGroup { site, group } => {
                self.record(|l| {
                    l.sites
                        .get_mut(site)
                        .map(|s| s.security_groups.entry(group.clone()).or_default().len())
                })?;
                mark(site);
                Ok(Vec::new())
            }
            Change::AddRule { site, group, rule } => {
                self.record(|l| {
                    if let Some(rules) = l
                        .sites
                        .get_mut(site)
                        .map(|s| s.security_groups.entry(group.clone()).or_default())
                        && !rules.iter().any(|r| r.key() == rule.key())
                    {
                        rules.push(rule.clone());
                    }
                })?;
                mark(site);
                Ok(Vec::new())
            }
            Change::RemoveRule { site, group, rule } => {
                self.record(|l| {
                    if let Some(rules) = l
                        .sites
                        .get_mut(site)
                        .and_then(|s| s.security_groups.get_mut(group))
                    {
                        rules.retain(|r| r.key() != rule.key());
                    }
                })?;
                mark(site);
                Ok(Vec::new())
            }
            Change::RemoveSecurityGroup { site, group } => {
                self.record(|l| {
                    l.sites
                        .get_mut(site)
                        .map(|s| s.security_groups.remove(group))
                })?;
                mark(site);
                Ok(Vec::new())
            }
            Change::CreateNode { site, node, role } => {
                let np = plan.node(node).ok_or_else(|| missing(node))?;
                if let Some(reason) = self.refusal(node) {
                    return Err(LocalError::Other(format!(
                        "the emulated cloud refuses to make {node}: {reason}"
                    )));
                }
                let sp = plan.site(site).ok_or_else(|| missing(site))?;
                let ns = self.ns(node);
                let entry = NodeEntry {
                    site: site.clone(),
                    role: *role,
                    state: ObjState::Creating,
                    lan_ip: np.lan_ip,
                    port: names::node_port(sp.subnet, np.lan_ip),
                    mac: names::node_mac(np.lan_ip),
                    holder_pid: None,
                };
                self.record(|l| {
                    l.record_namespace(&ns);
                    l.nodes.insert(node.clone(), entry.clone());
                })?;
                let dir = self.node_dir(node);
                create_private_dir(&dir)?;
                // A node created again starts from scratch, but keeps its key.
                let _ = std::fs::remove_file(dir.join(agent::APPLIED_FILE));
                infra::create_node_net(&NodeSpec {
                    cluster: c,
                    site,
                    node,
                    lan_ip: np.lan_ip,
                    subnet: sp.subnet,
                    router_ip: sp.router_ip,
                    mtu: sp.underlay_mtu,
                    port: &entry.port,
                    mac: &entry.mac,
                })?;
                let pid =
                    infra::start_holder(c, node, &dir, &self.opts.exe, self.opts.agent_period)?;
                self.record(|l| {
                    if let Some(n) = l.nodes.get_mut(node) {
                        n.state = ObjState::Ready;
                        n.holder_pid = Some(pid);
                    }
                })?;
                mark(site);
                Ok(vec![format!(
                    "{} on {}, holder pid {pid}",
                    np.lan_ip, entry.port
                )])
            }
            Change::AssignPublicIp { site, node } | Change::AttachPublicIp { site, node, .. } => {
                let fip = self.record(|l| {
                    if let Some(ip) = l.sites.get(site).and_then(|s| s.floating_ips.get(node)) {
                        return Ok::<_, LocalError>(*ip);
                    }
                    let slot = l.free_floating_slot();
                    let ip = names::floating_ip(slot).ok_or_else(|| {
                        LocalError::Other("no floating IP left in 198.51.100.0/24".into())
                    })?;
                    if let Some(s) = l.sites.get_mut(site) {
                        s.floating_ips.insert(node.clone(), ip);
                    }
                    Ok(ip)
                })??;
                self.render_router(site)?;
                Ok(vec![format!("{fip}")])
            }
            Change::AddAddressPairs { site, node, pairs } => {
                self.record(|l| {
                    if let Some(list) = l
                        .sites
                        .get_mut(site)
                        .map(|s| s.allowed_address_pairs.entry(node.clone()).or_default())
                    {
                        for p in pairs {
                            if !list.contains(p) {
                                list.push(*p);
                            }
                        }
                    }
                })?;
                mark(site);
                Ok(Vec::new())
            }
            Change::ConfigureNode { node, .. } => Ok(self.configure(plan, node)?.actions),
            Change::RemoveNode { site, node } => {
                let ns = self.ns(node);
                infra::remove_netns(&ns)?;
                let dir = self.node_dir(node);
                if dir.exists() {
                    std::fs::remove_dir_all(&dir).map_err(LocalError::io(&dir))?;
                }
                self.record(|l| {
                    l.nodes.remove(node);
                    l.namespaces.retain(|n| n != &ns);
                    if let Some(s) = l.sites.get_mut(site) {
                        s.floating_ips.remove(node);
                        s.allowed_address_pairs.remove(node);
                    }
                })?;
                if plan.site(site).is_some() {
                    self.render_router(site)?;
                    mark(site);
                }
                Ok(Vec::new())
            }
            Change::RemoveNetwork { site } => {
                let (sw, rt) = (names::ns_switch(c, site), names::ns_router(c, site));
                let store = crate::datastore::ns_store(c, site);
                infra::remove_netns(&store)?;
                self.record(|l| l.namespaces.retain(|n| n != &store))?;
                infra::remove_netns(&rt)?;
                infra::remove_netns(&sw)?;
                self.record(|l| {
                    l.sites.remove(site);
                    l.namespaces.retain(|n| n != &sw && n != &rt);
                })?;
                dirty
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .remove(site);
                Ok(Vec::new())
            }
        }
    }

    fn render_router(&self, site: &str) -> Result<(), LocalError> {
        let floating: Vec<(Ipv4Addr, Ipv4Addr)> = {
            let l = self.lock();
            let Some(s) = l.sites.get(site) else {
                return Ok(());
            };
            s.floating_ips
                .iter()
                .filter_map(|(node, fip)| Some((l.nodes.get(node)?.lan_ip, *fip)))
                .collect()
        };
        infra::render_router(&self.cluster.name, site, &floating)
    }

    /// Renders port security and security groups of the sites whose rules or ports changed.
    pub(crate) fn flush(
        &self,
        plan: &Plan,
        dirty: &Mutex<BTreeSet<String>>,
    ) -> Result<(), LocalError> {
        let sites = std::mem::take(
            &mut *dirty
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        let l = self.lock().clone();
        let results: Vec<Result<(), LocalError>> = std::thread::scope(|s| {
            let handles: Vec<_> = sites
                .iter()
                .filter_map(|site| {
                    Some((
                        site,
                        l.sites.get(site).filter(|e| e.state == ObjState::Ready)?,
                    ))
                })
                .map(|(site, entry)| {
                    let l = &l;
                    s.spawn(move || self.render_site(plan, l, site, entry))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(LocalError::Other("render thread panicked".into())))
                })
                .collect()
        });
        results.into_iter().collect()
    }

    fn render_site(
        &self,
        plan: &Plan,
        l: &Ledger,
        site: &str,
        entry: &SiteEntry,
    ) -> Result<(), LocalError> {
        let nodes: Vec<(&String, &NodeEntry)> = l
            .nodes
            .iter()
            .filter(|(name, n)| {
                n.site == site && n.state == ObjState::Ready && sh::netns_exists(&self.ns(name))
            })
            .collect();
        let ports: Vec<Port> = nodes
            .iter()
            .map(|(name, n)| Port {
                name: n.port.clone(),
                mac: n.mac.clone(),
                ip: n.lan_ip,
                pairs: entry
                    .allowed_address_pairs
                    .get(*name)
                    .cloned()
                    .unwrap_or_default(),
            })
            .collect();
        let mut ports = ports;
        let store = crate::datastore::port(&self.cluster.name, site, entry.subnet);
        ports.extend(store);
        infra::render_port_security(&self.cluster.name, site, &ports)?;
        let groups = plan
            .site(site)
            .map(|s| s.security_groups.as_slice())
            .unwrap_or(&[]);
        for (name, _) in &nodes {
            // The rules the "cloud" holds, in the groups the plan puts this node in.
            let rules: Vec<&SgRule> = groups
                .iter()
                .filter(|g| g.members.iter().any(|m| m == *name))
                .filter_map(|g| entry.security_groups.get(&g.name))
                .flatten()
                .collect();
            infra::render_security_groups(
                &self.cluster.name,
                name,
                &rules,
                l.stateless_security_groups,
            )?;
        }
        // The data store admits what the site's nodes admit.
        let store_rules: Vec<&SgRule> = groups
            .iter()
            .filter(|g| g.name == format!("{}-{site}-nodes", self.cluster.name))
            .filter_map(|g| entry.security_groups.get(&g.name))
            .flatten()
            .collect();
        crate::datastore::render_security_group(
            &self.cluster.name,
            site,
            &store_rules,
            l.stateless_security_groups,
        )?;
        Ok(())
    }

    /// Runs the agent on the node with the node's part of the plan.
    pub(crate) fn configure(&self, plan: &Plan, node: &str) -> Result<AgentReport, LocalError> {
        let np = plan
            .node(node)
            .ok_or_else(|| LocalError::NoSuchNode(node.to_owned()))?;
        let dir = self.node_dir(node);
        let config = dir.join("node.json");
        let node_config = plan.node_config(np);
        crate::slurm::prepare_node(self, node, node_config.slurm.role)?;
        let text =
            serde_json::to_string_pretty(&node_config).map_err(|source| LocalError::Json {
                path: config.clone(),
                source,
            })?;
        crate::ledger::write_atomic(&config, text.as_bytes(), 0o644)?;
        self.agent_apply(np, Duration::ZERO)
    }

    /// Runs the agent on `node` with the configuration last written to its `node.json`.
    fn agent_apply(
        &self,
        node: &NodePlan,
        wait_for_workers: Duration,
    ) -> Result<AgentReport, LocalError> {
        let dir = self.node_dir(&node.name);
        let out = self.agent(
            &node.name,
            &[
                "apply",
                "--config",
                &dir.join("node.json").display().to_string(),
                "--state-dir",
                &dir.display().to_string(),
                "--tag",
                &self.ns(&node.name),
                "--wait-for-workers",
                &wait_for_workers.as_secs().to_string(),
            ],
        )?;
        serde_json::from_str(&out).map_err(|source| LocalError::Json {
            path: PathBuf::from(format!("agent output of {}", node.name)),
            source,
        })
    }
}

fn create_private_dir(dir: &Path) -> Result<(), LocalError> {
    use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(LocalError::io(dir))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(LocalError::io(dir))
}
