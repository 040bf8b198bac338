//! The openstack provider behind the engine's [`Provider`] trait: observe the clouds, apply a
//! round's changes (`apply.rs`), `down` (`down.rs`), `validate --online` (`validate.rs`).
//! The trait is synchronous; the provider runs its API calls on the caller's tokio runtime when
//! there is one, else on its own.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures::future::try_join_all;
use hybridgrid_core::diff::{Change, Observed};
use hybridgrid_core::model::Cluster;
use hybridgrid_core::plan::Plan;
use hybridgrid_engine::doctor::Facts;
use hybridgrid_engine::path::PathFacts;
use hybridgrid_engine::{
    AgentRun, Applied, DownReport, EngineError, Event, Nodes, Probe, Provider, Settled, Sink,
    StatusReport,
};
use serde::{Deserialize, Serialize};

use crate::api::{self, CallTrace, Cloud, CrashSwitch};
use crate::apply::Created;
use crate::boot;
use crate::error::{OsError, Result};
use crate::ledger::{LEDGER_FILE, Ledger, LedgerSite};
use crate::site::SiteOps;

#[derive(Debug, Clone)]
pub struct Options {
    /// The clouds file to read, and only it. `None`: the standard locations
    /// (`OS_CLIENT_CONFIG_FILE`, `./clouds.yaml`, `~/.config/openstack/clouds.yaml`,
    /// `/etc/openstack/clouds.yaml`, with `secure.yaml`).
    pub clouds_file: Option<PathBuf>,
    /// `<state_root>/<cluster>/openstack-ledger.json` is the ledger.
    pub state_root: PathBuf,
    /// What `~/` stands for in the cluster file's `ssh_public_key` (the user's home).
    pub home: Option<PathBuf>,
    /// Test hook: `up` fails as if killed right after this many create calls went through
    /// (their ids are not recorded).
    pub crash_after: Option<usize>,
    /// Where nodes download the agent binary at first boot (HTTPS URL); `None`: the image has
    /// it at `/usr/local/bin/hybridgrid-agent`, or the node channel brings it after boot.
    pub agent_url: Option<String>,
    /// How long a server may take to become ACTIVE (and to disappear on delete).
    pub server_timeout: Duration,
    /// How long `up` waits for a booted relay to report its WireGuard key (while its console log
    /// shows the boot progressing); zero: not at all.
    pub boot_timeout: Duration,
    /// Receives every API call with its timing.
    pub trace: Option<CallTrace>,
    /// Whether nodes are reached over SSH (the node channel): asked what they applied,
    /// configured after boot, used by `exec`, `status`, `submit`. Off only for tests against
    /// servers that do not boot (the test bed's fake host): then what the provider delivered
    /// is taken as applied.
    pub node_channel: bool,
    /// The agent binary `up` installs on every node over the channel (`hybridgrid-agent`);
    /// `None`: the image has it.
    pub agent_binary: Option<PathBuf>,
    /// The SHA-256 a node checks the binary from `agent_url` against.
    pub agent_sha256: Option<String>,
    /// The full `hybridgrid` `up` installs on the master of a cluster with on-demand workers
    /// (its power service).
    pub power_binary: Option<PathBuf>,
    /// Set in the power service on the master: make and remove on-demand workers only, reaching
    /// them directly ([`crate::power`]).
    pub power_host: Option<crate::power_host::PowerHost>,
}

impl Options {
    pub fn new(state_root: PathBuf) -> Self {
        Options {
            clouds_file: None,
            state_root,
            home: None,
            crash_after: None,
            agent_url: None,
            server_timeout: Duration::from_secs(600),
            boot_timeout: Duration::from_secs(900),
            trace: None,
            node_channel: true,
            agent_binary: None,
            agent_sha256: None,
            power_binary: None,
            power_host: None,
        }
    }
}

/// A problem found by [`OpenStack::validate_online`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    pub site: String,
    pub message: String,
    /// Worth saying, and no reason to stop: `up` can build the cluster all the same.
    pub warning: bool,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "site {}: {}", self.site, self.message)
    }
}

/// A cluster on OpenStack clouds.
#[derive(Debug)]
pub struct OpenStack {
    pub(crate) cluster: Cluster,
    pub(crate) opts: Options,
    pub(crate) ledger: Arc<Ledger>,
    pub(crate) crash: Arc<CrashSwitch>,
    /// The sites of the cluster file, connected once per run.
    connected: tokio::sync::OnceCell<Vec<SiteOps>>,
    /// The sites' object stores with their keys, looked up (or made) once per run.
    pub(crate) stores: tokio::sync::OnceCell<BTreeMap<String, hybridgrid_core::store::StoreAccess>>,
    /// What the last `observe` saw: `apply` plans the new servers' user data from it.
    /// Per server this value created: seconds from its create call to ACTIVE.
    server_seconds: Mutex<BTreeMap<String, f64>>,
    /// A runtime of our own, for callers without one.
    runtime: OnceLock<std::result::Result<tokio::runtime::Runtime, Arc<std::io::Error>>>,
    /// The agent binary as nodes get it, prepared once per run.
    pub(crate) agent_binary: Mutex<Option<crate::nodes::AgentBinary>>,
    /// (site, image) → its login user, from Glance's image properties (`observe`).
    pub(crate) image_users: Mutex<BTreeMap<(String, String), String>>,
    /// Each node's Slurm version as it last reported it (`observe`, `agent install`).
    pub(crate) slurm_versions: Mutex<BTreeMap<String, String>>,
}

fn err(e: OsError) -> EngineError {
    EngineError::provider(e)
}

/// A group is removed only with its site (every site has the same two): a `RemoveSecurityGroup`
/// of a site still in the plan is partial.
fn groups_kept(plan: &Plan, changes: &[Change]) -> Vec<(Change, String)> {
    changes
        .iter()
        .filter(
            |c| matches!(c, Change::RemoveSecurityGroup { site, .. } if plan.site(site).is_some()),
        )
        .map(|c| {
            (
                c.clone(),
                "a site keeps its security groups while it is in the file".into(),
            )
        })
        .collect()
}

impl OpenStack {
    /// Opens the cluster's ledger (nothing is written and no cloud contacted yet).
    pub fn new(cluster: &Cluster, opts: Options) -> Result<Self> {
        let path = opts.state_root.join(&cluster.name).join(LEDGER_FILE);
        let ledger = Ledger::open(path, &cluster.name)?;
        let _ = api::anchor_appcred();
        Ok(OpenStack {
            cluster: cluster.clone(),
            crash: Arc::new(CrashSwitch::new(opts.crash_after)),
            opts,
            ledger: Arc::new(ledger),
            connected: tokio::sync::OnceCell::new(),
            stores: tokio::sync::OnceCell::new(),
            server_seconds: Mutex::new(BTreeMap::new()),
            runtime: OnceLock::new(),
            agent_binary: Mutex::new(None),
            image_users: Mutex::new(BTreeMap::new()),
            slurm_versions: Mutex::new(BTreeMap::new()),
        })
    }

    pub fn ledger_path(&self) -> PathBuf {
        self.ledger.path().to_owned()
    }

    /// Per server created through this value: seconds from its create call to ACTIVE.
    pub fn server_seconds(&self) -> BTreeMap<String, f64> {
        lock(&self.server_seconds).clone()
    }

    /// Runs `f` to completion: on the caller's multi-threaded runtime, else on our own.
    pub(crate) fn block<F: Future>(&self, f: F) -> std::result::Result<F::Output, EngineError> {
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            if handle.runtime_flavor() != tokio::runtime::RuntimeFlavor::MultiThread {
                return Err(err(OsError::RuntimeFlavor));
            }
            return Ok(tokio::task::block_in_place(|| handle.block_on(f)));
        }
        let rt = self.runtime.get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .map_err(Arc::new)
        });
        match rt {
            Ok(rt) => Ok(rt.block_on(f)),
            Err(source) => Err(err(OsError::Runtime {
                source: source.clone(),
            })),
        }
    }

    /// The sites of the file, and those only the ledger still knows (removed from the file:
    /// observed, so that the plan removes them).
    pub(crate) async fn connected(&self) -> Result<&[SiteOps]> {
        self.connected
            .get_or_try_init(|| async {
                let ledger = self.ledger.snapshot();
                let left: BTreeMap<String, LedgerSite> = ledger
                    .sites
                    .into_iter()
                    .filter(|(name, _)| self.cluster.site(name).is_none())
                    .collect();
                self.sites(&left).await
            })
            .await
            .map(Vec::as_slice)
    }

    /// The SSH public key: the file's `ssh_public_key` is a key or a path to one (`~` = HOME).
    pub(crate) fn ssh_public_key(&self) -> Result<Option<String>> {
        let Some(k) = &self.cluster.ssh_public_key else {
            return Ok(None);
        };
        let k = k.trim();
        if k.starts_with("ssh-") || k.starts_with("ecdsa-") || k.starts_with("sk-") {
            return Ok(Some(k.to_owned()));
        }
        let path = crate::channel::expand_home(k, self.opts.home.as_deref());
        std::fs::read_to_string(&path)
            .map(|t| Some(t.trim().to_owned()))
            .map_err(|source| OsError::SshPublicKey { path, source })
    }

    /// Connects to every site's cloud, concurrently.
    pub(crate) async fn sites(&self, extra: &BTreeMap<String, LedgerSite>) -> Result<Vec<SiteOps>> {
        let config = api::load_config(self.opts.clouds_file.as_deref())?;
        let ssh = self.ssh_public_key()?;
        let power_key = match &self.opts.power_host {
            Some(host) => Some(host.public_key()?),
            None => None,
        };
        let mut specs: Vec<(hybridgrid_core::model::Site, String)> = Vec::new();
        for site in &self.cluster.sites {
            let cloud = site.cloud.clone().ok_or_else(|| OsError::NoCloudName {
                site: site.name.clone(),
            })?;
            specs.push((site.clone(), cloud));
        }
        // Sites only the ledger knows (removed from the file): for `down`.
        for (name, entry) in extra {
            if specs.iter().all(|(s, _)| &s.name != name) {
                let mut site = self.cluster.sites[0].clone();
                site.name = name.clone();
                site.network = None;
                site.master = false;
                site.cloud = Some(entry.cloud.clone());
                if let Some(subnet) = entry.subnet {
                    site.subnet = subnet;
                }
                specs.push((site, entry.cloud.clone()));
            }
        }
        // One connection per cloud entry.
        let clouds: BTreeSet<&String> = specs.iter().map(|(_, c)| c).collect();
        let connected = try_join_all(clouds.iter().map(|c| {
            let site = specs
                .iter()
                .find(|(_, x)| x == *c)
                .map(|(s, _)| s.name.clone())
                .unwrap_or_default();
            let config = &config;
            let crash = self.crash.clone();
            let trace = self.opts.trace.clone();
            async move {
                Cloud::connect(config, &site, c, crash, trace)
                    .await
                    .map(|cl| ((*c).clone(), Arc::new(cl)))
            }
        }))
        .await?;
        let by_name: BTreeMap<String, Arc<Cloud>> = connected.into_iter().collect();
        Ok(specs
            .into_iter()
            .map(|(site, cloud)| {
                let mut ops = SiteOps::new(
                    &self.cluster.name,
                    site,
                    by_name[&cloud].clone(),
                    self.ledger.clone(),
                    (self.opts.agent_url.clone(), self.opts.agent_sha256.clone()),
                    ssh.clone(),
                    self.opts.server_timeout,
                );
                ops.power_key = power_key.clone();
                ops
            })
            .collect())
    }

    /// What exists of the cluster in its clouds; floating IPs allocated for a relay but not on
    /// its port are `reserved_public_ips`.
    pub async fn observe_async(&self, layout: &Plan) -> Result<Observed> {
        let sites = self.connected().await?;
        self.learn_login_users(sites).await;
        let (mut observed, unattached) = self.observe_full(sites, layout).await?;
        for (node, (_, ip)) in unattached {
            observed.reserved_public_ips.insert(node, ip);
        }
        if self.opts.node_channel {
            let instances = observed
                .nodes
                .iter()
                .filter_map(|(n, o)| Some((n.clone(), o.instance.clone()?)))
                .collect();
            self.channel().forget_replaced(&instances)?;
            self.ask_nodes(&mut observed).await;
        }
        self.pair_public_keys(layout, &mut observed)?;
        Ok(observed)
    }

    /// A relay pair's relays are known by the pair's key where this machine made it
    /// (`engine::pair_keys`, `up`), whatever key a relay made at its first boot before it got
    /// the pair's (its console and its report say that one until then). Elsewhere (the power
    /// service on the master) the relays' own word stands.
    fn pair_public_keys(&self, layout: &Plan, observed: &mut Observed) -> Result<()> {
        let cluster_dir = self.opts.state_root.join(&self.cluster.name);
        let keys = hybridgrid_engine::pair_keys::load(&cluster_dir)?;
        for relay in layout.nodes.iter().filter(|n| n.pair.is_some()) {
            let key = keys
                .for_pair(relay.mesh_name())
                .and_then(|k| hybridgrid_core::keys::PrivateKey::from_base64(k).ok());
            if let (Some(seen), Some(key)) = (observed.nodes.get_mut(&relay.name), key) {
                seen.public_key = Some(key.public_key());
            }
        }
        Ok(())
    }

    /// Each site's images' login users from Glance (once per run; only when the cluster file
    /// names no `ssh_user`). An image Glance does not show keeps the rule of its name.
    async fn learn_login_users(&self, sites: &[SiteOps]) {
        if self.cluster.ssh_user.is_some() || !lock(&self.image_users).is_empty() {
            return;
        }
        let wanted = sites.iter().flat_map(|ops| {
            let site = &ops.site;
            let images = std::iter::once(&site.gateway.image)
                .chain(site.workers.iter().map(|g| &g.spec.image))
                .flatten()
                .collect::<BTreeSet<_>>();
            images.into_iter().map(move |image| async move {
                let user = ops
                    .image(image)
                    .await
                    .ok()
                    .and_then(|v| crate::login::user_from_image(&v));
                ((site.name.clone(), image.clone()), user)
            })
        });
        let found = futures::future::join_all(wanted).await;
        let mut users = lock(&self.image_users);
        for (key, user) in found {
            if let Some(user) = user {
                users.insert(key, user);
            }
        }
    }

    /// The observed state, and the relays whose floating IP is allocated but not attached.
    async fn observe_full(
        &self,
        sites: &[SiteOps],
        layout: &Plan,
    ) -> Result<(Observed, BTreeMap<String, (String, Ipv4Addr)>)> {
        let results = try_join_all(sites.iter().map(|s| s.observe(layout))).await?;
        let mut observed = Observed::default();
        let mut unattached = BTreeMap::new();
        for (ops, (site, nodes, fips)) in sites.iter().zip(results) {
            observed.sites.insert(ops.site.name.clone(), site);
            observed.nodes.extend(nodes);
            for (node, ip) in fips {
                unattached.insert(node, (ops.site.name.clone(), ip));
            }
        }
        Ok((observed, unattached))
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Provider for OpenStack {
    fn name(&self) -> &'static str {
        "openstack"
    }

    fn observe(&self, layout: &Plan) -> std::result::Result<Observed, EngineError> {
        self.block(self.observe_async(layout))?.map_err(err)
    }

    fn apply(
        &self,
        plan: &Plan,
        observed: &Observed,
        changes: &[Change],
        sink: Sink<'_>,
    ) -> std::result::Result<Applied, EngineError> {
        self.block(self.apply_async(plan, observed, changes, sink))?
            .map_err(err)
    }

    fn settle(&self, plan: &Plan, sink: Sink<'_>) -> std::result::Result<Settled, EngineError> {
        self.block(self.settle_async(plan, sink))?.map_err(err)
    }

    /// Reports each resource as it is deleted (`- <site>: <kind> <name> (<id>)`).
    fn down(&self, sink: Sink<'_>) -> std::result::Result<DownReport, EngineError> {
        self.block(self.down_async(sink))?.map_err(err)
    }

    fn status(&self, plan: &Plan, probe: Probe) -> std::result::Result<StatusReport, EngineError> {
        self.block(self.status_of(plan, probe))?.map_err(err)
    }

    fn nodes(&self) -> Option<&dyn Nodes> {
        self.opts.node_channel.then_some(self as &dyn Nodes)
    }

    fn stores(&self) -> Option<&dyn hybridgrid_engine::Stores> {
        Some(self)
    }
}

/// The clouds' own object stores (`stores.rs`): endpoints from the catalogs, the EC2 keys `up`
/// made. A cloud's store shows its users no counters: what the stores sent is counted on the
/// nodes (`store_files`).
impl hybridgrid_engine::Stores for OpenStack {
    fn access(
        &self,
        plan: &Plan,
        site: &str,
    ) -> std::result::Result<Option<hybridgrid_core::store::StoreAccess>, EngineError> {
        if !plan.site_has_store_data(site) {
            return Ok(None);
        }
        self.block(async {
            let sites = self.connected().await?;
            match sites.iter().find(|o| o.site.name == site) {
                Some(ops) => self.store_access(ops).await.map(Some),
                None => Err(OsError::SiteNotInPlan {
                    site: site.to_owned(),
                }),
            }
        })?
        .map_err(err)
    }

    fn served_bytes(&self, plan: &Plan) -> BTreeMap<String, u64> {
        self.block(self.store_reads(plan)).unwrap_or_default()
    }
}

/// Through the node channel (SSH, workers through their site's relay).
impl Nodes for OpenStack {
    fn doctor_facts(&self, plan: &Plan) -> std::result::Result<Facts, EngineError> {
        self.block(self.doctor_facts_async(plan))?.map_err(err)
    }

    fn path_facts(
        &self,
        plan: &Plan,
        src: &str,
        dst: &str,
    ) -> std::result::Result<PathFacts, EngineError> {
        self.block(self.path_facts_async(plan, src, dst))
    }

    /// Runs `cmd` on the node over SSH with this process's terminal.
    fn exec(&self, node: &str, cmd: &[String]) -> std::result::Result<i32, EngineError> {
        let plan = self.current_plan()?;
        let args = self.exec_args(&plan, node, cmd).map_err(err)?;
        let status = std::process::Command::new("ssh")
            .args(&args)
            .status()
            .map_err(|source| {
                err(OsError::Ssh {
                    node: node.to_owned(),
                    source,
                })
            })?;
        Ok(status.code().unwrap_or(255))
    }

    fn run(
        &self,
        node: &str,
        script: &str,
        input: &[u8],
    ) -> std::result::Result<(i32, Vec<u8>), EngineError> {
        let plan = self.current_plan()?;
        self.block(self.run_on(&plan, node, script, input))?
            .map_err(err)
    }

    fn keys_dir(&self) -> PathBuf {
        self.opts.state_root.join(&self.cluster.name)
    }

    fn agent_each(
        &self,
        plan: &Plan,
        runs: Vec<AgentRun>,
    ) -> BTreeMap<String, std::result::Result<Vec<u8>, EngineError>> {
        match self.block(self.agent_each_async(plan, &runs)) {
            Ok(out) => out
                .into_iter()
                .map(|(node, r)| (node, r.map_err(err)))
                .collect(),
            Err(e) => {
                let why = e.to_string();
                runs.iter()
                    .map(|r| {
                        let e = OsError::AgentEach {
                            node: r.node.clone(),
                            detail: why.clone(),
                        };
                        (r.node.clone(), Err(err(e)))
                    })
                    .collect()
            }
        }
    }
}

impl OpenStack {
    /// The plan of what exists now, from the clouds alone (no node is asked): where the nodes
    /// are, for `exec` and `run`.
    fn current_plan(&self) -> std::result::Result<Plan, EngineError> {
        self.block(async { self.plan_from_clouds(self.connected().await?).await })?
            .map_err(err)
    }

    /// [`Self::current_plan`] on sites already connected.
    pub(crate) async fn plan_from_clouds(&self, sites: &[SiteOps]) -> Result<Plan> {
        let layout = hybridgrid_core::reconcile::layout(&self.cluster);
        let (mut observed, unattached) = self.observe_full(sites, &layout).await?;
        for (node, (_, ip)) in unattached {
            observed.reserved_public_ips.insert(node, ip);
        }
        Ok(hybridgrid_core::reconcile::plan(&self.cluster, &observed))
    }

    /// One round's changes. Relays' floating IPs are allocated first, so that every new
    /// relay's user data has its peers' endpoints ([`OpenStack::boot_plan`]); then the sites
    /// concurrently (`apply_site`), and the sites that left the file; then configuration of
    /// booted nodes ([`OpenStack::configure_booted`]); then the new servers are waited for
    /// (ACTIVE), so the next observe reads the relays' keys.
    async fn apply_async(
        &self,
        plan: &Plan,
        observed: &Observed,
        changes: &[Change],
        sink: Sink<'_>,
    ) -> Result<Applied> {
        let sites = self.connected().await?;
        let mut applied = Applied {
            partial: groups_kept(plan, changes),
        };
        if self.opts.power_host.is_none() {
            // Before a relay of a pair exists: the next look knows the pair's key.
            let cluster_dir = self.opts.state_root.join(&self.cluster.name);
            hybridgrid_engine::pair_keys::ensure(&cluster_dir, plan)?;
        }
        let boot_plan = self.boot_plan(sites, observed, changes).await?;
        let boot_plan = boot_plan.as_ref().unwrap_or(plan);
        let (created, removed) = self
            .apply_sites(sites, plan, boot_plan, changes, sink)
            .await?;
        applied.partial.extend(removed);
        let configured = self
            .configure_booted(sites, boot_plan, changes, &created, sink)
            .await?;
        applied.partial.extend(configured);
        self.await_active(created, sink).await?;
        Ok(applied)
    }

    /// The relays' floating IPs of the round (`AssignPublicIp`), allocated before any server is
    /// made, and the plan again with them: new servers' user data then has every relay's
    /// endpoint. `None` when nothing was allocated (the engine's plan is the one).
    ///
    /// The plan is made again from `observed`, what the engine's plan was made from, and these
    /// addresses (`reconcile::plan`, pure): the engine's plan has them as pending.
    async fn boot_plan(
        &self,
        sites: &[SiteOps],
        observed: &Observed,
        changes: &[Change],
    ) -> Result<Option<Plan>> {
        let to_allocate: Vec<(&str, &str)> = changes
            .iter()
            .filter_map(|c| match c {
                Change::AssignPublicIp { site, node } => Some((site.as_str(), node.as_str())),
                _ => None,
            })
            .collect();
        if to_allocate.is_empty() {
            return Ok(None);
        }
        let allocated = try_join_all(to_allocate.iter().map(|(site, node)| async move {
            let ops = sites.iter().find(|o| o.site.name == *site).ok_or_else(|| {
                OsError::SiteNotInFile {
                    site: (*site).to_owned(),
                }
            })?;
            let (ip, _) = ops.allocate_floating_ip(node).await?;
            Ok::<_, OsError>(((*node).to_owned(), ip))
        }))
        .await?;
        let mut view = observed.clone();
        view.reserved_public_ips.extend(allocated);
        Ok(Some(hybridgrid_core::reconcile::plan(&self.cluster, &view)))
    }

    /// The sites of the plan concurrently ([`crate::apply::apply_site`]), then the sites that
    /// left the file concurrently: their nodes, then everything else of theirs. The nodes made,
    /// and what could not be removed (partial).
    async fn apply_sites(
        &self,
        sites: &[SiteOps],
        plan: &Plan,
        boot_plan: &Plan,
        changes: &[Change],
        sink: Sink<'_>,
    ) -> Result<(Created, Vec<(Change, String)>)> {
        let (kept, leaving): (Vec<&SiteOps>, Vec<&SiteOps>) = sites
            .iter()
            .partition(|o| plan.site(&o.site.name).is_some());
        let results = try_join_all(kept.into_iter().map(|ops| {
            let mine: Vec<Change> = changes
                .iter()
                .filter(|c| c.site() == ops.site.name && !matches!(c, Change::ConfigureNode { .. }))
                .cloned()
                .collect();
            crate::apply::apply_site(ops, boot_plan, mine, sink)
        }))
        .await?;
        let removed = try_join_all(leaving.into_iter().map(|ops| {
            let mine: Vec<&Change> = changes
                .iter()
                .filter(|c| c.site() == ops.site.name)
                .collect();
            self.remove_site(ops, mine, sink)
        }))
        .await?;
        Ok((
            results.into_iter().flatten().collect(),
            removed.into_iter().flatten().collect(),
        ))
    }

    /// Configuration of the round's nodes: a new node's is in its server's user data (reported
    /// with its node's seconds); a booted node's goes over the node channel, or without it
    /// through server metadata ([`OpenStack::deliver`]). What could not be delivered, as partial.
    async fn configure_booted(
        &self,
        sites: &[SiteOps],
        plan: &Plan,
        changes: &[Change],
        created: &Created,
        sink: Sink<'_>,
    ) -> Result<Vec<(Change, String)>> {
        let new_nodes: BTreeSet<&str> = changes
            .iter()
            .filter_map(|c| match c {
                Change::CreateNode { node, .. } => Some(node.as_str()),
                _ => None,
            })
            .collect();
        let configure: Vec<&Change> = changes
            .iter()
            .filter(|c| matches!(c, Change::ConfigureNode { node, .. } if !new_nodes.contains(node.as_str())))
            .collect();
        let partial = if self.opts.node_channel {
            self.configure_nodes(plan, &configure, sink).await?
        } else {
            self.deliver(sites, plan, &configure, sink).await?
        };
        for c in changes {
            if let Change::ConfigureNode { node, .. } = c
                && new_nodes.contains(node.as_str())
            {
                sink(Event::Applied {
                    summary: c.summary(),
                    seconds: created
                        .iter()
                        .find(|n| n.node == *node)
                        .map_or(0.0, |n| n.seconds),
                    details: vec!["in the server's user data".into()],
                });
            }
        }
        Ok(partial)
    }

    /// Waits for the servers this round created to become ACTIVE.
    async fn await_active(&self, created: Created, sink: Sink<'_>) -> Result<()> {
        for new in created {
            let Some(task) = new.active else {
                continue;
            };
            let node = new.node;
            let (secs, again) = task.await.map_err(|source| OsError::ServerWaitTask {
                node: node.clone(),
                source,
            })??;
            if let Some(note) = again {
                sink(Event::Note(note));
            }
            sink(Event::Note(format!("{node} ACTIVE after {secs:.1}s")));
            lock(&self.server_seconds).insert(node, secs);
        }
        Ok(())
    }

    /// Configuration for booted nodes: a relay's peers go into its server metadata (its
    /// `hybridgrid agent pull` applies them). What cannot be delivered that way is returned as
    /// partial, with the reason.
    async fn deliver(
        &self,
        sites: &[SiteOps],
        plan: &Plan,
        configure: &[&Change],
        sink: Sink<'_>,
    ) -> Result<Vec<(Change, String)>> {
        let per_site = try_join_all(sites.iter().map(|ops| async move {
            let mine: Vec<&&Change> = configure
                .iter()
                .filter(|c| c.site() == ops.site.name)
                .collect();
            let mut partial = Vec::new();
            if mine.is_empty() {
                return Ok::<_, OsError>(partial);
            }
            let servers = ops.servers(false).await?;
            for c in mine {
                let Change::ConfigureNode { node, .. } = c else {
                    continue;
                };
                let (Some(np), Some(srv)) =
                    (plan.node(node), servers.iter().find(|s| &s.node == node))
                else {
                    partial.push(((*c).clone(), "the node's server is not there".into()));
                    continue;
                };
                if np.wireguard.is_none() {
                    partial.push((
                        (*c).clone(),
                        "on openstack only relays' WireGuard peers reach a booted node (server \
                         metadata); the node keeps what it booted with"
                            .into(),
                    ));
                    continue;
                }
                let items = hybridgrid_core::node_meta::items(&plan.node_config_without_hosts(np));
                let t = std::time::Instant::now();
                let metadata = match ops.set_delivery_metadata(srv, &items).await? {
                    Some(m) => m,
                    None => srv.metadata.clone(),
                };
                let left = self
                    .ledger
                    .snapshot()
                    .applied_config(node, &metadata)
                    .map(|a| {
                        hybridgrid_core::diff::config_differences(
                            Some(&a),
                            &plan.node_config_without_hosts(np),
                            &plan.hosts,
                        )
                    })
                    .unwrap_or_default();
                sink(Event::Applied {
                    summary: c.summary(),
                    seconds: t.elapsed().as_secs_f64(),
                    details: vec!["server metadata".into()],
                });
                if !left.is_empty() {
                    partial.push((
                        (*c).clone(),
                        format!(
                            "on openstack only WireGuard peers reach a booted node (server \
                             metadata); not delivered: {}",
                            left.join("; ")
                        ),
                    ));
                }
            }
            Ok(partial)
        }))
        .await?;
        Ok(per_site.into_iter().flatten().collect())
    }

    /// Servers of an earlier, interrupted run must be ACTIVE too; then relays that booted but
    /// have not reported their WireGuard key yet are waited for while they boot
    /// ([`boot::await_relay_key`]), so that `up` returns a cluster whose tunnels can come up.
    /// Either observes again (a server became ACTIVE, a key appeared) or notes what is pending.
    async fn settle_async(&self, plan: &Plan, sink: Sink<'_>) -> Result<Settled> {
        let sites = self.connected().await?;
        let keyless: Vec<&str> = plan
            .nodes
            .iter()
            .filter(|n| n.wireguard.as_ref().is_some_and(|w| w.public_key.is_none()))
            .map(|n| n.name.as_str())
            .collect();
        let boots = try_join_all(sites.iter().map(|ops| {
            let keyless = &keyless;
            async move {
                let list = ops.servers(true).await?;
                // Only servers still being built: one a user stopped (SHUTOFF) is left as it is.
                let pending: Vec<_> = list.iter().filter(|s| s.status == "BUILD").collect();
                for srv in &pending {
                    ops.wait_active(&srv.id, &srv.node).await?;
                }
                let mut keys = Vec::new();
                for srv in list.iter().filter(|s| keyless.contains(&s.node.as_str())) {
                    let wait = boot::await_relay_key(ops, &srv.id, self.opts.boot_timeout).await;
                    keys.push((srv.node.clone(), wait));
                }
                Ok::<_, OsError>((!pending.is_empty(), keys))
            }
        }));
        // The relays' keys (their consoles) and the nodes' boots (the channel) are waited for
        // at once: both end with the same first boots.
        let channel = async {
            if self.opts.node_channel {
                self.await_channel(plan, sink).await
            } else {
                (false, Vec::new())
            }
        };
        let (per_site, (answered, more)) = futures::join!(boots, channel);
        let (mut observe_again, mut pending) = boot::settled(&keyless, per_site?);
        observe_again |= answered;
        pending.extend(more);
        if !observe_again && self.opts.node_channel {
            self.ensure_power_service(plan, sink).await?;
        }
        // Buckets with the keys `up` made (the power service on the master holds none).
        if !observe_again && self.opts.power_host.is_none() {
            for made in self.ensure_buckets(plan).await? {
                sink(Event::Note(made));
            }
        }
        Ok(Settled {
            observe_again,
            pending,
        })
    }
}
