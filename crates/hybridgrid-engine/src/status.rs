//! `status`, the part every provider shares: which pairs to probe, what the relays' WireGuard
//! readings mean as tunnel rows, and the report's version. Pure: the providers bring the
//! readings (which servers run, Slurm's view, each relay's device) and run the pings.
//!
//! Architecture invariant: a rule of `status` that does not depend on the cloud lives here, once;
//! a provider only reads and pings.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use hybridgrid_core::plan::{self, NodePlan, Plan};
use hybridgrid_core::wg_status::WgStatus;

use crate::provider::Probe;
use crate::report::{NodeStatus, Reach, StatusReport, TunnelStatus};

pub const STATUS_FORMAT_VERSION: u32 = 1;

/// Up to this many probed nodes, [`Probe::Sample`] probes every pair: as cheap as the sample,
/// and the matrix shows it all.
pub const SMALL_CLUSTER: usize = 16;

/// One reachability probe for a provider to run: `from` pings `to`'s LAN address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbePair {
    pub from: String,
    pub to: String,
    pub to_ip: Ipv4Addr,
}

impl ProbePair {
    /// The report's row for this probe.
    pub fn reach(&self, ok: bool) -> Reach {
        Reach {
            from: self.from.clone(),
            to: self.to.clone(),
            ok,
        }
    }
}

/// Who pings whom, among the nodes that should exist now ([`NodeStatus::is_probed`]).
///
/// `Sample`: every node its own site's relay, and for every ordered pair of sites one node of
/// each (a worker where there is one: the path through both relays), which covers every tunnel
/// and every site's LAN; a cluster of at most [`SMALL_CLUSTER`] such nodes gets every pair.
/// `AllPairs`: every node every other node.
pub fn probe_pairs(nodes: &[NodeStatus], probe: Probe) -> Vec<ProbePair> {
    let probed: Vec<&NodeStatus> = nodes.iter().filter(|n| n.is_probed()).collect();
    let pairs = match probe {
        Probe::None => Vec::new(),
        Probe::Sample if probed.len() > SMALL_CLUSTER => sample_pairs(&probed),
        Probe::Sample | Probe::AllPairs => all_pairs(&probed),
    };
    pairs
        .into_iter()
        .map(|(a, b)| ProbePair {
            from: a.name.clone(),
            to: b.name.clone(),
            to_ip: b.lan_ip,
        })
        .collect()
}

fn all_pairs<'a>(nodes: &[&'a NodeStatus]) -> Vec<(&'a NodeStatus, &'a NodeStatus)> {
    nodes
        .iter()
        .flat_map(|a| {
            nodes
                .iter()
                .filter(move |b| b.name != a.name)
                .map(move |b| (*a, *b))
        })
        .collect()
}

fn sample_pairs<'a>(nodes: &[&'a NodeStatus]) -> Vec<(&'a NodeStatus, &'a NodeStatus)> {
    let relay = |site: &str| {
        nodes
            .iter()
            .copied()
            .find(|n| n.site == site && n.role.is_relay())
    };
    let delegate = |site: &str| {
        nodes
            .iter()
            .copied()
            .find(|n| n.site == site && !n.role.is_relay())
            .or_else(|| relay(site))
    };
    let mut sites: Vec<&str> = Vec::new();
    for n in nodes {
        if !sites.contains(&n.site.as_str()) {
            sites.push(&n.site);
        }
    }
    let mut out: Vec<_> = nodes
        .iter()
        .filter_map(|n| Some((*n, relay(&n.site)?)))
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

/// The nodes whose WireGuard device `status` reads, with the device's name.
pub fn relays(plan: &Plan) -> Vec<(&NodePlan, &str)> {
    plan.nodes
        .iter()
        .filter_map(|n| Some((n, n.wireguard.as_ref()?.name.as_str())))
        .collect()
}

/// The tunnel rows from each relay's reading (`readings`: node name → its device; a relay that
/// could not be read is absent). A peer is named by the plan's node with its key, else by the
/// key itself. `now_unix`: the time the readings were taken, for the handshakes' ages.
pub fn tunnel_rows(
    plan: &Plan,
    readings: &[(String, WgStatus)],
    now_unix: u64,
) -> Vec<TunnelStatus> {
    let by_key: BTreeMap<String, &str> = relays(plan)
        .into_iter()
        .filter_map(|(n, _)| {
            let key = n.wireguard.as_ref()?.public_key?;
            // A relay pair's two relays share one key: the peer is the pair.
            Some((key.to_base64(), n.mesh_name()))
        })
        .collect();
    readings
        .iter()
        .flat_map(|(node, status)| status.peers.iter().map(move |p| (node, status, p)))
        .map(|(node, status, p)| TunnelStatus {
            node: node.clone(),
            peer: by_key
                .get(&p.public_key)
                .map_or_else(|| p.public_key.clone(), |n| (*n).to_owned()),
            endpoint: p.endpoint.map(|e| e.to_string()),
            handshake_age_s: (p.latest_handshake > 0)
                .then(|| now_unix.saturating_sub(p.latest_handshake)),
            rx_bytes: p.rx_bytes,
            tx_bytes: p.tx_bytes,
            preshared_key: p.preshared_key,
            key_age_s: status.key_age_s,
        })
        .collect()
}

/// The interface `status` asks a relay about when the plan names none.
pub fn interface_of(node: &NodePlan) -> &str {
    node.wireguard
        .as_ref()
        .map_or(plan::WG_INTERFACE, |w| w.name.as_str())
}

impl StatusReport {
    /// The report of the current format.
    pub fn new(
        cluster: &str,
        nodes: Vec<NodeStatus>,
        tunnels: Vec<TunnelStatus>,
        reachability: Vec<Reach>,
    ) -> Self {
        StatusReport {
            format_version: STATUS_FORMAT_VERSION,
            cluster: cluster.to_owned(),
            nodes,
            tunnels,
            reachability,
            keys: Default::default(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use hybridgrid_core::plan::Role;

    use super::*;

    fn node(name: &str, site: &str, role: Role, ip: u8) -> NodeStatus {
        NodeStatus {
            name: name.into(),
            site: site.into(),
            role,
            lan_ip: Ipv4Addr::new(10, 0, 0, ip),
            tunnel_ip: None,
            public_ip: None,
            up: true,
            slurm: None,
            on_demand: false,
            pair: None,
        }
    }

    /// Three sites with `workers` workers each.
    fn cluster(workers: u8) -> Vec<NodeStatus> {
        let mut out = Vec::new();
        for (i, site) in ["a", "b", "c"].into_iter().enumerate() {
            let role = if i == 0 { Role::Master } else { Role::Gateway };
            out.push(node(&format!("{site}-relay"), site, role, 1));
            for w in 0..workers {
                out.push(node(&format!("{site}-w{w}"), site, Role::Worker, 6 + w));
            }
        }
        out
    }

    #[test]
    fn a_small_cluster_gets_every_pair_even_when_the_sample_is_asked() {
        let nodes = cluster(1);
        assert_eq!(probe_pairs(&nodes, Probe::Sample).len(), 6 * 5);
        assert_eq!(probe_pairs(&nodes, Probe::AllPairs).len(), 6 * 5);
        assert!(probe_pairs(&nodes, Probe::None).is_empty());
    }

    #[test]
    fn the_sample_covers_every_lan_and_every_ordered_pair_of_sites() {
        let nodes = cluster(6); // 21 nodes: over SMALL_CLUSTER
        let pairs = probe_pairs(&nodes, Probe::Sample);
        // each worker to its relay (18), and one worker of each site to one of every other (6)
        assert_eq!(pairs.len(), 18 + 6);
        for a in ["a", "b", "c"] {
            for b in ["a", "b", "c"].into_iter().filter(|b| *b != a) {
                assert!(
                    pairs
                        .iter()
                        .any(|p| p.from.starts_with(a) && p.to.starts_with(b)),
                    "{a} → {b}"
                );
            }
        }
    }

    #[test]
    fn an_asleep_on_demand_worker_is_not_probed() {
        let mut nodes = cluster(1);
        nodes[1].on_demand = true;
        nodes[1].up = false;
        let pairs = probe_pairs(&nodes, Probe::AllPairs);
        assert_eq!(pairs.len(), 5 * 4);
        assert!(
            pairs
                .iter()
                .all(|p| p.from != nodes[1].name && p.to != nodes[1].name)
        );
    }

    /// Issue 20 on the bed: `status` exited 1 for a cluster whose only "down" node was an
    /// on-demand worker at rest.
    #[test]
    fn regression_issue_20_an_asleep_on_demand_worker_leaves_status_healthy() {
        let mut nodes = cluster(1);
        nodes[1].on_demand = true;
        nodes[1].up = false;
        let report = StatusReport::new("c", nodes.clone(), Vec::new(), Vec::new());
        assert!(report.healthy());
        nodes[1].on_demand = false;
        let report = StatusReport::new("c", nodes, Vec::new(), Vec::new());
        assert!(!report.healthy(), "a static node down is unhealthy");
    }
}
