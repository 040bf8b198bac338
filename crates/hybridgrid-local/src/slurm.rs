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

/// Prepares a Slurm node's machine before its agent sets up its Slurm role: the cluster's munge
/// key in the agent's state directory and the node's private folders owned as the daemons need
/// them — what a cloud image and the node channel give a VM. The holder mounted those folders
/// when it made the machine (`crate::machine`); a machine made before it did gets them here.
/// Idempotent; no process once the folders are there.
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
    let [(munge, _), (lib, _), (log, _), (etc, _)] = crate::machine::slurm_dirs(&dir);
    for d in [&munge, &lib, &log, &etc] {
        std::fs::create_dir_all(d).map_err(LocalError::io(d))?;
    }
    let own = |d: &std::path::Path, user: &str| {
        hybridgrid_agent::sys::own(&d.display().to_string(), user).map_err(LocalError::from)
    };
    own(&munge, "munge")?;
    set_mode(&munge, 0o700)?;
    own(&lib, "slurm")?;
    own(&log, "slurm")?;
    let pid = local.exec_target(node)?.pid;
    if crate::machine::mounted(pid, &crate::machine::slurm_mount_points(role)) {
        return Ok(());
    }
    node_sh(local, node, &mount_script(&dir, role)).map(drop)
}

fn set_mode(dir: &std::path::Path, mode: u32) -> Result<(), LocalError> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
        .map_err(LocalError::io(dir))
}

/// The shell that mounts a Slurm node's folders into a machine made without them.
fn mount_script(dir: &std::path::Path, role: SlurmRole) -> String {
    let mut script = String::from(
        "set -e\n\
         mp() { mountpoint -q \"$1\"; }\n\
         mkdir -p /run/munge /run/slurm\n\
         mp /run/munge || mount -t tmpfs -o mode=0755 hg-munge /run/munge\n\
         mp /run/slurm || mount -t tmpfs -o mode=0755 hg-slurm /run/slurm\n",
    );
    for (src, dst) in crate::machine::slurm_dirs(dir) {
        if dst == "/etc/slurm" && role != SlurmRole::Controller {
            continue;
        }
        script.push_str(&format!(
            "mkdir -p {dst}; mp {dst} || mount --bind {} {dst}\n",
            q(&src)
        ));
    }
    if role == SlurmRole::Compute {
        let name = crate::machine::CGROUP_NAME;
        script.push_str(&format!(
            "mp /sys/fs/cgroup || mount -t tmpfs -o mode=0755 hg-cgroup /sys/fs/cgroup\n\
             mkdir -p /sys/fs/cgroup/systemd\n\
             mp /sys/fs/cgroup/systemd || mount -t cgroup -o none,name={name} {name} /sys/fs/cgroup/systemd\n"
        ));
    }
    script
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
