//! The local provider's facts for `hybridgrid doctor`: [`facts`] reads the live cluster
//! (nftables rules, sets and counters in the node, switch and router namespaces, the tunnel MTU,
//! WireGuard handshakes, pings across the tunnel with don't-fragment set) into [`Facts`]; the
//! engine's pure `doctor::diagnose` turns them into findings, `path::trace` into hops.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use hybridgrid_core::model::Provider as ProviderKind;
use hybridgrid_core::plan::{Plan, SitePlan};
use hybridgrid_engine::doctor::{
    Facts, NodeMeasures, PairRelayFacts, PortFacts, Probe, SiteFacts, TunnelFacts,
    freshest_handshake, node_facts,
};
use hybridgrid_engine::path::PathFacts;
use hybridgrid_engine::status;

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
        live::nft_table(&names::ns_node(cluster, &n.name), "inet", names::SG_TABLE)
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
        let ps = live::nft_table(
            &names::ns_switch(cluster, &s.name),
            "bridge",
            names::PORTSEC_TABLE,
        );
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

/// One tunnel `doctor` pings: from a relay to its peer's tunnel address, small and with
/// don't-fragment at the relay's live MTU.
#[derive(Debug)]
struct TunnelJob {
    from: String,
    to: String,
    peer_public_ip: Option<Ipv4Addr>,
    tunnel_ip: Ipv4Addr,
    df_size: Option<u16>,
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
    let live_mtus = live_mtus(&cluster, plan, &up);
    let tunnel_jobs = tunnel_jobs(plan, &up, &live_mtus);
    let (tunnel_pings, cross_site) = ping_all(&cluster, &tunnel_jobs, &site_jobs(plan, &up));
    let after = read_counters(&cluster, plan, &ports);
    let status_after = local.tunnels(plan);

    let tunnels = tunnel_jobs
        .iter()
        .zip(tunnel_pings)
        .map(|(job, (small, big))| TunnelFacts {
            node: job.from.clone(),
            peer: job.to.clone(),
            peer_public_ip: job.peer_public_ip,
            handshake_age_s: freshest_handshake(&status, &status_after, &job.from, &job.to),
            ping_ok: small,
            df_size: job.df_size,
            df_ok: big,
        })
        .collect();
    let nodes = node_facts(plan, &up, |n| NodeMeasures {
        missing_rules: live::missing_rules(
            plan,
            &n.name,
            &n.site,
            after.sg.get(&n.name).cloned().flatten().as_deref(),
        ),
        drops_before: before.drops.get(&n.name).copied().flatten(),
        drops_after: after.drops.get(&n.name).copied().flatten(),
        live_mtu: live_mtus.get(&n.name).copied().flatten(),
    });
    let sites = plan
        .sites
        .iter()
        .map(|s| site_facts(s, &up, &ports, &before, &after))
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
        pair_relays: pair_relays(local, plan, &up),
    })
}

/// Each running relay of a pair: whether it holds the virtual address (its namespace), and
/// keepalived's state (its state folder).
fn pair_relays(local: &Local, plan: &Plan, up: &BTreeSet<String>) -> Vec<PairRelayFacts> {
    plan.nodes
        .iter()
        .filter(|n| up.contains(&n.name))
        .filter_map(|n| {
            let pair = n.pair.as_ref()?;
            let ns = names::ns_node(&plan.cluster, &n.name);
            Some(PairRelayFacts {
                node: n.name.clone(),
                pair: pair.identity.clone(),
                holds_address: live::holds_address(&ns, pair.vip.addr()),
                vrrp: hybridgrid_agent::vrrp::state_word(&local.node_dir(&n.name)),
            })
        })
        .collect()
}

/// The tunnel device's MTU on every running relay.
fn live_mtus(cluster: &str, plan: &Plan, up: &BTreeSet<String>) -> BTreeMap<String, Option<u16>> {
    plan.nodes
        .iter()
        .filter(|n| n.is_relay() && up.contains(&n.name))
        .map(|n| {
            let ns = names::ns_node(cluster, &n.name);
            (n.name.clone(), live::live_mtu(&ns, status::interface_of(n)))
        })
        .collect()
}

/// Every running relay's tunnels to its peers.
fn tunnel_jobs(
    plan: &Plan,
    up: &BTreeSet<String>,
    live_mtus: &BTreeMap<String, Option<u16>>,
) -> Vec<TunnelJob> {
    let mut jobs = Vec::new();
    // A pair's standby has no peers on purpose: only the active relay's tunnels are looked at.
    let relays = plan
        .nodes
        .iter()
        .filter(|n| n.is_relay() && up.contains(&n.name))
        .filter(|n| {
            n.pair.as_ref().is_none_or(|p| {
                live::holds_address(&names::ns_node(&plan.cluster, &n.name), p.vip.addr())
            })
        });
    for relay in relays {
        let mtu = live_mtus.get(&relay.name).copied().flatten();
        for p in relay.wireguard.iter().flat_map(|w| &w.peers) {
            let Some(peer) = plan.mesh_end(&p.node) else {
                continue;
            };
            let Some(tunnel_ip) = peer.tunnel_ip else {
                continue;
            };
            jobs.push(TunnelJob {
                from: relay.name.clone(),
                // The peer as the tunnel rows name it: a pair by its identity.
                to: p.node.clone(),
                peer_public_ip: peer.public_ip,
                tunnel_ip,
                df_size: mtu.map(|m| m.saturating_sub(28)),
            });
        }
    }
    jobs
}

/// For every ordered pair of sites, one running node of each (a worker where there is one):
/// `(from, to, to's LAN address)`.
fn site_jobs(plan: &Plan, up: &BTreeSet<String>) -> Vec<(String, String, Ipv4Addr)> {
    let pick = |site: &str| {
        plan.nodes
            .iter()
            .filter(|n| n.site == site && up.contains(&n.name))
            .min_by_key(|n| n.is_relay())
    };
    let mut jobs = Vec::new();
    for a in &plan.sites {
        for b in plan.sites.iter().filter(|b| b.name != a.name) {
            if let (Some(x), Some(y)) = (pick(&a.name), pick(&b.name)) {
                jobs.push((x.name.clone(), y.name.clone(), y.lan_ip));
            }
        }
    }
    jobs
}

/// Every ping in one pool: each tunnel's small and don't-fragment ping, each site pair. Returns
/// per tunnel `(small ok, DF ok)`, and the cross-site probes.
fn ping_all(
    cluster: &str,
    tunnel_jobs: &[TunnelJob],
    site_jobs: &[(String, String, Ipv4Addr)],
) -> (Vec<(bool, bool)>, Vec<Probe>) {
    let mut pings: Vec<(&str, Ipv4Addr, Option<u16>)> = Vec::new();
    for job in tunnel_jobs {
        pings.push((&job.from, job.tunnel_ip, None));
        pings.push((&job.from, job.tunnel_ip, Some(job.df_size.unwrap_or(0))));
    }
    for (from, _, ip) in site_jobs {
        pings.push((from, *ip, None));
    }
    let answered: Vec<bool> = crate::par::map(&pings, PROBES_AT_ONCE, |(from, ip, df)| {
        // A DF ping needs a known MTU (size 0 stands for "none").
        *df != Some(0) && live::ping(&names::ns_node(cluster, from), *ip, *df)
    })
    .into_iter()
    .map(|r| r.unwrap_or(false))
    .collect();
    let tunnels = answered
        .chunks(2)
        .take(tunnel_jobs.len())
        .map(|p| (p[0], p.get(1).copied().unwrap_or(false)))
        .collect();
    let cross_site = site_jobs
        .iter()
        .zip(&answered[2 * tunnel_jobs.len()..])
        .map(|((from, to, _), ok)| Probe {
            from: from.clone(),
            to: to.clone(),
            ok: *ok,
        })
        .collect();
    (tunnels, cross_site)
}

/// A site's facts: its ports' allowed-address pairs against the switch's live sets, the spoof
/// and fragment counters before and after the probes.
fn site_facts(
    site: &SitePlan,
    up: &BTreeSet<String>,
    ports: &BTreeMap<String, String>,
    before: &Counters,
    after: &Counters,
) -> SiteFacts {
    let ps = after.portsec.get(&site.name).cloned().flatten();
    let ports = site
        .allowed_address_pairs
        .iter()
        .filter(|p| up.contains(&p.node))
        .filter_map(|p| {
            let port = ports.get(&p.node)?.clone();
            let live = ps
                .as_deref()
                .and_then(|t| live::set_elements(t, &names::aap_set(&port.replace('-', "_"))))
                .unwrap_or_default();
            let key = (site.name.clone(), p.node.clone());
            Some(PortFacts {
                node: p.node.clone(),
                port,
                missing_pairs: p
                    .pairs
                    .iter()
                    .filter(|x| !live.iter().any(|l| l.contains(*x)))
                    .copied()
                    .collect(),
                by_hand: None,
                spoof_before: before.spoof.get(&key).copied().flatten(),
                spoof_after: after.spoof.get(&key).copied().flatten(),
            })
        })
        .collect();
    SiteFacts {
        name: site.name.clone(),
        cloud: None,
        underlay_mtu: site.underlay_mtu,
        ports,
        fragments_before: before.fragments.get(&site.name).copied().flatten(),
        fragments_after: after.fragments.get(&site.name).copied().flatten(),
    }
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
