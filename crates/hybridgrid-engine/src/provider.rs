//! The one interface every provider implements.

use hybridgrid_core::diff::{Change, Observed};
use std::collections::BTreeMap;
use std::path::PathBuf;

use hybridgrid_core::plan::Plan;
use hybridgrid_core::store::StoreAccess;

use crate::EngineError;
use crate::doctor::Facts;
use crate::path::PathFacts;
use crate::report::{DownReport, Pending, StatusReport};

/// What a provider reports while it works; the CLI shows it.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A round starts with this many changes, `seconds` after the command started.
    Round {
        round: usize,
        changes: usize,
        seconds: f64,
    },
    /// One change (or one step of `down`) is done.
    Applied {
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

/// Receives events; called from any thread.
pub type Sink<'a> = &'a (dyn Fn(Event) + Send + Sync);

/// What [`Provider::apply`] did beyond "every change is done".
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Applied {
    /// Changes the provider could make only in part, with the reason (the next round would find
    /// them again): the engine does not retry them and `up` reports them.
    pub partial: Vec<(Change, String)>,
}

/// What [`Provider::settle`] found once no change was left.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Settled {
    /// Something came to exist while settling (a server that finished booting): observe again.
    pub observe_again: bool,
    /// What is still pending and why.
    pub pending: Vec<Pending>,
}

/// Which reachability probes `status` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    None,
    /// Every node to its site's relay, and one node of every site to one of every other site:
    /// every LAN and every tunnel, in bounded time.
    Sample,
    /// Every node to every other node (quadratic: for small clusters and tests).
    AllPairs,
}

/// The lifecycle commands whose support differs between providers (or a provider's settings):
/// [`supports`] answers from the trait itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Up,
    Down,
    Status,
    Exec,
    Doctor,
    Submit,
    Data,
    Rotate,
}

impl Command {
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Up => "up",
            Command::Down => "down",
            Command::Status => "status",
            Command::Exec => "exec",
            Command::Doctor => "doctor",
            Command::Submit => "submit",
            Command::Data => "data",
            Command::Rotate => "rotate",
        }
    }
}

/// Whether `provider` can carry out `command`: every provider does `up`, `down` and `status`;
/// the commands that run on nodes need [`Provider::nodes`]. The one answer, from the trait.
pub fn supports(provider: &dyn Provider, command: Command) -> bool {
    match command {
        Command::Up | Command::Down | Command::Status => true,
        Command::Exec | Command::Doctor | Command::Submit | Command::Rotate => {
            provider.nodes().is_some()
        }
        Command::Data => provider.stores().is_some(),
    }
}

/// A cloud (or the emulation of one) that holds a cluster. Every method here is one a provider
/// must have; what it may lack is behind [`Provider::nodes`]. (`gc` is no provider command: it
/// sweeps this host of what crashed local runs left, `hybridgrid_local::gc`.)
///
/// Architecture invariant: `observe` reads the live system — an object that is gone, a rule
/// removed by hand, a node that did not apply its configuration shows as such — so drift is a
/// change like any other. A provider never swallows an error into an empty state.
///
/// Architecture invariant: a provider never loops over rounds and keeps no observation between
/// calls. The engine hands it the layout (to observe), the plan and the observation it was made
/// from (to apply): what it applies is a function of its arguments and the live cloud.
pub trait Provider: Send + Sync {
    /// `local`, `openstack`.
    fn name(&self) -> &'static str;

    /// What exists of the cluster now. `layout`: the cluster laid out with nothing observed
    /// (`core::reconcile::layout`): its sites, nodes, names and addresses, what to look for.
    fn observe(&self, layout: &Plan) -> Result<Observed, EngineError>;

    /// Applies `changes` — the plan's own list, in its order — using `plan` for what each
    /// change needs; `observed` is what the plan was made from (a cloud that allocates an
    /// address mid-round derives the plan with it from there: `reconcile::plan` on `observed`
    /// and the new address, pure). Independent changes may run concurrently. Reports each
    /// through `sink`.
    fn apply(
        &self,
        plan: &Plan,
        observed: &Observed,
        changes: &[Change],
        sink: Sink<'_>,
    ) -> Result<Applied, EngineError>;

    /// Called when a round finds no change: wait for what the provider started to be usable
    /// (tunnels with a handshake, servers booted). Makes no change of the plan.
    fn settle(&self, plan: &Plan, sink: Sink<'_>) -> Result<Settled, EngineError>;

    /// Removes everything of the cluster, also what only the provider's ledger or tags know;
    /// reports each step through `sink` as it is done.
    fn down(&self, sink: Sink<'_>) -> Result<DownReport, EngineError>;

    /// Nodes, tunnels and the reachability `probe` asks for, against `plan`; the rules every
    /// provider shares are in [`crate::status`].
    fn status(&self, plan: &Plan, probe: Probe) -> Result<StatusReport, EngineError>;

    /// The nodes' own shells (`exec`, `submit`, `jobs`, `doctor`): `None` where this provider
    /// cannot reach its nodes (openstack with the node channel off).
    fn nodes(&self) -> Option<&dyn Nodes>;

    /// The sites' object stores (`data`, the store bytes of `jobs`): `None` where this provider
    /// does not reach them.
    fn stores(&self) -> Option<&dyn Stores>;
}

/// What a provider knows of its sites' object stores.
pub trait Stores: Send + Sync {
    /// How this host reaches the store of `site` (endpoint, region, the site's keys); `None` if
    /// the site has no store for the cluster.
    fn access(&self, plan: &Plan, site: &str) -> Result<Option<StoreAccess>, EngineError>;

    /// The bytes each site's store has sent so far, by counter, for the stores whose counters
    /// this provider can read: keyed by the site where counted at the store (local), `site@node`
    /// where counted on the nodes it sent them to (openstack, whose clouds show no counters).
    /// A counter only grows while its store or node runs.
    fn served_bytes(&self, plan: &Plan) -> BTreeMap<String, u64>;
}

/// What a provider does on its nodes.
pub trait Nodes: Send + Sync {
    /// Runs `cmd` on `node` with this process's standard streams; its exit code.
    fn exec(&self, node: &str, cmd: &[String]) -> Result<i32, EngineError>;

    /// Runs the shell script `script` as root on `node`, `input` on its standard input; its
    /// exit code and standard output (`submit`, `jobs`).
    fn run(&self, node: &str, script: &str, input: &[u8]) -> Result<(i32, Vec<u8>), EngineError>;

    /// `doctor`: what the live cluster shows against `plan` — nodes up, rules and pairs missing,
    /// tunnel MTUs and handshakes, pings over each tunnel (small and don't-fragment) and between
    /// sites — for [`crate::doctor::diagnose`].
    fn doctor_facts(&self, plan: &Plan) -> Result<Facts, EngineError>;

    /// `doctor --path SRC DST`: what only that flow needs beyond the doctor's facts (both ends'
    /// routes, the relays' forwarding, one ping).
    fn path_facts(&self, plan: &Plan, src: &str, dst: &str) -> Result<PathFacts, EngineError>;

    /// The folder of this cluster's state on this machine, where `up` keeps the keys it made
    /// (munge, preshared): `rotate` renews them there.
    fn keys_dir(&self) -> PathBuf;

    /// Runs the node agent's command of each run on its node, all at once (`rotate`; a provider
    /// that must limit its sessions starts them in the runs' order): the provider adds the
    /// node's agent state directory (`--state-dir`) and its tag (`--tag`); the input goes on
    /// standard input, the one way a secret may travel. Each node's standard output, or why it
    /// failed (never with the input in it).
    fn agent_each(
        &self,
        plan: &Plan,
        runs: Vec<AgentRun>,
    ) -> BTreeMap<String, Result<Vec<u8>, EngineError>>;
}

/// One node agent command for [`Nodes::agent_each`]. `Debug` shows no input.
pub struct AgentRun {
    pub node: String,
    /// The agent's subcommand and its arguments (`rotate-stage`), without `--state-dir`.
    pub args: Vec<String>,
    pub input: Vec<u8>,
}

impl AgentRun {
    pub fn new(node: &str, args: &[&str], input: Vec<u8>) -> Self {
        AgentRun {
            node: node.to_owned(),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            input,
        }
    }
}

impl std::fmt::Debug for AgentRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentRun")
            .field("node", &self.node)
            .field("args", &self.args)
            .field("input_bytes", &self.input.len())
            .finish()
    }
}
