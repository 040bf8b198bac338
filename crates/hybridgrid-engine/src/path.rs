//! `hybridgrid doctor --path SRC DST`: one flow followed hop by hop, from the source's route
//! through its relay, the relay's port, the security groups, the tunnel and its MTU, to the
//! destination and its route back; the first broken hop is named with the exact fix.
//!
//! Pure, for every provider: built from doctor's [`Facts`] and [`Finding`]s plus what only a path needs
//! ([`PathFacts`]: the two ends' live routes, the relays' forwarding switch, one ping).

use std::net::Ipv4Addr;

use hybridgrid_core::plan::{NodePlan, Plan, Remote, SitePlan};
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::doctor::{Facts, Finding, Kind, TunnelFacts, pair_fix, rule_fix, rule_text, tunnel_ok};

pub const PATH_FORMAT_VERSION: u32 = 1;

/// Live facts of one flow, gathered by the provider ([`crate::Provider::path_facts`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathFacts {
    /// `ip -o route get DST` on the source (`None`: no route, or the node is down).
    pub src_route: Option<String>,
    /// `ip -o route get SRC` on the destination.
    pub dst_route: Option<String>,
    /// `net.ipv4.ip_forward` on the source's and the destination's relays.
    pub src_relay_forwarding: Option<bool>,
    pub dst_relay_forwarding: Option<bool>,
    /// A ping from the source to the destination's LAN address.
    pub ping_ok: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hop {
    /// What this hop is, in flow order: "giessen-worker-1 routes 10.10.0.6 via giessen-gw".
    pub hop: String,
    pub ok: bool,
    /// What was seen.
    pub detail: String,
    /// What to do when it is broken.
    pub fix: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathReport {
    pub format_version: u32,
    pub cluster: String,
    pub src: String,
    pub dst: String,
    pub hops: Vec<Hop>,
    /// Index of the first broken hop in `hops`, if any.
    pub first_broken: Option<usize>,
    pub reachable: bool,
}

const UP: &str = "Run `hybridgrid up`: it restores what the plan says.";

struct Trace {
    hops: Vec<Hop>,
}

impl Trace {
    /// The hop of `from`'s route towards `to`: via its relay or, on the relay itself, into the
    /// tunnel device.
    fn route_hop(
        &mut self,
        from: &NodePlan,
        what: &str,
        relay: &NodePlan,
        to: Ipv4Addr,
        route: Option<&str>,
    ) {
        let (via, dev, through) = if from.name == relay.name {
            (None, Some(tunnel_device(relay)), "its tunnel")
        } else {
            (Some(relay.lan_ip), None, relay.name.as_str())
        };
        self.hop(
            format!("{} {what} {to} via {through}", from.name),
            route_problem(route, to, via, dev.as_deref()),
            route.unwrap_or("").trim(),
        );
    }

    fn forwarding_hop(&mut self, relay: &str, between: &str, on: Option<bool>) {
        self.hop(
            format!("{relay} forwards between {between}"),
            (on == Some(false)).then(|| ("net.ipv4.ip_forward is 0".to_owned(), UP.to_owned())),
            "net.ipv4.ip_forward = 1",
        );
    }

    fn hop(&mut self, hop: String, problem: Option<(String, String)>, ok_detail: &str) {
        let (ok, detail, fix) = match problem {
            None => (true, ok_detail.to_owned(), None),
            Some((d, f)) => (false, d, Some(f)),
        };
        self.hops.push(Hop {
            hop,
            ok,
            detail,
            fix,
        });
    }
}

fn tunnel_device(n: &NodePlan) -> String {
    n.wireguard
        .as_ref()
        .map_or(hybridgrid_core::plan::WG_INTERFACE.to_owned(), |w| {
            w.name.clone()
        })
}

fn finding<'a>(findings: &'a [Finding], kind: Kind, subject: &str) -> Option<&'a Finding> {
    findings
        .iter()
        .find(|f| f.kind == kind && f.subject == subject)
}

fn as_problem(f: Option<&Finding>) -> Option<(String, String)> {
    f.map(|f| (f.message.clone(), f.fix.clone()))
}

/// Checks that `route` (`ip -o route get` output) leaves as planned: `via` the gateway and
/// through `dev`, where given (a route always names some device); a cached redirect is a
/// problem of its own.
fn route_problem(
    route: Option<&str>,
    to: Ipv4Addr,
    via: Option<Ipv4Addr>,
    dev: Option<&str>,
) -> Option<(String, String)> {
    let Some(r) = route else {
        return Some((format!("no route to {to}"), UP.to_owned()));
    };
    let words: Vec<&str> = r.split_whitespace().collect();
    let after = |k: &str| {
        words
            .iter()
            .position(|w| *w == k)
            .and_then(|i| words.get(i + 1))
            .copied()
    };
    if r.contains("redirected") {
        return Some((
            format!("a cached ICMP redirect shadows the route: `{}`", r.trim()),
            "Run `ip route flush cache` on the node, then `hybridgrid up` (relays send no \
             redirects and nodes accept none once configured)."
                .to_owned(),
        ));
    }
    let via_ok = via.is_none_or(|v| after("via") == Some(v.to_string().as_str()));
    let dev_ok = dev.map_or(after("dev").is_some(), |d| after("dev") == Some(d));
    if !dev_ok || !via_ok {
        let want = match (via, dev) {
            (Some(v), Some(d)) => format!("via {v} dev {d}"),
            (Some(v), None) => format!("via {v}"),
            (None, Some(d)) => format!("dev {d}"),
            (None, None) => "a device".to_owned(),
        };
        return Some((
            format!(
                "the route leaves {} instead of {want}: `{}`",
                after("dev").unwrap_or("nowhere"),
                r.trim()
            ),
            UP.to_owned(),
        ));
    }
    None
}

fn missing_rule_from(facts: &Facts, node: &str, from: Ipv4Net) -> Option<(String, String)> {
    let n = facts.nodes.iter().find(|n| n.name == node)?;
    let m = n.missing_rules.iter().find(|m| match &m.rule.remote {
        Remote::Cidr(c) => c.contains(&from.addr()) && c.prefix_len() <= from.prefix_len(),
        _ => false,
    })?;
    Some((
        format!(
            "{}'s security group lacks `{}` ({})",
            node,
            rule_text(&m.rule),
            m.rule.description
        ),
        rule_fix(m),
    ))
}

fn missing_pair(facts: &Facts, node: &str, pair: Ipv4Net) -> Option<(String, String)> {
    facts
        .sites
        .iter()
        .flat_map(|s| s.ports.iter().map(move |p| (s, p)))
        .find(|(_, p)| p.node == node && p.missing_pairs.contains(&pair))
        .map(|(s, p)| {
            (
                format!(
                    "{}'s port {} lacks the allowed-address pair {pair}: {}'s switch drops packets \
                     it sends from {pair}",
                    node, p.port, s.name
                ),
                pair_fix(p),
            )
        })
}

/// Follows `src` → `dst`. `None` when either is not a node of the plan.
pub fn trace(
    plan: &Plan,
    facts: &Facts,
    findings: &[Finding],
    pf: &PathFacts,
    src: &str,
    dst: &str,
) -> Option<PathReport> {
    let flow = Flow::new(plan, facts, findings, pf, src, dst)?;
    let mut t = Trace { hops: Vec::new() };
    t.hop(format!("{src} is running"), flow.down(src), "it runs");
    // Whether the flow already has the hop "dst is running".
    let dst_checked = if flow.s.site == flow.d.site {
        t.hop(
            format!("{dst}'s security group admits {}", flow.ss.subnet),
            missing_rule_from(facts, dst, flow.ss.subnet),
            "the site's own subnet is allowed",
        );
        false
    } else {
        flow.out_of_source(&mut t);
        flow.through_tunnel(&mut t);
        flow.onto_destination_lan(&mut t)
    };
    if !dst_checked && !flow.up(dst) {
        t.hop(format!("{dst} is running"), flow.down(dst), "");
    }
    t.hop(
        format!("ping {src} → {dst} ({})", flow.d.lan_ip),
        (!pf.ping_ok).then(|| {
            (
                "no answer".to_owned(),
                "Run `hybridgrid doctor` for every finding of the cluster.".to_owned(),
            )
        }),
        "answered",
    );
    // The ping is the last hop: it is the first broken one only when nothing before it is.
    let first_broken = t.hops.iter().position(|h| !h.ok);
    Some(PathReport {
        format_version: PATH_FORMAT_VERSION,
        cluster: plan.cluster.clone(),
        src: src.to_owned(),
        dst: dst.to_owned(),
        reachable: pf.ping_ok,
        first_broken,
        hops: t.hops,
    })
}

/// One flow [`trace`] follows: its two ends (`s`, `d`), their sites (`ss`, `ds`) and relays
/// (`sr`, `dr`), with what doctor found.
struct Flow<'a> {
    plan: &'a Plan,
    facts: &'a Facts,
    findings: &'a [Finding],
    pf: &'a PathFacts,
    s: &'a NodePlan,
    d: &'a NodePlan,
    ss: &'a SitePlan,
    ds: &'a SitePlan,
    sr: &'a NodePlan,
    dr: &'a NodePlan,
}

impl<'a> Flow<'a> {
    fn new(
        plan: &'a Plan,
        facts: &'a Facts,
        findings: &'a [Finding],
        pf: &'a PathFacts,
        src: &str,
        dst: &str,
    ) -> Option<Self> {
        let (s, d) = (plan.node(src)?, plan.node(dst)?);
        let site = |name: &str| plan.sites.iter().find(|x| x.name == name);
        let (ss, ds) = (site(&s.site)?, site(&d.site)?);
        let (sr, dr) = (plan.node(&ss.relay)?, plan.node(&ds.relay)?);
        Some(Flow {
            plan,
            facts,
            findings,
            pf,
            s,
            d,
            ss,
            ds,
            sr,
            dr,
        })
    }

    fn up(&self, n: &str) -> bool {
        self.facts
            .nodes
            .iter()
            .find(|x| x.name == n)
            .is_some_and(|x| x.up)
    }

    fn down(&self, n: &str) -> Option<(String, String)> {
        as_problem(finding(self.findings, Kind::NodeDown, n))
    }

    /// Out of the source: to its relay (or, on the relay, into the tunnel), and the relays'
    /// devices.
    fn out_of_source(&self, t: &mut Trace) {
        let (s, d, sr, dr) = (self.s, self.d, self.sr, self.dr);
        t.route_hop(s, "routes", sr, d.lan_ip, self.pf.src_route.as_deref());
        if s.name != sr.name {
            t.hop(format!("{} is running", sr.name), self.down(&sr.name), "");
        }
        t.forwarding_hop(
            &sr.name,
            "its LAN and the tunnel",
            self.pf.src_relay_forwarding,
        );
        t.hop(
            format!(
                "{}'s port may send replies from {}",
                sr.name, self.ds.subnet
            ),
            missing_pair(self.facts, &sr.name, self.ds.subnet),
            "the allowed-address pair is there",
        );
        for relay in [sr, dr] {
            t.hop(
                format!("{}'s tunnel device", relay.name),
                as_problem(finding(self.findings, Kind::DeviceMissing, &relay.name)),
                "wg0 is up",
            );
        }
    }

    /// The WireGuard rules of both relays' groups, the handshake and ping, the MTU.
    fn through_tunnel(&self, t: &mut Trace) {
        let (sr, dr, port) = (self.sr, self.dr, self.plan.tunnel.port);
        let wg_rule = |n: &str| {
            self.findings
                .iter()
                .find(|f| {
                    f.subject == n
                        && matches!(f.kind, Kind::NoHandshake | Kind::MissingRule)
                        && f.message.contains(&format!("udp {port}"))
                })
                .map(|f| (f.message.clone(), f.fix.clone()))
        };
        t.hop(
            format!(
                "{}'s and {}'s security groups pass UDP {port} between them",
                sr.name, dr.name
            ),
            wg_rule(&sr.name).or_else(|| wg_rule(&dr.name)),
            "both rules are there",
        );
        let tunnel = self
            .facts
            .tunnels
            .iter()
            .find(|x| x.node == sr.name && x.peer == dr.name);
        t.hop(
            format!("tunnel {} → {} (handshake, ping)", sr.name, dr.name),
            self.tunnel_problem(tunnel),
            &tunnel
                .and_then(|x| x.handshake_age_s)
                .map_or(String::new(), |a| format!("handshake {a} s ago")),
        );
        let mtu = |n: &str| {
            as_problem(
                finding(self.findings, Kind::MtuTooLarge, n)
                    .or_else(|| finding(self.findings, Kind::MtuDrift, n)),
            )
        };
        t.hop(
            format!("MTU of the tunnel {} ↔ {}", sr.name, dr.name),
            mtu(&sr.name).or_else(|| mtu(&dr.name)),
            "full-size packets with don't-fragment pass",
        );
    }

    fn tunnel_problem(&self, tunnel: Option<&TunnelFacts>) -> Option<(String, String)> {
        let (sr, dr) = (self.sr, self.dr);
        let x = match tunnel {
            None => {
                return Some((
                    format!("{} has no peer {}", sr.name, dr.name),
                    UP.to_owned(),
                ));
            }
            Some(x) if tunnel_ok(x) => return None,
            Some(x) => x,
        };
        let handshake = x
            .handshake_age_s
            .map_or("never a handshake".to_owned(), |a| {
                format!("last handshake {a} s ago")
            });
        let ping = if x.ping_ok { "answered" } else { "lost" };
        let peer_ip = dr
            .public_ip
            .map_or("its public IP".to_owned(), |i| i.to_string());
        Some((
            format!(
                "no working tunnel {} → {}: {handshake}, ping over it {ping}",
                sr.name, dr.name
            ),
            format!(
                "Check that UDP {} reaches {} at {peer_ip} (`hybridgrid exec -f FILE {} -- wg \
                 show`), then run `hybridgrid up`.",
                self.plan.tunnel.port, dr.name, sr.name
            ),
        ))
    }

    /// From the destination's relay into its LAN, and the reply's route back; whether it
    /// checked that the destination runs.
    fn onto_destination_lan(&self, t: &mut Trace) -> bool {
        let (s, d, dr, ss) = (self.s, self.d, self.dr, self.ss);
        t.hop(
            format!("{}'s port may send packets from {}", dr.name, ss.subnet),
            missing_pair(self.facts, &dr.name, ss.subnet),
            "the allowed-address pair is there",
        );
        t.forwarding_hop(
            &dr.name,
            "the tunnel and its LAN",
            self.pf.dst_relay_forwarding,
        );
        let dst_checked = d.name != dr.name;
        if dst_checked {
            t.hop(format!("{} is running", d.name), self.down(&d.name), "");
        }
        t.hop(
            format!("{}'s security group admits {}", d.name, ss.subnet),
            missing_rule_from(self.facts, &d.name, ss.subnet),
            "the rule for the other site is there",
        );
        t.route_hop(
            d,
            "routes replies to",
            dr,
            s.lan_ip,
            self.pf.dst_route.as_deref(),
        );
        dst_checked
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VIA: Option<Ipv4Addr> = Some(Ipv4Addr::new(10, 20, 0, 5));
    const TO: Ipv4Addr = Ipv4Addr::new(10, 10, 0, 6);

    #[test]
    fn a_route_is_checked_for_its_gateway_device_and_cached_redirects() {
        let ok = "10.10.0.6 via 10.20.0.5 dev eth0 src 10.20.0.6 uid 0 \\    cache";
        assert_eq!(route_problem(Some(ok), TO, VIA, Some("eth0")), None);
        let default = "10.10.0.6 via 10.20.0.1 dev eth0 src 10.20.0.6 uid 0 \\    cache";
        assert!(route_problem(Some(default), TO, VIA, Some("eth0")).is_some());
        let redirected = "10.10.0.6 via 10.20.0.1 dev eth0 src 10.20.0.6 uid 0 \\    cache <redirected> expires 290sec";
        let (what, fix) =
            route_problem(Some(redirected), TO, VIA, Some("eth0")).unwrap_or_default();
        assert!(what.contains("cached ICMP redirect"), "{what}");
        assert!(fix.contains("ip route flush cache"), "{fix}");
        assert!(route_problem(None, TO, VIA, Some("eth0")).is_some());
        let relay = "10.10.0.6 dev wg0 src 10.20.0.5 uid 0 \\    cache";
        assert_eq!(route_problem(Some(relay), TO, None, Some("wg0")), None);
        assert!(route_problem(Some(default), TO, None, Some("wg0")).is_some());
    }
}
