//! On-demand workers on the local provider: the host's side of Slurm's power saving.
//!
//! slurmctld runs as `slurm` inside the master's namespaces, but making a node takes the host's
//! root (namespaces, veth pairs, the switch's port security). The one way out is the cluster's
//! power service, `hybridgrid power-service`: a host process `up` starts (tagged
//! `hg-<cluster>-power`), listening on [`power_socket`]. It serves root and the `slurm` user only
//! (the socket's peer credentials) and answers exactly two requests — wake or remove on-demand
//! workers of its cluster's plan — with the engine's [`hybridgrid_engine::power::power`], i.e.
//! the same `apply` that makes a worker in `up`. It reads the cluster from `cluster.json`, which
//! `up` writes beside the ledger.
//!
//! Mutations of one cluster by several processes (`up`, `down`, the power service) take
//! [`Local::exclusive`] and read the ledger again under it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use hybridgrid_core::plan::Plan;
pub use hybridgrid_core::power::power_socket;

use crate::ledger::{Ledger, write_atomic};
use crate::provider::Local;
use crate::{LocalError, infra, names};

/// The validated cluster, for the power service.
pub const CLUSTER_FILE: &str = "cluster.json";
/// The emulated cloud refuses to make node `N` while `refuse/N` exists (its text is the reason):
/// how tests make a wake-up fail, like a cloud out of quota.
pub const REFUSE_DIR: &str = "refuse";

/// Held while a process changes the cluster; released when dropped.
#[derive(Debug)]
pub struct Exclusive(#[allow(dead_code)] std::fs::File);

impl Local {
    /// Waits for the cluster's lock, then reads the ledger again: another process (the power
    /// service, a concurrent `up`) may have changed it since this one opened it.
    pub fn exclusive(&self) -> Result<Exclusive, LocalError> {
        let dir = self.cluster_dir();
        std::fs::create_dir_all(dir).map_err(LocalError::io(dir))?;
        let path = dir.join("lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(LocalError::io(&path))?;
        file.lock().map_err(LocalError::io(&path))?;
        if let Some(ledger) = Ledger::load(&self.ledger_path())? {
            *self.lock() = ledger;
        }
        Ok(Exclusive(file))
    }

    /// The tag of the cluster's power service in process lists.
    fn power_tag(&self) -> String {
        format!("{}power", names::prefix(&self.cluster.name))
    }

    /// The running power service's PID.
    fn power_service_pid(&self) -> Option<u32> {
        let pid: u32 = std::fs::read_to_string(self.cluster_dir().join("power.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let tag = format!("--tag {}", self.power_tag());
        (infra::alive(pid) && infra::cmdline(pid).contains(&tag)).then_some(pid)
    }

    /// With on-demand workers in `plan`: `cluster.json` as the file says and the power service
    /// running. Without: no service. What it did, for `up`'s output.
    pub(crate) fn ensure_power_service(&self, plan: &Plan) -> Result<Vec<String>, LocalError> {
        if plan.slurm.power.is_none() {
            self.stop_power_service();
            return Ok(Vec::new());
        }
        let file = self.cluster_dir().join(CLUSTER_FILE);
        let text =
            serde_json::to_string_pretty(&self.cluster).map_err(|source| LocalError::Encode {
                path: file.clone(),
                source,
            })?;
        if std::fs::read_to_string(&file).ok().as_deref() != Some(text.as_str()) {
            write_atomic(&file, text.as_bytes(), 0o600)?;
        }
        if self.power_service_pid().is_some() {
            return Ok(Vec::new());
        }
        let pid = self.start_power_service(&file)?;
        Ok(vec![format!(
            "power service on {}, pid {pid}",
            power_socket(&self.cluster.name)
        )])
    }

    fn start_power_service(&self, cluster_file: &Path) -> Result<u32, LocalError> {
        use std::os::unix::process::CommandExt as _;
        let socket = PathBuf::from(power_socket(&self.cluster.name));
        let _ = std::fs::remove_file(&socket);
        let log_path = self.cluster_dir().join("power-service.log");
        let log = std::fs::File::create(&log_path).map_err(LocalError::io(&log_path))?;
        let child = Command::new(&self.opts.exe)
            .args(["power-service", "--tag", &self.power_tag(), "--cluster"])
            .arg(cluster_file)
            .arg("--socket")
            .arg(&socket)
            .env("HYBRIDGRID_STATE_DIR", &self.opts.state_root)
            .env(
                "HYBRIDGRID_AGENT_PERIOD",
                self.opts.agent_period.as_secs().to_string(),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .process_group(0)
            .spawn()
            .map_err(|e| LocalError::Command {
                command: format!("{} power-service", self.opts.exe.display()),
                detail: e.to_string(),
            })?;
        let pid = child.id();
        let pid_file = self.cluster_dir().join("power.pid");
        write_atomic(&pid_file, pid.to_string().as_bytes(), 0o644)?;
        infra::wait_for("the power service", Duration::from_secs(10), || {
            if !infra::alive(pid) {
                let why = std::fs::read_to_string(&log_path).unwrap_or_default();
                return Some(Err(LocalError::PowerServiceExited {
                    log: why.trim().to_owned(),
                }));
            }
            socket.exists().then_some(Ok(()))
        })??;
        Ok(pid)
    }

    /// Stops the power service first of all in `down`: no node is made after that.
    pub(crate) fn stop_power_service(&self) {
        if let Some(pid) = self.power_service_pid() {
            infra::stop_processes(&[pid]);
        }
        let _ = std::fs::remove_file(power_socket(&self.cluster.name));
        let _ = std::fs::remove_file(self.cluster_dir().join("power.pid"));
    }

    /// The emulated cloud's refusal to make `node`, if a test asked for one.
    pub(crate) fn refusal(&self, node: &str) -> Option<String> {
        std::fs::read_to_string(self.cluster_dir().join(REFUSE_DIR).join(node))
            .ok()
            .map(|r| r.trim().to_owned())
    }
}
