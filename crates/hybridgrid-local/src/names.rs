//! Names and addresses the local provider allocates; pure functions of the cluster and the ledger.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

/// The emulated internet of each cluster (TEST-NET-2); validation keeps site subnets out of it.
pub const INTERNET: Ipv4Net = hybridgrid_core::addr::LOCAL_INTERNET;
/// Routers' public addresses are `.10 + site index`; floating IPs `.100 + slot`.
const ROUTER_BASE: u8 = 10;
const FLOATING_BASE: u8 = 100;
pub const MAX_SITES: u32 = (FLOATING_BASE - ROUTER_BASE) as u32;
pub const MAX_FLOATING: u32 = (254 - FLOATING_BASE as u32) + 1;
/// Bridge name inside switch and internet namespaces.
pub const BRIDGE: &str = "br0";
/// Node and router interface towards the site network.
pub const LAN_IF: &str = "eth0";
/// Router interface towards the internet.
pub const WAN_IF: &str = "eth1";
/// Switch port of the router.
pub const ROUTER_PORT: &str = "p-r";

pub fn prefix(cluster: &str) -> String {
    format!("hg-{cluster}-")
}
pub fn ns_inet(cluster: &str) -> String {
    format!("hg-{cluster}-inet")
}
pub fn ns_switch(cluster: &str, site: &str) -> String {
    format!("hg-{cluster}-{site}-sw")
}
pub fn ns_router(cluster: &str, site: &str) -> String {
    format!("hg-{cluster}-{site}-rt")
}
pub fn ns_node(cluster: &str, node: &str) -> String {
    format!("hg-{cluster}-{node}")
}

pub fn router_public_ip(site_index: u32) -> Option<Ipv4Addr> {
    (site_index < MAX_SITES).then(|| Ipv4Addr::new(198, 51, 100, ROUTER_BASE + site_index as u8))
}

pub fn floating_ip(slot: u32) -> Option<Ipv4Addr> {
    (slot < MAX_FLOATING).then(|| Ipv4Addr::new(198, 51, 100, FLOATING_BASE + slot as u8))
}

/// The router's port in the internet namespace.
pub fn inet_port(site_index: u32) -> String {
    format!("r-{site_index}")
}

/// The node's port on the site switch: `p-<host offset>` (unique in the subnet, fits 15 chars).
pub fn node_port(subnet: Ipv4Net, lan_ip: Ipv4Addr) -> String {
    let offset = u32::from(lan_ip).wrapping_sub(u32::from(subnet.network()));
    format!("p-{offset}")
}

/// A stable, locally administered MAC from the node's LAN address: port security needs to know it.
pub fn node_mac(lan_ip: Ipv4Addr) -> String {
    let [a, b, c, d] = lan_ip.octets();
    format!("02:68:{a:02x}:{b:02x}:{c:02x}:{d:02x}")
}

/// The `inet` nftables table of a node's security group, in the node's namespace.
pub const SG_TABLE: &str = "hg_sg";
/// The chain of that table that holds the group's rules (the hooks jump to it).
pub const SG_CHAIN: &str = "rules";
/// The `bridge` nftables table of a site switch's port security, in the switch's namespace.
pub const PORTSEC_TABLE: &str = "hg_portsec";

/// The nftables set of a switch port's allowed-address pairs; `port_chain` is the port's chain
/// (its name with `_` for `-`).
pub fn aap_set(port_chain: &str) -> String {
    format!("aap_{port_chain}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_linux_limits() {
        let subnet: Ipv4Net = "10.20.0.0/16".parse().unwrap();
        assert_eq!(
            node_port(subnet, Ipv4Addr::new(10, 20, 255, 254)),
            "p-65534"
        );
        assert_eq!(node_mac(Ipv4Addr::new(10, 20, 0, 5)), "02:68:0a:14:00:05");
        assert_eq!(router_public_ip(0), Some(Ipv4Addr::new(198, 51, 100, 10)));
        assert_eq!(floating_ip(154), Some(Ipv4Addr::new(198, 51, 100, 254)));
        assert_eq!(floating_ip(155), None);
        assert_eq!(router_public_ip(MAX_SITES), None);
    }
}
