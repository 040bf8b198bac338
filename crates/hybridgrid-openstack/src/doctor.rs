//! The openstack provider's facts for `hybridgrid doctor`: what Neutron lacks is what the plan
//! would add (a rule, an allowed-address pair: the plan is made from the live cloud), the rest
//! comes from the nodes over the channel — each relay's tunnel MTU, its pings over every tunnel
//! (small and don't-fragment) and its peers' handshakes, one ping between every two sites; for
//! `--path`, both ends' routes and the relays' forwarding. The engine's pure `doctor::diagnose`
//! and `path::trace` turn them into findings and hops, with the `openstack …` command that mends
//! each cloud-side gap by hand.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use futures::StreamExt as _;
use hybridgrid_core::diff::Change;
use hybridgrid_core::model::Provider as ProviderKind;
use hybridgrid_core::plan::{NodePlan, Plan, Protocol, Remote, SgRule};
use hybridgrid_engine::doctor::{
    Facts, MissingRule, NodeMeasures, PairRelayFacts, PortFacts, Probe, SiteFacts, TunnelFacts,
    freshest_handshake, node_facts,
};
use hybridgrid_engine::path::PathFacts;

use crate::error::Result;
use crate::ledger::{Kind, key};
use crate::provider::OpenStack;

/// SSH sessions at once while probing.
const SESSIONS_AT_ONCE: usize = 32;

/// One ping (two tries, so a handshake that starts with the first is not a loss), printing
/// `TAG ok` or `TAG lost`, in the background of the script.
fn ping_line(ip: Ipv4Addr, size: Option<u16>, tag: &str) -> String {
    let df = size.map_or(String::new(), |s| format!(" -M do -s {s}"));
    format!(
        "(ping -c 2 -i 0.3 -W 2{df} {ip} >/dev/null 2>&1 && echo '{tag} ok' || echo '{tag} lost') &\n"
    )
}

fn answered(out: &str, tag: &str) -> bool {
    out.lines().any(|l| l == format!("{tag} ok"))
}

impl OpenStack {
    /// The facts of the live cluster against `plan` (made from the live cloud).
    pub(crate) async fn doctor_facts_async(&self, plan: &Plan) -> Result<Facts> {
        let up = self.active_nodes().await?;
        let before = self.tunnels(plan).await;
        let (relays, cross_site) =
            tokio::join!(self.probe_relays(plan, &up), self.probe_sites(plan, &up));
        let after = self.tunnels(plan).await;

        let tunnels = relays
            .iter()
            .flat_map(|r| r.tunnels.iter().map(move |t| (r, t)))
            .map(|(r, t)| TunnelFacts {
                node: r.node.clone(),
                peer: t.peer.clone(),
                peer_public_ip: plan.mesh_end(&t.peer).and_then(|p| p.public_ip),
                handshake_age_s: freshest_handshake(&before, &after, &r.node, &t.peer),
                ping_ok: t.small_ok,
                df_size: t.df_size,
                df_ok: t.df_ok,
            })
            .collect();
        let mtus: BTreeMap<&str, Option<u16>> =
            relays.iter().map(|r| (r.node.as_str(), r.mtu)).collect();
        let nodes = node_facts(plan, &up, |n| NodeMeasures {
            missing_rules: missing_rules(plan, &n.name),
            live_mtu: mtus.get(n.name.as_str()).copied().flatten(),
            ..NodeMeasures::default()
        });
        let ledger = self.ledger.snapshot();
        let port_of = |site: &str, node: &str| {
            let name = format!("{}-{node}-port", self.cluster.name);
            ledger
                .sites
                .get(site)
                .and_then(|s| s.resources.get(&key(Kind::Port, &name)))
                .and_then(|r| r.id.clone())
                .unwrap_or(name)
        };
        let sites = plan
            .sites
            .iter()
            .map(|s| SiteFacts {
                name: s.name.clone(),
                cloud: s.cloud.clone(),
                underlay_mtu: s.underlay_mtu,
                ports: s
                    .allowed_address_pairs
                    .iter()
                    .filter(|p| up.contains(&p.node))
                    .map(|p| {
                        let port = port_of(&s.name, &p.node);
                        let missing = missing_pairs(plan, &p.node);
                        PortFacts {
                            node: p.node.clone(),
                            by_hand: s
                                .cloud
                                .as_deref()
                                .filter(|_| !missing.is_empty())
                                .map(|c| pairs_by_hand(c, &port, &missing)),
                            port,
                            missing_pairs: missing,
                            spoof_before: None,
                            spoof_after: None,
                        }
                    })
                    .collect(),
                fragments_before: None,
                fragments_after: None,
            })
            .collect();
        Ok(Facts {
            cluster: plan.cluster.clone(),
            provider: ProviderKind::OpenStack,
            tunnel_port: plan.tunnel.port,
            stateless_security_groups: false,
            nodes,
            sites,
            tunnels,
            cross_site,
            pair_relays: self.pair_relays(plan, &up).await,
        })
    }

    /// Each running relay of a pair as its agent reports its part (one that does not answer is
    /// left out: its node's own finding says why).
    async fn pair_relays(&self, plan: &Plan, up: &BTreeSet<String>) -> Vec<PairRelayFacts> {
        let channel = self.channel();
        let asked = plan
            .nodes
            .iter()
            .filter(|n| up.contains(&n.name))
            .filter_map(|n| Some((n, n.pair.as_ref()?, self.target(plan, &n.name)?)))
            .map(|(n, pair, target)| {
                let channel = &channel;
                async move {
                    let report = crate::nodes::report(channel, &target).await.ok()?.pair?;
                    Some(PairRelayFacts {
                        node: n.name.clone(),
                        pair: pair.identity.clone(),
                        holds_address: report.holds_address,
                        vrrp: report.vrrp,
                    })
                }
            });
        futures::future::join_all(asked)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    /// One session per running relay: its tunnel device's MTU, then (not on a pair's standby:
    /// it has no peers on purpose) a small and a don't-fragment ping (`MTU − 28` bytes of
    /// payload) to every peer's tunnel address.
    async fn probe_relays(&self, plan: &Plan, up: &BTreeSet<String>) -> Vec<RelayProbe> {
        let relays: Vec<&NodePlan> = plan
            .nodes
            .iter()
            .filter(|n| n.wireguard.is_some() && up.contains(&n.name))
            .collect();
        futures::stream::iter(relays.into_iter().map(|n| async move {
            let peers: Vec<(&str, Ipv4Addr)> = n
                .wireguard
                .iter()
                .flat_map(|w| &w.peers)
                .filter_map(|p| Some((p.node.as_str(), plan.mesh_end(&p.node)?.tunnel_ip?)))
                .collect();
            // A relay of a pair says first whether it holds the pair's virtual address.
            let holds = n.pair.as_ref().map_or(String::new(), |p| {
                format!(
                    "ip -4 -o addr show to {}/32 | grep -q . && echo active; ",
                    p.vip.addr()
                )
            });
            let mtu_script = format!(
                "{holds}cat /sys/class/net/{}/mtu",
                hybridgrid_engine::status::interface_of(n)
            );
            let (active, mtu) = match self.run_on(plan, &n.name, &mtu_script, b"").await {
                Ok((0, out)) => {
                    let out = String::from_utf8_lossy(&out);
                    let active = n.pair.is_none() || out.lines().any(|l| l == "active");
                    (
                        active,
                        out.lines()
                            .last()
                            .and_then(|l| l.trim().parse::<u16>().ok()),
                    )
                }
                _ => (n.pair.is_none(), None),
            };
            if !active {
                // Its device is measured, its tunnels not (it has no peers on purpose).
                return RelayProbe {
                    node: n.name.clone(),
                    mtu,
                    tunnels: Vec::new(),
                };
            }
            let df = mtu.map(|m| m.saturating_sub(28));
            let mut script = String::new();
            for (peer, ip) in &peers {
                script.push_str(&ping_line(*ip, None, &format!("{peer} small")));
                if let Some(size) = df {
                    script.push_str(&ping_line(*ip, Some(size), &format!("{peer} df")));
                }
            }
            script.push_str("wait\n");
            let out = self
                .run_on(plan, &n.name, &script, b"")
                .await
                .map(|(_, o)| String::from_utf8_lossy(&o).into_owned())
                .unwrap_or_default();
            RelayProbe {
                node: n.name.clone(),
                mtu,
                tunnels: peers
                    .iter()
                    .map(|(peer, _)| TunnelProbe {
                        peer: (*peer).to_owned(),
                        small_ok: answered(&out, &format!("{peer} small")),
                        df_size: df,
                        df_ok: df.is_some() && answered(&out, &format!("{peer} df")),
                    })
                    .collect(),
            }
        }))
        .buffer_unordered(SESSIONS_AT_ONCE)
        .collect()
        .await
    }

    /// One ping from every site to every other: from a running node of the site (a worker where
    /// there is one) to one of the other's; one session per source.
    async fn probe_sites(&self, plan: &Plan, up: &BTreeSet<String>) -> Vec<Probe> {
        let pick = |site: &str| {
            plan.nodes
                .iter()
                .filter(|n| n.site == site && up.contains(&n.name))
                .min_by_key(|n| n.is_relay())
        };
        let jobs: Vec<(&NodePlan, Vec<&NodePlan>)> = plan
            .sites
            .iter()
            .filter_map(|a| {
                let from = pick(&a.name)?;
                let to: Vec<&NodePlan> = plan
                    .sites
                    .iter()
                    .filter(|b| b.name != a.name)
                    .filter_map(|b| pick(&b.name))
                    .collect();
                Some((from, to))
            })
            .collect();
        let results = futures::stream::iter(jobs.into_iter().map(|(from, to)| async move {
            let mut script: String = to
                .iter()
                .map(|b| ping_line(b.lan_ip, None, &b.name))
                .collect();
            script.push_str("wait\n");
            let out = self
                .run_on(plan, &from.name, &script, b"")
                .await
                .map(|(_, o)| String::from_utf8_lossy(&o).into_owned())
                .unwrap_or_default();
            to.iter()
                .map(|b| Probe {
                    from: from.name.clone(),
                    to: b.name.clone(),
                    ok: answered(&out, &b.name),
                })
                .collect::<Vec<_>>()
        }))
        .buffer_unordered(SESSIONS_AT_ONCE)
        .collect::<Vec<_>>()
        .await;
        results.into_iter().flatten().collect()
    }

    /// `doctor --path`: both ends' routes (`ip -o route get`), the relays' forwarding, a ping.
    pub(crate) async fn path_facts_async(&self, plan: &Plan, src: &str, dst: &str) -> PathFacts {
        let lan = |n: &str| plan.node(n).map(|n| n.lan_ip);
        let route_of = |from: &str, to: Option<Ipv4Addr>| {
            let from = from.to_owned();
            async move {
                let to = to?;
                match self
                    .run_on(plan, &from, &format!("ip -4 -o route get {to}"), b"")
                    .await
                {
                    Ok((0, out)) => Some(String::from_utf8_lossy(&out).trim().to_owned()),
                    _ => None,
                }
            }
        };
        let forwarding = |node: &str| {
            let relay = plan
                .node(node)
                .and_then(|n| plan.relay_of(&n.site))
                .map(|r| r.name.clone());
            async move {
                let (code, out) = self
                    .run_on(plan, &relay?, "cat /proc/sys/net/ipv4/ip_forward", b"")
                    .await
                    .ok()?;
                (code == 0).then(|| String::from_utf8_lossy(&out).trim() == "1")
            }
        };
        let ping = async {
            let Some(ip) = lan(dst) else { return false };
            let out = self
                .run_on(plan, src, &(ping_line(ip, None, "dst") + "wait\n"), b"")
                .await
                .map(|(_, o)| String::from_utf8_lossy(&o).into_owned())
                .unwrap_or_default();
            answered(&out, "dst")
        };
        let (src_route, dst_route, src_relay_forwarding, dst_relay_forwarding, ping_ok) = tokio::join!(
            route_of(src, lan(dst)),
            route_of(dst, lan(src)),
            forwarding(src),
            forwarding(dst),
            ping
        );
        PathFacts {
            src_route,
            dst_route,
            src_relay_forwarding,
            dst_relay_forwarding,
            ping_ok,
        }
    }
}

struct RelayProbe {
    node: String,
    mtu: Option<u16>,
    tunnels: Vec<TunnelProbe>,
}

struct TunnelProbe {
    peer: String,
    small_ok: bool,
    df_size: Option<u16>,
    df_ok: bool,
}

/// Rules the plan adds to a group `node`'s port carries: what the live group lacks.
fn missing_rules(plan: &Plan, node: &str) -> Vec<MissingRule> {
    plan.changes
        .iter()
        .filter_map(|c| match c {
            Change::AddRule { site, group, rule } => Some((site, group, rule)),
            _ => None,
        })
        .filter(|(site, group, _)| {
            plan.site(site).is_some_and(|s| {
                s.security_groups
                    .iter()
                    .any(|g| &g.name == *group && g.members.iter().any(|m| m == node))
            })
        })
        .map(|(site, group, rule)| MissingRule {
            group: group.clone(),
            rule: rule.clone(),
            by_hand: plan
                .site(site)
                .and_then(|s| s.cloud.as_deref())
                .map(|cloud| rule_by_hand(cloud, group, rule)),
        })
        .collect()
}

/// The `openstack` command that adds `rule` to `group` by hand.
fn rule_by_hand(cloud: &str, group: &str, rule: &SgRule) -> String {
    let proto = match rule.protocol {
        Protocol::Any => "any",
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Icmp => "icmp",
    };
    let ports = rule
        .ports
        .map(|(a, b)| format!(" --dst-port {a}:{b}"))
        .unwrap_or_default();
    let remote = match &rule.remote {
        Remote::Cidr(c) => c.to_string(),
        Remote::PendingPublicIp(n) => format!("<{n}'s public IP>/32"),
    };
    format!(
        "openstack --os-cloud {cloud} security group rule create --ingress --ethertype IPv4 \
         --protocol {proto}{ports} --remote-ip {remote} {group}"
    )
}

/// The `openstack` command that adds `pairs` to `port` by hand.
fn pairs_by_hand(cloud: &str, port: &str, pairs: &[ipnet::Ipv4Net]) -> String {
    let flags: String = pairs
        .iter()
        .map(|p| format!(" --allowed-address ip-address={p}"))
        .collect();
    format!("openstack --os-cloud {cloud} port set{flags} {port}")
}

/// Pairs the plan adds to `node`'s port: what the live port lacks.
fn missing_pairs(plan: &Plan, node: &str) -> Vec<ipnet::Ipv4Net> {
    plan.changes
        .iter()
        .filter_map(|c| match c {
            Change::AddAddressPairs { node: n, pairs, .. } if n == node => Some(pairs.clone()),
            _ => None,
        })
        .flatten()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fix_by_hand_is_the_openstack_command_of_the_site_cloud() {
        let rule = SgRule {
            protocol: Protocol::Udp,
            ports: Some((51820, 51820)),
            remote: Remote::Cidr(
                "198.51.100.100/32"
                    .parse()
                    .unwrap_or_else(|_| unreachable!()),
            ),
            description: "WireGuard from bielefeld-master".into(),
        };
        assert_eq!(
            rule_by_hand("cloud-giessen", "demo-giessen-gateway", &rule),
            "openstack --os-cloud cloud-giessen security group rule create --ingress --ethertype \
             IPv4 --protocol udp --dst-port 51820:51820 --remote-ip 198.51.100.100/32 \
             demo-giessen-gateway"
        );
        let pair = "10.10.0.0/24".parse().unwrap_or_else(|_| unreachable!());
        assert_eq!(
            pairs_by_hand("cloud-giessen", "8c1f", &[pair]),
            "openstack --os-cloud cloud-giessen port set --allowed-address \
             ip-address=10.10.0.0/24 8c1f"
        );
    }

    #[test]
    fn a_ping_line_reports_its_tag_and_sets_dont_fragment_only_with_a_size() {
        let ip = Ipv4Addr::new(10, 0, 0, 2);
        let small = ping_line(ip, None, "b-gw small");
        assert!(small.contains("ping -c 2 -i 0.3 -W 2 10.0.0.2"), "{small}");
        assert!(small.contains("echo 'b-gw small ok'"), "{small}");
        let df = ping_line(ip, Some(1342), "b-gw df");
        assert!(df.contains("-M do -s 1342 10.0.0.2"), "{df}");
        assert!(answered("b-gw small ok\nb-gw df lost\n", "b-gw small"));
        assert!(!answered("b-gw small ok\nb-gw df lost\n", "b-gw df"));
        assert!(!answered("b-gw small okay\n", "b-gw small"));
    }
}
