//! The local provider: observe the cluster from its ledger and live checks, apply the core's
//! [`Change`]s, and the `up` / `status` / `exec` / `down` / `gc` operations.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hybridgrid_core::diff::{Change, Observed, ObservedNode, ObservedSite};
use hybridgrid_core::model::Cluster;
use hybridgrid_core::plan::{self, Plan, Role, SgRule};
use serde::{Deserialize, Serialize};

use crate::agent::{self, AgentReport, WgStatus};
use crate::infra::{self, NodeSpec, Port, SiteSpec};
use crate::ledger::{Ledger, NodeEntry, ObjState, SiteEntry};
use crate::{LocalError, names, sh};

/// Where hosts record which state directory owns each cluster: two state roots cannot both run
/// a cluster of the same name, and `gc` knows whose ledger to look for.
const OWNERS_DIR: &str = "/run/hybridgrid/owners";
/// Changes applied at once within a group of independent changes.
const PARALLEL: usize = 8;
const MAX_ROUNDS: usize = 6;

#[derive(Debug, Clone)]
pub struct Options {
    /// The state root (`<root>/<cluster>/` holds the ledger and the nodes' state).
    pub state_root: PathBuf,
    /// The hybridgrid binary: run as the node agent, the node holder and the WireGuard daemon.
    pub exe: PathBuf,
    /// Security groups without connection tracking (tests).
    pub stateless_security_groups: bool,
}

/// What `up` reports as it goes.
#[derive(Debug, Clone)]
pub enum Progress {
    Round {
        round: usize,
        changes: usize,
    },
    Done {
        summary: String,
        seconds: f64,
        details: Vec<String>,
    },
    Failed {
        summary: String,
        error: String,
    },
    Note(String),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpReport {
    pub changes: usize,
    pub rounds: usize,
    pub seconds: f64,
    /// Relay pairs without a WireGuard handshake when `up` finished waiting.
    pub pending_handshakes: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    pub format_version: u32,
    pub cluster: String,
    pub nodes: Vec<NodeStatus>,
    pub tunnels: Vec<TunnelStatus>,
    pub reachability: Vec<Reach>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub name: String,
    pub site: String,
    pub role: Role,
    pub lan_ip: Ipv4Addr,
    pub tunnel_ip: Option<Ipv4Addr>,
    pub public_ip: Option<Ipv4Addr>,
    pub up: bool,
    /// The node's Slurm state as the controller sees it (`sinfo`), for Slurm nodes.
    #[serde(default)]
    pub slurm: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TunnelStatus {
    pub node: String,
    pub peer: String,
    pub endpoint: Option<String>,
    /// Seconds since the latest handshake; `None` if there was none.
    pub handshake_age_s: Option<u64>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reach {
    pub from: String,
    pub to: String,
    pub ok: bool,
}

/// A node to run commands in: enter with `nsenter -t PID -m -u -n`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExecTarget {
    pub pid: u32,
}

/// One cluster on this host.
#[derive(Debug)]
pub struct Local {
    cluster: Cluster,
    opts: Options,
    dir: PathBuf,
    ledger: Mutex<Ledger>,
}

type Sink<'a> = &'a (dyn Fn(Progress) + Sync);

impl Local {
    /// Opens the cluster's ledger (an empty one if there is none yet; nothing is written).
    pub fn open(cluster: &Cluster, opts: Options) -> Result<Self, LocalError> {
        let dir = opts.state_root.join(&cluster.name);
        let ledger =
            Ledger::load(&dir.join("ledger.json"))?.unwrap_or_else(|| Ledger::new(&cluster.name));
        Ok(Local {
            cluster: cluster.clone(),
            opts,
            dir,
            ledger: Mutex::new(ledger),
        })
    }

    pub fn cluster_dir(&self) -> &Path {
        &self.dir
    }

    fn ledger_path(&self) -> PathBuf {
        self.dir.join("ledger.json")
    }

    pub fn node_dir(&self, node: &str) -> PathBuf {
        self.dir.join("nodes").join(node)
    }

    fn lock(&self) -> MutexGuard<'_, Ledger> {
        self.ledger
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Changes the ledger and writes it before anything it records is created.
    fn record<T>(&self, f: impl FnOnce(&mut Ledger) -> T) -> Result<T, LocalError> {
        let mut l = self.lock();
        let out = f(&mut l);
        l.save(&self.ledger_path())?;
        Ok(out)
    }

    fn ns(&self, node: &str) -> String {
        names::ns_node(&self.cluster.name, node)
    }

    /// The live holder of a node, if the node runs.
    fn holder(&self, l: &Ledger, node: &str) -> Option<u32> {
        let n = l.nodes.get(node)?;
        let pid = n.holder_pid?;
        let tag = format!("--tag {}", self.ns(node));
        (n.state == ObjState::Ready && infra::alive(pid) && infra::cmdline(pid).contains(&tag))
            .then_some(pid)
    }

    /// A copy of the ledger as it is now.
    pub(crate) fn ledger_snapshot(&self) -> Ledger {
        self.lock().clone()
    }

    /// The holder of a running node (for `doctor`).
    pub(crate) fn holder_pid(&self, node: &str) -> Option<u32> {
        self.holder(&self.lock(), node)
    }

    /// Handshakes and counters of every relay's tunnels (for `doctor`).
    pub(crate) fn tunnel_status(&self, plan: &Plan) -> Vec<TunnelStatus> {
        self.tunnels(plan)
    }

    /// What exists: the ledger, checked against live namespaces and processes, and what each node
    /// reports in its state directory (public key, applied config).
    pub fn observe(&self) -> Observed {
        let l = self.lock();
        let planned: BTreeSet<String> = plan::plan(&self.cluster, &Observed::default())
            .nodes
            .into_iter()
            .map(|n| n.name)
            .collect();
        let mut obs = Observed::default();
        for (name, s) in &l.sites {
            let live = s.state == ObjState::Ready
                && sh::netns_exists(&names::ns_switch(&self.cluster.name, name))
                && sh::netns_exists(&names::ns_router(&self.cluster.name, name));
            obs.sites.insert(
                name.clone(),
                ObservedSite {
                    network: live,
                    security_groups: s.security_groups.clone(),
                    allowed_address_pairs: s.allowed_address_pairs.clone(),
                },
            );
        }
        for (name, n) in &l.nodes {
            let live = self.holder(&l, name).is_some();
            // A node that died is created again; one that left the file is removed either way.
            if !live && planned.contains(name) {
                continue;
            }
            let dir = self.node_dir(name);
            obs.nodes.insert(
                name.clone(),
                ObservedNode {
                    site: n.site.clone(),
                    public_ip: l
                        .sites
                        .get(&n.site)
                        .and_then(|s| s.floating_ips.get(name).copied()),
                    public_key: agent::read_public_key(&dir),
                    applied: if live {
                        agent::read_applied(&dir)
                    } else {
                        None
                    },
                },
            );
        }
        obs
    }

    /// The current plan against what exists.
    pub fn plan(&self) -> Plan {
        plan::plan(&self.cluster, &self.observe())
    }

    /// Records that this state directory owns the cluster on this host.
    fn claim(&self) -> Result<(), LocalError> {
        let owner = Path::new(OWNERS_DIR).join(&self.cluster.name);
        let me = self.dir.display().to_string();
        if let Ok(other) = std::fs::read_to_string(&owner)
            && other.trim() != me
            && Path::new(other.trim()).join("ledger.json").exists()
        {
            return Err(LocalError::Owned {
                cluster: self.cluster.name.clone(),
                other: PathBuf::from(other.trim()),
            });
        }
        crate::ledger::write_atomic(&owner, me.as_bytes(), 0o644)
    }

    /// Creates or updates everything until the cluster is as planned.
    pub fn up(&self, progress: Sink<'_>) -> Result<UpReport, LocalError> {
        let start = Instant::now();
        self.claim()?;
        let restyle = {
            let mut l = self.lock();
            let changed = l.stateless_security_groups != self.opts.stateless_security_groups;
            l.stateless_security_groups = self.opts.stateless_security_groups;
            l.save(&self.ledger_path())?;
            changed
        };
        let mut total = 0;
        let mut rounds = 0;
        loop {
            let plan = self.plan();
            if plan.changes.is_empty() {
                break;
            }
            rounds += 1;
            if rounds > MAX_ROUNDS {
                return Err(LocalError::Other(format!(
                    "the cluster did not settle after {MAX_ROUNDS} rounds; still to do: {}",
                    plan.changes
                        .iter()
                        .map(Change::summary)
                        .collect::<Vec<_>>()
                        .join(" | ")
                )));
            }
            progress(Progress::Round {
                round: rounds,
                changes: plan.changes.len(),
            });
            total += self.apply(&plan, &plan.changes, progress)?;
        }
        if restyle && total == 0 {
            let plan = self.plan();
            let sites = plan.sites.iter().map(|s| s.name.clone()).collect();
            self.flush(&plan, &Mutex::new(sites))?;
        }
        // What was changed by hand on the live cluster (rules, pairs, tunnel MTU) is put back.
        total += crate::doctor::repair(self, &self.plan(), progress)?;
        let pending = if total > 0 {
            self.wait_handshakes(Duration::from_secs(20))
        } else {
            Vec::new()
        };
        total += self.services(progress)?;
        Ok(UpReport {
            changes: total,
            rounds,
            seconds: start.elapsed().as_secs_f64(),
            pending_handshakes: pending,
        })
    }

    /// Data stores, the results store and Slurm (`datastore`, `slurm`): after the network.
    fn services(&self, progress: Sink<'_>) -> Result<usize, LocalError> {
        let plan = self.plan();
        let t = Instant::now();
        let record = |ns: &str| self.record(|l| l.record_namespace(ns));
        let forget = |ns: &str| self.record(|l| l.namespaces.retain(|n| n != ns));
        let stores = crate::datastore::ensure(self, &plan, &record, &forget)?;
        if !stores.is_empty() {
            let sites = plan.sites.iter().map(|s| s.name.clone()).collect();
            self.flush(&plan, &Mutex::new(sites))?;
            progress(Progress::Done {
                summary: "data stores".into(),
                seconds: t.elapsed().as_secs_f64(),
                details: stores.clone(),
            });
        }
        let t = Instant::now();
        let slurm = crate::slurm::ensure(self, &plan)?;
        if !slurm.started.is_empty() {
            progress(Progress::Done {
                summary: "slurm".into(),
                seconds: t.elapsed().as_secs_f64(),
                details: slurm.started.clone(),
            });
        }
        Ok(stores.len() + slurm.started.len())
    }

    /// Applies `changes` in order; runs of the same kind of change run in parallel.
    fn apply(
        &self,
        plan: &Plan,
        changes: &[Change],
        progress: Sink<'_>,
    ) -> Result<usize, LocalError> {
        if self.lock().inet != Some(ObjState::Ready)
            || !sh::netns_exists(&names::ns_inet(&self.cluster.name))
        {
            let ns = names::ns_inet(&self.cluster.name);
            self.record(|l| {
                l.record_namespace(&ns);
                l.inet = Some(ObjState::Creating);
            })?;
            let t = Instant::now();
            infra::create_inet(&self.cluster.name)?;
            self.record(|l| l.inet = Some(ObjState::Ready))?;
            progress(Progress::Done {
                summary: "+ emulated internet 198.51.100.0/24".into(),
                seconds: t.elapsed().as_secs_f64(),
                details: Vec::new(),
            });
        }
        let dirty: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());
        let mut i = 0;
        while i < changes.len() {
            let kind = std::mem::discriminant(&changes[i]);
            let j = changes[i..]
                .iter()
                .position(|c| std::mem::discriminant(c) != kind)
                .map_or(changes.len(), |k| i + k);
            if matches!(changes[i], Change::ConfigureNode { .. }) {
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
                                progress(Progress::Done {
                                    summary: c.summary(),
                                    seconds,
                                    details,
                                });
                                crate::crash::applied_one();
                            }
                            Ok((c, Err(e), _)) => {
                                progress(Progress::Failed {
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
            i = j;
        }
        self.flush(plan, &dirty)?;
        Ok(changes.len())
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
                mark(site);
                Ok(vec![format!(
                    "router {} ↔ {}",
                    entry.router_ip, entry.router_public_ip
                )])
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
                let pid = infra::start_holder(c, node, &dir, &self.opts.exe)?;
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
            Change::AssignPublicIp { site, node } => {
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
        let pid = self
            .holder(&self.lock(), node)
            .ok_or_else(|| LocalError::NoSuchNode(node.to_owned()))?;
        let dir = self.node_dir(node);
        let config = dir.join("node.json");
        let text = serde_json::to_string_pretty(&plan.node_config(np)).map_err(|source| {
            LocalError::Json {
                path: config.clone(),
                source,
            }
        })?;
        crate::ledger::write_atomic(&config, text.as_bytes(), 0o644)?;
        let pid = pid.to_string();
        let out = sh::run(
            "nsenter",
            &[
                "-t",
                &pid,
                "-m",
                "-u",
                "-n",
                "--",
                &self.opts.exe.display().to_string(),
                "agent",
                "apply",
                "--config",
                &config.display().to_string(),
                "--state-dir",
                &dir.display().to_string(),
                "--tag",
                &self.ns(node),
            ],
        )?;
        serde_json::from_str(&out).map_err(|source| LocalError::Json {
            path: PathBuf::from(format!("agent output of {node}")),
            source,
        })
    }

    /// The node's WireGuard device, read by the agent inside the node.
    fn wg_status(&self, node: &str, ifname: &str) -> Result<WgStatus, LocalError> {
        let pid = self
            .holder(&self.lock(), node)
            .ok_or_else(|| LocalError::NoSuchNode(node.to_owned()))?;
        let out = sh::run(
            "nsenter",
            &[
                "-t",
                &pid.to_string(),
                "-m",
                "-u",
                "-n",
                "--",
                &self.opts.exe.display().to_string(),
                "agent",
                "wg-status",
                "--interface",
                ifname,
            ],
        )?;
        serde_json::from_str(&out).map_err(|source| LocalError::Json {
            path: PathBuf::from(format!("wg-status of {node}")),
            source,
        })
    }

    fn tunnels(&self, plan: &Plan) -> Vec<TunnelStatus> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let relays: Vec<_> = plan.nodes.iter().filter(|n| n.role.is_relay()).collect();
        let by_key: BTreeMap<String, String> = relays
            .iter()
            .filter_map(|n| {
                Some((
                    n.wireguard.as_ref()?.public_key?.to_base64(),
                    n.name.clone(),
                ))
            })
            .collect();
        let statuses: Vec<(String, Option<WgStatus>)> = std::thread::scope(|s| {
            let handles: Vec<_> = relays
                .iter()
                .map(|n| {
                    s.spawn(move || {
                        let ifname = n
                            .wireguard
                            .as_ref()
                            .map_or(plan::WG_INTERFACE, |w| w.name.as_str());
                        (n.name.clone(), self.wg_status(&n.name, ifname).ok())
                    })
                })
                .collect();
            handles.into_iter().filter_map(|h| h.join().ok()).collect()
        });
        let mut out = Vec::new();
        for (node, status) in statuses {
            let Some(status) = status else { continue };
            for p in status.peers {
                out.push(TunnelStatus {
                    node: node.clone(),
                    peer: by_key.get(&p.public_key).cloned().unwrap_or(p.public_key),
                    endpoint: p.endpoint.map(|e| e.to_string()),
                    handshake_age_s: (p.latest_handshake > 0)
                        .then(|| now.saturating_sub(p.latest_handshake)),
                    rx_bytes: p.rx_bytes,
                    tx_bytes: p.tx_bytes,
                });
            }
        }
        out
    }

    /// Waits until every relay has a handshake with every peer; returns the pairs still without.
    fn wait_handshakes(&self, limit: Duration) -> Vec<(String, String)> {
        let plan = self.plan();
        let wanted: Vec<(String, String)> = plan
            .nodes
            .iter()
            .filter_map(|n| Some((n, n.wireguard.as_ref()?)))
            .flat_map(|(n, wg)| {
                wg.peers
                    .iter()
                    .map(move |p| (n.name.clone(), p.node.clone()))
            })
            .collect();
        let deadline = Instant::now() + limit;
        loop {
            let done: BTreeSet<(String, String)> = self
                .tunnels(&plan)
                .into_iter()
                .filter(|t| t.handshake_age_s.is_some())
                .map(|t| (t.node, t.peer))
                .collect();
            let pending: Vec<_> = wanted
                .iter()
                .filter(|w| !done.contains(w))
                .cloned()
                .collect();
            if pending.is_empty() || Instant::now() >= deadline {
                return pending;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Per node up/down, per tunnel handshake and counters, and (if `reach`) every node pinging
    /// every other node.
    pub fn status(&self, reach: bool) -> StatusReport {
        let plan = self.plan();
        let l = self.lock().clone();
        let slurm = crate::slurm::states(self, &plan);
        let nodes: Vec<NodeStatus> = plan
            .nodes
            .iter()
            .map(|n| NodeStatus {
                name: n.name.clone(),
                site: n.site.clone(),
                role: n.role,
                lan_ip: n.lan_ip,
                tunnel_ip: n.tunnel_ip,
                public_ip: n.public_ip,
                up: self.holder(&l, &n.name).is_some(),
                slurm: slurm.get(&n.name).cloned(),
            })
            .collect();
        let tunnels = self.tunnels(&plan);
        let mut reachability = Vec::new();
        if reach {
            let pairs: Vec<(&NodeStatus, &NodeStatus)> = nodes
                .iter()
                .flat_map(|a| {
                    nodes
                        .iter()
                        .filter(move |b| b.name != a.name)
                        .map(move |b| (a, b))
                })
                .collect();
            for chunk in pairs.chunks(16) {
                std::thread::scope(|s| {
                    let handles: Vec<_> = chunk
                        .iter()
                        .map(|(a, b)| {
                            let pid = self.holder(&l, &a.name);
                            s.spawn(move || {
                                let ok = pid.is_some_and(|pid| {
                                    sh::ok(
                                        "nsenter",
                                        &[
                                            "-t",
                                            &pid.to_string(),
                                            "-n",
                                            "--",
                                            "ping",
                                            "-q",
                                            "-c",
                                            "3",
                                            "-i",
                                            "0.2",
                                            "-W",
                                            "2",
                                            &b.lan_ip.to_string(),
                                        ],
                                    )
                                });
                                Reach {
                                    from: a.name.clone(),
                                    to: b.name.clone(),
                                    ok,
                                }
                            })
                        })
                        .collect();
                    reachability.extend(handles.into_iter().filter_map(|h| h.join().ok()));
                });
            }
        }
        StatusReport {
            format_version: 1,
            cluster: self.cluster.name.clone(),
            nodes,
            tunnels,
            reachability,
        }
    }

    /// The running node `node`.
    pub fn exec_target(&self, node: &str) -> Result<ExecTarget, LocalError> {
        self.holder(&self.lock(), node)
            .map(|pid| ExecTarget { pid })
            .ok_or_else(|| LocalError::NoSuchNode(node.to_owned()))
    }

    /// Runs `cmd` on the node inside its namespaces, with this process's standard streams.
    pub fn exec(&self, node: &str, cmd: &[String]) -> Result<ExitStatus, LocalError> {
        let t = self.exec_target(node)?;
        Command::new("nsenter")
            .args(["-t", &t.pid.to_string(), "-m", "-u", "-n", "--wd=/", "--"])
            .args(cmd)
            .status()
            .map_err(|e| LocalError::Command {
                command: format!("nsenter ... {}", cmd.join(" ")),
                detail: e.to_string(),
            })
    }

    /// Removes everything in the ledger, then the ledger and the cluster's state. Idempotent.
    pub fn down(&self, progress: Sink<'_>) -> Result<usize, LocalError> {
        let path = self.ledger_path();
        let Some(l) = Ledger::load(&path)? else {
            return self.down_elsewhere(progress);
        };
        let mut removed = 0;
        // Nodes first (their processes), in parallel; then routers and switches; the internet last.
        let nodes: Vec<String> = l
            .namespaces
            .iter()
            .filter(|ns| l.nodes.keys().any(|n| self.ns(n) == **ns))
            .cloned()
            .collect();
        let results: Vec<(String, Result<(), LocalError>)> = std::thread::scope(|s| {
            let handles: Vec<_> = nodes
                .iter()
                .map(|ns| s.spawn(move || (ns.clone(), infra::remove_netns(ns))))
                .collect();
            handles.into_iter().filter_map(|h| h.join().ok()).collect()
        });
        for (ns, r) in results {
            r?;
            removed += 1;
            progress(Progress::Done {
                summary: format!("- {ns}"),
                seconds: 0.0,
                details: Vec::new(),
            });
        }
        let inet = names::ns_inet(&self.cluster.name);
        for ns in l
            .namespaces
            .iter()
            .filter(|ns| !nodes.contains(ns) && **ns != inet)
            .chain(std::iter::once(&inet))
        {
            if sh::netns_exists(ns) {
                infra::remove_netns(ns)?;
                removed += 1;
                progress(Progress::Done {
                    summary: format!("- {ns}"),
                    seconds: 0.0,
                    details: Vec::new(),
                });
            }
        }
        // Processes tagged for this cluster whose namespace went away some other way.
        let stray = tagged_processes(&names::prefix(&self.cluster.name));
        infra::stop_processes(&stray);
        if self.dir.exists() {
            std::fs::remove_dir_all(&self.dir).map_err(LocalError::io(&self.dir))?;
        }
        release_owner(&self.cluster.name, &self.dir);
        Ok(removed)
    }
}

impl Local {
    /// `down` with no ledger here: the owner record may name the state directory `up` used;
    /// without one, live namespaces are an error that names both ways out.
    fn down_elsewhere(&self, progress: Sink<'_>) -> Result<usize, LocalError> {
        let owner = std::fs::read_to_string(Path::new(OWNERS_DIR).join(&self.cluster.name))
            .map(|d| PathBuf::from(d.trim()))
            .ok()
            .filter(|d| *d != self.dir && d.join("ledger.json").exists());
        if let Some(dir) = owner
            && let Some(root) = dir.parent()
            && dir.file_name() == Some(std::ffi::OsStr::new(&self.cluster.name))
        {
            progress(Progress::Note(format!(
                "no ledger in {}; the owner record names {}: removing the cluster from there",
                self.dir.display(),
                dir.display()
            )));
            let opts = Options {
                state_root: root.to_owned(),
                ..self.opts.clone()
            };
            return Local::open(&self.cluster, opts)?.down(progress);
        }
        if sh::netns_exists(&names::ns_inet(&self.cluster.name)) {
            return Err(LocalError::Other(format!(
                "cluster {} has namespaces on this host but no ledger in {} and no owner record \
                 naming another: set HYBRIDGRID_STATE_DIR to the state directory `up` used, or run \
                 `hybridgrid gc` to remove the leftovers",
                self.cluster.name,
                self.dir.display()
            )));
        }
        release_owner(&self.cluster.name, &self.dir);
        Ok(0)
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

fn release_owner(cluster: &str, dir: &Path) {
    let owner = Path::new(OWNERS_DIR).join(cluster);
    if std::fs::read_to_string(&owner).is_ok_and(|o| Path::new(o.trim()) == dir) {
        let _ = std::fs::remove_file(owner);
    }
}

/// Processes started with `--tag <prefix>...` (node holders and WireGuard daemons).
fn tagged_processes(prefix: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| {
            let cmd = infra::cmdline(pid);
            cmd.split(" --tag ")
                .nth(1)
                .is_some_and(|t| t.starts_with(prefix))
                && infra::alive(pid)
        })
        .collect()
}

/// Removes leftovers of this host's clusters whose ledger is gone: namespaces, processes, owner
/// records. Returns what was removed.
pub fn gc(state_root: &Path) -> Result<Vec<String>, LocalError> {
    let all = sh::netns_list();
    let mut clusters: BTreeSet<String> = all
        .iter()
        .filter_map(|ns| {
            ns.strip_prefix("hg-")?
                .strip_suffix("-inet")
                .map(str::to_owned)
        })
        .collect();
    if let Ok(d) = std::fs::read_dir(OWNERS_DIR) {
        clusters.extend(d.filter_map(|e| e.ok()?.file_name().into_string().ok()));
    }
    // A namespace belongs to the cluster with the longest matching prefix.
    let owner_of = |ns: &str| {
        clusters
            .iter()
            .filter(|c| ns.starts_with(&names::prefix(c)))
            .max_by_key(|c| c.len())
            .cloned()
    };
    let mut removed = Vec::new();
    for cluster in &clusters {
        let owner = Path::new(OWNERS_DIR).join(cluster);
        let dir = std::fs::read_to_string(&owner)
            .map(|d| PathBuf::from(d.trim()))
            .unwrap_or_else(|_| state_root.join(cluster));
        if dir.join("ledger.json").exists() {
            continue;
        }
        for ns in all
            .iter()
            .filter(|ns| owner_of(ns).as_ref() == Some(cluster))
        {
            infra::remove_netns(ns)?;
            removed.push(ns.clone());
        }
        let stray: Vec<u32> = tagged_processes(&names::prefix(cluster))
            .into_iter()
            .filter(|&pid| {
                let cmd = infra::cmdline(pid);
                cmd.split(" --tag ")
                    .nth(1)
                    .and_then(|t| owner_of(t.split_whitespace().next().unwrap_or("")))
                    .as_ref()
                    == Some(cluster)
            })
            .collect();
        for pid in &stray {
            removed.push(format!("process {pid}"));
        }
        infra::stop_processes(&stray);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(LocalError::io(&dir))?;
            removed.push(dir.display().to_string());
        }
        if owner.exists() {
            let _ = std::fs::remove_file(&owner);
        }
    }
    Ok(removed)
}
