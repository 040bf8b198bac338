//! The node's Slurm role ([`SlurmSetup`]): the munge key, `munged` on every Slurm node,
//! `slurmctld` on the controller, configless `slurmd` on compute nodes. A worker the running
//! slurmctld does not know (added later) joins as a dynamic node (`slurmd -Z`), and the
//! controller's agent keeps slurmctld's partitions as planned, so it is put into its site's
//! partition without restarting slurmctld.
//!
//! The daemons are started directly (not through the distribution's units, which `up` disables),
//! the same on a cloud VM and in the local provider's node namespaces, and found again by their
//! pid files; the node's supervisor starts a dead one again.
//!
//! The munge key reaches the node as `<state dir>/munge.key` (mode 0400), delivered by the
//! provider over its node channel; it is never logged.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use hybridgrid_core::jobs::{JOB_ENV_FILE, RESULTS_TOKEN_VAR};
use hybridgrid_core::plan::{PartitionMembers, SlurmRole, SlurmSetup};
use hybridgrid_core::slurm_conf::power_saving_lines;

use crate::AgentError;
use crate::sys::{self, write_atomic};

/// Where the provider puts the cluster's munge key, inside the agent's state directory.
pub const MUNGE_KEY_FILE: &str = "munge.key";
/// Where the provider puts the site's object-store keys for jobs (`KEY='value'` lines, 0600),
/// inside the agent's state directory; only on nodes of a site with a store.
pub const STORE_ENV_FILE: &str = "store.env";
/// Where the job environment was before it held the results token (agents before it wrote only
/// the store keys there); removed.
const OLD_JOB_ENV_FILE: &str = "/var/lib/slurm/hybridgrid/store.env";
const MUNGED_PID: &str = "/run/munge/munged.pid";
const SLURMCTLD_PID: &str = "/run/slurm/slurmctld.pid";
const SLURMD_PID: &str = "/run/slurm/slurmd.pid";
const SLURM_CONF: &str = "/etc/slurm/slurm.conf";
const CTLD_START: Duration = Duration::from_secs(30);
/// How long a compute node waits for slurmctld before its agent reports failure.
const CTLD_REACHABLE: Duration = Duration::from_secs(60);
/// Between two questions to slurmctld while waiting for it.
const POLL: Duration = Duration::from_millis(250);

/// The live pid of the daemon whose pid file is `path`.
fn pid_of(path: &str) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(path).ok()?.trim().parse().ok()?;
    sys::alive(pid).then_some(pid)
}

/// Whether every daemon of `role` runs (the supervisor checks this every second); the
/// controller's include the results store.
pub fn daemons_run(role: SlurmRole, state_dir: &Path) -> bool {
    let munged = pid_of(MUNGED_PID).is_some();
    match role {
        SlurmRole::None => true,
        SlurmRole::Controller => {
            munged && pid_of(SLURMCTLD_PID).is_some() && crate::results::runs(state_dir)
        }
        SlurmRole::Compute => munged && pid_of(SLURMD_PID).is_some(),
    }
}

/// Brings the node's Slurm part to `setup`; idempotent, touches only what is missing.
/// `wait_for_workers`: on the controller, first wait up to that long for every planned worker
/// to have registered (after `up` started their slurmd), so the partitions hold them all.
/// `exe` and `tag`: the hybridgrid binary and the node's name in process lists, for the results
/// store the controller runs.
pub fn apply(
    setup: &SlurmSetup,
    name: &str,
    (state_dir, exe, tag): (&Path, &Path, &str),
    wait_for_workers: Duration,
    actions: &mut Vec<String>,
) -> Result<(), AgentError> {
    if setup.role == SlurmRole::None {
        return Ok(());
    }
    let munge_key = munge(state_dir, actions)?;
    for dir in ["/run/slurm", "/var/lib/slurm", "/var/log/slurm"] {
        std::fs::create_dir_all(dir).map_err(AgentError::io(dir))?;
        sys::own(dir, "slurm")?;
    }
    job_env(state_dir, &munge_key, actions)?;
    match setup.role {
        SlurmRole::Controller => {
            if let Some(store) = &setup.results_store {
                let munge_key = state_dir.join(MUNGE_KEY_FILE);
                crate::results::ensure(store, state_dir, &munge_key, exe, tag, actions)?;
            }
            crate::power::ensure_programs(setup.power_service.as_deref(), exe, actions)?;
            controller(setup, wait_for_workers, actions)?;
            if setup.power_service.is_some() {
                crate::power::return_held_nodes(state_dir, actions)?;
            }
            Ok(())
        }
        SlurmRole::Compute => compute(setup, name, actions),
        SlurmRole::None => Ok(()),
    }
}

/// The node's job environment at [`JOB_ENV_FILE`], root's alone: the results store's token
/// (derived from the munge key, so a rotated key changes it) and, where the provider delivered
/// them (`STORE_ENV_FILE` in the state directory: a site with an object store), the site's store
/// keys.
fn job_env(
    state_dir: &Path,
    munge_key: &[u8],
    actions: &mut Vec<String>,
) -> Result<(), AgentError> {
    let target = Path::new(JOB_ENV_FILE);
    if Path::new(OLD_JOB_ENV_FILE).exists() {
        std::fs::remove_file(OLD_JOB_ENV_FILE).map_err(AgentError::io(OLD_JOB_ENV_FILE))?;
    }
    let token = hybridgrid_core::keys::results_token(munge_key);
    let mut wanted = format!("{RESULTS_TOKEN_VAR}='{token}'\n").into_bytes();
    if let Ok(store) = std::fs::read(state_dir.join(STORE_ENV_FILE)) {
        wanted.extend_from_slice(&store);
    }
    if std::fs::read(target).ok().as_deref() == Some(wanted.as_slice()) {
        return Ok(());
    }
    let dir = target.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(dir).map_err(AgentError::io(dir))?;
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .map_err(AgentError::io(dir))?;
    write_atomic(target, &wanted, 0o600)?;
    actions.push("job environment".into());
    Ok(())
}

/// The key in `/etc/munge` (munge's, 0400) and `munged` running with it; returns the key.
fn munge(state_dir: &Path, actions: &mut Vec<String>) -> Result<Vec<u8>, AgentError> {
    let source = state_dir.join(MUNGE_KEY_FILE);
    let key = std::fs::read(&source).map_err(|e| AgentError::NoMungeKey {
        path: source.clone(),
        source: e,
    })?;
    let target = Path::new("/etc/munge/munge.key");
    let changed = std::fs::read(target).ok().as_deref() != Some(key.as_slice());
    if changed {
        write_atomic(target, &key, 0o400)?;
        sys::own("/etc/munge/munge.key", "munge")?;
        actions.push("munge key".into());
    }
    std::fs::create_dir_all("/run/munge").map_err(AgentError::io("/run/munge"))?;
    sys::own("/run/munge", "munge")?;
    let running = pid_of(MUNGED_PID);
    if let (Some(pid), true) = (running, changed) {
        // A munged with another key would reject every credential of the cluster.
        sys::stop_processes(&[pid]);
    }
    if running.is_none() || changed {
        sys::run(
            "runuser",
            &[
                "-u",
                "munge",
                "--",
                "munged",
                "--log-file=/run/munge/munged.log",
                &format!("--pid-file={MUNGED_PID}"),
                "--seed-file=/run/munge/seed",
            ],
        )?;
        sys::wait_for("munged", Duration::from_secs(10), || pid_of(MUNGED_PID))?;
        actions.push("munged".into());
    }
    Ok(key)
}

fn scontrol(args: &[&str]) -> Result<String, AgentError> {
    sys::run("scontrol", args)
}

fn controller(
    setup: &SlurmSetup,
    wait_for_workers: Duration,
    actions: &mut Vec<String>,
) -> Result<(), AgentError> {
    for d in ["/var/lib/slurm/slurmctld", "/var/lib/slurm/slurmd"] {
        std::fs::create_dir_all(d).map_err(AgentError::io(d))?;
        sys::own(d, "slurm")?;
    }
    let started = ensure_slurmctld(setup, actions)?;
    // What slurmctld has is looked at (a process per question) only when something may have
    // changed it: a start (also by another process: its pid changed), a new plan, a planned
    // worker it did not know yet, `up` waiting for workers, or now and then.
    let synced = Synced {
        partitions: setup.partitions.clone(),
        slurmctld: pid_of(SLURMCTLD_PID),
    };
    let new_plan = synced_partitions().as_ref() != Some(&synced);
    if !started && !new_plan && wait_for_workers.is_zero() && !controller_check().due() {
        return Ok(());
    }
    if started {
        // Workers slurmctld forgot join again over the next minutes: look again soon.
        controller_check().restart();
    }
    sys::wait_for("slurmctld to answer", CTLD_START, || {
        let up = sys::ok_stdout("scontrol", &["ping"]).filter(|o| o.contains("is UP"));
        if up.is_none() {
            std::thread::sleep(POLL);
        }
        up
    })?;
    let planned: BTreeSet<&str> = setup
        .partitions
        .iter()
        .flat_map(|p| p.nodes.iter().map(String::as_str))
        .collect();
    if !wait_for_workers.is_zero() {
        // Best effort: a worker that does not come is left out and shown by `status`.
        let _ = sys::wait_for("workers to register", wait_for_workers, || {
            let known = known_nodes().unwrap_or_default();
            let all = planned.iter().all(|n| known.contains(*n));
            if !all {
                std::thread::sleep(POLL);
            }
            all.then_some(())
        });
    }
    let all_known = sync_partitions(setup, &planned, actions)?;
    // Until every planned worker has joined, every period looks again (a worker registering
    // after `up`'s wait joins its partition within a period, not at the next check).
    *synced_partitions() = all_known.then_some(synced);
    Ok(())
}

/// slurm.conf as planned and slurmctld running; whether it was started. The file is written
/// whenever it changed (client commands read it); slurmctld reads it only when it starts, and
/// later workers join as dynamic nodes, so a running slurmctld is left alone — unless its power
/// saving (programs, timeouts, cloud nodes) changed, which only a start reads.
fn ensure_slurmctld(setup: &SlurmSetup, actions: &mut Vec<String>) -> Result<bool, AgentError> {
    let old = std::fs::read_to_string(SLURM_CONF).unwrap_or_default();
    if old != setup.conf {
        write_atomic(Path::new(SLURM_CONF), setup.conf.as_bytes(), 0o644)?;
        actions.push("slurm.conf".into());
        if let Some(pid) = pid_of(SLURMCTLD_PID)
            && power_saving_lines(&old) != power_saving_lines(&setup.conf)
        {
            sys::stop_processes(&[pid]);
            actions.push("slurmctld stopped: power saving changed".into());
        }
    }
    if pid_of(SLURMCTLD_PID).is_some() {
        return Ok(false);
    }
    sys::run("slurmctld", &[])?;
    actions.push("slurmctld".into());
    Ok(true)
}

/// What this process last made slurmctld's partitions, and with which slurmctld.
#[derive(Debug, PartialEq)]
struct Synced {
    partitions: Vec<PartitionMembers>,
    slurmctld: Option<u32>,
}

/// The partitions this process last made slurmctld's, with every planned worker in them
/// (`None`: none yet, or a worker was missing).
fn synced_partitions() -> std::sync::MutexGuard<'static, Option<Synced>> {
    static SYNCED: std::sync::Mutex<Option<Synced>> = std::sync::Mutex::new(None);
    SYNCED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The nodes slurmctld knows.
fn known_nodes() -> Result<BTreeSet<String>, AgentError> {
    Ok(scontrol(&["show", "nodes", "-o"])?
        .lines()
        .filter_map(|l| {
            l.split_whitespace()
                .next()?
                .strip_prefix("NodeName=")
                .map(str::to_owned)
        })
        .collect())
}

/// Partition name → its nodes, as slurmctld has them (host lists expanded).
fn partitions() -> Result<BTreeMap<String, BTreeSet<String>>, AgentError> {
    let mut out = BTreeMap::new();
    for line in scontrol(&["show", "partitions", "-o"])?.lines() {
        let mut name = None;
        let mut nodes = BTreeSet::new();
        for w in line.split_whitespace() {
            if let Some(n) = w.strip_prefix("PartitionName=") {
                name = Some(n.to_owned());
            }
            if let Some(list) = w.strip_prefix("Nodes=")
                && list != "(null)"
            {
                nodes = hybridgrid_core::hostlist::expand(list)
                    .into_iter()
                    .collect();
            }
        }
        if let Some(name) = name {
            out.insert(name, nodes);
        }
    }
    Ok(out)
}

/// Keeps slurmctld's partitions as planned, with the planned workers it knows: creates a new
/// site's partition, sets each partition's nodes, deletes partitions and dynamic nodes that left.
/// Whether slurmctld knew every planned worker.
fn sync_partitions(
    setup: &SlurmSetup,
    planned: &BTreeSet<&str>,
    actions: &mut Vec<String>,
) -> Result<bool, AgentError> {
    let known = known_nodes()?;
    let current = partitions()?;
    for p in &setup.partitions {
        let wanted: BTreeSet<String> = p
            .nodes
            .iter()
            .filter(|n| known.contains(*n))
            .cloned()
            .collect();
        let list = wanted.iter().cloned().collect::<Vec<_>>().join(",");
        let name = format!("PartitionName={}", p.name);
        let nodes = format!("Nodes={list}");
        match current.get(&p.name) {
            None => {
                let mut args = vec!["create", name.as_str(), "MaxTime=INFINITE", "State=UP"];
                if !wanted.is_empty() {
                    args.push(&nodes);
                }
                scontrol(&args)?;
                actions.push(format!("partition {}", p.name));
            }
            Some(have) if !wanted.is_empty() && *have != wanted => {
                scontrol(&["update", &name, &nodes])?;
                actions.push(format!("partition {}: {} nodes", p.name, wanted.len()));
            }
            Some(_) => {}
        }
    }
    for p in current
        .keys()
        .filter(|p| setup.partitions.iter().all(|q| &q.name != *p))
    {
        scontrol(&["delete", &format!("PartitionName={p}")])?;
        actions.push(format!("remove partition {p}"));
    }
    for n in known.iter().filter(|n| !planned.contains(n.as_str())) {
        scontrol(&["delete", &format!("NodeName={n}")])?;
        actions.push(format!("remove Slurm node {n}"));
    }
    Ok(planned.iter().all(|n| known.contains(*n)))
}

/// Where configless slurmd keeps the configuration it fetched (`SlurmdSpoolDir/conf-cache`).
const CONF_CACHE: &str = "/var/lib/slurm/slurmd/conf-cache/slurm.conf";

/// When a worker next asks slurmctld whether it still knows the node, and the controller's agent
/// looks at slurmctld's nodes and partitions: a question every period was 100 requests a second
/// at the controller of a 1,000-node cluster for nothing (issue 25), and the controller's own
/// look a process per partition.
/// The first after [`FIRST_CHECK`], then each interval twice the last up to [`LAST_CHECK`],
/// each shortened by up to a fifth, differently per process (so per node), so that nodes started
/// together do not ask together. `agent apply` (of `up`) asks at once; the node's supervisor
/// starts as if it had just asked ([`defer_controller_check`]: `up` configured the node); slurmd
/// started again begins the series anew.
#[derive(Debug)]
struct ControllerCheck {
    next: Option<std::time::Instant>,
    interval: Duration,
    asked: u32,
}

/// The first check after slurmd started in this process, and the longest interval.
const FIRST_CHECK: Duration = Duration::from_secs(120);
const LAST_CHECK: Duration = Duration::from_secs(600);

impl ControllerCheck {
    /// Whether the time has come to ask; if so, the next time is set.
    fn due(&mut self) -> bool {
        let now = std::time::Instant::now();
        if self.next.is_some_and(|next| now < next) {
            return false;
        }
        self.asked += 1;
        self.next = Some(now + jittered(self.interval, self.asked));
        self.interval = (self.interval * 2).min(LAST_CHECK);
        true
    }

    /// As if the controller had just been asked: the next question after [`FIRST_CHECK`].
    fn restart(&mut self) {
        self.interval = FIRST_CHECK;
        self.asked = 0;
        self.next = None;
        let _ = self.due();
    }
}

/// The node's supervisor starts right after `up` configured the node (which asked slurmctld):
/// its first question comes after [`FIRST_CHECK`], not with its first periodic apply.
pub fn defer_controller_check() {
    controller_check().restart();
}

/// Whether the daemon whose PID file is `pid_file` wrote it less than `age` ago.
fn started_within(pid_file: &str, age: Duration) -> bool {
    std::fs::metadata(pid_file)
        .and_then(|m| m.modified())
        .is_ok_and(|t| t.elapsed().is_ok_and(|e| e < age))
}

/// `interval` less up to a fifth, chosen by this process and `n`.
fn jittered(interval: Duration, n: u32) -> Duration {
    use std::hash::{Hash as _, Hasher as _};
    let mut h = std::hash::DefaultHasher::new();
    (std::process::id(), n).hash(&mut h);
    let fifth = interval.as_millis() as u64 / 5;
    interval - Duration::from_millis(h.finish() % fifth.max(1))
}

fn controller_check() -> std::sync::MutexGuard<'static, ControllerCheck> {
    static CHECK: std::sync::Mutex<ControllerCheck> = std::sync::Mutex::new(ControllerCheck {
        next: None,
        interval: FIRST_CHECK,
        asked: 0,
    });
    CHECK
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// How long a worker's periodic apply waits for slurmctld's answer: scontrol's own timeout
/// (MessageTimeout, retried) held the node's supervisor ~20 s whenever the controller was
/// unreachable, and with it every repair behind it.
const ASK_CONTROLLER: Duration = Duration::from_secs(3);

/// Whether the running slurmctld knows `name`: `None` when it cannot be asked (in time).
/// Asked with `sinfo` first: `scontrol show node` answers with 290 KB from Slurm 22.05's
/// controller (measured on the test bed, against 3 KB for `sinfo`), and a worker at another
/// site asks every period through the tunnel. Only a node `sinfo` does not show (forgotten, or
/// in no partition yet) is looked up with `scontrol`.
fn controller_knows(name: &str) -> Option<bool> {
    if !Path::new(CONF_CACHE).is_file() {
        return None;
    }
    match in_a_partition(name)? {
        true => Some(true),
        false => known_to_controller(name),
    }
}

/// Whether `sinfo` shows `name` in some partition.
fn in_a_partition(name: &str) -> Option<bool> {
    let mut cmd = std::process::Command::new("sinfo");
    cmd.args(["-h", "-N", "-n", name, "-o", "%N"])
        .env("SLURM_CONF", CONF_CACHE);
    let out = sys::output_within(cmd, ASK_CONTROLLER)?;
    let shown = String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.trim() == name);
    out.status.success().then_some(shown)
}

/// Whether slurmctld has `name` at all (`scontrol show node`: large, asked rarely).
fn known_to_controller(name: &str) -> Option<bool> {
    let mut cmd = std::process::Command::new("scontrol");
    cmd.args(["show", "node", name, "-o"])
        .env("SLURM_CONF", CONF_CACHE);
    let out = sys::output_within(cmd, ASK_CONTROLLER)?;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    if out.status.success() && text.contains(&format!("NodeName={name} ")) {
        Some(true)
    } else if text.contains("not found") {
        Some(false)
    } else {
        None
    }
}

fn compute(setup: &SlurmSetup, name: &str, actions: &mut Vec<String>) -> Result<(), AgentError> {
    std::fs::create_dir_all("/var/lib/slurm/slurmd").map_err(AgentError::io("/var/lib/slurm"))?;
    if let Some(pid) = pid_of(SLURMD_PID) {
        // A dynamic node is forgotten when slurmctld restarts without it in its slurm.conf
        // (killed before it saved its state): register again. Asked rarely (`ControllerCheck`),
        // and not within `FIRST_CHECK` of slurmd's start, which another process (`up`'s
        // apply) may have made: a thousand workers configured together asked together then.
        if started_within(SLURMD_PID, jittered(FIRST_CHECK, 0))
            || !controller_check().due()
            || controller_knows(name) != Some(false)
        {
            return Ok(());
        }
        sys::stop_processes(&[pid]);
        actions.push("slurmd: slurmctld forgot this node".into());
    }
    controller_check().restart();
    let server = format!("{}:{}", setup.controller_addr, setup.ctld_port);
    // slurmd fetches its configuration from slurmctld when it starts (and waits 10 s between
    // tries): first wait for slurmctld, which at other sites answers once the tunnels are up.
    let addr = std::net::SocketAddr::from((setup.controller_addr, setup.ctld_port));
    sys::wait_for(&format!("slurmctld at {server}"), CTLD_REACHABLE, || {
        let up = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok();
        if !up {
            std::thread::sleep(POLL);
        }
        up.then_some(())
    })?;
    let conf = format!(
        "CPUs={} RealMemory={} Feature={}",
        setup.cpus, setup.memory_mib, setup.feature
    );
    // A node in the running slurmctld's slurm.conf starts as itself; slurmd refuses to start
    // when slurmctld does not know its name (a worker added later): then it joins as a
    // dynamic node.
    let mut args = vec!["--conf-server", server.as_str()];
    if setup.boot_at_start {
        args.push("-b");
    }
    match start_configless(&args) {
        Ok(()) => actions.push("slurmd".into()),
        Err(e) if names_unknown_node(&e) => {
            sys::run("slurmd", &["-Z", "--conf-server", &server, "--conf", &conf])?;
            actions.push("slurmd (dynamic node)".into());
        }
        Err(e) => return Err(e),
    }
    sys::wait_for("slurmd", Duration::from_secs(20), || pid_of(SLURMD_PID))?;
    Ok(())
}

/// Tries of a configless `slurmd` start: a slurmctld that a thousand starting nodes ask at
/// once may not answer one's fetch of the configuration in time.
const CONFIGLESS_TRIES: u32 = 3;

/// `slurmd` started with its configuration fetched from slurmctld, tried again (after 1 s, 2 s)
/// unless slurmctld does not know the node; the last try's error.
fn start_configless(args: &[&str]) -> Result<(), AgentError> {
    let mut tried = 1;
    loop {
        match sys::run("slurmd", args) {
            Ok(_) => return Ok(()),
            Err(e) if names_unknown_node(&e) || tried == CONFIGLESS_TRIES => return Err(e),
            Err(_) => {
                std::thread::sleep(Duration::from_secs(u64::from(tried)));
                tried += 1;
            }
        }
    }
}

/// Whether slurmd refused to start because the configuration it fetched has no node of this
/// name (`fatal: Unable to determine this slurmd's NodeName`): a worker slurmctld's slurm.conf
/// does not list joins as a dynamic node. Any other failure (slurmctld busy or unreachable) is
/// not a reason to register as a new node: that fails with "Duplicated NodeName" for a known
/// one and hides the real cause.
fn names_unknown_node(e: &AgentError) -> bool {
    e.to_string().contains("determine this slurmd's NodeName")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests
mod tests {
    use super::*;
    use std::time::Instant;

    /// How long until `c` asks next, as set by its last `due`.
    fn wait_of(c: &ControllerCheck) -> Duration {
        c.next.unwrap().saturating_duration_since(Instant::now())
    }

    fn between(wait: Duration, interval: Duration) -> bool {
        wait <= interval && wait + Duration::from_secs(1) >= interval * 4 / 5
    }

    #[test]
    fn regression_a_busy_controller_is_no_reason_to_join_as_a_new_node() {
        let failed = |detail: &str| AgentError::Command {
            command: "slurmd --conf-server 10.100.0.5:6817".into(),
            detail: detail.into(),
        };
        assert!(names_unknown_node(&failed(
            "slurmd: fatal: Unable to determine this slurmd's NodeName"
        )));
        // At 1,050 nodes the configless fetch timed out; `slurmd -Z` then failed with
        // "Duplicated NodeName" and that was the error `up` showed.
        assert!(!names_unknown_node(&failed(
            "slurmd: error: fetch_config: Zero Bytes were transmitted or received"
        )));
    }

    #[test]
    fn the_controller_is_asked_at_once_then_ever_more_rarely_and_anew_after_a_restart() {
        let mut c = ControllerCheck {
            next: None,
            interval: FIRST_CHECK,
            asked: 0,
        };
        assert!(c.due(), "a new process asks at once");
        assert!(!c.due(), "and not again right away");
        assert!(between(wait_of(&c), FIRST_CHECK), "{:?}", wait_of(&c));
        let mut waits = Vec::new();
        for _ in 0..5 {
            c.next = Some(Instant::now());
            assert!(c.due());
            waits.push(wait_of(&c));
        }
        let expected = [240, 480, 600, 600, 600].map(Duration::from_secs);
        for (wait, interval) in waits.iter().zip(expected) {
            assert!(between(*wait, interval), "{waits:?}");
        }
        c.restart();
        assert!(!c.due(), "a restart counts as asked");
        assert!(between(wait_of(&c), FIRST_CHECK), "{:?}", wait_of(&c));
    }
}
