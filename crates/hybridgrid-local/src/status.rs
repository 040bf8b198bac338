//! `status` for the local provider: nodes, tunnels (asked of each relay's agent) and who
//! reaches whom.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hybridgrid_core::plan::Plan;
use hybridgrid_engine::status;
use hybridgrid_engine::{NodeStatus, PairState, Probe, StatusReport, TunnelStatus};

use crate::LocalError;
use crate::agent::WgStatus;
use crate::provider::Local;

/// Pings in flight at once: enough to probe a 220-node cluster's sample in seconds.
const PROBES_AT_ONCE: usize = 48;

impl Local {
    /// The node's WireGuard device, read by the agent inside the node.
    pub(crate) fn wg_status(&self, node: &str, ifname: &str) -> Result<WgStatus, LocalError> {
        let dir = self.node_dir(node).display().to_string();
        let out = self.agent(
            node,
            &["wg-status", "--interface", ifname, "--state-dir", &dir],
        )?;
        serde_json::from_str(&out).map_err(|source| LocalError::Json {
            path: PathBuf::from(format!("wg-status of {node}")),
            source,
        })
    }

    /// Every relay's WireGuard peers, read by its agent (a relay that cannot be read has none).
    pub(crate) fn tunnels(&self, plan: &Plan) -> Vec<TunnelStatus> {
        let readings: Vec<(String, WgStatus)> = std::thread::scope(|s| {
            let handles: Vec<_> = status::relays(plan)
                .into_iter()
                .map(|(n, ifname)| {
                    s.spawn(move || Some((n.name.clone(), self.wg_status(&n.name, ifname).ok()?)))
                })
                .collect();
            handles
                .into_iter()
                .filter_map(|h| h.join().ok().flatten())
                .collect()
        });
        status::tunnel_rows(plan, &readings, unix_now())
    }

    /// Waits until every relay has a handshake with every peer; returns the pairs still without.
    /// A relay pair counts as one end: either of its relays' handshakes (the active one's).
    pub(crate) fn wait_handshakes(&self, plan: &Plan, limit: Duration) -> Vec<(String, String)> {
        let mesh_name = |node: &str| plan.node(node).map_or(node, |n| n.mesh_name()).to_owned();
        let wanted: BTreeSet<(String, String)> = plan
            .nodes
            .iter()
            .filter_map(|n| Some((n, n.wireguard.as_ref()?)))
            .flat_map(|(n, wg)| {
                wg.peers
                    .iter()
                    .map(move |p| (n.mesh_name().to_owned(), p.node.clone()))
            })
            .collect();
        let deadline = Instant::now() + limit;
        loop {
            let done: BTreeSet<(String, String)> = self
                .tunnels(plan)
                .into_iter()
                .filter(|t| t.handshake_age_s.is_some())
                .map(|t| (mesh_name(&t.node), t.peer))
                .collect();
            let pending: Vec<_> = wanted.difference(&done).cloned().collect();
            if pending.is_empty() || Instant::now() >= deadline {
                return pending;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Per node up/down, per tunnel handshake and counters, and the reachability `probe` asks for.
    pub fn status_of(&self, plan: &Plan, probe: Probe) -> StatusReport {
        let l = self.lock().clone();
        let slurm = crate::slurm::states(self, plan);
        let nodes: Vec<NodeStatus> = plan
            .nodes
            .iter()
            .map(|n| {
                let up = self.holder(&l, &n.name).is_some();
                let mut status = NodeStatus::of(n, up, slurm.get(&n.name).cloned());
                status.pair = n.pair.as_ref().map(|p| {
                    match crate::live::holds_address(&self.ns(&n.name), p.vip.addr()) {
                        true => PairState::Active,
                        false => PairState::Standby,
                    }
                });
                status
            })
            .collect();
        let tunnels = self.tunnels(plan);
        let pairs = status::probe_pairs(&nodes, probe);
        let results = crate::par::map(&pairs, PROBES_AT_ONCE, |p| {
            let ok = self.holder(&l, &p.from).is_some()
                && crate::live::ping(&self.ns(&p.from), p.to_ip, None);
            p.reach(ok)
        });
        let reachability = results.into_iter().flatten().collect();
        StatusReport::new(&self.cluster.name, nodes, tunnels, reachability)
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
