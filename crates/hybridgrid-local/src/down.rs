//! `down` and `gc` for the local provider: every namespace and process of a cluster, found by
//! its ledger, its owner record and the `hg-<cluster>-` prefix.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use hybridgrid_engine::{DownReport, Event, Sink};

use crate::ledger::Ledger;
use crate::provider::{Local, OWNERS_DIR, Options};
use crate::{LocalError, infra, names, sh};

impl Local {
    /// Removes everything in the ledger, then the ledger and the cluster's state. Idempotent.
    pub(crate) fn remove_all(&self, progress: Sink<'_>) -> Result<DownReport, LocalError> {
        let path = self.ledger_path();
        let Some(l) = Ledger::load(&path)? else {
            return self.down_elsewhere(progress);
        };
        let mut report = DownReport::default();
        // Nodes first (their processes), in parallel; then routers and switches; the internet last.
        let nodes: Vec<String> = l
            .namespaces
            .iter()
            .filter(|ns| l.nodes.keys().any(|n| self.ns(n) == **ns))
            .cloned()
            .collect();
        let results: Vec<(String, Result<(), LocalError>)> = std::thread::scope(|s| {
            let handles: Vec<_> = nodes
                .iter()
                .map(|ns| s.spawn(move || (ns.clone(), infra::remove_netns(ns))))
                .collect();
            handles.into_iter().filter_map(|h| h.join().ok()).collect()
        });
        for (ns, r) in results {
            r?;
            progress(Event::Applied {
                summary: format!("- {ns}"),
                seconds: 0.0,
                details: Vec::new(),
            });
            report.deleted.push(format!("namespace {ns}"));
        }
        let inet = names::ns_inet(&self.cluster.name);
        for ns in l
            .namespaces
            .iter()
            .filter(|ns| !nodes.contains(ns) && **ns != inet)
            .chain(std::iter::once(&inet))
        {
            if sh::netns_exists(ns) {
                infra::remove_netns(ns)?;
                progress(Event::Applied {
                    summary: format!("- {ns}"),
                    seconds: 0.0,
                    details: Vec::new(),
                });
                report.deleted.push(format!("namespace {ns}"));
            }
        }
        // Processes tagged for this cluster whose namespace went away some other way.
        let stray = tagged_processes(&names::prefix(&self.cluster.name));
        infra::stop_processes(&stray);
        infra::stop_processes(&processes_of_machines_under(self.cluster_dir()));
        infra::stop_processes(&crate::datastore::servers_anywhere(self.cluster_dir()));
        if let Some(raised) = l.host_neighbour_limits {
            report
                .deleted
                .extend(self.restore_neighbour_limits(raised)?);
        }
        if self.cluster_dir().exists() {
            std::fs::remove_dir_all(self.cluster_dir())
                .map_err(LocalError::io(&self.cluster_dir()))?;
        }
        release_owner(&self.cluster.name, self.cluster_dir());
        Ok(report)
    }
}

impl Local {
    /// The host's neighbour-table limits as they were before `up` raised them, unless another
    /// local cluster runs (it may need them) or they were changed since; what was put back.
    fn restore_neighbour_limits(
        &self,
        raised: crate::host::RaisedLimits,
    ) -> Result<Option<String>, LocalError> {
        let others = std::fs::read_dir(OWNERS_DIR)
            .map(|d| {
                d.flatten()
                    .any(|e| e.file_name().to_str() != Some(self.cluster.name.as_str()))
            })
            .unwrap_or(false);
        if others || crate::host::read()? != raised.set {
            return Ok(None);
        }
        crate::host::write(raised.before)?;
        Ok(Some(format!(
            "host neighbour-table limit {} (back to {})",
            raised.set.hard, raised.before.hard
        )))
    }

    /// `down` with no ledger here: the owner record may name the state directory `up` used;
    /// without one, live namespaces are an error that names both ways out.
    fn down_elsewhere(&self, progress: Sink<'_>) -> Result<DownReport, LocalError> {
        let owner = std::fs::read_to_string(Path::new(OWNERS_DIR).join(&self.cluster.name))
            .map(|d| PathBuf::from(d.trim()))
            .ok()
            .filter(|d| *d != self.cluster_dir() && d.join("ledger.json").exists());
        if let Some(dir) = owner
            && let Some(root) = dir.parent()
            && dir.file_name() == Some(std::ffi::OsStr::new(&self.cluster.name))
        {
            progress(Event::Note(format!(
                "no ledger in {}; the owner record names {}: removing the cluster from there",
                self.cluster_dir().display(),
                dir.display()
            )));
            let opts = Options {
                state_root: root.to_owned(),
                ..self.opts.clone()
            };
            return Local::open(&self.cluster, opts)?.remove_all(progress);
        }
        if sh::netns_exists(&names::ns_inet(&self.cluster.name)) {
            return Err(LocalError::Orphaned {
                cluster: self.cluster.name.clone(),
                dir: self.cluster_dir().to_owned(),
            });
        }
        release_owner(&self.cluster.name, self.cluster_dir());
        Ok(DownReport::default())
    }
}

fn release_owner(cluster: &str, dir: &Path) {
    let owner = Path::new(OWNERS_DIR).join(cluster);
    if std::fs::read_to_string(&owner).is_ok_and(|o| Path::new(o.trim()) == dir) {
        let _ = std::fs::remove_file(owner);
    }
}

/// Processes whose mounts come from a node's folder under `cluster_dir` (its `/etc/hosts`, its
/// munge and Slurm folders): they run in a node's machine. A daemon that was still starting
/// when its namespace was emptied (a slurmd fetching its configuration) daemonizes after the
/// namespace lost its name, where only this finds it (two of 1,050 nodes' slurmd did).
fn processes_of_machines_under(cluster_dir: &Path) -> Vec<u32> {
    let needle = format!(" {}/", cluster_dir.join("nodes").display());
    infra::live_pids(|pid| {
        std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).is_ok_and(|m| m.contains(&needle))
    })
}

/// Processes started with `--tag <prefix>...` (node holders and WireGuard daemons).
fn tagged_processes(prefix: &str) -> Vec<u32> {
    infra::live_pids(|pid| {
        let cmd = infra::cmdline(pid);
        cmd.split(" --tag ")
            .nth(1)
            .is_some_and(|t| t.starts_with(prefix))
    })
}

/// Removes leftovers of this host's clusters whose ledger is gone: namespaces, processes, owner
/// records. Returns what was removed.
pub fn gc(state_root: &Path) -> Result<Vec<String>, LocalError> {
    let all = sh::netns_list();
    let mut clusters: BTreeSet<String> = all
        .iter()
        .filter_map(|ns| {
            ns.strip_prefix("hg-")?
                .strip_suffix("-inet")
                .map(str::to_owned)
        })
        .collect();
    if let Ok(d) = std::fs::read_dir(OWNERS_DIR) {
        clusters.extend(d.filter_map(|e| e.ok()?.file_name().into_string().ok()));
    }
    // A namespace belongs to the cluster with the longest matching prefix.
    let owner_of = |ns: &str| {
        clusters
            .iter()
            .filter(|c| ns.starts_with(&names::prefix(c)))
            .max_by_key(|c| c.len())
            .cloned()
    };
    let mut removed = Vec::new();
    for cluster in &clusters {
        let owner = Path::new(OWNERS_DIR).join(cluster);
        let dir = std::fs::read_to_string(&owner)
            .map(|d| PathBuf::from(d.trim()))
            .unwrap_or_else(|_| state_root.join(cluster));
        if dir.join("ledger.json").exists() {
            continue;
        }
        // Processes first: the power service makes nodes while it runs.
        let stray: Vec<u32> = tagged_processes(&names::prefix(cluster))
            .into_iter()
            .filter(|&pid| {
                let cmd = infra::cmdline(pid);
                cmd.split(" --tag ")
                    .nth(1)
                    .and_then(|t| owner_of(t.split_whitespace().next().unwrap_or("")))
                    .as_ref()
                    == Some(cluster)
            })
            .collect();
        for pid in &stray {
            removed.push(format!("process {pid}"));
        }
        infra::stop_processes(&stray);
        for ns in all
            .iter()
            .filter(|ns| owner_of(ns).as_ref() == Some(cluster))
        {
            infra::remove_netns(ns)?;
            removed.push(ns.clone());
        }
        let socket = crate::power::power_socket(cluster);
        if std::fs::remove_file(&socket).is_ok() {
            removed.push(socket);
        }
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(LocalError::io(&dir))?;
            removed.push(dir.display().to_string());
        }
        if owner.exists() {
            let _ = std::fs::remove_file(&owner);
        }
    }
    Ok(removed)
}
