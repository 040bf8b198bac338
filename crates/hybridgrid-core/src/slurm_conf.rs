//! The controller's `slurm.conf`: the Slurm part of the plan and its one rendering. Below the
//! plan (which puts the text into the controller's configuration) and `render` (which writes it).

use std::fmt::Write as _;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::model::ALL_PARTITION;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlurmPlan {
    pub cluster_name: String,
    pub controller: String,
    pub controller_addr: Ipv4Addr,
    pub ctld_port: u16,
    pub slurmd_port: u16,
    pub srun_port_range: (u16, u16),
    pub slurmd_timeout: u32,
    pub message_timeout: u32,
    pub partitions: Vec<Partition>,
    /// Slurm's power saving, when some workers are on demand.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power: Option<PowerSaving>,
}

/// Slurm's power saving for on-demand workers: slurmctld runs hybridgrid's programs (on the
/// controller, at [`RESUME_PROGRAM`] and beside it) to make and remove them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PowerSaving {
    pub suspend_time: u32,
    pub resume_timeout: u32,
    /// Workers that always exist: never suspended.
    pub static_nodes: Vec<String>,
}

/// Slurm runs its power programs without arguments of their own, so each is a small script the
/// controller's agent writes, calling `hybridgrid-agent power <verb>`.
pub const RESUME_PROGRAM: &str = "/etc/slurm/hybridgrid-resume";
pub const SUSPEND_PROGRAM: &str = "/etc/slurm/hybridgrid-suspend";
pub const RESUME_FAIL_PROGRAM: &str = "/etc/slurm/hybridgrid-resume-fail";
/// slurmctld's prolog: it returns once the job's nodes have registered, so a job on a woken
/// node starts then, not at slurmctld's next periodic check (every 30 s in Slurm 22.05).
pub const JOB_PROLOG_PROGRAM: &str = "/etc/slurm/hybridgrid-prolog";
/// How long slurmctld gives the suspend program before it counts a node as powered down.
pub const SUSPEND_TIMEOUT: u32 = 30;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Partition {
    pub name: String,
    pub nodes: Vec<String>,
    pub default: bool,
}

/// A worker as `slurm.conf` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfNode<'a> {
    pub name: &'a str,
    pub addr: Ipv4Addr,
    pub cpus: u32,
    pub memory_mib: u64,
    /// Its site.
    pub feature: &'a str,
    /// Declared `State=CLOUD`: Slurm makes it when jobs need it.
    pub on_demand: bool,
}

/// `slurm.conf` for the cluster `cluster` with its planned workers. slurmctld reads it when it
/// starts; workers added while it runs join as dynamic nodes (`slurmd -Z`) until the next start.
pub fn slurm_conf(cluster: &str, sl: &SlurmPlan, workers: &[ConfNode<'_>]) -> String {
    let mut s = format!(
        "# hybridgrid: slurm.conf of cluster {cluster}. Generated from the cluster file: edit that instead.\n"
    );
    let _ = writeln!(s, "ClusterName={}", sl.cluster_name);
    let _ = writeln!(s, "SlurmctldHost={}({})", sl.controller, sl.controller_addr);
    s.push_str("SlurmctldParameters=enable_configless\n");
    s.push_str("SlurmUser=slurm\nSlurmdUser=root\n");
    s.push_str("AuthType=auth/munge\nCredType=cred/munge\n");
    let _ = writeln!(
        s,
        "SlurmctldPort={}\nSlurmdPort={}",
        sl.ctld_port, sl.slurmd_port
    );
    let _ = writeln!(
        s,
        "SrunPortRange={}-{}",
        sl.srun_port_range.0, sl.srun_port_range.1
    );
    s.push_str(
        "StateSaveLocation=/var/lib/slurm/slurmctld\n\
         SlurmdSpoolDir=/var/lib/slurm/slurmd\n\
         SlurmctldPidFile=/run/slurm/slurmctld.pid\n\
         SlurmdPidFile=/run/slurm/slurmd.pid\n\
         SlurmctldLogFile=/var/log/slurm/slurmctld.log\n\
         SlurmdLogFile=/var/log/slurm/slurmd.log\n\
         ProctrackType=proctrack/linuxproc\n\
         TaskPlugin=task/none\n\
         JobAcctGatherType=jobacct_gather/none\n\
         AccountingStorageType=accounting_storage/none\n\
         SchedulerType=sched/backfill\n\
         SelectType=select/cons_tres\n\
         SelectTypeParameters=CR_Core\n\
         MpiDefault=none\n\
         MailProg=/bin/true\n\
         ReturnToService=2\n",
    );
    s.push_str("# Sites are joined over the WAN: tolerate latency and short outages.\n");
    let _ = writeln!(s, "SlurmdTimeout={}", sl.slurmd_timeout);
    let _ = writeln!(s, "MessageTimeout={}", sl.message_timeout);
    s.push_str("SlurmctldTimeout=300\nTCPTimeout=10\nBatchStartTimeout=60\n");
    s.push_str(
        "# The controller talks to every slurmd itself rather than relaying through other sites.\n",
    );
    s.push_str("TreeWidth=65533\n");
    // Room for workers added later as dynamic nodes (`slurmd -Z`): no slurmctld restart.
    let _ = writeln!(s, "MaxNodeCount={}", workers.len() + 1024);
    if let Some(power) = &sl.power {
        power_saving(&mut s, power);
    }
    for w in workers {
        let state = if w.on_demand { "CLOUD" } else { "UNKNOWN" };
        let _ = writeln!(
            s,
            "NodeName={} NodeAddr={} CPUs={} RealMemory={} Feature={} State={state}",
            w.name, w.addr, w.cpus, w.memory_mib, w.feature
        );
    }
    for p in &sl.partitions {
        let nodes = if p.name == ALL_PARTITION {
            " Nodes=ALL".to_owned()
        } else if p.nodes.is_empty() {
            String::new()
        } else {
            format!(" Nodes={}", p.nodes.join(","))
        };
        let default = if p.default { " Default=YES" } else { "" };
        let _ = writeln!(
            s,
            "PartitionName={}{nodes}{default} MaxTime=INFINITE State=UP",
            p.name
        );
    }
    s
}

/// The power-saving lines: hybridgrid's programs, the timeouts, the static workers excluded.
fn power_saving(s: &mut String, power: &PowerSaving) {
    s.push_str("# On-demand workers: Slurm's power saving runs hybridgrid's programs.\n");
    let _ = writeln!(s, "ResumeProgram={RESUME_PROGRAM}");
    let _ = writeln!(s, "SuspendProgram={SUSPEND_PROGRAM}");
    let _ = writeln!(s, "ResumeFailProgram={RESUME_FAIL_PROGRAM}");
    let _ = writeln!(s, "PrologSlurmctld={JOB_PROLOG_PROGRAM}");
    let _ = writeln!(s, "SuspendTime={}", power.suspend_time);
    let _ = writeln!(s, "SuspendTimeout={SUSPEND_TIMEOUT}");
    let _ = writeln!(s, "ResumeTimeout={}", power.resume_timeout);
    // No rate limits: every queued job's nodes are woken in one call, all sites at once.
    s.push_str("ResumeRate=0\nSuspendRate=0\n");
    // Without it Slurm 22.05 hides powered-down cloud nodes from sinfo.
    s.push_str("PrivateData=cloud\n");
    if !power.static_nodes.is_empty() {
        let _ = writeln!(s, "SuspendExcNodes={}", power.static_nodes.join(","));
    }
}

/// The keys [`power_saving`] writes.
const POWER_SAVING_KEYS: [&str; 11] = [
    "ResumeProgram=",
    "PrologSlurmctld=",
    "SuspendProgram=",
    "ResumeFailProgram=",
    "SuspendTime=",
    "SuspendTimeout=",
    "ResumeTimeout=",
    "ResumeRate=",
    "SuspendRate=",
    "PrivateData=",
    "SuspendExcNodes=",
];

/// The lines of a `slurm.conf` that only a start of slurmctld reads: power saving and the cloud
/// nodes (the controller's agent restarts slurmctld when they change).
pub fn power_saving_lines(conf: &str) -> Vec<&str> {
    conf.lines()
        .filter(|l| POWER_SAVING_KEYS.iter().any(|k| l.starts_with(k)) || l.contains("State=CLOUD"))
        .collect()
}

/// The `RealMemory` (MiB) to declare for a server with `ram_mib` of RAM: what its kernel keeps for
/// itself (code, page tables, a crash kernel on some distributions) is not the node's, and slurmd
/// drains a node that reports less than declared ("Low RealMemory"). A sixteenth, at least
/// 128 MiB: a 1 GiB Debian guest reports ~960 MiB, a 16 GiB Ubuntu one with its crash kernel
/// ~15.6 GiB.
pub fn usable_memory_mib(ram_mib: u64) -> u64 {
    ram_mib.saturating_sub((ram_mib / 16).max(128)).max(1)
}

/// The CPUs and `RealMemory` in `slurmd -C`'s output (`NodeName=… CPUs=2 … RealMemory=960`);
/// `None` when either is missing.
pub fn measured_size(slurmd_c: &str) -> Option<crate::observed::MeasuredSize> {
    let field = |key: &str| {
        slurmd_c
            .split_whitespace()
            .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
    };
    Some(crate::observed::MeasuredSize {
        cpus: field("CPUs")?.parse().ok()?,
        real_memory_mib: field("RealMemory")?.parse().ok()?,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests
mod usable_memory_tests {
    use super::usable_memory_mib;

    #[test]
    fn every_power_saving_line_written_is_recognised() {
        let mut s = String::new();
        super::power_saving(
            &mut s,
            &super::PowerSaving {
                suspend_time: 20,
                resume_timeout: 60,
                static_nodes: vec!["a-worker-1".into()],
            },
        );
        let written: Vec<&str> = s.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(super::power_saving_lines(&s), written);
    }

    #[test]
    fn a_guest_keeps_a_sixteenth_of_its_ram_and_at_least_128_mib() {
        assert_eq!(usable_memory_mib(1024), 896);
        assert_eq!(usable_memory_mib(16384), 15360);
        assert_eq!(usable_memory_mib(64), 1);
    }

    #[test]
    fn slurmd_c_output_gives_cpus_and_real_memory() {
        let out = "NodeName=b-worker-1 CPUs=2 Boards=1 SocketsPerBoard=2 CoresPerSocket=1 \
                   ThreadsPerCore=1 RealMemory=960\nUpTime=0-00:09:26\n";
        let m = super::measured_size(out).unwrap();
        assert_eq!((m.cpus, m.real_memory_mib), (2, 960));
        assert_eq!(super::measured_size("NodeName=x CPUs=2 UpTime=0"), None);
        assert_eq!(super::measured_size("slurmd: error: something"), None);
    }
}
