//! The one interface every provider implements.

use hybridgrid_core::diff::{Change, Observed};
use hybridgrid_core::plan::Plan;

use crate::EngineError;
use crate::doctor::Facts;
use crate::path::PathFacts;
use crate::report::{DownReport, StatusReport};

/// What a provider reports while it works; the CLI shows it.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A round starts with this many changes.
    Round {
        round: usize,
        changes: usize,
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
    /// For the user: what is still pending and why.
    pub notes: Vec<String>,
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

/// The commands a provider may not support; [`Provider::supports`] answers for each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Up,
    Down,
    Status,
    Exec,
    Doctor,
    Submit,
    Gc,
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
            Command::Gc => "gc",
        }
    }
}

/// A cloud (or the emulation of one) that holds a cluster.
///
/// Architecture invariant: `observe` reads the live system — an object that is gone, a rule
/// removed by hand, a node that did not apply its configuration shows as such — so drift is a
/// change like any other. A provider never swallows an error into an empty state.
pub trait Provider: Send + Sync {
    /// `local`, `openstack`.
    fn name(&self) -> &'static str;

    /// Whether the provider implements `command`; the CLI refuses the others with a clear error.
    fn supports(&self, command: Command) -> bool;

    /// What exists of the cluster now.
    fn observe(&self) -> Result<Observed, EngineError>;

    /// Applies `changes` — the plan's own list, in its order — using `plan` for what each
    /// change needs. Independent changes may run concurrently. Reports each through `sink`.
    fn apply(
        &self,
        plan: &Plan,
        changes: &[Change],
        sink: Sink<'_>,
    ) -> Result<Applied, EngineError>;

    /// Called when a round finds no change: wait for what the provider started to be usable
    /// (tunnels with a handshake, servers booted). Makes no change of the plan.
    fn settle(&self, plan: &Plan, sink: Sink<'_>) -> Result<Settled, EngineError> {
        let _ = (plan, sink);
        Ok(Settled::default())
    }

    /// Removes everything of the cluster, also what only the provider's ledger or tags know.
    fn down(&self, sink: Sink<'_>) -> Result<DownReport, EngineError>;

    /// Nodes, tunnels and the reachability `probe` asks for, against `plan`.
    fn status(&self, plan: &Plan, probe: Probe) -> Result<StatusReport, EngineError> {
        let _ = (plan, probe);
        Err(EngineError::unsupported(self.name(), "status", ""))
    }

    /// `doctor`: what the live cluster shows against `plan` — nodes up, rules and pairs missing,
    /// tunnel MTUs and handshakes, pings over each tunnel (small and don't-fragment) and between
    /// sites — for [`crate::doctor::diagnose`].
    fn doctor_facts(&self, plan: &Plan) -> Result<Facts, EngineError> {
        let _ = plan;
        Err(EngineError::unsupported(self.name(), "doctor", ""))
    }

    /// `doctor --path SRC DST`: what only that flow needs beyond `facts` (both ends' routes,
    /// the relays' forwarding, one ping).
    fn path_facts(
        &self,
        plan: &Plan,
        facts: &Facts,
        src: &str,
        dst: &str,
    ) -> Result<PathFacts, EngineError> {
        let _ = (plan, facts, src, dst);
        Err(EngineError::unsupported(self.name(), "doctor --path", ""))
    }

    /// Runs `cmd` on `node` with this process's standard streams; its exit code.
    fn exec(&self, node: &str, cmd: &[String]) -> Result<i32, EngineError> {
        let _ = (node, cmd);
        Err(EngineError::unsupported(self.name(), "exec", ""))
    }

    /// Runs the shell script `script` as root on `node`, `input` on its standard input; its
    /// exit code and standard output (`submit`, `jobs`).
    fn run(&self, node: &str, script: &str, input: &[u8]) -> Result<(i32, Vec<u8>), EngineError> {
        let _ = (node, script, input);
        Err(EngineError::unsupported(self.name(), "run", ""))
    }
}
