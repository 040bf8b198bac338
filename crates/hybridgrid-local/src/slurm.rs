//! Slurm on the local provider: what the node's machine needs before its agent sets up the
//! Slurm role (`hybridgrid_agent::slurm`, the same code as on a cloud VM): one munge key per
//! cluster, delivered into each Slurm node's agent state directory, and the node's own mount
//! namespace (private `/run/munge`, `/run/slurm`, `/etc/munge`, `/var/lib/slurm`,
//! `/var/log/slurm`, and on the master `/etc/slurm`, bound from the node's state directory).
//! Also the controller's view for `status`.

use std::collections::BTreeMap;

use hybridgrid_core::plan::{Plan, Role, SlurmRole};

use crate::ledger::write_atomic;
use crate::sh::quote_path as q;
use crate::{Local, LocalError, sh};

/// The name of the private named cgroup-v1 hierarchy slurmd is given on workers.
const CGROUP_NAME: &str = "hybridgrid";

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

/// Prepares a Slurm node's machine before its agent sets up its Slurm role: the node's private
/// directories (bound over `/etc/munge`, `/var/lib/slurm`, `/var/log/slurm`, on the controller
/// `/etc/slurm`; `/run/munge` and `/run/slurm` private tmpfs; on compute nodes a private named
/// cgroup hierarchy for slurmd) and the cluster's munge key in the agent's state directory —
/// what a cloud image and the node channel give a VM. Idempotent.
pub fn prepare_node(local: &Local, node: &str, role: SlurmRole) -> Result<(), LocalError> {
    if role == SlurmRole::None {
        return Ok(());
    }
    let key = hybridgrid_engine::munge::ensure(local.cluster_dir())?;
    let dir = local.node_dir(node);
    let delivered = dir.join(hybridgrid_agent::slurm::MUNGE_KEY_FILE);
    if std::fs::read(&delivered).ok().as_deref() != Some(key.as_slice()) {
        write_atomic(&delivered, &key, 0o400)?;
    }
    let base = dir.join("slurm");
    for sub in ["munge", "lib", "log", "etc"] {
        let d = base.join(sub);
        std::fs::create_dir_all(&d).map_err(LocalError::io(&d))?;
    }
    let b = |p: &str| base.join(p).display().to_string();
    sh::run("chown", &["-R", "munge:munge", &b("munge")])?;
    sh::run("chmod", &["0700", &b("munge")])?;
    sh::run("chown", &["-R", "slurm:slurm", &b("lib"), &b("log")])?;
    let mut script = String::from(
        "set -e\n\
         mp() { mountpoint -q \"$1\"; }\n\
         mkdir -p /run/munge /run/slurm\n\
         mp /run/munge || mount -t tmpfs -o mode=0755 hg-munge /run/munge\n\
         mp /run/slurm || mount -t tmpfs -o mode=0755 hg-slurm /run/slurm\n",
    );
    let mut bind = |src: &str, dst: &str| {
        script.push_str(&format!(
            "mkdir -p {dst}; mp {dst} || mount --bind {} {dst}\n",
            q(&base.join(src))
        ));
    };
    bind("munge", "/etc/munge");
    bind("lib", "/var/lib/slurm");
    bind("log", "/var/log/slurm");
    if role == SlurmRole::Controller {
        bind("etc", "/etc/slurm");
    } else {
        script.push_str(&format!(
            "mp /sys/fs/cgroup || mount -t tmpfs -o mode=0755 hg-cgroup /sys/fs/cgroup\n\
             mkdir -p /sys/fs/cgroup/systemd\n\
             mp /sys/fs/cgroup/systemd || mount -t cgroup -o none,name={CGROUP_NAME} {CGROUP_NAME} /sys/fs/cgroup/systemd\n"
        ));
    }
    node_sh(local, node, &script).map(drop)
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
