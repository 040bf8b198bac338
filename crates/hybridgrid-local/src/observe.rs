//! `observe` for the local provider: what really exists in the emulation, read from the live
//! namespaces, nftables, devices, routes and processes — the ledger only says where to look
//! (and holds what the emulated cloud API holds: groups and their rules, pairs, floating IPs).
//! A rule removed by hand, a dead WireGuard device, a deleted route or a stopped daemon shows as
//! missing, so the plan has a change for it and `up` applies it.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt as _;

use hybridgrid_core::diff::{Observed, ObservedNode, ObservedSite};
use hybridgrid_core::observed::ObservedVirtualAddress;
use hybridgrid_core::plan::{self, NodeConfig, Plan, SlurmRole};
use ipnet::Ipv4Net;

use crate::ledger::{Ledger, ObjState, SiteEntry};
use crate::provider::Local;
use crate::{LocalError, agent, datastore, live, names, sh};

/// What one running node shows.
struct NodeLive {
    /// The `hg_sg` table: its rule lines, and whether it tracks connections.
    rules: Option<(Vec<String>, bool)>,
    /// The tunnel interface's MTU; `None` if the device does not exist.
    wg_mtu: Option<u16>,
    /// Relays: the public keys of the tunnel device's live peers (`None`: not read).
    wg_peers: Option<Vec<String>>,
    routes: Option<Vec<Ipv4Net>>,
}

/// Per network namespace (by inode), the names of the processes in it.
fn processes_by_netns() -> BTreeMap<u64, BTreeSet<String>> {
    let mut out: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        let (Ok(ns), Ok(comm)) = (
            std::fs::metadata(format!("/proc/{pid}/ns/net")),
            std::fs::read_to_string(format!("/proc/{pid}/comm")),
        ) else {
            continue;
        };
        if crate::infra::alive(pid) {
            out.entry(ns.ino())
                .or_default()
                .insert(comm.trim().to_owned());
        }
    }
    out
}

fn netns_inode(pid: u32) -> Option<u64> {
    std::fs::metadata(format!("/proc/{pid}/ns/net"))
        .ok()
        .map(|m| m.ino())
}

fn named_netns_inode(ns: &str) -> Option<u64> {
    std::fs::metadata(format!("/run/netns/{ns}"))
        .ok()
        .map(|m| m.ino())
}

impl Local {
    /// What exists of the cluster, read from the live system.
    pub(crate) fn observe_live(&self, shape: &Plan) -> Result<Observed, LocalError> {
        let l = self.lock().clone();
        let cluster = self.cluster.name.as_str();
        let planned: BTreeSet<&str> = shape.nodes.iter().map(|n| n.name.as_str()).collect();
        let holders: BTreeMap<&str, u32> = l
            .nodes
            .keys()
            .filter_map(|n| Some((n.as_str(), self.holder(&l, n)?)))
            .collect();
        let procs = processes_by_netns();
        let nodes_live = self.read_nodes(&holders);
        let inet = l.inet == Some(ObjState::Ready) && sh::netns_exists(&names::ns_inet(cluster));
        // The style this `up` asks for; without the option, the one the cluster has.
        let stateless = self
            .opts
            .stateless_security_groups
            .unwrap_or(l.stateless_security_groups);
        let site_live = |site: &str| {
            inet && l
                .sites
                .get(site)
                .is_some_and(|s| s.state == ObjState::Ready)
                && sh::netns_exists(&names::ns_switch(cluster, site))
                && sh::netns_exists(&names::ns_router(cluster, site))
        };

        let mut obs = Observed::default();
        for (name, s) in &l.sites {
            obs.sites.insert(
                name.clone(),
                self.observe_site(&l, shape, name, s, inet, &procs, &nodes_live, stateless),
            );
        }
        for (name, n) in &l.nodes {
            // A node that died, or whose site's switch is being built again, is created again
            // (its floating IP stays reserved for it); one that left the file is removed.
            let holder = holders
                .get(name.as_str())
                .copied()
                .filter(|_| site_live(&n.site));
            if holder.is_none() && planned.contains(name.as_str()) {
                if let Some(ip) = l.sites.get(&n.site).and_then(|s| s.floating_ips.get(name)) {
                    obs.reserved_public_ips.insert(name.clone(), *ip);
                }
                continue;
            }
            let dir = self.node_dir(name);
            let applied = match (holder, nodes_live.get(name.as_str())) {
                (Some(pid), Some(live)) => agent::read_applied(&dir).map(|a| {
                    let running = netns_inode(pid)
                        .and_then(|i| procs.get(&i))
                        .cloned()
                        .unwrap_or_default();
                    live_applied(a, live, &running)
                }),
                _ => None,
            };
            obs.nodes.insert(
                name.clone(),
                ObservedNode {
                    site: n.site.clone(),
                    public_ip: l
                        .sites
                        .get(&n.site)
                        .and_then(|s| s.floating_ips.get(name).copied()),
                    public_key: agent::read_public_key(&dir),
                    applied,
                    // Emulated nodes share the host's CPUs and memory: Slurm is told the file's.
                    measured: None,
                    instance: None,
                },
            );
        }
        Ok(obs)
    }

    /// Rules, devices and routes of every running node, read concurrently.
    fn read_nodes<'a>(&self, holders: &BTreeMap<&'a str, u32>) -> BTreeMap<&'a str, NodeLive> {
        let names: Vec<(&'a str, u32)> = holders.iter().map(|(n, p)| (*n, *p)).collect();
        // Routes and devices are read from the holder's `/proc` (no process); only nftables and
        // a relay's device need a program.
        let live = crate::par::map(&names, 32, |&(node, pid)| {
            let ns = self.ns(node);
            let rules = live::nft_table(&ns, "inet", names::SG_TABLE)
                .map(|t| (live::rule_lines(&t), t.contains("ct state")));
            let wg_mtu = live::has_interface(pid, plan::WG_INTERFACE)
                .then(|| live::live_mtu(&ns, plan::WG_INTERFACE))
                .flatten();
            // A peer removed by hand is drift too (only where a device exists to ask).
            let wg_peers = wg_mtu
                .and_then(|_| self.wg_status(node, plan::WG_INTERFACE).ok())
                .map(|st| st.peers.into_iter().map(|p| p.public_key).collect());
            NodeLive {
                rules,
                wg_mtu,
                wg_peers,
                routes: live::route_destinations_of(pid),
            }
        });
        names
            .into_iter()
            .zip(live)
            .filter_map(|((n, _), l)| Some((n, l?)))
            .collect()
    }

    #[allow(clippy::too_many_arguments)]
    fn observe_site(
        &self,
        l: &Ledger,
        shape: &Plan,
        site: &str,
        entry: &SiteEntry,
        inet: bool,
        procs: &BTreeMap<u64, BTreeSet<String>>,
        nodes_live: &BTreeMap<&str, NodeLive>,
        stateless: bool,
    ) -> ObservedSite {
        let cluster = self.cluster.name.as_str();
        // The site's data store stands for its object storage: part of the site's network here.
        let store_serves = shape.site(site).is_none()
            || !datastore::has_store(shape, site, entry.subnet)
            || named_netns_inode(&datastore::ns_store(cluster, site))
                .and_then(|i| procs.get(&i))
                .is_some_and(datastore::all_running);
        let network = entry.state == ObjState::Ready
            && inet
            && sh::netns_exists(&names::ns_switch(cluster, site))
            && sh::netns_exists(&names::ns_router(cluster, site))
            && store_serves;
        // A rule is there when every running member of its group enforces it, in the style
        // (stateful or not) this `up` asks for.
        let members = |group: &str| -> Vec<&NodeLive> {
            shape
                .site(site)
                .and_then(|s| s.security_groups.iter().find(|g| g.name == group))
                .map(|g| {
                    g.members
                        .iter()
                        .filter_map(|m| nodes_live.get(m.as_str()))
                        .collect()
                })
                .unwrap_or_default()
        };
        let security_groups = entry
            .security_groups
            .iter()
            .map(|(group, rules)| {
                let live = members(group);
                let kept = rules
                    .iter()
                    .filter(|r| {
                        let Some(m) = live::rule_match(r) else {
                            return false;
                        };
                        live.iter().all(|n| {
                            n.rules.as_ref().is_some_and(|(lines, tracked)| {
                                *tracked != stateless && lines.contains(&m)
                            })
                        })
                    })
                    .cloned()
                    .collect();
                (group.clone(), kept)
            })
            .collect();
        // Pairs as the site switch enforces them (an interval set merges neighbours: a pair is
        // there when an element covers it).
        let portsec = live::nft_table(
            &names::ns_switch(cluster, site),
            "bridge",
            names::PORTSEC_TABLE,
        );
        let allowed_address_pairs = entry
            .allowed_address_pairs
            .iter()
            .filter_map(|(node, pairs)| {
                let port = l.nodes.get(node)?.port.replace('-', "_");
                let elements = portsec
                    .as_deref()
                    .and_then(|t| live::set_elements(t, &names::aap_set(&port)))
                    .unwrap_or_default();
                let live: Vec<Ipv4Net> = pairs
                    .iter()
                    .filter(|p| elements.iter().any(|e| e.contains(*p)))
                    .copied()
                    .collect();
                Some((node.clone(), live))
            })
            .collect();
        ObservedSite {
            network,
            security_groups,
            allowed_address_pairs,
            wan: crate::wan::observed(cluster, site, entry.index),
            // No flavors in the emulation: workers take the file's size or the defaults.
            flavors: BTreeMap::new(),
            virtual_addresses: entry
                .virtual_addresses
                .iter()
                .map(|(name, address)| {
                    let seen = ObservedVirtualAddress {
                        address: *address,
                        public_ip: entry.floating_ips.get(name).copied(),
                    };
                    (name.clone(), seen)
                })
                .collect(),
        }
    }
}

/// The configuration a node applied, as far as its live state still shows it: a WireGuard
/// device that is gone or has another MTU, peers removed from it, routes that were deleted, Slurm daemons (and the
/// master's results store) that do not run.
fn live_applied(mut a: NodeConfig, live: &NodeLive, running: &BTreeSet<String>) -> NodeConfig {
    if let Some(wg) = &mut a.wireguard {
        match live.wg_mtu {
            Some(mtu) => wg.mtu = mtu,
            None => a.wireguard = None,
        }
    }
    // A pair's standby has no peers on its device by design: its peers are not missing.
    let standby = a.pair.is_some() && live.wg_peers.as_ref().is_some_and(Vec::is_empty);
    if let (Some(wg), Some(live_peers), false) = (&mut a.wireguard, &live.wg_peers, standby) {
        wg.peers.retain(|p| {
            p.public_key
                .as_ref()
                .is_none_or(|k| live_peers.contains(&k.to_base64()))
        });
    }
    if let Some(routes) = &live.routes {
        a.routes.retain(|r| routes.contains(&r.destination));
    }
    let slurm_runs = match a.slurm.role {
        SlurmRole::Controller => {
            running.contains("munged")
                && running.contains("slurmctld")
                && running.contains(agent::results::PROCESS_NAME)
        }
        SlurmRole::Compute => running.contains("munged") && running.contains("slurmd"),
        SlurmRole::None => true,
    };
    if !slurm_runs {
        a.slurm.role = SlurmRole::None;
    }
    a
}
