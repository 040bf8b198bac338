//! The pure half of `hybridgrid doctor`, the same for every provider: the [`Facts`] a provider
//! gathers from the live cluster ([`crate::Provider::doctor_facts`]) and [`diagnose`], which
//! turns them into plain-word [`Finding`]s with the fix — on openstack also the `openstack …`
//! command that mends it by hand.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use hybridgrid_core::model::{Provider as ProviderKind, WG_OVERHEAD};
use hybridgrid_core::plan::{NodePlan, Plan, Protocol, Remote, Role, SgRule};
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::HANDSHAKE_STALE_S;

mod pairs;

pub const DOCTOR_FORMAT_VERSION: u32 = 1;

/// What [`gather`] found on the live cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Facts {
    pub cluster: String,
    /// Who gathered the facts: the fixes name that provider's commands.
    #[serde(default = "local_kind")]
    pub provider: ProviderKind,
    pub tunnel_port: u16,
    pub stateless_security_groups: bool,
    pub nodes: Vec<NodeFacts>,
    pub sites: Vec<SiteFacts>,
    pub tunnels: Vec<TunnelFacts>,
    pub cross_site: Vec<Probe>,
    /// The running relays of pairs (`gateway.standby`) and their part in it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pair_relays: Vec<PairRelayFacts>,
}

/// A running relay of a pair as it says it stands (the agent's report on openstack, its
/// namespace and state on local).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairRelayFacts {
    pub node: String,
    /// The pair's identity (`<site>-gw`).
    pub pair: String,
    /// Whether it holds the pair's virtual address (it is the active relay).
    pub holds_address: bool,
    /// keepalived's state on it (`MASTER`, `BACKUP`, `FAULT`); `None`: keepalived does not run.
    pub vrrp: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeFacts {
    pub name: String,
    pub site: String,
    pub role: Role,
    pub up: bool,
    /// An on-demand worker: not running is its resting state, no finding.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub on_demand: bool,
    /// Planned ingress rules (with a known remote) missing from the node's live rules.
    pub missing_rules: Vec<MissingRule>,
    /// The security group's default-deny counters (ingress + forward): before and after probing
    /// (`None` where the cloud has no such counter: OpenStack).
    pub drops_before: Option<u64>,
    pub drops_after: Option<u64>,
    /// Relays: the planned and the live MTU of the tunnel interface.
    pub planned_mtu: Option<u16>,
    pub live_mtu: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteFacts {
    pub name: String,
    /// The site's entry in `clouds.yaml` (openstack).
    #[serde(default)]
    pub cloud: Option<String>,
    pub underlay_mtu: u16,
    pub ports: Vec<PortFacts>,
    /// IP fragments the site's router dropped (the emulated cloud edge passes no fragments).
    pub fragments_before: Option<u64>,
    pub fragments_after: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortFacts {
    pub node: String,
    /// The switch port (local) or the Neutron port's ID (openstack).
    pub port: String,
    /// Planned allowed-address pairs missing from the port's live set.
    pub missing_pairs: Vec<Ipv4Net>,
    /// The cloud's own command that adds them by hand, where the provider has one (openstack).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by_hand: Option<String>,
    /// The port's "ip spoof" drop counter, before and after probing.
    pub spoof_before: Option<u64>,
    pub spoof_after: Option<u64>,
}

/// A planned rule the live security group lacks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MissingRule {
    /// The security group's cloud-side name.
    pub group: String,
    #[serde(flatten)]
    pub rule: SgRule,
    /// The cloud's own command that adds it by hand, where the provider has one (openstack).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by_hand: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TunnelFacts {
    pub node: String,
    pub peer: String,
    pub peer_public_ip: Option<Ipv4Addr>,
    /// Seconds since the latest handshake, `None` if none.
    pub handshake_age_s: Option<u64>,
    /// A small ping to the peer's tunnel address.
    pub ping_ok: bool,
    /// A ping of `live MTU − 28` bytes with don't-fragment set.
    pub df_size: Option<u16>,
    pub df_ok: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Probe {
    pub from: String,
    pub to: String,
    pub ok: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    NodeDown,
    DeviceMissing,
    NoHandshake,
    MissingRule,
    MissingAddressPair,
    MtuTooLarge,
    MtuDrift,
    Unreachable,
    /// A relay pair that could not fail over: its standby cannot take over, or both relays
    /// are active.
    PairNotReady,
}

/// One problem, in plain words, with what to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    pub kind: Kind,
    /// The node or site it is about.
    pub subject: String,
    pub message: String,
    pub fix: String,
}

/// `doctor --json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DoctorReport {
    pub format_version: u32,
    pub cluster: String,
    pub healthy: bool,
    pub findings: Vec<Finding>,
    pub facts: Facts,
}

const RESTORE: &str = "Run `hybridgrid up` to restore it.";

fn local_kind() -> ProviderKind {
    ProviderKind::Local
}

/// The fix for a missing rule: `up`, and the provider's command that adds it by hand.
pub(crate) fn rule_fix(m: &MissingRule) -> String {
    by_hand_fix(m.by_hand.as_deref())
}

/// The fix for a port's missing allowed-address pairs.
pub(crate) fn pair_fix(p: &PortFacts) -> String {
    by_hand_fix(p.by_hand.as_deref())
}

fn by_hand_fix(command: Option<&str>) -> String {
    command.map_or_else(
        || RESTORE.into(),
        |c| format!("Run `hybridgrid up` to restore it, or by hand: `{c}`"),
    )
}

/// The freshest handshake of `node`'s tunnel to `peer` seen in either reading (the probes in
/// between may have started one): what [`TunnelFacts::handshake_age_s`] holds.
pub fn freshest_handshake(
    before: &[crate::TunnelStatus],
    after: &[crate::TunnelStatus],
    node: &str,
    peer: &str,
) -> Option<u64> {
    let age = |st: &[crate::TunnelStatus]| {
        st.iter()
            .find(|t| t.node == node && t.peer == peer)
            .and_then(|t| t.handshake_age_s)
    };
    match (age(before), age(after)) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// What a provider measured of one node for `doctor` (nothing, by default: a cloud without
/// such a counter leaves it `None`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeMeasures {
    /// Planned ingress rules missing from the live ones (only kept for a running node).
    pub missing_rules: Vec<MissingRule>,
    pub drops_before: Option<u64>,
    pub drops_after: Option<u64>,
    pub live_mtu: Option<u16>,
}

/// Every planned node's facts, the same rows on every provider: the plan's words, whether it
/// runs (`up`), and what `measure` read of it.
pub fn node_facts(
    plan: &Plan,
    up: &BTreeSet<String>,
    mut measure: impl FnMut(&NodePlan) -> NodeMeasures,
) -> Vec<NodeFacts> {
    plan.nodes
        .iter()
        .map(|n| {
            let running = up.contains(&n.name);
            let m = measure(n);
            NodeFacts {
                name: n.name.clone(),
                site: n.site.clone(),
                role: n.role,
                up: running,
                on_demand: n.on_demand,
                missing_rules: if running { m.missing_rules } else { Vec::new() },
                drops_before: m.drops_before,
                drops_after: m.drops_after,
                planned_mtu: n.wireguard.as_ref().map(|w| w.mtu),
                live_mtu: m.live_mtu,
            }
        })
        .collect()
}

/// `udp 51820 from 198.51.100.100/32`
pub fn rule_text(rule: &SgRule) -> String {
    rule.match_text()
}

fn counter_text(what: &str, before: Option<u64>, after: Option<u64>) -> Option<String> {
    let after = after?;
    let delta = after.saturating_sub(before.unwrap_or(after));
    if delta > 0 {
        Some(format!("{what} rose by {delta} during the check"))
    } else if after > 0 {
        Some(format!("{what} shows {after}"))
    } else {
        None
    }
}

fn is_wireguard_rule(rule: &SgRule, port: u16) -> bool {
    rule.protocol == Protocol::Udp && rule.ports == Some((port, port))
}

/// The findings from the facts; pure. Causes first (a node down, a device missing, a rule, an
/// address pair, the MTU), then what they do not explain (a tunnel down, a site unreachable).
pub fn diagnose(f: &Facts) -> Vec<Finding> {
    let mut d = Diagnosis {
        f,
        out: Vec::new(),
        explained: BTreeSet::new(),
        pair_sites: BTreeSet::new(),
        mtu_nodes: BTreeSet::new(),
    };
    d.nodes_down();
    d.devices_missing();
    for n in f.nodes.iter().filter(|n| n.up) {
        d.missing_rules(n);
    }
    d.missing_pairs();
    d.relay_pairs();
    for n in f.nodes.iter().filter(|n| n.up) {
        d.mtu(n);
    }
    d.tunnels_unexplained();
    d.sites_unexplained();
    d.out
}

/// [`diagnose`] under way: the findings so far and what they explain.
struct Diagnosis<'f> {
    f: &'f Facts,
    out: Vec<Finding>,
    /// Tunnels (node, peer) a finding already explains.
    explained: BTreeSet<(String, String)>,
    /// Sites with a missing allowed-address pair.
    pair_sites: BTreeSet<&'f str>,
    /// Nodes with an MTU finding.
    mtu_nodes: BTreeSet<&'f str>,
}

impl<'f> Diagnosis<'f> {
    fn node(&self, name: &str) -> Option<&'f NodeFacts> {
        self.f.nodes.iter().find(|n| n.name == name)
    }

    fn is_down(&self, name: &str) -> bool {
        self.node(name).is_some_and(|n| !n.up)
    }

    fn push(&mut self, kind: Kind, subject: &str, message: String, fix: String) {
        self.out.push(Finding {
            kind,
            subject: subject.to_owned(),
            message,
            fix,
        });
    }

    fn nodes_down(&mut self) {
        for n in self.f.nodes.iter().filter(|n| !n.up && !n.on_demand) {
            self.push(
                Kind::NodeDown,
                &n.name,
                format!("{} ({}) is not running", n.name, n.site),
                "Run `hybridgrid up` to create it again.".into(),
            );
        }
    }

    /// A relay whose tunnel device is gone explains every tunnel of it.
    fn devices_missing(&mut self) {
        let f = self.f;
        for n in f
            .nodes
            .iter()
            .filter(|n| n.up && n.planned_mtu.is_some() && n.live_mtu.is_none())
        {
            self.push(
                Kind::DeviceMissing,
                &n.name,
                format!(
                    "{} has no WireGuard device wg0 (its daemon is not running): no tunnel of it \
                     works",
                    n.name
                ),
                "The node's supervisor brings it back within seconds; otherwise run `hybridgrid \
                 up`."
                    .into(),
            );
            for t in f
                .tunnels
                .iter()
                .filter(|t| t.node == n.name || t.peer == n.name)
            {
                self.explained.insert((t.node.clone(), t.peer.clone()));
            }
        }
    }

    /// Security-group rules: the WireGuard ones explain tunnels; the others are listed as such.
    fn missing_rules(&mut self, n: &'f NodeFacts) {
        let f = self.f;
        let drops = counter_text(
            &format!("{}'s ingress drop counter", n.name),
            n.drops_before,
            n.drops_after,
        );
        let evidence = drops
            .as_ref()
            .map(|d| format!(" ({d})"))
            .unwrap_or_default();
        for m in &n.missing_rules {
            let rule = &m.rule;
            let fix = rule_fix(m);
            let wg_peer = is_wireguard_rule(rule, f.tunnel_port)
                .then(|| {
                    f.tunnels.iter().find(|t| {
                        t.node == n.name
                            && t.peer_public_ip
                                .is_some_and(|ip| rule.remote == Remote::Cidr(Ipv4Net::from(ip)))
                    })
                })
                .flatten();
            let (kind, message) = match wg_peer {
                Some(t) if !tunnel_ok(t) => {
                    self.explained.insert((t.node.clone(), t.peer.clone()));
                    self.explained.insert((t.peer.clone(), t.node.clone()));
                    let message = format!(
                        "{} has no handshake with {}: {}'s security group lacks `{}`{evidence}",
                        n.name,
                        t.peer,
                        n.site,
                        rule_text(rule)
                    );
                    (Kind::NoHandshake, message)
                }
                Some(t) => {
                    let message = format!(
                        "{}'s security group lacks `{}` ({}); the tunnel to {} works only while \
                         connection tracking remembers {}'s own packets: it fails with a stateless \
                         group, a passive peer, or once the entry expires{evidence}",
                        n.site,
                        rule_text(rule),
                        rule.description,
                        t.peer,
                        n.name
                    );
                    (Kind::MissingRule, message)
                }
                None => {
                    let message = format!(
                        "{}'s security group on {} lacks `{}` ({}){evidence}",
                        n.site,
                        n.name,
                        rule_text(rule),
                        rule.description
                    );
                    (Kind::MissingRule, message)
                }
            };
            self.push(kind, &n.name, message, fix);
        }
    }

    fn missing_pairs(&mut self) {
        let f = self.f;
        for s in &f.sites {
            for p in &s.ports {
                let counter = counter_text("ip spoof", p.spoof_before, p.spoof_after)
                    .map(|c| format!(" (counter {c})"))
                    .unwrap_or_default();
                for pair in &p.missing_pairs {
                    self.pair_sites.insert(&s.name);
                    self.push(
                        Kind::MissingAddressPair,
                        &p.node,
                        format!(
                            "cross-site packets from {pair} are dropped at {}'s switch on {}'s \
                             port {}{counter}: the port lacks the allowed-address pair {pair}",
                            s.name, p.node, p.port
                        ),
                        pair_fix(p),
                    );
                }
            }
        }
    }

    /// The tunnel's MTU against the underlay, and don't-fragment pings that failed.
    fn mtu(&mut self, n: &'f NodeFacts) {
        let f = self.f;
        let (Some(live), Some(site)) = (n.live_mtu, f.sites.iter().find(|s| s.name == n.site))
        else {
            return;
        };
        let max = site.underlay_mtu.saturating_sub(WG_OVERHEAD);
        let failed: Vec<&str> = f
            .tunnels
            .iter()
            .filter(|t| t.node == n.name && t.ping_ok && !t.df_ok)
            .map(|t| t.peer.as_str())
            .collect();
        if live > max {
            self.mtu_nodes.insert(&n.name);
            let (message, fix) = mtu_too_large(n, site, live, max, &failed);
            self.push(Kind::MtuTooLarge, &n.name, message, fix);
        } else if let Some(p) = n.planned_mtu.filter(|p| *p != live) {
            self.mtu_nodes.insert(&n.name);
            let message = format!("wg0 MTU on {} is {live}, the plan says {p}", n.name);
            self.push(Kind::MtuDrift, &n.name, message, RESTORE.into());
        } else if !failed.is_empty() {
            self.mtu_nodes.insert(&n.name);
            let message = format!(
                "{}-byte packets with DF set from {} to {} fail although wg0 MTU {live} fits \
                 the underlay {}: the path carries less than the site's underlay MTU says",
                live.saturating_sub(28),
                n.name,
                failed.join(", "),
                site.underlay_mtu
            );
            let fix = "Set the site's `underlay_mtu` to what the network really carries and keep \
                       `tunnel.mtu: auto`.";
            self.push(Kind::MtuTooLarge, &n.name, message, fix.into());
        }
    }

    /// Tunnels down without a cause found above.
    fn tunnels_unexplained(&mut self) {
        let f = self.f;
        for t in &f.tunnels {
            if tunnel_ok(t)
                || self.explained.contains(&(t.node.clone(), t.peer.clone()))
                || self.is_down(&t.node)
                || self.is_down(&t.peer)
            {
                continue;
            }
            let hs = match t.handshake_age_s {
                None => "never had a handshake".to_owned(),
                Some(a) => format!("last had a handshake {a}s ago"),
            };
            let rules = if f.stateless_security_groups {
                ""
            } else {
                ", and both security groups have their rules"
            };
            let peer_ip = t
                .peer_public_ip
                .map_or_else(|| "its public IP".to_owned(), |i| i.to_string());
            self.push(
                Kind::NoHandshake,
                &t.node,
                format!(
                    "{} has no working tunnel to {}: it {hs}{rules}",
                    t.node, t.peer
                ),
                format!(
                    "Check that UDP {} reaches {} at {peer_ip} (`hybridgrid exec -f FILE {} -- wg \
                     show`).",
                    f.tunnel_port, t.peer, t.node
                ),
            );
        }
    }

    /// Cross-site probes that failed with nothing above to explain them.
    fn sites_unexplained(&mut self) {
        if !(self.pair_sites.is_empty() && self.explained.is_empty() && self.mtu_nodes.is_empty()) {
            return;
        }
        for p in self.f.cross_site.iter().filter(|p| !p.ok) {
            if self.is_down(&p.from) || self.is_down(&p.to) {
                continue;
            }
            self.push(
                Kind::Unreachable,
                &p.from,
                format!("{} cannot reach {}, and no cause was found", p.from, p.to),
                "Run `hybridgrid status` and compare the routes (`ip route`) on both sides.".into(),
            );
        }
    }
}

/// The finding for a tunnel MTU over what the underlay carries: its message and fix.
fn mtu_too_large(
    n: &NodeFacts,
    site: &SiteFacts,
    live: u16,
    max: u16,
    failed: &[&str],
) -> (String, String) {
    let mut msg = format!(
        "wg0 MTU {live} on {} exceeds the underlay {} − {WG_OVERHEAD} = {max}: {}-byte packets \
         with DF set fail",
        n.name,
        site.underlay_mtu,
        live.saturating_sub(28)
    );
    if !failed.is_empty() {
        msg.push_str(&format!(" (ping to {} failed)", failed.join(", ")));
    }
    if let Some(c) = counter_text(
        &format!("{}'s router fragment drops", site.name),
        site.fragments_before,
        site.fragments_after,
    ) {
        msg.push_str(&format!("; {c}"));
    }
    let fix = match n.planned_mtu {
        Some(p) if p <= max => {
            format!(
                "The plan says {p}: run `hybridgrid up` to restore it (keep `tunnel.mtu: auto`)."
            )
        }
        _ => format!("Set `tunnel.mtu: auto` (or at most {max}) and run `hybridgrid up`."),
    };
    (msg, fix)
}

pub(crate) fn tunnel_ok(t: &TunnelFacts) -> bool {
    t.ping_ok && t.handshake_age_s.is_some_and(|a| a < HANDSHAKE_STALE_S)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn wg_rule(ip: &str) -> MissingRule {
        MissingRule {
            group: "demo-giessen-gateway".into(),
            rule: SgRule {
                protocol: Protocol::Udp,
                ports: Some((51820, 51820)),
                remote: Remote::Cidr(format!("{ip}/32").parse().unwrap()),
                description: "WireGuard from bielefeld-master".into(),
            },
            by_hand: None,
        }
    }

    fn node(name: &str, site: &str, role: Role) -> NodeFacts {
        NodeFacts {
            name: name.into(),
            site: site.into(),
            role,
            up: true,
            on_demand: false,
            missing_rules: Vec::new(),
            drops_before: Some(0),
            drops_after: Some(0),
            planned_mtu: role.is_relay().then_some(1370),
            live_mtu: role.is_relay().then_some(1370),
        }
    }

    fn tunnel(node: &str, peer: &str, ip: &str, ok: bool) -> TunnelFacts {
        TunnelFacts {
            node: node.into(),
            peer: peer.into(),
            peer_public_ip: Some(ip.parse().unwrap()),
            handshake_age_s: ok.then_some(5),
            ping_ok: ok,
            df_size: Some(1342),
            df_ok: ok,
        }
    }

    fn healthy() -> Facts {
        Facts {
            cluster: "demo".into(),
            provider: ProviderKind::Local,
            tunnel_port: 51820,
            stateless_security_groups: true,
            nodes: vec![
                node("bielefeld-master", "bielefeld", Role::Master),
                node("giessen-gw", "giessen", Role::Gateway),
                node("giessen-worker-1", "giessen", Role::Worker),
            ],
            sites: ["bielefeld", "giessen"]
                .iter()
                .map(|s| SiteFacts {
                    name: (*s).into(),
                    cloud: None,
                    underlay_mtu: 1450,
                    ports: vec![PortFacts {
                        node: format!("{s}-x"),
                        port: "p-5".into(),
                        missing_pairs: Vec::new(),
                        by_hand: None,
                        spoof_before: Some(0),
                        spoof_after: Some(0),
                    }],
                    fragments_before: Some(0),
                    fragments_after: Some(0),
                })
                .collect(),
            tunnels: vec![
                tunnel("bielefeld-master", "giessen-gw", "198.51.100.101", true),
                tunnel("giessen-gw", "bielefeld-master", "198.51.100.100", true),
            ],
            cross_site: vec![Probe {
                from: "a".into(),
                to: "b".into(),
                ok: true,
            }],
            pair_relays: Vec::new(),
        }
    }

    fn pair_relay(node: &str, holds: bool, vrrp: Option<&str>) -> PairRelayFacts {
        PairRelayFacts {
            node: node.into(),
            pair: "giessen-gw".into(),
            holds_address: holds,
            vrrp: vrrp.map(str::to_owned),
        }
    }

    #[test]
    fn a_pair_with_a_standby_in_backup_is_ready() {
        let mut f = healthy();
        f.pair_relays = vec![
            pair_relay("giessen-gw-a", true, Some("MASTER")),
            pair_relay("giessen-gw-b", false, Some("BACKUP")),
        ];
        assert_eq!(diagnose(&f), Vec::new());
    }

    #[test]
    fn a_standby_without_keepalived_or_in_fault_could_not_take_over() {
        for (vrrp, why) in [
            (None, "keepalived does not run"),
            (Some("FAULT"), "FAULT state"),
        ] {
            let mut f = healthy();
            f.pair_relays = vec![
                pair_relay("giessen-gw-a", true, Some("MASTER")),
                pair_relay("giessen-gw-b", false, vrrp),
            ];
            let found = diagnose(&f);
            assert_eq!(found.len(), 1, "{found:#?}");
            assert_eq!(found[0].kind, Kind::PairNotReady);
            assert_eq!(found[0].subject, "giessen-gw-b");
            assert!(
                found[0].message.contains("could not take over") && found[0].message.contains(why),
                "{}",
                found[0].message
            );
        }
    }

    #[test]
    fn a_pair_whose_relays_both_stand_by_has_no_way_out() {
        let mut f = healthy();
        f.pair_relays = vec![
            pair_relay("giessen-gw-a", false, Some("BACKUP")),
            pair_relay("giessen-gw-b", false, Some("BACKUP")),
        ];
        let found = diagnose(&f);
        assert_eq!(found.len(), 1, "{found:#?}");
        assert_eq!(found[0].subject, "giessen-gw");
        assert!(
            found[0].message.contains("no relay of pair"),
            "{}",
            found[0].message
        );
    }

    #[test]
    fn both_relays_holding_the_address_names_vrrp() {
        let mut f = healthy();
        f.pair_relays = vec![
            pair_relay("giessen-gw-a", true, Some("MASTER")),
            pair_relay("giessen-gw-b", true, Some("MASTER")),
        ];
        let found = diagnose(&f);
        assert_eq!(found.len(), 1, "{found:#?}");
        assert_eq!(found[0].subject, "giessen-gw");
        assert!(
            found[0].message.contains("IP protocol 112"),
            "{}",
            found[0].message
        );
    }

    #[test]
    fn a_healthy_cluster_has_no_findings() {
        assert_eq!(diagnose(&healthy()), Vec::new());
    }

    #[test]
    fn an_asleep_on_demand_worker_is_no_finding_and_a_dead_static_one_is() {
        let mut f = healthy();
        let mut asleep = node("giessen-od-1", "giessen", Role::Worker);
        asleep.up = false;
        asleep.on_demand = true;
        f.nodes.push(asleep);
        assert_eq!(diagnose(&f), Vec::new());
        f.nodes.last_mut().unwrap().on_demand = false;
        assert_eq!(diagnose(&f)[0].kind, Kind::NodeDown);
    }

    #[test]
    fn missing_wireguard_rule_explains_the_missing_handshake() {
        let mut f = healthy();
        f.nodes[1].missing_rules = vec![wg_rule("198.51.100.100")];
        f.nodes[1].drops_after = Some(7);
        f.tunnels = vec![
            tunnel("bielefeld-master", "giessen-gw", "198.51.100.101", false),
            tunnel("giessen-gw", "bielefeld-master", "198.51.100.100", false),
        ];
        f.cross_site[0].ok = false;
        let d = diagnose(&f);
        assert_eq!(d.len(), 1, "{d:#?}");
        assert_eq!(d[0].kind, Kind::NoHandshake);
        assert_eq!(
            d[0].message,
            "giessen-gw has no handshake with bielefeld-master: giessen's security group lacks \
             `udp 51820 from 198.51.100.100/32` (giessen-gw's ingress drop counter rose by 7 \
             during the check)"
        );
        assert!(d[0].fix.contains("hybridgrid up"));
    }

    #[test]
    fn where_the_provider_has_a_command_by_hand_the_fix_names_it() {
        let mut f = healthy();
        f.provider = ProviderKind::OpenStack;
        f.stateless_security_groups = false;
        let mut rule = wg_rule("198.51.100.100");
        rule.by_hand = Some("openstack … security group rule create …".into());
        f.nodes[1].missing_rules = vec![rule];
        f.sites[1].ports[0] = PortFacts {
            node: "giessen-gw".into(),
            port: "8c1f".into(),
            missing_pairs: vec!["10.10.0.0/24".parse().unwrap()],
            by_hand: Some("openstack … port set …".into()),
            spoof_before: None,
            spoof_after: None,
        };
        f.tunnels = vec![
            tunnel("bielefeld-master", "giessen-gw", "198.51.100.101", false),
            tunnel("giessen-gw", "bielefeld-master", "198.51.100.100", false),
        ];
        let d = diagnose(&f);
        assert_eq!(d.len(), 2, "{d:#?}");
        assert_eq!(d[0].kind, Kind::NoHandshake);
        assert_eq!(
            d[0].fix,
            "Run `hybridgrid up` to restore it, or by hand: `openstack … security group rule \
             create …`"
        );
        assert_eq!(d[1].kind, Kind::MissingAddressPair);
        assert_eq!(
            d[1].fix,
            "Run `hybridgrid up` to restore it, or by hand: `openstack … port set …`"
        );
        // No counters on openstack: the message says what is missing, without a counter.
        assert!(!d[1].message.contains("counter"), "{}", d[1].message);
    }

    #[test]
    fn missing_rule_with_a_working_tunnel_warns_about_conntrack() {
        let mut f = healthy();
        f.nodes[1].missing_rules = vec![wg_rule("198.51.100.100")];
        let d = diagnose(&f);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].kind, Kind::MissingRule);
        assert!(
            d[0].message.contains("connection tracking"),
            "{}",
            d[0].message
        );
    }

    #[test]
    fn missing_pair_names_the_switch_port_and_counter() {
        let mut f = healthy();
        f.sites[1].ports[0] = PortFacts {
            node: "giessen-gw".into(),
            port: "p-5".into(),
            missing_pairs: vec!["10.10.0.0/24".parse().unwrap()],
            by_hand: None,
            spoof_before: Some(2),
            spoof_after: Some(8),
        };
        f.cross_site[0].ok = false;
        let d = diagnose(&f);
        assert_eq!(d.len(), 1, "{d:#?}");
        assert_eq!(
            d[0].message,
            "cross-site packets from 10.10.0.0/24 are dropped at giessen's switch on \
             giessen-gw's port p-5 (counter ip spoof rose by 6 during the check): the port \
             lacks the allowed-address pair 10.10.0.0/24"
        );
    }

    #[test]
    fn tunnel_mtu_above_the_underlay() {
        let mut f = healthy();
        f.nodes[1].live_mtu = Some(1500);
        f.tunnels[1].df_ok = false;
        f.tunnels[1].df_size = Some(1472);
        f.sites[1].fragments_after = Some(4);
        let d = diagnose(&f);
        assert_eq!(d.len(), 1, "{d:#?}");
        assert_eq!(d[0].kind, Kind::MtuTooLarge);
        assert!(
            d[0].message.starts_with(
                "wg0 MTU 1500 on giessen-gw exceeds the underlay 1450 − 80 = 1370: 1472-byte \
                 packets with DF set fail (ping to bielefeld-master failed)"
            ),
            "{}",
            d[0].message
        );
        assert!(d[0].fix.contains("hybridgrid up"));
        // The plan itself too large (e.g. a hand-set MTU): the fix is the file.
        f.nodes[1].planned_mtu = Some(1500);
        assert!(diagnose(&f)[0].fix.contains("tunnel.mtu: auto"));
    }

    #[test]
    fn a_missing_tunnel_device_is_named_and_explains_its_tunnels() {
        let mut f = healthy();
        f.nodes[1].live_mtu = None;
        f.tunnels = vec![
            tunnel("bielefeld-master", "giessen-gw", "198.51.100.101", false),
            tunnel("giessen-gw", "bielefeld-master", "198.51.100.100", false),
        ];
        let d = diagnose(&f);
        assert_eq!(d.len(), 1, "{d:#?}");
        assert_eq!(d[0].kind, Kind::DeviceMissing);
        assert!(
            d[0].message
                .starts_with("giessen-gw has no WireGuard device wg0")
        );
    }

    #[test]
    fn down_nodes_and_unexplained_tunnels() {
        let mut f = healthy();
        f.nodes[2].up = false;
        f.tunnels[0].handshake_age_s = None;
        f.tunnels[0].ping_ok = false;
        let d = diagnose(&f);
        let kinds: Vec<Kind> = d.iter().map(|x| x.kind).collect();
        assert_eq!(kinds, vec![Kind::NodeDown, Kind::NoHandshake], "{d:#?}");
    }
}
