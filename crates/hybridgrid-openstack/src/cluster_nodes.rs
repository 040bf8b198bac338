//! The openstack provider's side of its nodes, through the node channel: `observe` asks each
//! server what it applied, `up` configures booted nodes, `status` reads Slurm, the tunnels and
//! reachability from the nodes, `exec` and `run` reach a node.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{SystemTime, UNIX_EPOCH};

use futures::StreamExt as _;
use futures::future::try_join_all;
use hybridgrid_core::diff::{Change, Observed};
use hybridgrid_core::plan::{NodePlan, Plan, Role};
use hybridgrid_core::wg_status::WgStatus;
use hybridgrid_engine::status::{self, ProbePair};
use hybridgrid_engine::{Event, NodeStatus, Probe, Reach, Sink, StatusReport, TunnelStatus};

use crate::channel::{Channel, shell_quote};
use crate::error::{OsError, Result};
use hybridgrid_core::slurm_version::{self, NodeSlurm, SlurmVersion};

use crate::login::LoginUsers;
use crate::nodes::{self, AgentBinary};
use crate::provider::{OpenStack, lock};

/// SSH sessions at once (each is an `ssh` process on the user's machine).
pub(crate) const CHANNELS_AT_ONCE: usize = 32;
/// Seconds the master's agent waits for newly started workers to register with Slurm.
const WORKERS_REGISTER: u64 = 30;

impl OpenStack {
    pub(crate) fn channel(&self) -> Channel {
        let power_key = self
            .opts
            .power_host
            .as_ref()
            .map(|h| h.public_key_path().to_string_lossy().into_owned());
        Channel::new(
            &self.cluster.name,
            power_key
                .as_deref()
                .or(self.cluster.ssh_public_key.as_deref()),
            self.opts.home.as_deref(),
            self.opts.state_root.join(&self.cluster.name).join("ssh"),
        )
    }

    /// How `plan`'s node `name` is reached ([`nodes::target`], as its image's login user). The
    /// power service on the master reaches only the on-demand workers it makes, directly on
    /// their site address (the master routes every site's network).
    pub(crate) fn target(&self, plan: &Plan, name: &str) -> Option<crate::channel::Target> {
        if self.opts.power_host.is_some() {
            let node = plan.node(name).filter(|n| n.on_demand)?;
            return Some(crate::channel::Target {
                node: node.name.clone(),
                host: node.lan_ip,
                user: self.login_users().of(node),
                jump: None,
            });
        }
        nodes::target(plan, name, &self.login_users())
    }

    /// How the plan's master is reached, when it can be.
    pub(crate) fn master_target(&self, plan: &Plan) -> Option<crate::channel::Target> {
        let master = plan.nodes.iter().find(|n| n.role == Role::Master)?;
        self.target(plan, &master.name)
    }

    /// What nodes get on standard input: the munge key, the store files (`store_files`) — from
    /// this machine in `up`, from the relays for the power service (it holds no store keys) —
    /// and in `up` the tunnels' preshared keys and the relay pairs' keys, made here where they
    /// lack one (`preshared::ensure`, `pair_keys::ensure`, once per round, before nodes are
    /// configured in parallel).
    async fn node_secrets(&self, plan: &Plan) -> Result<nodes::Secrets> {
        let cluster_dir = self.opts.state_root.join(&self.cluster.name);
        let (stores, tunnel_keys) = match &self.opts.power_host {
            Some(_) => (nodes::StoreSource::Relay(self.login_users()), None),
            None => (
                nodes::StoreSource::Here(crate::store_files::StoreFiles::new(
                    self.store_accesses(plan).await?,
                )),
                Some(nodes::TunnelKeys {
                    preshared: hybridgrid_engine::preshared::ensure(&cluster_dir, plan)?,
                    pairs: hybridgrid_engine::pair_keys::ensure(&cluster_dir, plan)?,
                }),
            ),
        };
        Ok(nodes::Secrets {
            munge_key: self.munge_key()?,
            stores,
            tunnel_keys,
        })
    }

    /// The cluster's munge key: made on this machine by `up`, or on the master the copy its
    /// agent keeps.
    fn munge_key(&self) -> Result<Vec<u8>> {
        match &self.opts.power_host {
            Some(host) => host.read_munge_key(),
            None => Ok(hybridgrid_engine::munge::ensure(
                &self.opts.state_root.join(&self.cluster.name),
            )?),
        }
    }

    /// The login user of each node: the cluster file's `ssh_user`, else what `observe` learned
    /// of each image from Glance, else the image's name ([`crate::login`]).
    pub(crate) fn login_users(&self) -> LoginUsers {
        LoginUsers {
            explicit: self.cluster.ssh_user.clone(),
            by_image: lock(&self.image_users).clone(),
        }
    }

    pub(crate) fn agent_binary(&self) -> Result<Option<AgentBinary>> {
        let Some(exe) = &self.opts.agent_binary else {
            return Ok(None);
        };
        let mut cached = lock(&self.agent_binary);
        if cached.is_none() {
            *cached = Some(AgentBinary::prepare(
                exe,
                &self.opts.state_root.join("agent-cache"),
            )?);
        }
        Ok(cached.clone())
    }

    /// Replaces each node's `applied` with what the node itself reports over the channel
    /// (`None` when it cannot be reached or never applied: a change the plan shows). A relay's
    /// key the console did not show comes from the node too.
    pub(crate) async fn ask_nodes(&self, observed: &mut Observed) {
        let shape = hybridgrid_core::reconcile::plan(&self.cluster, observed);
        let channel = self.channel();
        let names: Vec<String> = observed.nodes.keys().cloned().collect();
        let reports: Vec<(String, Option<hybridgrid_agent::NodeReport>)> =
            futures::stream::iter(names.into_iter().map(|name| {
                let target = self.target(&shape, &name);
                let channel = &channel;
                async move {
                    let report = match &target {
                        Some(t) => nodes::report(channel, t).await.ok(),
                        None => None,
                    };
                    (name, report)
                }
            }))
            .buffer_unordered(CHANNELS_AT_ONCE)
            .collect()
            .await;
        for (name, report) in reports {
            let Some(node) = observed.nodes.get_mut(&name) else {
                continue;
            };
            match report {
                Some(r) => {
                    if let Some(v) = r.slurm_version {
                        lock(&self.slurm_versions).insert(name.clone(), v);
                    }
                    node.applied = r.applied;
                    node.measured = r.measured;
                    // The node's own key wins over the one its console showed at first boot:
                    // `rotate` changed it since. The ledger learns it for when the node does not
                    // answer.
                    if let Some(key) = r.public_key
                        && node.public_key != Some(key)
                    {
                        node.public_key = Some(key);
                        let _ = self.ledger.update(|d| {
                            d.public_keys.insert(name.clone(), key.to_base64());
                        });
                    }
                }
                None => node.applied = None,
            }
        }
    }

    /// Configures booted nodes over the channel, then lets the master's agent wait for the
    /// workers to register with Slurm. Every node is first prepared (agent, configuration,
    /// packages), then the cluster's Slurm versions are checked, then the nodes take their
    /// roles. What could not be configured is returned as partial; a node that cannot install
    /// its packages, or Slurm versions that cannot run together, fail `up`.
    pub(crate) async fn configure_nodes(
        &self,
        plan: &Plan,
        configure: &[&Change],
        sink: Sink<'_>,
    ) -> Result<Vec<(Change, String)>> {
        if configure.is_empty() {
            return Ok(Vec::new());
        }
        let channel = self.channel();
        let agent = self.agent_binary()?;
        let key = self.node_secrets(plan).await?;
        if let Some(agent) = &agent {
            self.offer_agent_on_relays(&channel, plan, configure, agent, sink)
                .await;
        }
        let prepared = self
            .prepare_nodes(&channel, plan, configure, agent.as_ref())
            .await;
        let mut partial = Vec::new();
        let mut ready = Vec::new();
        let mut fatal = None;
        for (c, seconds, r) in prepared {
            match r {
                Ok(p) => ready.push((c, seconds, p)),
                Err(e) => {
                    if let Some(e) = self.failed(&c, e, &mut partial, sink) {
                        fatal.get_or_insert(e);
                    }
                }
            }
        }
        // A node that cannot install its packages will not take its role by waiting: `up` fails.
        if let Some(e) = fatal {
            return Err(e);
        }
        self.check_slurm_versions(plan)?;
        // Workers that start slurmd now are waited for by the master's agent, so that `up` ends
        // with them in their partitions: in the master's own `agent apply` when it is
        // configured with them (no step after the round), else in a second apply on it.
        let workers = configure
            .iter()
            .any(|c| configures_role(plan, c, Role::Worker));
        let wait = if workers && plan.mesh_complete() {
            WORKERS_REGISTER
        } else {
            0
        };
        let master_too = configure
            .iter()
            .any(|c| configures_role(plan, c, Role::Master));
        let results = self
            .finish_nodes(
                &channel,
                plan,
                ready,
                &key,
                if master_too { wait } else { 0 },
            )
            .await;
        let mut workers_started = false;
        for (c, seconds, r) in results {
            match r {
                Ok(details) => {
                    workers_started |= configures_role(plan, &c, Role::Worker);
                    sink(Event::Applied {
                        summary: c.summary(),
                        seconds,
                        details,
                    });
                }
                Err(e) => {
                    if let Some(e) = self.failed(&c, e, &mut partial, sink) {
                        return Err(e);
                    }
                }
            }
        }
        if wait > 0 && !master_too && workers_started {
            self.master_takes_workers(&channel, plan, &key, wait, sink)
                .await?;
        }
        Ok(partial)
    }

    /// The master's agent waits for newly started workers to register and puts them into
    /// their partitions (`agent apply` on the master, its configuration unchanged).
    async fn master_takes_workers(
        &self,
        channel: &Channel,
        plan: &Plan,
        key: &nodes::Secrets,
        wait: u64,
        sink: Sink<'_>,
    ) -> Result<()> {
        let Some(target) = self.master_target(plan) else {
            return Ok(());
        };
        let t = std::time::Instant::now();
        let done = nodes::finish(channel, &target, plan, key, wait, Vec::new()).await?;
        let parts: Vec<String> = done
            .into_iter()
            .filter(|a| a.starts_with("partition") || a.starts_with("remove"))
            .collect();
        if !parts.is_empty() {
            sink(Event::Note(format!(
                "Slurm on {}: {} ({:.1}s)",
                target.node,
                parts.join("; "),
                t.elapsed().as_secs_f64()
            )));
        }
        Ok(())
    }

    /// The relays of the sites with a node to configure get the agent first and offer it on
    /// their site's network, so that this machine sends it once per site, not per node. A relay
    /// that cannot (still booting) is left to its own `ConfigureNode`, and its workers get the
    /// agent over the channel.
    async fn offer_agent_on_relays(
        &self,
        channel: &Channel,
        plan: &Plan,
        configure: &[&Change],
        agent: &AgentBinary,
        sink: Sink<'_>,
    ) {
        let sites: BTreeSet<&str> = configure
            .iter()
            .filter_map(|c| match c {
                Change::ConfigureNode { node, .. } => plan.node(node).map(|n| n.site.as_str()),
                _ => None,
            })
            .collect();
        let relays: Vec<&NodePlan> = sites.iter().filter_map(|s| plan.relay_of(s)).collect();
        let offered = futures::future::join_all(relays.into_iter().filter_map(|relay| {
            let target = self.target(plan, &relay.name)?;
            Some(async move {
                let r = nodes::offer_agent_on_relay(channel, &target, relay.lan_ip, agent).await;
                (relay.name.clone(), r)
            })
        }))
        .await;
        for (relay, r) in offered {
            if let Err(e) = r {
                sink(Event::Note(format!(
                    "{relay} does not offer the agent to its site's workers ({e}): they get it \
                     from this machine"
                )));
            }
        }
    }

    /// The first half of configuring each node ([`nodes::prepare`]), concurrently; each node's
    /// Slurm version is remembered for [`OpenStack::check_slurm_versions`].
    async fn prepare_nodes(
        &self,
        channel: &Channel,
        plan: &Plan,
        configure: &[&Change],
        agent: Option<&AgentBinary>,
    ) -> Vec<(Change, f64, Result<nodes::Prepared>)> {
        futures::stream::iter(configure.iter().map(|c| async move {
            let t = std::time::Instant::now();
            let r = match c {
                Change::ConfigureNode { node, .. } => match self.target(plan, node) {
                    Some(target) => nodes::prepare(channel, &target, plan, agent).await,
                    None => Err(OsError::NoRelayAddress { node: node.clone() }),
                },
                _ => Ok(nodes::Prepared::default()),
            };
            if let (Change::ConfigureNode { node, .. }, Ok(p)) = (c, &r)
                && let Some(v) = &p.slurm_version
            {
                lock(&self.slurm_versions).insert(node.clone(), v.clone());
            }
            ((*c).clone(), t.elapsed().as_secs_f64(), r)
        }))
        .buffer_unordered(CHANNELS_AT_ONCE)
        .collect()
        .await
    }

    /// The second half ([`nodes::finish`]) for the prepared nodes, concurrently; each node's
    /// seconds are both halves'. The master's agent waits up to `master_waits` seconds for the
    /// workers to register.
    async fn finish_nodes(
        &self,
        channel: &Channel,
        plan: &Plan,
        ready: Vec<(Change, f64, nodes::Prepared)>,
        key: &nodes::Secrets,
        master_waits: u64,
    ) -> Vec<(Change, f64, Result<Vec<String>>)> {
        futures::stream::iter(ready.into_iter().map(|(c, before, prepared)| async move {
            let t = std::time::Instant::now();
            let wait = if configures_role(plan, &c, Role::Master) {
                master_waits
            } else {
                0
            };
            let r = match c_target(self, plan, &c) {
                Some(target) => {
                    nodes::finish(channel, &target, plan, key, wait, prepared.done).await
                }
                None => Ok(prepared.done),
            };
            (c, before + t.elapsed().as_secs_f64(), r)
        }))
        .buffer_unordered(CHANNELS_AT_ONCE)
        .collect()
        .await
    }

    /// Reports a node that could not be configured; the error back when it must fail `up`
    /// (its packages cannot be installed), else the node is partial.
    fn failed(
        &self,
        c: &Change,
        e: OsError,
        partial: &mut Vec<(Change, String)>,
        sink: Sink<'_>,
    ) -> Option<OsError> {
        // A node that does not answer SSH yet is booting (or unreachable: the round after the
        // wait for it says which), not a failure to print.
        match (c, not_answering_yet(&e)) {
            (Change::ConfigureNode { node, .. }, true) => sink(Event::Note(format!(
                "{node} does not answer over SSH yet ({}): configured once it does",
                hybridgrid_core::error_chain(&e)
            ))),
            _ => sink(Event::Failed {
                summary: c.summary(),
                error: hybridgrid_core::error_chain(&e),
            }),
        }
        if matches!(e, OsError::PackageInstall { .. }) {
            return Some(e);
        }
        partial.push((c.clone(), unreachable_help(&e, &self.cluster.admin_cidrs)));
        None
    }

    /// Refuses Slurm versions that cannot run together ([`slurm_version::problems`]), among the
    /// plan's nodes whose version is known (reported now or when observed).
    fn check_slurm_versions(&self, plan: &Plan) -> Result<()> {
        let known = lock(&self.slurm_versions).clone();
        let nodes: Vec<NodeSlurm> = plan
            .nodes
            .iter()
            .filter_map(|n| {
                Some(NodeSlurm {
                    node: n.name.clone(),
                    image: n.image.clone().unwrap_or_else(|| "?".into()),
                    version: SlurmVersion::parse(known.get(&n.name)?)?,
                    controller: n.role == Role::Master,
                })
            })
            .collect();
        let problems = slurm_version::problems(&nodes);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(OsError::SlurmVersions {
                problems: problems.join("; "),
            })
        }
    }

    /// Runs `script` as root on `node`; its exit code and standard output.
    pub async fn run_on(
        &self,
        plan: &Plan,
        node: &str,
        script: &str,
        input: &[u8],
    ) -> Result<(i32, Vec<u8>)> {
        let target = self.target(plan, node).ok_or_else(|| OsError::NoTarget {
            node: node.to_owned(),
        })?;
        let out = self.channel().run(&target, script, input).await?;
        Ok((out.code, out.stdout))
    }

    /// `Nodes::agent_each` over the channel: the agents of the runs' nodes, up to
    /// [`CHANNELS_AT_ONCE`] at a time in the runs' order (workers are reached through their
    /// relay, whose SSH server refuses too many new sessions at once), each its input on
    /// standard input.
    pub(crate) async fn agent_each_async(
        &self,
        plan: &Plan,
        runs: &[hybridgrid_engine::AgentRun],
    ) -> BTreeMap<String, Result<Vec<u8>>> {
        futures::stream::iter(runs.iter().map(|r| self.agent_run(plan, r)))
            .buffer_unordered(CHANNELS_AT_ONCE)
            .collect()
            .await
    }

    /// One run of [`Self::agent_each_async`]: its node and its standard output or failure.
    async fn agent_run(
        &self,
        plan: &Plan,
        r: &hybridgrid_engine::AgentRun,
    ) -> (String, Result<Vec<u8>>) {
        let args: Vec<String> = r.args.iter().map(|a| shell_quote(a)).collect();
        let script = format!(
            "{} agent {} --state-dir {} --tag {}",
            crate::userdata::AGENT_PATH,
            args.join(" "),
            crate::userdata::AGENT_STATE_DIR,
            shell_quote(&r.node)
        );
        let out = match self.target(plan, &r.node) {
            Some(target) => self.channel().run(&target, &script, &r.input).await,
            None => Err(OsError::NoTarget {
                node: r.node.clone(),
            }),
        };
        let result = out.and_then(|o| match o.code {
            0 => Ok(o.stdout),
            _ => Err(OsError::AgentEach {
                node: r.node.clone(),
                detail: o.stderr,
            }),
        });
        (r.node.clone(), result)
    }

    /// The `ssh` command line that runs `cmd` on `node` as root, for `exec` (the user's terminal).
    pub fn exec_args(&self, plan: &Plan, node: &str, cmd: &[String]) -> Result<Vec<String>> {
        let target = self.target(plan, node).ok_or_else(|| OsError::NoTarget {
            node: node.to_owned(),
        })?;
        let quoted: Vec<String> = cmd.iter().map(|c| shell_quote(c)).collect();
        let remote = if target.user == "root" {
            quoted.join(" ")
        } else {
            format!("sudo -n {}", quoted.join(" "))
        };
        let channel = self.channel();
        channel.ensure_dir()?;
        Ok(channel.args(&target, &remote))
    }

    /// Each node's Slurm state as the controller sees it (`sinfo`), `None` without an answer.
    pub(crate) async fn slurm_states(&self, plan: &Plan) -> Option<BTreeMap<String, String>> {
        let master = plan.nodes.iter().find(|n| n.role == Role::Master)?;
        let (code, out) = self
            .run_on(plan, &master.name, "sinfo -h -N -o '%N %T'", b"")
            .await
            .ok()?;
        (code == 0).then(|| {
            String::from_utf8_lossy(&out)
                .lines()
                .filter_map(|l| {
                    let (n, s) = l.split_once(' ')?;
                    Some((n.to_owned(), s.trim().to_owned()))
                })
                .collect()
        })
    }

    /// Every relay's WireGuard peers, read on the relay (a relay that cannot be read has none).
    pub(crate) async fn tunnels(&self, plan: &Plan) -> Vec<TunnelStatus> {
        let readings = futures::future::join_all(status::relays(plan).into_iter().map(
            |(n, ifname)| async move {
                let script = format!(
                    "{} agent wg-status --interface {ifname} --state-dir {}",
                    crate::userdata::AGENT_PATH,
                    crate::userdata::AGENT_STATE_DIR
                );
                match self.run_on(plan, &n.name, &script, b"").await {
                    Ok((0, out)) => Some((n.name.clone(), serde_json::from_slice(&out).ok()?)),
                    _ => None,
                }
            },
        ))
        .await;
        let readings: Vec<(String, WgStatus)> = readings.into_iter().flatten().collect();
        status::tunnel_rows(plan, &readings, unix_now())
    }

    /// What each site's store has sent each of the cluster's nodes, as their counters say
    /// (`agent store-reads`; `store_files`), keyed `site@node` (`Stores::served_bytes`). A node
    /// that cannot be read is absent: `jobs` counts for a job only the counters it read at both
    /// ends, or that started meanwhile.
    pub(crate) async fn store_reads(&self, plan: &Plan) -> BTreeMap<String, u64> {
        if !plan.has_store_data() {
            return BTreeMap::new();
        }
        let active = self.active_nodes().await.unwrap_or_default();
        let script = format!("{} agent store-reads", crate::userdata::AGENT_PATH);
        let readings =
            futures::future::join_all(plan.nodes.iter().filter(|n| active.contains(&n.name)).map(
                |n| async {
                    let out = self.run_on(plan, &n.name, &script, b"").await;
                    (n.name.as_str(), out)
                },
            ))
            .await;
        let mut counters = BTreeMap::new();
        for (node, reading) in readings {
            let Ok((0, out)) = reading else {
                continue;
            };
            let Ok(counts) = serde_json::from_slice::<BTreeMap<String, u64>>(&out) else {
                continue;
            };
            for (site, bytes) in counts {
                counters.insert(format!("{site}@{node}"), bytes);
            }
        }
        counters
    }

    /// The nodes whose server is ACTIVE, in every site: what `status` and `doctor` call up.
    pub(crate) async fn active_nodes(&self) -> Result<BTreeSet<String>> {
        let sites = self.connected().await?;
        let lists = try_join_all(sites.iter().map(|ops| ops.servers(true))).await?;
        Ok(lists
            .into_iter()
            .flatten()
            .filter(|s| s.status == "ACTIVE")
            .map(|s| s.node)
            .collect())
    }

    /// `status`: nodes are up when their server is ACTIVE; Slurm, tunnels and reachability as
    /// the nodes report them over the channel (without it, only the servers).
    pub(crate) async fn status_of(&self, plan: &Plan, probe: Probe) -> Result<StatusReport> {
        let active = self.active_nodes().await?;
        let mut nodes: Vec<NodeStatus> = plan
            .nodes
            .iter()
            .map(|n| NodeStatus::of(n, active.contains(&n.name), None))
            .collect();
        if !self.opts.node_channel {
            return Ok(StatusReport::new(
                &self.cluster.name,
                nodes,
                Vec::new(),
                Vec::new(),
            ));
        }
        let pairs = status::probe_pairs(&nodes, probe);
        let (slurm, tunnels, reachability, relay_pairs) = tokio::join!(
            self.slurm_states(plan),
            self.tunnels(plan),
            self.reachability(plan, &pairs),
            self.pair_states(plan, &active)
        );
        for n in &mut nodes {
            n.slurm = slurm_word(slurm.as_ref(), n);
            n.pair = relay_pairs.get(&n.name).copied();
        }
        Ok(StatusReport::new(
            &self.cluster.name,
            nodes,
            tunnels,
            reachability,
        ))
    }

    /// Each running relay of a pair: active when it holds the pair's virtual address (one that
    /// cannot be asked is left out).
    async fn pair_states(
        &self,
        plan: &Plan,
        active: &BTreeSet<String>,
    ) -> BTreeMap<String, hybridgrid_engine::PairState> {
        let asked = plan
            .nodes
            .iter()
            .filter(|n| active.contains(&n.name))
            .filter_map(|n| Some((n, n.pair.as_ref()?)))
            .map(|(n, pair)| async move {
                let script = format!("ip -4 -o addr show to {}/32", pair.vip.addr());
                let (code, out) = self.run_on(plan, &n.name, &script, b"").await.ok()?;
                let holds = String::from_utf8_lossy(&out).contains(&pair.vip.addr().to_string());
                let state = match holds {
                    true => hybridgrid_engine::PairState::Active,
                    false => hybridgrid_engine::PairState::Standby,
                };
                (code == 0).then(|| (n.name.clone(), state))
            });
        futures::future::join_all(asked)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    /// Runs `pairs`' pings: one SSH session per source node, its pings in parallel.
    pub(crate) async fn reachability(&self, plan: &Plan, pairs: &[ProbePair]) -> Vec<Reach> {
        let mut by_source: BTreeMap<&str, Vec<&ProbePair>> = BTreeMap::new();
        for p in pairs {
            by_source.entry(p.from.as_str()).or_default().push(p);
        }
        let results = futures::stream::iter(by_source.into_iter().map(|(from, to)| async move {
            let mut script = String::new();
            for p in &to {
                script.push_str(&format!(
                    "(ping -c 1 -W 2 {ip} >/dev/null 2>&1 && echo '{ip} ok' || echo '{ip} lost') &\n",
                    ip = p.to_ip
                ));
            }
            script.push_str("wait\n");
            let answer = self
                .run_on(plan, from, &script, b"")
                .await
                .map(|(_, out)| String::from_utf8_lossy(&out).into_owned())
                .unwrap_or_default();
            to.iter()
                .map(|p| p.reach(answer.lines().any(|l| l == format!("{} ok", p.to_ip))))
                .collect::<Vec<_>>()
        }))
        .buffer_unordered(CHANNELS_AT_ONCE)
        .collect::<Vec<_>>()
        .await;
        results.into_iter().flatten().collect()
    }
}

/// A node's Slurm word in `status`: the controller's view of a worker; the master's is whether
/// the controller answered; gateways run no Slurm.
fn slurm_word(states: Option<&BTreeMap<String, String>>, node: &NodeStatus) -> Option<String> {
    match (states, node.role) {
        (_, Role::Gateway) => None,
        (None, _) => Some("no controller".to_owned()),
        (Some(_), Role::Master) => Some("controller up".to_owned()),
        (Some(s), _) => Some(
            s.get(&node.name)
                .cloned()
                .unwrap_or_else(|| "unknown".into()),
        ),
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The reason a node could not be configured, with what to do when SSH did not get through.
fn unreachable_help(e: &OsError, admin_cidrs: &[ipnet::Ipv4Net]) -> String {
    let text = hybridgrid_core::error_chain(e);
    match e {
        OsError::Channel { .. } if admin_cidrs.is_empty() => format!(
            "{text}; the nodes admit SSH from `admin_cidrs` only and the cluster file has none: \
             add this machine's public address"
        ),
        OsError::Channel { .. } => {
            format!("{text}; a booting node answers once cloud-init started sshd: run `up` again")
        }
        _ => text,
    }
}

/// Whether the channel's error is a node that does not take SSH connections (yet): no route,
/// refused, timed out, or closed before the key exchange (sshd starting).
fn not_answering_yet(e: &OsError) -> bool {
    let OsError::Channel { detail, .. } = e else {
        return false;
    };
    [
        "No route to host",
        "Connection refused",
        "Connection timed out",
        "kex_exchange_identification",
    ]
    .iter()
    .any(|p| detail.contains(p))
}

/// Whether `c` configures a node of `role`.
fn configures_role(plan: &Plan, c: &Change, role: Role) -> bool {
    matches!(c, Change::ConfigureNode { node, .. } if plan.node(node).is_some_and(|n| n.role == role))
}

/// The target of a `ConfigureNode` change.
fn c_target(os: &OpenStack, plan: &Plan, c: &Change) -> Option<crate::channel::Target> {
    match c {
        Change::ConfigureNode { node, .. } => os.target(plan, node),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn channel_error(detail: &str) -> OsError {
        OsError::Channel {
            node: "c-gw-a".into(),
            detail: detail.into(),
        }
    }

    #[test]
    fn regression_a_booting_node_is_not_printed_as_failed() {
        for booting in [
            "ssh: connect to host 203.0.113.48 port 22: No route to host",
            "ssh: connect to host 203.0.113.48 port 22: Connection refused",
            "kex_exchange_identification: Connection closed by remote host",
        ] {
            assert!(not_answering_yet(&channel_error(booting)), "{booting}");
        }
        for failed in [
            "debian@203.0.113.48: Permission denied (publickey).",
            "the agent's report is not valid: EOF",
        ] {
            assert!(!not_answering_yet(&channel_error(failed)), "{failed}");
        }
    }
}
