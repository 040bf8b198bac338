//! The local provider: one cluster on this host, behind the engine's [`Provider`] trait.
//! `observe.rs` reads the live emulation, `apply.rs` makes each change, `status.rs` reads
//! tunnels and reachability, `down.rs` removes a cluster and collects leftovers.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command as Process;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use hybridgrid_core::diff::{Change, Observed};
use hybridgrid_core::model::Cluster;
use hybridgrid_core::plan::Plan;
use hybridgrid_core::store::StoreAccess;
use hybridgrid_engine::doctor::Facts;
use hybridgrid_engine::path::PathFacts;
use hybridgrid_engine::{
    AgentRun, Applied, DownReport, EngineError, Nodes, Pending, PendingKind, Probe, Provider,
    Settled, Sink, StatusReport, Stores,
};

use crate::ledger::{Ledger, ObjState};
use crate::{LocalError, infra, names};

/// Where hosts record which state directory owns each cluster: two state roots cannot both run
/// a cluster of the same name, and `gc` knows whose ledger to look for.
pub(crate) const OWNERS_DIR: &str = "/run/hybridgrid/owners";

#[derive(Debug, Clone)]
pub struct Options {
    /// The state root (`<root>/<cluster>/` holds the ledger and the nodes' state).
    pub state_root: PathBuf,
    /// The hybridgrid binary: run as the node agent, the node holder and the WireGuard daemon.
    pub exe: PathBuf,
    /// Security groups without connection tracking (tests): `Some` sets the style, `None` keeps
    /// the cluster's.
    pub stateless_security_groups: Option<bool>,
    /// How often each node's supervisor applies its configuration again (a dead WireGuard device
    /// comes back within a second regardless); zero: no supervision (tests of `observe`).
    pub agent_period: Duration,
}

/// A node to run commands in: enter with `nsenter -t PID -m -u -n`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExecTarget {
    pub pid: u32,
}

/// One cluster on this host.
#[derive(Debug)]
pub struct Local {
    pub(crate) cluster: Cluster,
    pub(crate) opts: Options,
    dir: PathBuf,
    ledger: Mutex<Ledger>,
    /// Edits made to `ledger` so far (counted under its lock).
    edits: AtomicU64,
    /// The edits on disk: every one up to this count.
    written: Mutex<u64>,
}

impl Local {
    /// Opens the cluster's ledger (an empty one if there is none yet; nothing is written). A
    /// ledger that does not parse is an error naming the file.
    pub fn open(cluster: &Cluster, opts: Options) -> Result<Self, LocalError> {
        let dir = opts.state_root.join(&cluster.name);
        let ledger =
            Ledger::load(&dir.join("ledger.json"))?.unwrap_or_else(|| Ledger::new(&cluster.name));
        Ok(Local {
            cluster: cluster.clone(),
            opts,
            dir,
            ledger: Mutex::new(ledger),
            edits: AtomicU64::new(0),
            written: Mutex::new(0),
        })
    }

    pub fn cluster_dir(&self) -> &Path {
        &self.dir
    }

    pub(crate) fn ledger_path(&self) -> PathBuf {
        self.dir.join("ledger.json")
    }

    pub fn node_dir(&self, node: &str) -> PathBuf {
        self.dir.join("nodes").join(node)
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Ledger> {
        self.ledger
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Changes the ledger and returns once the change is on disk, so it is written before
    /// anything it records is created. Threads recording at once share writes: a write takes
    /// every edit made before it (at 1,050 nodes one write per edit cost most of `up`).
    pub(crate) fn record<T>(&self, f: impl FnOnce(&mut Ledger) -> T) -> Result<T, LocalError> {
        let (out, edit) = {
            let mut l = self.lock();
            let out = f(&mut l);
            (out, self.edits.fetch_add(1, Ordering::SeqCst) + 1)
        };
        self.write_up_to(edit)?;
        Ok(out)
    }

    /// Writes the ledger unless a write since edit number `edit` already did.
    fn write_up_to(&self, edit: u64) -> Result<(), LocalError> {
        let mut written = self
            .written
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if *written >= edit {
            return Ok(());
        }
        let path = self.ledger_path();
        let (text, upto) = {
            let l = self.lock();
            (l.encode(&path)?, self.edits.load(Ordering::SeqCst))
        };
        crate::ledger::write_atomic(&path, &text, hybridgrid_engine::state::PRIVATE)?;
        *written = upto;
        Ok(())
    }

    pub(crate) fn ns(&self, node: &str) -> String {
        names::ns_node(&self.cluster.name, node)
    }

    /// The live holder of a node, if the node runs.
    pub(crate) fn holder(&self, l: &Ledger, node: &str) -> Option<u32> {
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

    /// Runs `hybridgrid agent ARGS` inside the running node's namespaces; its standard output.
    pub(crate) fn agent(&self, node: &str, args: &[&str]) -> Result<String, LocalError> {
        let pid = self.exec_target(node)?.pid.to_string();
        let exe = self.opts.exe.display().to_string();
        let mut all = vec!["-t", &pid, "-m", "-u", "-n", "--", &exe, "agent"];
        all.extend_from_slice(args);
        crate::sh::run("nsenter", &all)
    }

    /// Runs `hybridgrid agent ARGS --state-dir DIR --tag NS` inside the running node's namespaces
    /// (`DIR`: the node's state on this host) with `input` on its standard input; its standard
    /// output. A failure carries the agent's standard error, never the input (it may hold keys).
    pub(crate) fn agent_with_input(
        &self,
        node: &str,
        args: &[String],
        input: &[u8],
    ) -> Result<Vec<u8>, LocalError> {
        let command = format!("hybridgrid agent {} on {node}", args.join(" "));
        let mut argv: Vec<std::ffi::OsString> = vec![self.opts.exe.clone().into(), "agent".into()];
        argv.extend(args.iter().map(Into::into));
        argv.extend([
            "--state-dir".into(),
            self.node_dir(node).into(),
            "--tag".into(),
            self.ns(node).into(),
        ]);
        let out =
            self.in_node_with_input(node, &argv, input, std::process::Stdio::piped(), &command)?;
        if !out.status.success() {
            return Err(LocalError::Command {
                command,
                detail: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        Ok(out.stdout)
    }

    /// Runs `argv` inside the running node's namespaces (mount, UTS, network; from `/`) with
    /// `input` on its standard input (a program that reads none may end first) and its standard
    /// error as `stderr` says; what it printed and its status. `command` names it in errors.
    fn in_node_with_input(
        &self,
        node: &str,
        argv: &[std::ffi::OsString],
        input: &[u8],
        stderr: std::process::Stdio,
        command: &str,
    ) -> Result<std::process::Output, LocalError> {
        use std::io::Write as _;
        use std::process::Stdio;
        let pid = self.exec_target(node)?.pid.to_string();
        let fail = |e: std::io::Error| LocalError::Command {
            command: command.to_owned(),
            detail: e.to_string(),
        };
        let mut child = Process::new("nsenter")
            .args(["-t", &pid, "-m", "-u", "-n", "--wd=/", "--"])
            .args(argv)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .map_err(fail)?;
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(input);
        }
        child.wait_with_output().map_err(fail)
    }

    /// The running node `node`.
    pub fn exec_target(&self, node: &str) -> Result<ExecTarget, LocalError> {
        self.holder(&self.lock(), node)
            .map(|pid| ExecTarget { pid })
            .ok_or_else(|| LocalError::NoSuchNode(node.to_owned()))
    }

    /// Runs `cmd` on the node inside its namespaces, with this process's standard streams.
    pub fn exec_status(&self, node: &str, cmd: &[String]) -> Result<i32, LocalError> {
        let t = self.exec_target(node)?;
        let status = Process::new("nsenter")
            .args(["-t", &t.pid.to_string(), "-m", "-u", "-n", "--wd=/", "--"])
            .args(cmd)
            .status()
            .map_err(|e| LocalError::Command {
                command: format!("nsenter ... {}", cmd.join(" ")),
                detail: e.to_string(),
            })?;
        Ok(status.code().unwrap_or(1))
    }
}

fn err(e: LocalError) -> EngineError {
    EngineError::provider(e)
}

impl Provider for Local {
    fn name(&self) -> &'static str {
        "local"
    }

    fn observe(&self, layout: &Plan) -> Result<Observed, EngineError> {
        self.observe_live(layout).map_err(err)
    }

    fn apply(
        &self,
        plan: &Plan,
        _observed: &Observed,
        changes: &[Change],
        sink: Sink<'_>,
    ) -> Result<Applied, EngineError> {
        let _one_at_a_time = self.exclusive().map_err(err)?;
        self.claim().map_err(err)?;
        // Made here, once per round, before the nodes are configured in parallel.
        hybridgrid_engine::preshared::ensure(self.cluster_dir(), plan)
            .map_err(|e| err(e.into()))?;
        hybridgrid_engine::pair_keys::ensure(self.cluster_dir(), plan)
            .map_err(|e| err(e.into()))?;
        self.apply_changes(plan, changes, sink).map_err(err)?;
        for started in self.ensure_power_service(plan).map_err(err)? {
            sink(hybridgrid_engine::Event::Note(started));
        }
        Ok(Applied::default())
    }

    /// Waits (20 s at most) until every relay has a handshake with every peer.
    fn settle(&self, plan: &Plan, sink: Sink<'_>) -> Result<Settled, EngineError> {
        // A power service that died is started again by the next `up`.
        for started in self.ensure_power_service(plan).map_err(err)? {
            sink(hybridgrid_engine::Event::Note(started));
        }
        for made in crate::datastore::ensure_buckets(self, plan).map_err(err)? {
            sink(hybridgrid_engine::Event::Note(made));
        }
        let pending = self.wait_handshakes(plan, Duration::from_secs(20));
        Ok(Settled {
            observe_again: false,
            pending: pending
                .iter()
                .map(|(a, b)| {
                    let note = format!("no WireGuard handshake yet between {a} and {b}");
                    Pending::new(PendingKind::NoHandshake, a, note)
                })
                .collect(),
        })
    }

    fn down(&self, sink: Sink<'_>) -> Result<DownReport, EngineError> {
        // First of all: no node is made after `down` started.
        self.stop_power_service();
        let _one_at_a_time = match self.cluster_dir().exists() {
            true => Some(self.exclusive().map_err(err)?),
            false => None,
        };
        self.remove_all(sink).map_err(err)
    }

    fn status(&self, plan: &Plan, probe: Probe) -> Result<StatusReport, EngineError> {
        Ok(self.status_of(plan, probe))
    }

    fn nodes(&self) -> Option<&dyn Nodes> {
        Some(self)
    }

    fn stores(&self) -> Option<&dyn Stores> {
        Some(self)
    }
}

impl Stores for Local {
    fn access(&self, plan: &Plan, site: &str) -> Result<Option<StoreAccess>, EngineError> {
        crate::datastore::access(self, plan, site).map_err(err)
    }

    fn served_bytes(&self, plan: &Plan) -> BTreeMap<String, u64> {
        plan.sites
            .iter()
            .filter(|s| plan.site_has_store_data(&s.name))
            .filter_map(|s| {
                let bytes = crate::datastore::served_bytes(&plan.cluster, &s.name)?;
                Some((s.name.clone(), bytes))
            })
            .collect()
    }
}

impl Nodes for Local {
    fn doctor_facts(&self, plan: &Plan) -> Result<Facts, EngineError> {
        self.doctor_facts_of(plan).map_err(err)
    }

    fn path_facts(&self, plan: &Plan, src: &str, dst: &str) -> Result<PathFacts, EngineError> {
        Ok(self.path_facts_of(plan, src, dst))
    }

    fn exec(&self, node: &str, cmd: &[String]) -> Result<i32, EngineError> {
        self.exec_status(node, cmd).map_err(err)
    }

    fn keys_dir(&self) -> PathBuf {
        self.cluster_dir().to_owned()
    }

    fn agent_each(
        &self,
        _plan: &Plan,
        runs: Vec<AgentRun>,
    ) -> BTreeMap<String, Result<Vec<u8>, EngineError>> {
        // All at once: a rotation's switches are as close together as the nodes allow.
        let outputs = crate::par::map(&runs, runs.len(), |r| {
            self.agent_with_input(&r.node, &r.args, &r.input)
                .map_err(err)
        });
        runs.iter()
            .zip(outputs)
            .map(|(r, out)| {
                let out = out.unwrap_or_else(|| {
                    Err(err(LocalError::Command {
                        command: format!("hybridgrid agent on {}", r.node),
                        detail: "its thread kept no result".into(),
                    }))
                });
                (r.node.clone(), out)
            })
            .collect()
    }

    fn run(&self, node: &str, script: &str, input: &[u8]) -> Result<(i32, Vec<u8>), EngineError> {
        let argv = ["sh".into(), "-c".into(), script.into()];
        let command = format!("nsenter ... sh on {node}");
        let out = self
            .in_node_with_input(node, &argv, input, std::process::Stdio::inherit(), &command)
            .map_err(err)?;
        Ok((out.status.code().unwrap_or(1), out.stdout))
    }
}
