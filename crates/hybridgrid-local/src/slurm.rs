//! Slurm on the local provider: one munge key per cluster, `munged` + `slurmctld` on the master,
//! `munged` + configless `slurmd` (`--conf-server`) on every worker, each inside the node's own
//! mount namespace (private `/run/munge`, `/run/slurm`, `/etc/munge`, `/var/lib/slurm`,
//! `/var/log/slurm`, and on the master `/etc/slurm`, bound from the node's state directory).
//!
//! Workers added to a running cluster join as dynamic nodes (`slurmd -Z`) and are put into their
//! site's partition with `scontrol update`: slurmctld is not restarted and running jobs go on.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hybridgrid_core::model::ALL_PARTITION;
use hybridgrid_core::plan::{NodePlan, Plan, Role};
use hybridgrid_core::render;

use crate::ledger::write_atomic;
use crate::{Local, LocalError, sh};

/// The cluster's munge key, in the cluster's state directory (mode 0400).
pub const MUNGE_KEY: &str = "munge.key";
const MUNGE_KEY_BYTES: usize = 1024;
/// The name of the private named cgroup-v1 hierarchy slurmd is given on workers.
const CGROUP_NAME: &str = "hybridgrid";

/// Makes the cluster's munge key once: 1024 random bytes, mode 0400. Never logged.
pub fn ensure_munge_key(cluster_dir: &Path) -> Result<PathBuf, LocalError> {
    let path = cluster_dir.join(MUNGE_KEY);
    if std::fs::metadata(&path).is_ok_and(|m| m.len() == MUNGE_KEY_BYTES as u64) {
        return Ok(path);
    }
    let mut key = vec![0u8; MUNGE_KEY_BYTES];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut key))
        .map_err(LocalError::io("/dev/urandom"))?;
    write_atomic(&path, &key, 0o400)?;
    Ok(path)
}

fn q(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', "'\\''"))
}

/// Runs a shell script inside the node's namespaces (mount, UTS, network); returns stdout.
pub fn node_sh(local: &Local, node: &str, script: &str) -> Result<String, LocalError> {
    let pid = local.exec_target(node)?.pid.to_string();
    sh::run(
        "nsenter",
        &[
            "-t", &pid, "-m", "-u", "-n", "--wd=/", "--", "sh", "-c", script,
        ],
    )
}

/// Runs a program inside the node's namespaces; returns stdout.
pub fn node_run(local: &Local, node: &str, args: &[&str]) -> Result<String, LocalError> {
    let pid = local.exec_target(node)?.pid.to_string();
    let mut all = vec!["-t", &pid, "-m", "-u", "-n", "--wd=/", "--"];
    all.extend_from_slice(args);
    sh::run("nsenter", &all)
}

/// Prepares the node's private directories and key on the host side.
fn prepare_dirs(local: &Local, node: &NodePlan, key: &Path) -> Result<PathBuf, LocalError> {
    let base = local.node_dir(&node.name).join("slurm");
    for sub in ["munge", "lib", "log", "etc"] {
        let d = base.join(sub);
        std::fs::create_dir_all(&d).map_err(LocalError::io(&d))?;
    }
    let munge_key = base.join("munge/munge.key");
    if std::fs::read(&munge_key).ok() != std::fs::read(key).ok() {
        let data = std::fs::read(key).map_err(LocalError::io(key))?;
        let _ = std::fs::remove_file(&munge_key);
        write_atomic(&munge_key, &data, 0o400)?;
    }
    let b = |p: &str| base.join(p).display().to_string();
    sh::run("chown", &["-R", "munge:munge", &b("munge")])?;
    sh::run("chmod", &["0700", &b("munge")])?;
    sh::run("chown", &["-R", "slurm:slurm", &b("lib"), &b("log")])?;
    Ok(base)
}

/// The mounts and `munged` every Slurm node needs; idempotent.
fn mounts_and_munge(base: &Path, controller: bool) -> String {
    let mut s = String::from(
        "set -e\n\
         mp() { mountpoint -q \"$1\"; }\n\
         mkdir -p /run/munge /run/slurm\n\
         mp /run/munge || { mount -t tmpfs -o mode=0755 hg-munge /run/munge; chown munge:munge /run/munge; }\n\
         mp /run/slurm || { mount -t tmpfs -o mode=0755 hg-slurm /run/slurm; chown slurm:slurm /run/slurm; }\n",
    );
    let mut bind = |src: &str, dst: &str| {
        s.push_str(&format!(
            "mkdir -p {dst}; mp {dst} || mount --bind {} {dst}\n",
            q(&base.join(src))
        ));
    };
    bind("munge", "/etc/munge");
    bind("lib", "/var/lib/slurm");
    bind("log", "/var/log/slurm");
    if controller {
        bind("etc", "/etc/slurm");
    }
    s.push_str(
        "alive() { [ -f \"$1\" ] && kill -0 \"$(cat \"$1\")\" 2>/dev/null; }\n\
         alive /run/munge/munged.pid || runuser -u munge -- munged --log-file=/run/munge/munged.log \
         --pid-file=/run/munge/munged.pid --seed-file=/run/munge/seed\n",
    );
    s
}

/// What `ensure` did.
#[derive(Debug, Default, Clone)]
pub struct SlurmReport {
    pub started: Vec<String>,
    /// Workers that joined the running controller as dynamic nodes.
    pub joined: Vec<String>,
}

/// Brings Slurm to the plan on every running node: idempotent, touches only what is missing.
pub fn ensure(local: &Local, plan: &Plan) -> Result<SlurmReport, LocalError> {
    let mut report = SlurmReport::default();
    let key = ensure_munge_key(local.cluster_dir())?;
    let master = plan
        .nodes
        .iter()
        .find(|n| n.role == Role::Master)
        .ok_or_else(|| LocalError::Other("the plan has no master".into()))?;
    let ctl_ip = plan.slurm.controller_addr.to_string();

    // The controller.
    let base = prepare_dirs(local, master, &key)?;
    for d in ["lib/slurmctld", "lib/slurmd"] {
        let p = base.join(d);
        std::fs::create_dir_all(&p).map_err(LocalError::io(&p))?;
    }
    sh::run(
        "chown",
        &["-R", "slurm:slurm", &base.join("lib").display().to_string()],
    )?;
    let mut script = mounts_and_munge(&base, true);
    let ctld_running = node_sh(
        local,
        &master.name,
        "f=/run/slurm/slurmctld.pid; [ -f $f ] && kill -0 \"$(cat $f)\" 2>/dev/null && echo yes || true",
    )
    .unwrap_or_default()
    .trim()
        == "yes";
    if !ctld_running {
        // slurmctld reads the file when it starts; later workers join without a restart.
        let conf = base.join("etc/slurm.conf");
        write_atomic(&conf, render::slurm_conf(plan).as_bytes(), 0o644)?;
        script.push_str("slurmctld || { sleep 1; alive /run/slurm/slurmctld.pid; }\n");
        report.started.push(format!("slurmctld on {}", master.name));
    }
    node_sh(local, &master.name, &script)?;
    wait_ctld(local, &master.name)?;

    // Nodes slurmctld knows already (from its slurm.conf or as dynamic nodes).
    let known = known_nodes(local, &master.name)?;
    let static_nodes = conf_nodes(&base.join("etc/slurm.conf"));
    let workers: Vec<&NodePlan> = plan
        .nodes
        .iter()
        .filter(|n| n.role == Role::Worker && local.exec_target(&n.name).is_ok())
        .collect();
    let results: Vec<Result<Option<(String, bool)>, LocalError>> = std::thread::scope(|s| {
        let handles: Vec<_> = workers
            .iter()
            .map(|w| {
                let (key, ctl_ip, known, static_nodes) = (&key, &ctl_ip, &known, &static_nodes);
                s.spawn(move || {
                    let base = prepare_dirs(local, w, key)?;
                    let mut script = mounts_and_munge(&base, false);
                    script.push_str(&format!(
                        "mp /sys/fs/cgroup || mount -t tmpfs -o mode=0755 hg-cgroup /sys/fs/cgroup\n\
                         mkdir -p /sys/fs/cgroup/systemd\n\
                         mp /sys/fs/cgroup/systemd || mount -t cgroup -o none,name={CGROUP_NAME} {CGROUP_NAME} /sys/fs/cgroup/systemd\n"
                    ));
                    let dynamic = !static_nodes.contains(&w.name);
                    let start = if dynamic {
                        format!(
                            "slurmd -Z --conf-server {ctl_ip} --conf 'CPUs={} RealMemory={} Feature={}'",
                            w.cpus, w.memory_mib, w.site
                        )
                    } else {
                        format!("slurmd --conf-server {ctl_ip}")
                    };
                    script.push_str(&format!(
                        "if alive /run/slurm/slurmd.pid; then echo running; \
                         else {start} || {{ sleep 1; alive /run/slurm/slurmd.pid; }}; echo started; fi\n"
                    ));
                    let out = node_sh(local, &w.name, &script)?;
                    let started = out.lines().any(|l| l == "started");
                    Ok(started.then(|| (w.name.clone(), dynamic && !known.contains_key(&w.name))))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(LocalError::Other("slurm thread panicked".into())))
            })
            .collect()
    });
    for r in results {
        if let Some((name, joined)) = r? {
            report.started.push(format!("slurmd on {name}"));
            if joined {
                report.joined.push(name);
            }
        }
    }
    if !report.joined.is_empty() {
        let names: Vec<&str> = report.joined.iter().map(String::as_str).collect();
        wait_known(local, &master.name, &names)?;
    }
    sync_partitions(local, plan, &master.name, &static_nodes)?;
    Ok(report)
}

/// Waits until `scontrol ping` reaches the controller.
fn wait_ctld(local: &Local, master: &str) -> Result<(), LocalError> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if node_run(local, master, &["scontrol", "ping"]).is_ok_and(|o| o.contains("is UP")) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(LocalError::Timeout {
                what: format!("slurmctld on {master}"),
                seconds: 30,
            });
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Node name → state (`sinfo -N`), as the controller sees them.
pub fn node_states(local: &Local, master: &str) -> Result<BTreeMap<String, String>, LocalError> {
    let out = node_run(local, master, &["sinfo", "-h", "-N", "-o", "%N %T"])?;
    Ok(out
        .lines()
        .filter_map(|l| {
            let (n, s) = l.split_once(' ')?;
            Some((n.to_owned(), s.trim().to_owned()))
        })
        .collect())
}

fn known_nodes(local: &Local, master: &str) -> Result<BTreeMap<String, String>, LocalError> {
    let out = node_run(local, master, &["scontrol", "show", "nodes", "-o"])?;
    Ok(out
        .lines()
        .filter_map(|l| {
            let name = l.split_whitespace().next()?.strip_prefix("NodeName=")?;
            Some((name.to_owned(), l.to_owned()))
        })
        .collect())
}

fn wait_known(local: &Local, master: &str, names: &[&str]) -> Result<(), LocalError> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let known = known_nodes(local, master)?;
        if names.iter().all(|n| known.contains_key(*n)) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(LocalError::Timeout {
                what: format!("{} to register with slurmctld", names.join(", ")),
                seconds: 30,
            });
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The `NodeName=` entries of a slurm.conf.
fn conf_nodes(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            l.strip_prefix("NodeName=")?
                .split_whitespace()
                .next()
                .map(str::to_owned)
        })
        .collect()
}

/// Keeps slurmctld's partitions as planned once nodes joined dynamically or sites came or went:
/// creates the partition of a new site, sets each partition's nodes, deletes partitions of sites
/// that left and the dynamic nodes that left. Static nodes and partitions (from slurm.conf) that
/// are as planned are not touched.
fn sync_partitions(
    local: &Local,
    plan: &Plan,
    master: &str,
    static_nodes: &[String],
) -> Result<(), LocalError> {
    let workers: Vec<&str> = plan
        .nodes
        .iter()
        .filter(|n| n.role == Role::Worker)
        .map(|n| n.name.as_str())
        .collect();
    let known = known_nodes(local, master)?;
    let out = node_run(local, master, &["scontrol", "show", "partitions", "-o"])?;
    let current: BTreeMap<String, String> = out
        .lines()
        .filter_map(|l| {
            let mut name = None;
            let mut nodes = String::new();
            for w in l.split_whitespace() {
                if let Some(n) = w.strip_prefix("PartitionName=") {
                    name = Some(n.to_owned());
                }
                if let Some(n) = w.strip_prefix("Nodes=") {
                    n.clone_into(&mut nodes);
                }
            }
            Some((name?, nodes))
        })
        .collect();
    let planned = |p: &str| plan.slurm.partitions.iter().any(|x| x.name == p);
    let need = workers.iter().any(|n| !static_nodes.iter().any(|s| s == n))
        || current.keys().any(|p| !planned(p))
        || plan
            .slurm
            .partitions
            .iter()
            .any(|p| !current.contains_key(&p.name))
        || known.keys().any(|n| !workers.contains(&n.as_str()));
    if !need {
        return Ok(());
    }
    let scontrol = |args: &[&str]| {
        let mut all = vec!["scontrol"];
        all.extend_from_slice(args);
        node_run(local, master, &all)
    };
    for p in &plan.slurm.partitions {
        let members: Vec<&str> = if p.name == ALL_PARTITION {
            workers.clone()
        } else {
            p.nodes.iter().map(String::as_str).collect()
        };
        let wanted: Vec<&str> = members
            .into_iter()
            .filter(|n| known.contains_key(*n))
            .collect();
        let nodes = format!("Nodes={}", wanted.join(","));
        let name = format!("PartitionName={}", p.name);
        match current.get(&p.name) {
            None => {
                let mut args = vec!["create", name.as_str(), "MaxTime=INFINITE", "State=UP"];
                if !wanted.is_empty() {
                    args.push(&nodes);
                }
                scontrol(&args)?;
            }
            Some(have) => {
                let mut have = expand_hostlist(local, master, have);
                have.sort();
                let mut want: Vec<String> = wanted.iter().map(|s| (*s).to_owned()).collect();
                want.sort();
                if !wanted.is_empty() && have != want {
                    scontrol(&["update", &name, &nodes])?;
                }
            }
        }
    }
    for p in current.keys().filter(|p| !planned(p)) {
        scontrol(&["delete", &format!("PartitionName={p}")])?;
    }
    for n in known.keys().filter(|n| !workers.contains(&n.as_str())) {
        // Only dynamic nodes can be deleted; a static one stays DOWN until slurmctld restarts.
        let _ = scontrol(&["delete", &format!("NodeName={n}")]);
    }
    Ok(())
}

fn expand_hostlist(local: &Local, master: &str, list: &str) -> Vec<String> {
    if list == "(null)" || list.is_empty() {
        return Vec::new();
    }
    node_run(local, master, &["scontrol", "show", "hostnames", list])
        .map(|o| o.lines().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// Every Slurm node's state for `status`: the controller's view, `down` for a worker it does not
/// know (yet) and `no controller` when slurmctld does not answer.
pub fn states(local: &Local, plan: &Plan) -> BTreeMap<String, String> {
    let Some(master) = plan.nodes.iter().find(|n| n.role == Role::Master) else {
        return BTreeMap::new();
    };
    let mut out = BTreeMap::new();
    match node_states(local, &master.name) {
        Ok(states) => {
            let ctld = node_sh(
                local,
                &master.name,
                "f=/run/slurm/slurmctld.pid; [ -f $f ] && kill -0 \"$(cat $f)\" 2>/dev/null && echo up || echo down",
            )
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "down".into());
            out.insert(master.name.clone(), format!("controller {ctld}"));
            for w in plan.nodes.iter().filter(|n| n.role == Role::Worker) {
                let s = states
                    .get(&w.name)
                    .cloned()
                    .unwrap_or_else(|| "unknown".into());
                out.insert(w.name.clone(), s);
            }
        }
        Err(_) => {
            for n in plan.nodes.iter().filter(|n| n.role != Role::Gateway) {
                out.insert(n.name.clone(), "no controller".into());
            }
        }
    }
    out
}
