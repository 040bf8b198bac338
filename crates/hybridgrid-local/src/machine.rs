//! A node's machine: what a VM's kernel and disk give it, made by the process that holds the
//! node's namespaces (`hybridgrid hold`, also the node's supervisor) before it does anything
//! else. It enters the node's network namespace, takes mount and UTS namespaces of its own,
//! mounts `/sys` of that network (as `ip netns exec` does), sets the hostname, a private
//! `/run/wireguard` and `/etc/hosts` from the node's state; a Slurm node also gets the private
//! folders of munge and Slurm (`crate::slurm`). One process, where a shell and eight programs
//! (`ip netns exec`, `unshare`, `sh`, `hostname`, `mkdir`, `mount`, …) did it before, and another
//! shell with a dozen more at the node's first Slurm role.

use std::path::{Path, PathBuf};

use hybridgrid_core::plan::{Role, SlurmRole};
use nix::mount::{MntFlags, MsFlags};

use crate::LocalError;

/// The name of the private named cgroup-v1 hierarchy slurmd is given on workers.
pub const CGROUP_NAME: &str = "hybridgrid";

/// Written into the node's state directory once the holder holds the machine: the PID.
pub const READY_FILE: &str = "holder.ready";

/// What a node's holder makes.
#[derive(Debug, Clone)]
pub struct Machine {
    /// The named network namespace (`/run/netns/<netns>`).
    pub netns: String,
    pub hostname: String,
    /// The node's state directory on the host: `hosts`, and `slurm/` for a Slurm node.
    pub state_dir: PathBuf,
    pub slurm: SlurmRole,
}

/// The Slurm part of a node of `role`, known when the node is made.
pub fn slurm_role(role: Role) -> SlurmRole {
    match role {
        Role::Master => SlurmRole::Controller,
        Role::Worker => SlurmRole::Compute,
        Role::Gateway => SlurmRole::None,
    }
}

/// The word `hybridgrid hold --slurm` takes for a node's Slurm part ([`slurm_of_word`] reads it).
pub fn slurm_word(role: SlurmRole) -> &'static str {
    match role {
        SlurmRole::Controller => "controller",
        SlurmRole::Compute => "compute",
        SlurmRole::None => "none",
    }
}

/// The Slurm part [`slurm_word`] names; any other word is none.
pub fn slurm_of_word(word: &str) -> SlurmRole {
    [SlurmRole::Controller, SlurmRole::Compute]
        .into_iter()
        .find(|r| slurm_word(*r) == word)
        .unwrap_or(SlurmRole::None)
}

/// Makes the machine in this process, which must not have started a thread yet (a process with
/// threads cannot take a mount namespace of its own), then says so in [`READY_FILE`].
pub fn enter(m: &Machine) -> Result<(), LocalError> {
    let netns = format!("/run/netns/{}", m.netns);
    let file = std::fs::File::open(&netns).map_err(LocalError::io(&netns))?;
    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(failed(&format!("entering {netns}")))?;
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS | nix::sched::CloneFlags::CLONE_NEWUTS)
        .map_err(failed("unshare --mount --uts"))?;
    mount(None, "/", None, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None)?;
    nix::mount::umount2("/sys", MntFlags::MNT_DETACH).map_err(failed("umount /sys"))?;
    mount(Some("sysfs"), "/sys", Some("sysfs"), MsFlags::empty(), None)?;
    nix::unistd::sethostname(&m.hostname).map_err(failed("hostname"))?;
    tmpfs("hg-wg", "/run/wireguard", "mode=0700")?;
    bind(&m.state_dir.join("hosts"), "/etc/hosts")?;
    if m.slurm != SlurmRole::None {
        slurm_folders(m)?;
    }
    let ready = m.state_dir.join(READY_FILE);
    std::fs::write(&ready, std::process::id().to_string()).map_err(LocalError::io(&ready))
}

/// The private `/run` folders of a Slurm node's machine.
const SLURM_RUN: [&str; 2] = ["/run/munge", "/run/slurm"];
/// A compute node's private named cgroup hierarchy (slurmd's).
const CGROUP_HIERARCHY: &str = "/sys/fs/cgroup/systemd";

/// Each folder of the node's own under `slurm/` in its state directory, and where the machine
/// has it.
const SLURM_BINDS: [(&str, &str); 4] = [
    ("munge", "/etc/munge"),
    ("lib", "/var/lib/slurm"),
    ("log", "/var/log/slurm"),
    ("etc", "/etc/slurm"),
];

/// The folders of the node's own, in its state directory, that [`slurm_folders`] binds.
pub fn slurm_dirs(state_dir: &Path) -> [(PathBuf, &'static str); 4] {
    let base = state_dir.join("slurm");
    SLURM_BINDS.map(|(dir, target)| (base.join(dir), target))
}

/// Whether a node of `role` has `target` of [`slurm_dirs`]: `/etc/slurm` only the controller.
fn binds(role: SlurmRole, target: &str) -> bool {
    target != "/etc/slurm" || role == SlurmRole::Controller
}

/// Where [`slurm_folders`] mounts in the machine of a Slurm node of `role`.
pub fn slurm_mount_points(role: SlurmRole) -> Vec<&'static str> {
    let mut points = SLURM_RUN.to_vec();
    let targets = SLURM_BINDS.map(|(_, target)| target);
    points.extend(targets.into_iter().filter(|t| binds(role, t)));
    if role == SlurmRole::Compute {
        points.push(CGROUP_HIERARCHY);
    }
    points
}

/// Private `/run/munge` and `/run/slurm`; the node's own `/etc/munge`, `/var/lib/slurm`,
/// `/var/log/slurm` (the controller's `/etc/slurm` too); on a compute node a private named
/// cgroup hierarchy for slurmd.
fn slurm_folders(m: &Machine) -> Result<(), LocalError> {
    for (run, name) in SLURM_RUN.into_iter().zip(["hg-munge", "hg-slurm"]) {
        tmpfs(name, run, "mode=0755")?;
    }
    for (source, target) in slurm_dirs(&m.state_dir) {
        if !binds(m.slurm, target) {
            continue;
        }
        std::fs::create_dir_all(&source).map_err(LocalError::io(&source))?;
        bind(&source, target)?;
    }
    if m.slurm == SlurmRole::Compute {
        tmpfs("hg-cgroup", "/sys/fs/cgroup", "mode=0755")?;
        std::fs::create_dir_all(CGROUP_HIERARCHY).map_err(LocalError::io(CGROUP_HIERARCHY))?;
        let options = format!("none,name={CGROUP_NAME}");
        mount(
            Some(CGROUP_NAME),
            CGROUP_HIERARCHY,
            Some("cgroup"),
            MsFlags::empty(),
            Some(&options),
        )?;
    }
    Ok(())
}

fn tmpfs(name: &str, target: &str, options: &str) -> Result<(), LocalError> {
    std::fs::create_dir_all(target).map_err(LocalError::io(target))?;
    mount(
        Some(name),
        target,
        Some("tmpfs"),
        MsFlags::empty(),
        Some(options),
    )
}

fn bind(source: &Path, target: &str) -> Result<(), LocalError> {
    if !Path::new(target).exists() {
        std::fs::create_dir_all(target).map_err(LocalError::io(target))?;
    }
    mount(
        Some(&source.display().to_string()),
        target,
        None,
        MsFlags::MS_BIND,
        None,
    )
}

fn mount(
    source: Option<&str>,
    target: &str,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), LocalError> {
    nix::mount::mount(source, target, fstype, flags, data).map_err(|e| LocalError::Command {
        command: format!(
            "mount {}{} {target}",
            fstype.map(|t| format!("-t {t} ")).unwrap_or_default(),
            source.unwrap_or("")
        ),
        detail: e.desc().to_owned(),
    })
}

fn failed(what: &str) -> impl Fn(nix::Error) -> LocalError + '_ {
    move |e| LocalError::Command {
        command: what.to_owned(),
        detail: e.desc().to_owned(),
    }
}

/// Whether the process `pid` sees every one of `targets` as a mount point (its
/// `/proc/PID/mountinfo`): a machine made before the holder made Slurm's folders lacks them.
pub fn mounted(pid: u32, targets: &[&str]) -> bool {
    let Ok(info) = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")) else {
        return false;
    };
    let points: Vec<&str> = info.lines().filter_map(|l| l.split(' ').nth(4)).collect();
    targets.iter().all(|t| points.contains(t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mount_points_checked_are_the_ones_the_holder_makes() {
        assert_eq!(
            slurm_mount_points(SlurmRole::Controller),
            [
                "/run/munge",
                "/run/slurm",
                "/etc/munge",
                "/var/lib/slurm",
                "/var/log/slurm",
                "/etc/slurm"
            ]
        );
        assert_eq!(
            slurm_mount_points(SlurmRole::Compute),
            [
                "/run/munge",
                "/run/slurm",
                "/etc/munge",
                "/var/lib/slurm",
                "/var/log/slurm",
                "/sys/fs/cgroup/systemd"
            ]
        );
    }

    #[test]
    fn hold_reads_back_the_slurm_part_it_was_started_with() {
        for role in [SlurmRole::Controller, SlurmRole::Compute, SlurmRole::None] {
            assert_eq!(slurm_of_word(slurm_word(role)), role);
        }
    }
}
