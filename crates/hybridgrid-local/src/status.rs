//! `status` for the local provider: nodes, tunnels (asked of each relay's agent) and who
//! reaches whom.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hybridgrid_core::plan::{self, Plan};
use hybridgrid_engine::{NodeStatus, Probe, Reach, StatusReport, TunnelStatus};

use crate::LocalError;
use crate::agent::WgStatus;
use crate::provider::Local;

/// Up to this many nodes, `status` probes every pair by default.
const SMALL_CLUSTER: usize = 16;

/// Pings in flight at once: enough to probe a 220-node cluster's sample in seconds.
const PROBES_AT_ONCE: usize = 48;

/// Who pings whom. `Sample`: every node its own site's relay, and for every ordered pair of
/// sites one node of each (a worker where there is one: the path through both relays), which
/// covers every tunnel and every site's LAN; `AllPairs`: every node every other node.
fn probe_pairs(nodes: &[NodeStatus], probe: Probe) -> Vec<(&NodeStatus, &NodeStatus)> {
    match probe {
        Probe::None => Vec::new(),
        Probe::AllPairs => nodes
            .iter()
            .flat_map(|a| {
                nodes
                    .iter()
                    .filter(move |b| b.name != a.name)
                    .map(move |b| (a, b))
            })
            .collect(),
        Probe::Sample => {
            let relay = |site: &str| nodes.iter().find(|n| n.site == site && n.role.is_relay());
            let delegate = |site: &str| {
                nodes
                    .iter()
                    .find(|n| n.site == site && !n.role.is_relay())
                    .or_else(|| relay(site))
            };
            let mut sites: Vec<&str> = Vec::new();
            for n in nodes {
                if !sites.contains(&n.site.as_str()) {
                    sites.push(&n.site);
                }
            }
            let mut out: Vec<(&NodeStatus, &NodeStatus)> = nodes
                .iter()
                .filter_map(|n| Some((n, relay(&n.site)?)))
                .filter(|(a, b)| a.name != b.name)
                .collect();
            for a in &sites {
                for b in sites.iter().filter(|b| *b != a) {
                    if let (Some(x), Some(y)) = (delegate(a), delegate(b)) {
                        out.push((x, y));
                    }
                }
            }
            out
        }
    }
}

impl Local {
    /// The node's WireGuard device, read by the agent inside the node.
    pub(crate) fn wg_status(&self, node: &str, ifname: &str) -> Result<WgStatus, LocalError> {
        let out = self.agent(node, &["wg-status", "--interface", ifname])?;
        serde_json::from_str(&out).map_err(|source| LocalError::Json {
            path: PathBuf::from(format!("wg-status of {node}")),
            source,
        })
    }

    pub(crate) fn tunnels(&self, plan: &Plan) -> Vec<TunnelStatus> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let relays: Vec<_> = plan.nodes.iter().filter(|n| n.role.is_relay()).collect();
        let by_key: BTreeMap<String, String> = relays
            .iter()
            .filter_map(|n| {
                Some((
                    n.wireguard.as_ref()?.public_key?.to_base64(),
                    n.name.clone(),
                ))
            })
            .collect();
        let statuses: Vec<(String, Option<WgStatus>)> = std::thread::scope(|s| {
            let handles: Vec<_> = relays
                .iter()
                .map(|n| {
                    s.spawn(move || {
                        let ifname = n
                            .wireguard
                            .as_ref()
                            .map_or(plan::WG_INTERFACE, |w| w.name.as_str());
                        (n.name.clone(), self.wg_status(&n.name, ifname).ok())
                    })
                })
                .collect();
            handles.into_iter().filter_map(|h| h.join().ok()).collect()
        });
        let mut out = Vec::new();
        for (node, status) in statuses {
            let Some(status) = status else { continue };
            for p in status.peers {
                out.push(TunnelStatus {
                    node: node.clone(),
                    peer: by_key.get(&p.public_key).cloned().unwrap_or(p.public_key),
                    endpoint: p.endpoint.map(|e| e.to_string()),
                    handshake_age_s: (p.latest_handshake > 0)
                        .then(|| now.saturating_sub(p.latest_handshake)),
                    rx_bytes: p.rx_bytes,
                    tx_bytes: p.tx_bytes,
                });
            }
        }
        out
    }

    /// Waits until every relay has a handshake with every peer; returns the pairs still without.
    pub(crate) fn wait_handshakes(&self, plan: &Plan, limit: Duration) -> Vec<(String, String)> {
        let wanted: Vec<(String, String)> = plan
            .nodes
            .iter()
            .filter_map(|n| Some((n, n.wireguard.as_ref()?)))
            .flat_map(|(n, wg)| {
                wg.peers
                    .iter()
                    .map(move |p| (n.name.clone(), p.node.clone()))
            })
            .collect();
        let deadline = Instant::now() + limit;
        loop {
            let done: BTreeSet<(String, String)> = self
                .tunnels(plan)
                .into_iter()
                .filter(|t| t.handshake_age_s.is_some())
                .map(|t| (t.node, t.peer))
                .collect();
            let pending: Vec<_> = wanted
                .iter()
                .filter(|w| !done.contains(w))
                .cloned()
                .collect();
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
                NodeStatus::of(n, up, slurm.get(&n.name).cloned())
            })
            .collect();
        let tunnels = self.tunnels(plan);
        // A small cluster gets every pair: as cheap as the sample, and the matrix shows it all.
        let probe = match probe {
            Probe::Sample if nodes.len() <= SMALL_CLUSTER => Probe::AllPairs,
            p => p,
        };
        let probed: Vec<NodeStatus> = nodes.iter().filter(|n| n.is_probed()).cloned().collect();
        let pairs = probe_pairs(&probed, probe);
        let results = crate::par::map(&pairs, PROBES_AT_ONCE, |(a, b)| {
            let ok = self.holder(&l, &a.name).is_some()
                && crate::live::ping(&self.ns(&a.name), b.lan_ip, None);
            Reach {
                from: a.name.clone(),
                to: b.name.clone(),
                ok,
            }
        });
        let reachability = results.into_iter().flatten().collect();
        StatusReport {
            format_version: 1,
            cluster: self.cluster.name.clone(),
            nodes,
            tunnels,
            reachability,
        }
    }
}
