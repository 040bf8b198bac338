//! A relay pair's VRRP configuration (keepalived), pure: what the agent writes on each relay of a
//! pair and `render` shows. The two relays agree which of them holds the site's virtual address;
//! the active one also sends its own traffic from it, so the peers see the pair's one public IP.
//!
//! Choices, each for the failover budget (≤ 5 s from a relay's death to traffic through its
//! partner): VRRPv3 with adverts every 0.5 s (a dead relay is noticed after ~3 × 0.5 s plus
//! skew); both start as backup and `nopreempt`, so a relay that returns does not take the role
//! back (a second outage); unicast adverts between the two (clouds filter multicast); a relay
//! whose data path is broken puts itself in FAULT through a file its agent writes (no script to
//! run every second), and its partner takes over; the active relay repeats its gratuitous ARP
//! every second, so nothing keeps sending to the relay that gave the address up.

use crate::node::{RelayPair, Route};
use std::fmt::Write as _;

/// Where a relay's agent writes its health for keepalived (`0`: healthy), in its state folder.
pub const HEALTH_FILE: &str = "relay-health";

/// The UDP port a pair's relays tell each other every second whether they hold the virtual
/// address: what ends a split brain when VRRP between them is lost (the higher address yields).
pub const HEARTBEAT_PORT: u16 = 51821;

/// Seconds between VRRP adverts.
pub const ADVERT_INTERVAL: &str = "0.5";

/// What the agent's node supplies beside the plan's pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VrrpNode<'a> {
    /// This relay's name.
    pub name: &'a str,
    /// The LAN interface (`eth0` on the local provider, the server's on openstack).
    pub lan_if: &'a str,
    /// The file the agent writes the relay's health to: `0` healthy, anything else FAULT.
    pub health_file: &'a str,
    /// The program keepalived runs on each change of state (it appends type, name, state and
    /// priority).
    pub notify: &'a str,
}

/// keepalived's configuration for one relay of a pair.
pub fn keepalived_conf(pair: &RelayPair, node: &VrrpNode<'_>) -> String {
    let instance = pair.identity.replace('-', "_");
    let vip = pair.vip;
    let (router, vip_addr, lan_if) = (pair.router_ip, vip.addr(), node.lan_if);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# hybridgrid: relay pair {} ({} with {}), written by the node agent.",
        pair.identity, node.name, pair.partner
    );
    s.push_str("global_defs {\n");
    let _ = writeln!(s, "    router_id {}", node.name);
    s.push_str("    vrrp_version 3\n    enable_script_security\n    script_user root\n}\n\n");
    s.push_str("vrrp_track_file relay_health {\n");
    let _ = writeln!(s, "    file {}", node.health_file);
    s.push_str("}\n\n");
    let _ = writeln!(s, "vrrp_instance {instance} {{");
    s.push_str("    state BACKUP\n    nopreempt\n    priority 100\n");
    let _ = writeln!(s, "    interface {lan_if}");
    let _ = writeln!(s, "    virtual_router_id {}", pair.router_id);
    let _ = writeln!(s, "    advert_int {ADVERT_INTERVAL}");
    // The active relay says every second where the address is: a router or worker that still
    // sends to the other relay (it held the address a moment in a split brain, and its port
    // drops what it would forward with a foreign source) learns the way back within a second.
    s.push_str("    garp_master_refresh 1\n    garp_master_refresh_repeat 1\n");
    let _ = writeln!(s, "    unicast_src_ip {}", pair.lan_ip);
    let _ = writeln!(
        s,
        "    unicast_peer {{\n        {}\n    }}",
        pair.partner_ip
    );
    let _ = writeln!(
        s,
        "    virtual_ipaddress {{\n        {vip} dev {lan_if}\n    }}"
    );
    // The internet in two halves: more specific than the default route, present only while
    // this relay is active, so its tunnel's datagrams leave from the pair's address.
    s.push_str("    virtual_routes {\n");
    for half in ["0.0.0.0/1", "128.0.0.0/1"] {
        let _ = writeln!(s, "        {half} via {router} dev {lan_if} src {vip_addr}");
    }
    s.push_str("    }\n");
    s.push_str("    track_file {\n        relay_health weight 0\n    }\n");
    let _ = writeln!(s, "    notify \"{}\"", node.notify);
    s.push_str("}\n");
    s
}

/// A pair relay's routes while it is the standby: its tunnel device has no peers, so what it
/// would send through the tunnel goes to the active relay (the virtual address) instead, like a
/// worker's. Its own probes and the replies to others' reach across sites that way.
pub fn standby_routes(routes: &[Route], pair: &RelayPair) -> Vec<Route> {
    routes
        .iter()
        .map(|r| match r.device {
            Some(_) => Route {
                destination: r.destination,
                via: Some(pair.vip.addr()),
                device: None,
                src: None,
            },
            None => r.clone(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    #[test]
    fn both_relays_start_as_backup_and_never_preempt() {
        let pair = RelayPair {
            identity: "giessen-gw".into(),
            vip: "10.20.0.252/24".parse().unwrap_or_default(),
            lan_ip: Ipv4Addr::new(10, 20, 0, 253),
            partner: "giessen-gw-b".into(),
            partner_ip: Ipv4Addr::new(10, 20, 0, 254),
            router_id: 2,
            router_ip: Ipv4Addr::new(10, 20, 0, 1),
        };
        let text = keepalived_conf(
            &pair,
            &VrrpNode {
                name: "giessen-gw-a",
                lan_if: "eth0",
                health_file: "/run/hybridgrid/relay-health",
                notify: "/usr/local/bin/hybridgrid-agent relay-state",
            },
        );
        for line in [
            "state BACKUP",
            "nopreempt",
            "vrrp_version 3",
            "advert_int 0.5",
            "unicast_src_ip 10.20.0.253",
            "10.20.0.254",
            "10.20.0.252/24 dev eth0",
            "0.0.0.0/1 via 10.20.0.1 dev eth0 src 10.20.0.252",
            "relay_health weight 0",
        ] {
            assert!(text.contains(line), "no `{line}` in:\n{text}");
        }
    }
}
