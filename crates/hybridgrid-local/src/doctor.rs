//! The local provider's facts for `hybridgrid doctor`: [`facts`] reads the live cluster
//! (nftables rules, sets and counters in the node, switch and router namespaces, the tunnel MTU,
//! WireGuard handshakes, pings across the tunnel with don't-fragment set) into [`Facts`]; the
//! engine's pure `doctor::diagnose` turns them into findings, `path::trace` into hops.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use hybridgrid_core::plan::Plan;

use hybridgrid_core::model::Provider as ProviderKind;
use hybridgrid_engine::doctor::{
    Facts, NodeFacts, PortFacts, Probe, SiteFacts, TunnelFacts, freshest_handshake,
};
use hybridgrid_engine::path::PathFacts;

use crate::provider::Local;
use crate::{LocalError, live, names, sh};

/// Pings in flight at once.
const PROBES_AT_ONCE: usize = 96;

/// Counters of the cluster: per node its default-deny drops, per port its spoof drops, per
/// site its router's fragment drops.
#[derive(Debug, Default)]
struct Counters {
    drops: BTreeMap<String, Option<u64>>,
    spoof: BTreeMap<(String, String), Option<u64>>,
    fragments: BTreeMap<String, Option<u64>>,
    sg: BTreeMap<String, Option<String>>,
    portsec: BTreeMap<String, Option<String>>,
}

fn read_counters(cluster: &str, plan: &Plan, ports: &BTreeMap<String, String>) -> Counters {
    let mut c = Counters::default();
    let tables = crate::par::map(&plan.nodes, PROBES_AT_ONCE, |n| {
        live::nft_table(&names::ns_node(cluster, &n.name), "inet", "hg_sg")
    });
    for (n, sg) in plan.nodes.iter().zip(tables) {
        let sg = sg.flatten();
        c.drops.insert(
            n.name.clone(),
            sg.as_deref()
                .and_then(|t| live::counter(t, "security group default deny")),
        );
        c.sg.insert(n.name.clone(), sg);
    }
    for s in &plan.sites {
        let ps = live::nft_table(&names::ns_switch(cluster, &s.name), "bridge", "hg_portsec");
        for n in plan.nodes.iter().filter(|n| n.site == s.name) {
            let Some(port) = ports.get(&n.name) else {
                continue;
            };
            let chain = port.replace('-', "_");
            let v = ps.as_deref().and_then(|t| {
                let lines = live::chain_lines(t, &chain).join("\n");
                live::counter(&lines, "ip spoof")
            });
            c.spoof.insert((s.name.clone(), n.name.clone()), v);
        }
        c.portsec.insert(s.name.clone(), ps);
        let nat = live::nft_table(&names::ns_router(cluster, &s.name), "ip", "hg_nat");
        c.fragments.insert(
            s.name.clone(),
            nat.as_deref().and_then(|t| live::counter(t, "fragment")),
        );
    }
    c
}

impl Local {
    /// `Provider::doctor_facts`.
    pub(crate) fn doctor_facts_of(&self, plan: &Plan) -> Result<Facts, LocalError> {
        facts(self, plan)
    }

    /// `Provider::path_facts`.
    pub(crate) fn path_facts_of(&self, plan: &Plan, src: &str, dst: &str) -> PathFacts {
        path_facts(self, plan, src, dst)
    }
}

/// Reads the live cluster: rules, sets, counters, MTUs, handshakes, and pings (DF and not).
fn facts(local: &Local, plan: &Plan) -> Result<Facts, LocalError> {
    let ledger = local.ledger_snapshot();
    let cluster = plan.cluster.clone();
    let ports: BTreeMap<String, String> = ledger
        .nodes
        .iter()
        .map(|(n, e)| (n.clone(), e.port.clone()))
        .collect();
    let up: BTreeSet<String> = plan
        .nodes
        .iter()
        .filter(|n| local.holder_pid(&n.name).is_some())
        .map(|n| n.name.clone())
        .collect();
    let before = read_counters(&cluster, plan, &ports);
    let status = local.tunnels(plan);

    // Probes, in parallel: relay ↔ relay over the tunnel (small and DF), site ↔ site.
    let relays: Vec<_> = plan
        .nodes
        .iter()
        .filter(|n| n.role.is_relay() && up.contains(&n.name))
        .collect();
    let live_mtus: BTreeMap<String, Option<u16>> = relays
        .iter()
        .map(|n| {
            (
                n.name.clone(),
                live::live_mtu(
                    &names::ns_node(&cluster, &n.name),
                    n.wireguard
                        .as_ref()
                        .map_or(hybridgrid_core::plan::WG_INTERFACE, |w| w.name.as_str()),
                ),
            )
        })
        .collect();
    let mut tunnel_jobs = Vec::new();
    for n in &relays {
        for p in n.wireguard.iter().flat_map(|w| &w.peers) {
            let Some(peer) = plan.node(&p.node) else {
                continue;
            };
            let Some(tip) = peer.tunnel_ip else { continue };
            let df = live_mtus
                .get(&n.name)
                .copied()
                .flatten()
                .map(|m| m.saturating_sub(28));
            tunnel_jobs.push((n.name.clone(), peer.name.clone(), peer.public_ip, tip, df));
        }
    }
    let mut site_jobs = Vec::new();
    let pick = |site: &str| {
        plan.nodes
            .iter()
            .filter(|n| n.site == site && up.contains(&n.name))
            .min_by_key(|n| n.role.is_relay())
    };
    for a in &plan.sites {
        for b in plan.sites.iter().filter(|b| b.name != a.name) {
            if let (Some(x), Some(y)) = (pick(&a.name), pick(&b.name)) {
                site_jobs.push((x.name.clone(), y.name.clone(), y.lan_ip));
            }
        }
    }
    // Every ping in one pool: each tunnel's small and don't-fragment ping, each site pair.
    let c = &cluster;
    let mut pings: Vec<(String, Ipv4Addr, Option<u16>)> = Vec::new();
    for (from, _, _, tip, df) in &tunnel_jobs {
        pings.push((from.clone(), *tip, None));
        pings.push((from.clone(), *tip, Some(df.unwrap_or(0))));
    }
    for (from, _, ip) in &site_jobs {
        pings.push((from.clone(), *ip, None));
    }
    let answered: Vec<bool> = crate::par::map(&pings, PROBES_AT_ONCE, |(from, ip, df)| {
        // A DF ping needs a known MTU (size 0 stands for "none").
        *df != Some(0) && live::ping(&names::ns_node(c, from), *ip, *df)
    })
    .into_iter()
    .map(|r| r.unwrap_or(false))
    .collect();
    let tunnel_results: Vec<(bool, bool)> = answered
        .chunks(2)
        .take(tunnel_jobs.len())
        .map(|p| (p[0], p.get(1).copied().unwrap_or(false)))
        .collect();
    let cross_site: Vec<Probe> = site_jobs
        .iter()
        .zip(&answered[2 * tunnel_jobs.len()..])
        .map(|((from, to, _), ok)| Probe {
            from: from.clone(),
            to: to.clone(),
            ok: *ok,
        })
        .collect();
    let after = read_counters(&cluster, plan, &ports);
    let status_after = local.tunnels(plan);

    let tunnels = tunnel_jobs
        .iter()
        .zip(tunnel_results)
        .map(|((from, to, pip, _, df), (small, big))| {
            let handshake_age_s = freshest_handshake(&status, &status_after, from, to);
            TunnelFacts {
                node: from.clone(),
                peer: to.clone(),
                peer_public_ip: *pip,
                handshake_age_s,
                ping_ok: small,
                df_size: *df,
                df_ok: big,
            }
        })
        .collect();

    let nodes = plan
        .nodes
        .iter()
        .map(|n| NodeFacts {
            name: n.name.clone(),
            on_demand: n.on_demand,
            site: n.site.clone(),
            role: n.role,
            up: up.contains(&n.name),
            missing_rules: if up.contains(&n.name) {
                live::missing_rules(
                    plan,
                    &n.name,
                    &n.site,
                    after.sg.get(&n.name).cloned().flatten().as_deref(),
                )
            } else {
                Vec::new()
            },
            drops_before: before.drops.get(&n.name).copied().flatten(),
            drops_after: after.drops.get(&n.name).copied().flatten(),
            planned_mtu: n.wireguard.as_ref().map(|w| w.mtu),
            live_mtu: live_mtus.get(&n.name).copied().flatten(),
        })
        .collect();
    let sites = plan
        .sites
        .iter()
        .map(|s| {
            let ps = after.portsec.get(&s.name).cloned().flatten();
            SiteFacts {
                name: s.name.clone(),
                cloud: None,
                underlay_mtu: s.underlay_mtu,
                ports: s
                    .allowed_address_pairs
                    .iter()
                    .filter(|p| up.contains(&p.node))
                    .filter_map(|p| {
                        let port = ports.get(&p.node)?.clone();
                        let live = ps
                            .as_deref()
                            .and_then(|t| {
                                live::set_elements(t, &format!("aap_{}", port.replace('-', "_")))
                            })
                            .unwrap_or_default();
                        let key = (s.name.clone(), p.node.clone());
                        Some(PortFacts {
                            node: p.node.clone(),
                            port,
                            missing_pairs: p
                                .pairs
                                .iter()
                                .filter(|x| !live.iter().any(|l| l.contains(*x)))
                                .copied()
                                .collect(),
                            spoof_before: before.spoof.get(&key).copied().flatten(),
                            spoof_after: after.spoof.get(&key).copied().flatten(),
                        })
                    })
                    .collect(),
                fragments_before: before.fragments.get(&s.name).copied().flatten(),
                fragments_after: after.fragments.get(&s.name).copied().flatten(),
            }
        })
        .collect();
    Ok(Facts {
        cluster,
        provider: ProviderKind::Local,
        tunnel_port: plan.tunnel.port,
        stateless_security_groups: ledger.stateless_security_groups,
        nodes,
        sites,
        tunnels,
        cross_site,
    })
}

/// `doctor --path SRC DST`: the two ends' routes, the relays' forwarding and one ping.
fn path_facts(local: &Local, plan: &Plan, src: &str, dst: &str) -> PathFacts {
    let lan = |n: &str| plan.node(n).map(|n| n.lan_ip);
    let running = |n: &str| local.holder_pid(n).is_some();
    let route = |from: &str, to: Option<Ipv4Addr>| {
        let to = to?.to_string();
        running(from)
            .then(|| {
                sh::run(
                    "ip",
                    &["-n", &local.ns(from), "-4", "-o", "route", "get", &to],
                )
                .ok()
            })
            .flatten()
    };
    let forwarding = |node: &str| {
        let r = plan.relay_of(&plan.node(node)?.site)?;
        let out = sh::run(
            "nsenter",
            &[
                &sh::net_of(&local.ns(&r.name)),
                "--",
                "cat",
                "/proc/sys/net/ipv4/ip_forward",
            ],
        )
        .ok()?;
        Some(out.trim() == "1")
    };
    PathFacts {
        src_route: route(src, lan(dst)),
        dst_route: route(dst, lan(src)),
        src_relay_forwarding: forwarding(src),
        dst_relay_forwarding: forwarding(dst),
        ping_ok: running(src) && lan(dst).is_some_and(|ip| live::ping(&local.ns(src), ip, None)),
    }
}
