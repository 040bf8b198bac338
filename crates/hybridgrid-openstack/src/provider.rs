//! The openstack provider: observe, `up` (observe → plan → apply until nothing is left),
//! `down` and the online validation.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::{join_all, try_join_all};
use futures::{FutureExt, TryFutureExt};
use hybridgrid_core::diff::{Change, Observed};
use hybridgrid_core::model::Cluster;
use hybridgrid_core::node_meta;
use hybridgrid_core::plan::{self, Plan, Remote};
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::api::{self, CallTrace, Cloud, CrashSwitch, NET, NOVA, Req, s};
use crate::error::{OsError, Result};
use crate::ledger::{Kind, LEDGER_FILE, Ledger};
use crate::site::{SiteOps, find_by_name_or_id};

const MAX_ROUNDS: usize = 5;

#[derive(Debug, Clone)]
pub struct Options {
    /// The clouds file to read, and only it. `None`: the standard locations
    /// (`OS_CLIENT_CONFIG_FILE`, `./clouds.yaml`, `~/.config/openstack/clouds.yaml`,
    /// `/etc/openstack/clouds.yaml`, with `secure.yaml`).
    pub clouds_file: Option<PathBuf>,
    /// `<state_root>/<cluster>/openstack-ledger.json` is the ledger.
    pub state_root: PathBuf,
    /// Test hook: `up` fails as if killed right after this many create calls went through
    /// (their ids are not recorded).
    pub crash_after: Option<usize>,
    /// Where nodes download the hybridgrid binary (HTTPS URL); `None`: the image has it at
    /// `/usr/local/bin/hybridgrid`.
    pub agent_url: Option<String>,
    /// How long a server may take to become ACTIVE (and to disappear on delete).
    pub server_timeout: Duration,
    /// Receives every API call with its timing.
    pub trace: Option<CallTrace>,
}

impl Options {
    pub fn new(state_root: PathBuf) -> Self {
        Options {
            clouds_file: None,
            state_root,
            crash_after: None,
            agent_url: None,
            server_timeout: Duration::from_secs(600),
            trace: None,
        }
    }
}

/// What `up` reports as it goes.
#[derive(Debug, Clone)]
pub enum Progress {
    Round { round: usize, changes: usize },
    Applied { summary: String },
    ServerActive { node: String, seconds: f64 },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpReport {
    /// Rounds of observe → plan → apply, the last one finding nothing to do.
    pub rounds: usize,
    /// Every change applied, in words (`Change::summary`).
    pub applied: Vec<String>,
    /// Servers created by this run.
    pub servers_created: Vec<String>,
    /// Per server created by this run: seconds from its create call to ACTIVE.
    pub server_seconds: BTreeMap<String, f64>,
    /// Node configurations that differ from what the node applies: its user data at creation
    /// merged with the peers delivered through its server metadata. Only WireGuard peers are
    /// delivered after boot; other differences (routes, hosts of a grown cluster) are *not*
    /// applied on the nodes.
    pub config_not_delivered: Vec<String>,
    /// Relays whose WireGuard public key was not found in their console output (yet).
    pub pending_public_keys: Vec<String>,
    /// Changes the provider does not make (for example removing a whole site: use `down`).
    pub not_supported: Vec<String>,
    pub seconds: f64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotDeleted {
    pub site: String,
    pub kind: String,
    pub name: String,
    pub id: Option<String>,
    pub error: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DownReport {
    /// `site: kind name (id)` of everything deleted.
    pub deleted: Vec<String>,
    /// What could not be deleted, with the reason. Empty: nothing of the cluster is left.
    pub not_deleted: Vec<NotDeleted>,
}

/// A problem found by [`OpenStack::validate_online`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    pub site: String,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "site {}: {}", self.site, self.message)
    }
}

/// A cluster on OpenStack clouds.
#[derive(Debug)]
pub struct OpenStack {
    cluster: Cluster,
    opts: Options,
    ledger: Arc<Ledger>,
    crash: Arc<CrashSwitch>,
}

type Sink<'a> = &'a (dyn Fn(Progress) + Send + Sync);

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
        })
    }

    pub fn ledger_path(&self) -> PathBuf {
        self.ledger.path().to_owned()
    }

    /// The SSH public key: the file's `ssh_public_key` is a key or a path to one (`~` = HOME).
    fn ssh_public_key(&self) -> Result<Option<String>> {
        let Some(k) = &self.cluster.ssh_public_key else {
            return Ok(None);
        };
        let k = k.trim();
        if k.starts_with("ssh-") || k.starts_with("ecdsa-") || k.starts_with("sk-") {
            return Ok(Some(k.to_owned()));
        }
        let path = match k.strip_prefix("~/") {
            Some(rest) => std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_default()
                .join(rest),
            None => PathBuf::from(k),
        };
        std::fs::read_to_string(&path)
            .map(|t| Some(t.trim().to_owned()))
            .map_err(|e| OsError::Other(format!("ssh_public_key {}: {e}", path.display())))
    }

    /// Connects to every site's cloud, concurrently.
    async fn sites(&self, extra: &BTreeMap<String, String>) -> Result<Vec<SiteOps>> {
        let config = api::load_config(self.opts.clouds_file.as_deref())?;
        let ssh = self.ssh_public_key()?;
        let mut specs: Vec<(hybridgrid_core::model::Site, String)> = Vec::new();
        for site in &self.cluster.sites {
            let cloud = site.cloud.clone().ok_or_else(|| OsError::NoCloudName {
                site: site.name.clone(),
            })?;
            specs.push((site.clone(), cloud));
        }
        // Sites only the ledger knows (removed from the file): for `down`.
        for (name, cloud) in extra {
            if specs.iter().all(|(s, _)| &s.name != name) {
                let mut site = self.cluster.sites[0].clone();
                site.name = name.clone();
                site.network = None;
                site.cloud = Some(cloud.clone());
                specs.push((site, cloud.clone()));
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
                SiteOps::new(
                    &self.cluster.name,
                    site,
                    by_name[&cloud].clone(),
                    self.ledger.clone(),
                    self.opts.agent_url.clone(),
                    ssh.clone(),
                    self.opts.server_timeout,
                )
            })
            .collect())
    }

    /// What exists of the cluster in its clouds.
    pub async fn observe(&self) -> Result<Observed> {
        let sites = self.sites(&BTreeMap::new()).await?;
        self.observe_sites(&sites).await
    }

    async fn observe_sites(&self, sites: &[SiteOps]) -> Result<Observed> {
        Ok(self.observe_full(sites).await?.0)
    }

    /// The observed state, and the relays whose floating IP is allocated but not attached.
    async fn observe_full(
        &self,
        sites: &[SiteOps],
    ) -> Result<(Observed, BTreeMap<String, (String, Ipv4Addr)>)> {
        let shape = plan::plan(&self.cluster, &Observed::default());
        let results = try_join_all(sites.iter().map(|s| s.observe(&shape))).await?;
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

    /// Allocates every relay's floating IP (unattached) as soon as its site's external network
    /// is known, before any server exists, so that every relay boots knowing its peers'
    /// endpoints.
    async fn allocate_relay_ips(
        &self,
        sites: &[SiteOps],
    ) -> Result<BTreeMap<String, (String, Ipv4Addr)>> {
        let shape = plan::plan(&self.cluster, &Observed::default());
        let allocated = try_join_all(sites.iter().filter_map(|ops| {
            let relay = shape.relay_of(&ops.site.name)?.name.clone();
            Some(async move {
                let (ip, unattached) = ops.allocate_floating_ip(&relay).await?;
                Ok::<_, OsError>(unattached.then(|| (relay, (ops.site.name.clone(), ip))))
            })
        }))
        .await?;
        Ok(allocated.into_iter().flatten().collect())
    }

    /// Writes every relay's peers into its server's metadata where they differ (the node's
    /// `hybridgrid agent pull` applies them); returns per node written its new metadata and the
    /// summary of what was written.
    async fn deliver(
        &self,
        sites: &[SiteOps],
        plan: &Plan,
        progress: Sink<'_>,
    ) -> Result<Vec<(String, BTreeMap<String, String>, String)>> {
        let per_site = try_join_all(sites.iter().map(|ops| async move {
            let servers = ops.servers(false).await?;
            let mut out = Vec::new();
            for srv in &servers {
                let Some(np) = plan.node(&srv.node).filter(|n| n.wireguard.is_some()) else {
                    continue;
                };
                let items = node_meta::items(&plan.node_config_without_hosts(np));
                if let Some(metadata) = ops.set_delivery_metadata(srv, &items).await? {
                    let summary = format!(
                        "~ {}: metadata of {}: {} peers, version {}",
                        ops.site.name,
                        srv.node,
                        items.len().saturating_sub(1),
                        items
                            .get(node_meta::VERSION_KEY)
                            .map(String::as_str)
                            .unwrap_or("-")
                    );
                    progress(Progress::Applied {
                        summary: summary.clone(),
                    });
                    out.push((srv.node.clone(), metadata, summary));
                }
            }
            Ok::<_, OsError>(out)
        }))
        .await?;
        Ok(per_site.into_iter().flatten().collect())
    }

    /// Observes, plans and applies until no infrastructure change is left (a round after one
    /// that created servers first waits for them to be ACTIVE, so that it reads the relays'
    /// keys); then delivers late configuration through the relays' metadata. Sites are handled
    /// concurrently, and the nodes of a site too.
    pub async fn up(&self, progress: Sink<'_>) -> Result<UpReport> {
        let t0 = Instant::now();
        let sites = self.sites(&BTreeMap::new()).await?;
        let mut report = UpReport {
            rounds: 0,
            applied: Vec::new(),
            servers_created: Vec::new(),
            server_seconds: BTreeMap::new(),
            config_not_delivered: Vec::new(),
            pending_public_keys: Vec::new(),
            not_supported: Vec::new(),
            seconds: 0.0,
        };
        let mut created: Created = Vec::new();
        let mut last_plan;
        let mut last_observed;
        loop {
            report.rounds += 1;
            let (observed, unattached) = if report.rounds == 1 {
                // The relays' floating IPs are allocated while the clouds are observed.
                let (allocated, (observed, mut unattached)) =
                    tokio::try_join!(self.allocate_relay_ips(&sites), self.observe_full(&sites))?;
                unattached.extend(allocated);
                (observed, unattached)
            } else {
                // Rounds after the first observe booted servers: their keys are on their
                // consoles only once they are ACTIVE. Servers boot while the rest was built.
                for (node, task) in created.drain(..) {
                    let secs = task
                        .await
                        .map_err(|e| OsError::Other(format!("waiting for {node}: {e}")))??;
                    progress(Progress::ServerActive {
                        node: node.clone(),
                        seconds: secs,
                    });
                    report.server_seconds.insert(node, secs);
                }
                self.observe_full(&sites).await?
            };
            // Plan with the allocated floating IPs as if attached: user data and rules get the
            // relays' endpoints before their servers exist. A relay that has only its floating
            // IP yet is created (its "configure" becomes a create), and unattached floating IPs
            // are attached (an "assign public IP").
            let mut view = observed.clone();
            let mut virtual_nodes = BTreeSet::new();
            for (node, (site, ip)) in &unattached {
                match view.nodes.get_mut(node) {
                    Some(n) => n.public_ip = Some(*ip),
                    None => {
                        virtual_nodes.insert(node.clone());
                        view.nodes.insert(
                            node.clone(),
                            hybridgrid_core::diff::ObservedNode {
                                site: site.clone(),
                                public_ip: Some(*ip),
                                public_key: None,
                                applied: None,
                            },
                        );
                    }
                }
            }
            let plan = plan::plan(&self.cluster, &view);
            let mut todo: Vec<Change> = plan
                .changes
                .iter()
                .filter_map(|c| match c {
                    Change::ConfigureNode { site, node, .. } if virtual_nodes.contains(node) => {
                        Some(Change::CreateNode {
                            site: site.clone(),
                            node: node.clone(),
                            role: plan.node(node).map(|n| n.role)?,
                        })
                    }
                    c => Some(c.clone()),
                })
                .filter(actionable)
                .collect();
            for (node, (site, _)) in &unattached {
                todo.push(Change::AssignPublicIp {
                    site: site.clone(),
                    node: node.clone(),
                });
            }
            progress(Progress::Round {
                round: report.rounds,
                changes: todo.len(),
            });
            if todo.is_empty() {
                last_plan = plan;
                last_observed = observed;
                break;
            }
            if report.rounds > MAX_ROUNDS {
                return Err(OsError::NotConverged {
                    rounds: MAX_ROUNDS,
                    remaining: todo
                        .iter()
                        .map(Change::summary)
                        .collect::<Vec<_>>()
                        .join("; "),
                });
            }
            let results = try_join_all(sites.iter().map(|ops| {
                let mine: Vec<Change> = todo
                    .iter()
                    .filter(|c| change_site(c) == ops.site.name)
                    .cloned()
                    .collect();
                let plan = &plan;
                async move { apply_site(ops, plan, &mine, progress).await }
            }))
            .await?;
            for (applied, servers) in results {
                report.applied.extend(applied);
                for (node, task) in servers {
                    report.servers_created.push(node.clone());
                    created.push((node, task));
                }
            }
        }
        // Servers found from an earlier (interrupted) run must be ACTIVE too; their relays' keys
        // are read once they are.
        let waited = try_join_all(sites.iter().map(|ops| async move {
            let list = ops.servers(true).await?;
            let pending: Vec<_> = list.iter().filter(|s| s.status != "ACTIVE").collect();
            for srv in &pending {
                ops.wait_active(&srv.id, &srv.node).await?;
            }
            Ok::<_, OsError>(!pending.is_empty())
        }))
        .await?;
        if waited.into_iter().any(|w| w) {
            last_observed = self.observe_sites(&sites).await?;
            last_plan = plan::plan(&self.cluster, &last_observed);
        }
        // Configuration that became known after boot (peers' keys read from the consoles of
        // ACTIVE relays, later plan changes) goes into the relays' server metadata; what the
        // nodes apply then is their boot configuration merged with it.
        let delivered = self.deliver(&sites, &last_plan, progress).await?;
        if !delivered.is_empty() {
            let ledger = self.ledger.snapshot();
            for (node, metadata, summary) in delivered {
                report.applied.push(summary);
                if let Some(o) = last_observed.nodes.get_mut(&node) {
                    o.applied = ledger.applied_config(&node, &metadata);
                }
            }
            last_plan = plan::plan(&self.cluster, &last_observed);
        }
        for c in &last_plan.changes {
            match c {
                Change::ConfigureNode { .. } => report.config_not_delivered.push(c.summary()),
                Change::AddRule {
                    rule:
                        plan::SgRule {
                            remote: Remote::PendingPublicIp(_),
                            ..
                        },
                    ..
                } => report.not_supported.push(c.summary()),
                c if !actionable(c) => report.not_supported.push(c.summary()),
                _ => {}
            }
        }
        report.pending_public_keys = last_plan
            .nodes
            .iter()
            .filter(|n| n.role.is_relay())
            .filter(|n| n.wireguard.as_ref().is_some_and(|w| w.public_key.is_none()))
            .map(|n| n.name.clone())
            .collect();
        report.seconds = t0.elapsed().as_secs_f64();
        Ok(report)
    }

    /// Deletes everything of the cluster: what the ledger lists, then whatever carries the
    /// cluster's tags, names or metadata (orphans of an interrupted run), in dependency order.
    /// Reports what could not be deleted; the ledger keeps exactly those entries.
    pub async fn down(&self) -> Result<DownReport> {
        let ledger = self.ledger.snapshot();
        let extra: BTreeMap<String, String> = ledger
            .sites
            .iter()
            .map(|(k, v)| (k.clone(), v.cloud.clone()))
            .collect();
        let sites = self.sites(&extra).await?;
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

    /// Checks against the clouds that the plan can be built: clouds answer, flavors, images and
    /// networks exist, and quotas cover what the plan's changes create (plan with the observed
    /// state to count only what is missing).
    pub async fn validate_online(&self, plan: &Plan) -> Result<Vec<Problem>> {
        let config = api::load_config(self.opts.clouds_file.as_deref())?;
        let futs = self.cluster.sites.iter().map(|site| {
            let config = &config;
            async move {
                let mut problems = Vec::new();
                let p = |m: String| Problem {
                    site: site.name.clone(),
                    message: m,
                };
                let Some(cloud_name) = &site.cloud else {
                    problems.push(p("no `cloud` given".into()));
                    return problems;
                };
                let cloud = match Cloud::connect(
                    config,
                    &site.name,
                    cloud_name,
                    self.crash.clone(),
                    self.opts.trace.clone(),
                )
                .await
                {
                    Ok(c) => Arc::new(c),
                    Err(e) => {
                        problems.push(p(e.to_string()));
                        return problems;
                    }
                };
                let ops = SiteOps::new(
                    &self.cluster.name,
                    site.clone(),
                    cloud,
                    self.ledger.clone(),
                    None,
                    None,
                    self.opts.server_timeout,
                );
                if let Err(e) = validate_site(&ops, plan, &mut problems).await {
                    problems.push(p(e.to_string()));
                }
                problems
            }
        });
        Ok(join_all(futs).await.into_iter().flatten().collect())
    }
}

/// Whether `up`'s rounds act on the change. Configuration goes into the user data at creation
/// and, once servers are ACTIVE, into the relays' metadata (after the rounds); a rule from a
/// public IP waits for the IP; whole sites are removed by `down`.
fn actionable(c: &Change) -> bool {
    match c {
        Change::ConfigureNode { .. }
        | Change::RemoveSecurityGroup { .. }
        | Change::RemoveNetwork { .. } => false,
        Change::AddRule { rule, .. } => matches!(rule.remote, Remote::Cidr(_)),
        _ => true,
    }
}

fn change_site(c: &Change) -> &str {
    match c {
        Change::CreateNetwork { site }
        | Change::CreateSecurityGroup { site, .. }
        | Change::AddRule { site, .. }
        | Change::CreateNode { site, .. }
        | Change::AssignPublicIp { site, .. }
        | Change::AddAddressPairs { site, .. }
        | Change::ConfigureNode { site, .. }
        | Change::RemoveRule { site, .. }
        | Change::RemoveNode { site, .. }
        | Change::RemoveSecurityGroup { site, .. }
        | Change::RemoveNetwork { site } => site,
    }
}

type Created = Vec<(String, tokio::task::JoinHandle<Result<f64>>)>;

/// Applies one site's changes. Order: (network and subnet ∥ router ∥ groups) → (router
/// interface ∥ rules ∥ per new node: port with its address pairs → (server ∥ floating IP once
/// the router interface exists)) → floating IPs and pairs of nodes that exist already →
/// removals. Servers are not waited for here.
async fn apply_site(
    ops: &SiteOps,
    plan: &Plan,
    changes: &[Change],
    progress: Sink<'_>,
) -> Result<(Vec<String>, Created)> {
    if changes.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    let mut applied = Vec::new();
    let done = |c: &Change, applied: &mut Vec<String>| {
        progress(Progress::Applied {
            summary: c.summary(),
        });
        applied.push(c.summary());
    };
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
        progress(Progress::Applied { summary: g.clone() });
        applied.push(g);
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
                done(c, &mut Vec::new());
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
                        Some(id) => Ok((id, false)),
                        None => ops
                            .create_server(plan, np, &port, keypair.as_deref(), refs)
                            .await
                            .map(|id| (id, true)),
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
                            Change::AssignPublicIp { .. } => {
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
                let ((id, fresh), port_done) = tokio::try_join!(server, port_work)?;
                // Wait for ACTIVE in the background while the rest is built.
                let waiter = fresh.then(|| {
                    let (cloud, name, timeout) =
                        (ops.cloud.clone(), node.clone(), ops.server_timeout);
                    let task = tokio::spawn(async move {
                        crate::site::wait_active(cloud, id, name, timeout)
                            .await
                            .map(|()| at.elapsed().as_secs_f64())
                    });
                    (node.clone(), task)
                });
                Ok::<_, OsError>(Some((c.summary(), waiter, port_done)))
            }
        });
        try_join_all(futs).await
    };
    let (_, rule_summaries, node_results) = tokio::try_join!(router, rules, nodes)?;
    if create_net
        && let Some(c) = changes
            .iter()
            .find(|c| matches!(c, Change::CreateNetwork { .. }))
    {
        applied.insert(0, c.summary());
    }
    applied.extend(rule_summaries);
    let mut created = Vec::new();
    for (summary, fresh, port_done) in node_results.into_iter().flatten() {
        for s in std::iter::once(summary).chain(port_done) {
            progress(Progress::Applied { summary: s.clone() });
            applied.push(s);
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
        Change::AssignPublicIp { node, .. } | Change::AddAddressPairs { node, .. }
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
                Change::AssignPublicIp { .. } => {
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
    applied.extend(late);
    // Nodes that left the file.
    for c in changes {
        if let Change::RemoveNode { node, .. } = c {
            remove_node(ops, node, &ids.net).await?;
            done(c, &mut applied);
        }
    }
    Ok((applied, created))
}

/// The changes to a node's port (floating IP, address pairs), in the plan's order.
fn port_changes_of<'a>(changes: &'a [Change], node: &'a str) -> impl Iterator<Item = &'a Change> {
    changes.iter().filter(move |c| match c {
        Change::AssignPublicIp { node: n, .. } | Change::AddAddressPairs { node: n, .. } => {
            n == node
        }
        _ => false,
    })
}

async fn remove_node(ops: &SiteOps, node: &str, net_id: &str) -> Result<()> {
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

async fn validate_site(ops: &SiteOps, plan: &Plan, problems: &mut Vec<Problem>) -> Result<()> {
    let site = ops.site.name.clone();
    let p = |m: String| Problem {
        site: site.clone(),
        message: m,
    };
    let nodes: Vec<_> = plan.nodes.iter().filter(|n| n.site == site).collect();
    let flavors = ops.flavors().await?;
    let mut images_ok = BTreeMap::new();
    for n in &nodes {
        if let Some(f) = &n.flavor
            && find_by_name_or_id(&flavors, f).is_none()
            && !problems
                .iter()
                .any(|x| x.message.contains(&format!("`{f}`")))
        {
            problems.push(p(format!("flavor `{f}` not found (node {})", n.name)));
        }
        if let Some(i) = &n.image
            && !images_ok.contains_key(i)
        {
            let ok = ops.image_id(i).await.is_ok();
            images_ok.insert(i.clone(), ok);
            if !ok {
                problems.push(p(format!("image `{i}` not found (node {})", n.name)));
            }
        }
    }
    if let Some(net) = &ops.site.network {
        match ops.find_network().await {
            Ok(Some(n)) => {
                if ops.find_subnet(&s(&n["id"])).await?.is_none() {
                    problems.push(p(format!(
                        "network `{net}` has no subnet {}",
                        ops.site.subnet
                    )));
                }
            }
            Ok(None) => problems.push(p(format!("network `{net}` not found"))),
            Err(e) => problems.push(p(e.to_string())),
        }
    }
    if let Err(e) = ops.external_network().await {
        problems.push(p(e.to_string()));
    }
    // What the plan's changes create here.
    let mut need: BTreeMap<&str, i64> = BTreeMap::new();
    for c in plan.changes.iter().filter(|c| change_site(c) == site) {
        match c {
            Change::CreateNetwork { .. } if ops.site.network.is_none() => {
                *need.entry("network").or_default() += 1;
                *need.entry("subnet").or_default() += 1;
                *need.entry("router").or_default() += 1;
                *need.entry("port").or_default() += 1;
            }
            Change::CreateSecurityGroup { .. } => {
                *need.entry("security_group").or_default() += 1;
                // Neutron adds two egress rules to every new group.
                *need.entry("security_group_rule").or_default() += 2;
            }
            Change::AddRule { .. } => *need.entry("security_group_rule").or_default() += 1,
            Change::AssignPublicIp { .. } => *need.entry("floatingip").or_default() += 1,
            Change::CreateNode { node, .. } => {
                *need.entry("port").or_default() += 1;
                *need.entry("instances").or_default() += 1;
                if let Some(f) = plan
                    .node(node)
                    .and_then(|n| n.flavor.as_deref())
                    .and_then(|f| find_by_name_or_id(&flavors, f))
                {
                    *need.entry("cores").or_default() += f["vcpus"].as_i64().unwrap_or(0);
                    *need.entry("ram").or_default() += f["ram"].as_i64().unwrap_or(0);
                }
            }
            _ => {}
        }
    }
    let limits = ops
        .cloud
        .get("get compute limits", Req::get(NOVA, "limits"))
        .await?;
    let abs = &limits["limits"]["absolute"];
    for (what, max, used) in [
        ("instances", "maxTotalInstances", "totalInstancesUsed"),
        ("cores", "maxTotalCores", "totalCoresUsed"),
        ("ram", "maxTotalRAMSize", "totalRAMUsed"),
    ] {
        check_quota(
            what,
            abs[max].as_i64(),
            abs[used].as_i64().unwrap_or(0),
            need.get(what).copied().unwrap_or(0),
            &p,
            problems,
        );
    }
    let nq = ops
        .cloud
        .get(
            "get network quota",
            Req::get(NET, format!("quotas/{}/details", ops.cloud.project_id)),
        )
        .await?;
    for what in [
        "network",
        "subnet",
        "router",
        "port",
        "floatingip",
        "security_group",
        "security_group_rule",
    ] {
        let q = &nq["quota"][what];
        check_quota(
            what,
            q["limit"].as_i64(),
            q["used"].as_i64().unwrap_or(0) + q["reserved"].as_i64().unwrap_or(0),
            need.get(what).copied().unwrap_or(0),
            &p,
            problems,
        );
    }
    Ok(())
}

fn check_quota(
    what: &str,
    limit: Option<i64>,
    used: i64,
    need: i64,
    p: &dyn Fn(String) -> Problem,
    problems: &mut Vec<Problem>,
) {
    let Some(limit) = limit else { return };
    if limit < 0 || need == 0 {
        return;
    }
    if used + need > limit {
        problems.push(p(format!(
            "quota {what}: the plan needs {need} more, {} of {limit} are free",
            (limit - used).max(0)
        )));
    }
}
