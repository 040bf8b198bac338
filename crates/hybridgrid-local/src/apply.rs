//! `apply` for the local provider: each change of the plan made in the emulated cloud.
//! Security groups and port security of a site are rendered once per batch of changes.

use std::collections::{BTreeMap, BTreeSet};
use std::mem::discriminant;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hybridgrid_core::diff::Change;
use hybridgrid_core::model::Wan;
use hybridgrid_core::plan::{NodePlan, Plan, Role, SgRule, SitePlan};
use hybridgrid_engine::{Event, Sink};

use crate::agent::{self, AgentReport};
use crate::host::{self, NeighbourLimits, RaisedLimits};
use crate::infra::{self, NodeSpec, Port, SiteSpec};
use crate::ledger::{Ledger, NodeEntry, ObjState, SiteEntry};
use crate::provider::Local;
use crate::{LocalError, names, sh};

/// How many changes of `change`'s kind are applied at once. Making a site's network waits for
/// its data store's server, and configuring a node mostly for its daemons to start and Slurm to
/// answer: more of those at once than there are cores. The rest computes or runs `ip`.
fn width(change: &Change) -> usize {
    match change {
        Change::CreateNetwork { .. } => 16,
        Change::ConfigureNode { .. } => 32,
        _ => 8,
    }
}

/// What of a site changed since it was last rendered.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Dirt {
    /// Its ports (nodes, address pairs) or anything else: every port and node.
    All,
    /// Only the rules of these security groups: their members' tables.
    Groups(BTreeSet<String>),
}

/// The sites whose port security or security groups changed since they were last rendered.
#[derive(Default)]
struct DirtySites(Mutex<BTreeMap<String, Dirt>>);

impl DirtySites {
    fn map(&self) -> MutexGuard<'_, BTreeMap<String, Dirt>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn mark(&self, site: &str) {
        self.map().insert(site.to_owned(), Dirt::All);
    }

    /// Only `group`'s rules changed at `site`.
    fn mark_group(&self, site: &str, group: &str) {
        let mut map = self.map();
        let dirt = map
            .entry(site.to_owned())
            .or_insert_with(|| Dirt::Groups(BTreeSet::new()));
        if let Dirt::Groups(groups) = dirt {
            groups.insert(group.to_owned());
        }
    }

    /// What `change`, an edit of the site's ledger entry (see [`edit_of`]), leaves to render.
    fn mark_edit(&self, change: &Change) {
        match change {
            Change::CreateSecurityGroup { site, group }
            | Change::AddRule { site, group, .. }
            | Change::RemoveRule { site, group, .. }
            | Change::RemoveSecurityGroup { site, group } => self.mark_group(site, group),
            other => self.mark(other.site()),
        }
    }

    /// A site removed: nothing of it is left to render.
    fn forget(&self, site: &str) {
        self.map().remove(site);
    }

    fn take(&self) -> BTreeMap<String, Dirt> {
        std::mem::take(&mut *self.map())
    }
}

impl Local {
    /// Applies `changes` in order (the sites' section regrouped by kind: [`sites_by_kind`]);
    /// runs of the same kind of change run in parallel.
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
        if changes
            .iter()
            .any(|c| matches!(c, Change::CreateNetwork { .. }))
        {
            self.ensure_inet(progress)?;
        }
        if changes
            .iter()
            .any(|c| matches!(c, Change::CreateNode { .. }))
        {
            self.ensure_neighbour_room(plan, progress)?;
        }
        let dirty = DirtySites::default();
        let same_kind = |a: &Change, b: &Change| discriminant(a) == discriminant(b);
        for run in sites_by_kind(changes).chunk_by(same_kind) {
            // The sites are rendered before their nodes are configured; the services follow.
            let configure = matches!(run[0], Change::ConfigureNode { .. });
            if configure {
                self.flush(plan, &dirty)?;
            }
            self.apply_run(plan, run, &dirty, progress)?;
            if configure {
                self.services(plan, progress)?;
            }
        }
        self.flush(plan, &dirty)
    }

    /// The emulated internet, made when a site network is to be made and it is not ready: it
    /// is part of the first site's network (observe reports no site network without it).
    fn ensure_inet(&self, progress: Sink<'_>) -> Result<(), LocalError> {
        let ns = names::ns_inet(&self.cluster.name);
        let ready = self.lock().inet == Some(ObjState::Ready);
        if ready && sh::netns_exists(&ns) {
            return Ok(());
        }
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
        Ok(())
    }

    /// The host's neighbour table raised to what the cluster's namespaces need (see
    /// [`crate::host`]), recorded in the ledger before it is changed.
    fn ensure_neighbour_room(&self, plan: &Plan, progress: Sink<'_>) -> Result<(), LocalError> {
        let namespaces = plan.nodes.len() + 2 * plan.sites.len() + 1;
        let now = host::read()?;
        let need = NeighbourLimits::needed(plan.sites.len(), namespaces);
        let Some(set) = host::raise_to(now, need) else {
            return Ok(());
        };
        self.record(|l| {
            let before = l.host_neighbour_limits.map_or(now, |r| r.before);
            l.host_neighbour_limits = Some(RaisedLimits { before, set });
        })?;
        host::write(set)?;
        progress(Event::Note(format!(
            "the host's neighbour table (shared by every namespace) held {} entries; raised to {} \
             for {namespaces} namespaces until `down` (net.ipv4.neigh.default.gc_thresh2/3)",
            now.hard, set.hard
        )));
        Ok(())
    }

    /// A run of changes of one kind, [`width`] at a time, each reported as it ends. Every change
    /// of the run is tried even when one fails; the run fails if any did.
    fn apply_run(
        &self,
        plan: &Plan,
        run: &[Change],
        dirty: &DirtySites,
        progress: Sink<'_>,
    ) -> Result<(), LocalError> {
        if run.iter().all(|c| edit_of(c).is_some()) {
            return self.apply_edits(run, dirty, progress);
        }
        let outcomes = crate::par::map(run, width(&run[0]), |c| {
            let t = Instant::now();
            let apply = std::panic::AssertUnwindSafe(|| self.apply_one(plan, c, dirty));
            std::panic::catch_unwind(apply)
                .map(|outcome| report(c, outcome, t.elapsed().as_secs_f64(), progress))
        });
        let errors = run
            .iter()
            .zip(outcomes)
            .filter_map(|(c, outcome)| match outcome {
                Some(Ok(result)) => result.err(),
                Some(Err(_)) | None => Some(LocalError::ChangePanicked {
                    change: c.summary(),
                }),
            })
            .collect();
        one_error(errors)
    }

    /// A run of edits to what the "cloud" holds for sites, made in the ledger with one write
    /// (thousands of rules at 50 sites: a write each was most of `up`); the next flush renders
    /// the sites.
    fn apply_edits(
        &self,
        run: &[Change],
        dirty: &DirtySites,
        progress: Sink<'_>,
    ) -> Result<(), LocalError> {
        let t = Instant::now();
        self.record_edits(run, dirty)?;
        let seconds = t.elapsed().as_secs_f64();
        for change in run {
            report(change, Ok(Vec::new()), seconds, progress)?;
        }
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

    /// One change made in the emulated cloud; what it did, for `up`'s output. A change to a
    /// site's rules, ports or address pairs marks the site for the next [`Self::flush`].
    fn apply_one(
        &self,
        plan: &Plan,
        change: &Change,
        dirty: &DirtySites,
    ) -> Result<Vec<String>, LocalError> {
        match change {
            Change::CreateNetwork { site } => self.create_network(plan, site, dirty),
            Change::SetWan { site, wan } => self.set_wan(site, wan.as_ref()),
            Change::CreateSecurityGroup { .. }
            | Change::AddRule { .. }
            | Change::RemoveRule { .. }
            | Change::RemoveSecurityGroup { .. }
            | Change::AddAddressPairs { .. } => self.apply_edits_one(change, dirty),
            Change::CreateNode { site, node, role } => {
                self.create_node(plan, site, node, *role, dirty)
            }
            Change::AssignPublicIp { site, node } | Change::AttachPublicIp { site, node, .. } => {
                self.assign_floating_ip(site, node)
            }
            Change::CreateVirtualAddress {
                site,
                name,
                address,
            } => self.virtual_address(site, name, Some(*address)),
            Change::RemoveVirtualAddress { site, name } => self.virtual_address(site, name, None),
            Change::ConfigureNode { node, .. } => Ok(self.configure(plan, node)?.actions),
            Change::RemoveNode { site, node } => self.remove_node(plan, site, node, dirty),
            Change::RemoveNetwork { site } => self.remove_network(site, dirty),
        }
    }

    /// A site's network: its switch and router, unless the site was ready and both are there
    /// (with the nodes' ports on them); then whatever its data store lacks.
    fn create_network(
        &self,
        plan: &Plan,
        site: &str,
        dirty: &DirtySites,
    ) -> Result<Vec<String>, LocalError> {
        let c = &self.cluster.name;
        let sp = plan.site(site).ok_or_else(|| LocalError::SiteNotInPlan {
            site: site.to_owned(),
        })?;
        let (sw, rt) = (names::ns_switch(c, site), names::ns_router(c, site));
        let was_ready = self
            .lock()
            .sites
            .get(site)
            .is_some_and(|e| e.state == ObjState::Ready);
        let entry = self.record_site_creating(site, sp, &sw, &rt)?;
        if names::router_public_ip(entry.index).is_none() {
            return Err(LocalError::TooManySites {
                site: site.to_owned(),
                max: names::MAX_SITES,
            });
        }
        let mut details = Vec::new();
        if !(was_ready && sh::netns_exists(&sw) && sh::netns_exists(&rt)) {
            self.build_site(site, &entry)?;
            details.push(format!(
                "router {} ↔ {}",
                entry.router_ip, entry.router_public_ip
            ));
        }
        let store = crate::datastore::ensure_site(self, plan, site, &|ns| {
            self.record(|l| l.record_namespace(ns))
        })?;
        details.extend(store);
        dirty.mark(site);
        Ok(details)
    }

    /// The ledger entry of `site` (a new one gets the first free index) recorded as being
    /// created, with its switch and router namespaces.
    fn record_site_creating(
        &self,
        site: &str,
        sp: &SitePlan,
        sw: &str,
        rt: &str,
    ) -> Result<SiteEntry, LocalError> {
        self.record(|l| {
            let index = l
                .sites
                .get(site)
                .map_or_else(|| l.free_site_index(), |s| s.index);
            l.record_namespace(sw);
            l.record_namespace(rt);
            let e = l.sites.entry(site.to_owned()).or_insert_with(|| SiteEntry {
                index,
                state: ObjState::Creating,
                subnet: sp.subnet,
                router_ip: sp.router_ip,
                router_public_ip: names::router_public_ip(index).unwrap_or(Ipv4Addr::UNSPECIFIED),
                underlay_mtu: sp.underlay_mtu,
                security_groups: BTreeMap::new(),
                allowed_address_pairs: BTreeMap::new(),
                floating_ips: BTreeMap::new(),
                virtual_addresses: BTreeMap::new(),
            });
            e.state = ObjState::Creating;
            e.clone()
        })
    }

    /// A site's switch and router made anew, the site then ready.
    fn build_site(&self, site: &str, entry: &SiteEntry) -> Result<(), LocalError> {
        infra::create_site(&SiteSpec {
            cluster: &self.cluster.name,
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
        self.render_router(site)
    }

    /// The WAN conditions on a site's uplink: a `wan-link` process with them, or none.
    fn set_wan(&self, site: &str, wan: Option<&Wan>) -> Result<Vec<String>, LocalError> {
        let index = self
            .lock()
            .sites
            .get(site)
            .map(|e| e.index)
            .ok_or_else(|| LocalError::NoSiteNetwork {
                site: site.to_owned(),
            })?;
        crate::wan::ensure(
            &self.cluster.name,
            site,
            index,
            wan,
            &self.opts.exe,
            self.cluster_dir(),
        )
    }

    /// One edit of what the "cloud" holds for a site (see [`edit_of`]).
    fn apply_edits_one(
        &self,
        change: &Change,
        dirty: &DirtySites,
    ) -> Result<Vec<String>, LocalError> {
        self.record_edits(std::slice::from_ref(change), dirty)?;
        Ok(Vec::new())
    }

    /// The edits of `changes` (those [`edit_of`] knows) in the ledger with one write; their
    /// sites marked for the next render.
    fn record_edits(&self, changes: &[Change], dirty: &DirtySites) -> Result<(), LocalError> {
        let (edits, edited): (Vec<_>, Vec<&Change>) = changes
            .iter()
            .filter_map(|c| Some((edit_of(c)?, c)))
            .unzip();
        self.record(|l| {
            for (site, edit) in edits {
                if let Some(s) = l.sites.get_mut(site) {
                    edit(s);
                }
            }
        })?;
        for change in edited {
            dirty.mark_edit(change);
        }
        Ok(())
    }

    /// A node, unless the emulated cloud refuses it (a test hook): its ledger entry, a private
    /// directory, its namespace with a port on the site switch, and the holder process that
    /// keeps its namespaces.
    fn create_node(
        &self,
        plan: &Plan,
        site: &str,
        node: &str,
        role: Role,
        dirty: &DirtySites,
    ) -> Result<Vec<String>, LocalError> {
        let c = &self.cluster.name;
        let np = plan.node(node).ok_or_else(|| LocalError::NodeNotInPlan {
            node: node.to_owned(),
        })?;
        if let Some(reason) = self.refusal(node) {
            return Err(LocalError::Refused {
                node: node.to_owned(),
                reason,
            });
        }
        let sp = plan.site(site).ok_or_else(|| LocalError::SiteNotInPlan {
            site: site.to_owned(),
        })?;
        let ns = self.ns(node);
        let entry = NodeEntry {
            site: site.to_owned(),
            role,
            state: ObjState::Creating,
            lan_ip: np.lan_ip,
            port: names::node_port(sp.subnet, np.lan_ip),
            mac: names::node_mac(np.lan_ip),
            holder_pid: None,
        };
        self.record(|l| {
            l.record_namespace(&ns);
            l.nodes.insert(node.to_owned(), entry.clone());
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
        let machine = crate::machine::Machine {
            netns: ns.clone(),
            hostname: node.to_owned(),
            state_dir: dir.clone(),
            slurm: crate::machine::slurm_role(role),
        };
        let pid = infra::start_holder(&machine, &self.opts.exe, self.opts.agent_period)?;
        self.record(|l| {
            if let Some(n) = l.nodes.get_mut(node) {
                n.state = ObjState::Ready;
                n.holder_pid = Some(pid);
            }
        })?;
        dirty.mark(site);
        Ok(vec![format!(
            "{} on {}, holder pid {pid}",
            np.lan_ip, entry.port
        )])
    }

    /// A floating IP for `node`: the one it has, or the first free one; its router NATs it.
    fn assign_floating_ip(&self, site: &str, node: &str) -> Result<Vec<String>, LocalError> {
        let fip = self.record(|l| {
            if let Some(ip) = l.sites.get(site).and_then(|s| s.floating_ips.get(node)) {
                return Ok::<_, LocalError>(*ip);
            }
            let slot = l.free_floating_slot();
            let ip = names::floating_ip(slot).ok_or_else(|| LocalError::NoFloatingIp {
                site: site.to_owned(),
                node: node.to_owned(),
            })?;
            if let Some(s) = l.sites.get_mut(site) {
                s.floating_ips.insert(node.to_owned(), ip);
            }
            Ok(ip)
        })??;
        self.render_router(site)?;
        Ok(vec![format!("{fip}")])
    }

    /// A relay pair's virtual address recorded (the router sends the pair's floating IP to it),
    /// or, with `None`, forgotten with that floating IP.
    fn virtual_address(
        &self,
        site: &str,
        name: &str,
        address: Option<Ipv4Addr>,
    ) -> Result<Vec<String>, LocalError> {
        self.record(|l| {
            if let Some(s) = l.sites.get_mut(site) {
                match address {
                    Some(ip) => {
                        s.virtual_addresses.insert(name.to_owned(), ip);
                    }
                    None => {
                        s.virtual_addresses.remove(name);
                        // A single gateway that took the pair's place keeps its public IP.
                        if !l.nodes.contains_key(name) {
                            s.floating_ips.remove(name);
                        }
                    }
                }
            }
        })?;
        self.render_router(site)?;
        Ok(Vec::new())
    }

    /// A node's namespace and directory removed, and the node with its floating IP and address
    /// pairs out of the ledger; its site, if it stays, rendered without it. A floating IP a
    /// relay pair now goes by (the single gateway's name is the pair's identity) stays.
    fn remove_node(
        &self,
        plan: &Plan,
        site: &str,
        node: &str,
        dirty: &DirtySites,
    ) -> Result<Vec<String>, LocalError> {
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
                if !s.virtual_addresses.contains_key(node) {
                    s.floating_ips.remove(node);
                }
                s.allowed_address_pairs.remove(node);
            }
        })?;
        if plan.site(site).is_some() {
            self.render_router(site)?;
            dirty.mark(site);
        }
        Ok(Vec::new())
    }

    /// A site's data store, router and switch removed, and the site out of the ledger.
    fn remove_network(&self, site: &str, dirty: &DirtySites) -> Result<Vec<String>, LocalError> {
        let c = &self.cluster.name;
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
        dirty.forget(site);
        Ok(Vec::new())
    }

    fn render_router(&self, site: &str) -> Result<(), LocalError> {
        let floating: Vec<(Ipv4Addr, Ipv4Addr)> = {
            let l = self.lock();
            let Some(s) = l.sites.get(site) else {
                return Ok(());
            };
            // A pair's identity leads to its virtual address, a relay's name to its own.
            s.floating_ips
                .iter()
                .filter_map(|(name, fip)| {
                    let lan = s
                        .virtual_addresses
                        .get(name)
                        .copied()
                        .or_else(|| Some(l.nodes.get(name)?.lan_ip))?;
                    Some((lan, *fip))
                })
                .collect()
        };
        infra::render_router(&self.cluster.name, site, &floating)
    }

    /// Renders port security and security groups of the sites whose rules or ports changed.
    fn flush(&self, plan: &Plan, dirty: &DirtySites) -> Result<(), LocalError> {
        let sites = dirty.take();
        let l = self.lock().clone();
        let results: Vec<Result<(), LocalError>> = std::thread::scope(|s| {
            let handles: Vec<_> = sites
                .iter()
                .filter_map(|(site, dirt)| {
                    let entry = l.sites.get(site).filter(|e| e.state == ObjState::Ready)?;
                    Some((site, dirt, entry))
                })
                .map(|(site, dirt, entry)| {
                    let l = &l;
                    let render = move || self.render_site(plan, l, (site, entry), dirt);
                    (site, s.spawn(render))
                })
                .collect();
            handles
                .into_iter()
                .map(|(site, h)| {
                    h.join()
                        .unwrap_or_else(|_| Err(LocalError::RenderPanicked { site: site.clone() }))
                })
                .collect()
        });
        results.into_iter().collect()
    }

    /// What `dirt` says changed at the site: its port security, and the security-group table
    /// of each node in a changed group (with only a relays' group changed, only the relays';
    /// at 50 sites re-rendering every node for the relays' rules cost 8 s of `up`).
    fn render_site(
        &self,
        plan: &Plan,
        l: &Ledger,
        (site, entry): (&str, &SiteEntry),
        dirt: &Dirt,
    ) -> Result<(), LocalError> {
        let nodes: Vec<(&String, &NodeEntry)> = l
            .nodes
            .iter()
            .filter(|(name, n)| {
                n.site == site && n.state == ObjState::Ready && sh::netns_exists(&self.ns(name))
            })
            .collect();
        if *dirt == Dirt::All {
            self.render_ports(site, entry, &nodes)?;
        }
        let groups = plan
            .site(site)
            .map(|s| s.security_groups.as_slice())
            .unwrap_or(&[]);
        let changed = |g: &hybridgrid_core::plan::SecurityGroup| match dirt {
            Dirt::All => true,
            Dirt::Groups(names) => names.contains(&g.name),
        };
        for (name, _) in &nodes {
            let member =
                |g: &&hybridgrid_core::plan::SecurityGroup| g.members.iter().any(|m| m == *name);
            if !groups.iter().filter(member).any(changed) {
                continue;
            }
            // The rules the "cloud" holds, in the groups the plan puts this node in.
            let rules: Vec<&SgRule> = groups
                .iter()
                .filter(member)
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
        let nodes_group = format!("{}-{site}-nodes", self.cluster.name);
        if let Dirt::Groups(names) = dirt
            && !names.contains(&nodes_group)
        {
            return Ok(());
        }
        let store_rules: Vec<&SgRule> = groups
            .iter()
            .filter(|g| g.name == nodes_group)
            .filter_map(|g| entry.security_groups.get(&g.name))
            .flatten()
            .collect();
        crate::datastore::render_security_group(
            &self.cluster.name,
            site,
            &store_rules,
            l.stateless_security_groups,
        )
    }

    /// The site switch's port security: each node's port and the data store's.
    fn render_ports(
        &self,
        site: &str,
        entry: &SiteEntry,
        nodes: &[(&String, &NodeEntry)],
    ) -> Result<(), LocalError> {
        let mut ports: Vec<Port> = nodes
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
        ports.extend(crate::datastore::port(
            &self.cluster.name,
            site,
            entry.subnet,
        ));
        infra::render_port_security(&self.cluster.name, site, &ports)
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
        crate::datastore::deliver_job_env(self, plan, np, node_config.slurm.role)?;
        if np.is_relay() {
            self.deliver_preshared_keys(np)?;
        }
        if let Some(pair) = &np.pair {
            self.deliver_pair_key(node, &pair.identity)?;
        }
        let text =
            serde_json::to_string_pretty(&node_config).map_err(|source| LocalError::Encode {
                path: config.clone(),
                source,
            })?;
        crate::ledger::write_atomic(&config, text.as_bytes(), 0o644)?;
        self.agent_apply(np, Duration::ZERO)
    }

    /// A relay's pairs' preshared keys into its own state (0600), or none left there.
    fn deliver_preshared_keys(&self, node: &NodePlan) -> Result<(), LocalError> {
        let keys = hybridgrid_engine::preshared::load(self.cluster_dir())?;
        let path = self
            .node_dir(&node.name)
            .join(hybridgrid_engine::preshared::PRESHARED_KEYS_FILE);
        let json = keys.for_node(node.mesh_name());
        let bytes = json.as_ref().map(String::as_bytes);
        Ok(hybridgrid_engine::state::write_or_remove(
            &path, bytes, 0o600,
        )?)
    }

    /// A relay pair's shared private key into the relay's own key file (0600, in its 0700
    /// `wg/`), where the agent takes its key from; written only when it differs.
    fn deliver_pair_key(&self, node: &str, identity: &str) -> Result<(), LocalError> {
        let keys = hybridgrid_engine::pair_keys::load(self.cluster_dir())?;
        let Some(key) = keys.for_pair(identity) else {
            return Err(LocalError::NoPairKey {
                node: node.to_owned(),
                pair: identity.to_owned(),
            });
        };
        let dir = self.node_dir(node).join("wg");
        create_private_dir(&dir)?;
        let path = dir.join("private.key");
        if std::fs::read_to_string(&path).ok().as_deref() != Some(key) {
            crate::ledger::write_atomic(&path, key.as_bytes(), 0o600)?;
        }
        Ok(())
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

/// `changes` with the leading section of each site's network, WAN, security groups and rules
/// (the core puts it first, site after site) regrouped by kind, so that every site's network is
/// made at once and all rules are one ledger write. Within a kind, and within a site, the order
/// stays: nothing comes before what it needs.
fn sites_by_kind(changes: &[Change]) -> Vec<Change> {
    let stage = |c: &Change| match c {
        Change::CreateNetwork { .. } => Some(0),
        Change::SetWan { .. } => Some(1),
        Change::CreateSecurityGroup { .. } => Some(2),
        Change::AddRule { .. } => Some(3),
        _ => None,
    };
    let lead = changes.iter().take_while(|c| stage(c).is_some()).count();
    let mut out = changes[..lead].to_vec();
    out.sort_by_key(stage);
    out.extend_from_slice(&changes[lead..]);
    out
}

/// An edit of a site's ledger entry to apply.
type SiteEdit<'c> = Box<dyn FnOnce(&mut SiteEntry) + 'c>;

/// A change to what the "cloud" holds for a site (security groups, rules, address pairs): the
/// site and the edit of its ledger entry (none for a site the ledger does not hold), which the
/// next flush renders; `None` for a change that makes something.
fn edit_of(change: &Change) -> Option<(&str, SiteEdit<'_>)> {
    let edit: SiteEdit<'_> = match change {
        Change::CreateSecurityGroup { group, .. } => Box::new(move |s| {
            s.security_groups.entry(group.clone()).or_default();
        }),
        Change::AddRule { group, rule, .. } => Box::new(move |s| {
            let rules = s.security_groups.entry(group.clone()).or_default();
            if !rules.iter().any(|r| r.key() == rule.key()) {
                rules.push(rule.clone());
            }
        }),
        Change::RemoveRule { group, rule, .. } => Box::new(move |s| {
            if let Some(rules) = s.security_groups.get_mut(group) {
                rules.retain(|r| r.key() != rule.key());
            }
        }),
        Change::RemoveSecurityGroup { group, .. } => Box::new(move |s| {
            s.security_groups.remove(group);
        }),
        Change::AddAddressPairs { node, pairs, .. } => Box::new(move |s| {
            let list = s.allowed_address_pairs.entry(node.clone()).or_default();
            for p in pairs {
                if !list.contains(p) {
                    list.push(*p);
                }
            }
        }),
        _ => return None,
    };
    Some((change.site(), edit))
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

/// Reports the outcome of one change to `progress`; an applied change counts for the crash hook.
fn report(
    change: &Change,
    outcome: Result<Vec<String>, LocalError>,
    seconds: f64,
    progress: Sink<'_>,
) -> Result<(), LocalError> {
    match outcome {
        Ok(details) => {
            progress(Event::Applied {
                summary: change.summary(),
                seconds,
                details,
            });
            crate::crash::applied_one();
            Ok(())
        }
        Err(e) => {
            progress(Event::Failed {
                summary: change.summary(),
                error: hybridgrid_core::error_chain(&e),
            });
            Err(e)
        }
    }
}

/// No error, the one error, or how many failed with the first of them.
fn one_error(mut errors: Vec<LocalError>) -> Result<(), LocalError> {
    if errors.is_empty() {
        return Ok(());
    }
    let count = errors.len();
    let first = errors.remove(0);
    Err(if count == 1 {
        first
    } else {
        LocalError::Failed {
            count,
            first: Box::new(first),
        }
    })
}
