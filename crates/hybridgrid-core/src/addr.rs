//! Deterministic address allocation. Pure arithmetic on the validated model: the same file gives the
//! same addresses on every run and every machine, so plans, rendered files and the running cluster
//! agree without a database.
//!
//! Site subnet layout (host offsets from the network address):
//! - `.1`: the site router (OpenStack's default subnet gateway);
//! - `.2`–`.4`: reserved for the cloud's own ports (DHCP, metadata) and, in the local provider, the
//!   site's data store;
//! - `.5`: the site's relay node (the master on the master site, the VPN gateway elsewhere);
//! - `.6` onward: workers, in file order of worker groups;
//! - with `gateway.standby`, the last three hosts: the pair's virtual address (the workers' next
//!   hop, held by the active relay), then its two relays (`.252`, `.253`, `.254` in a /24). At
//!   the top, so that turning `standby` on moves no worker and not the master.
//!
//! Tunnel (overlay) layout: the master is `.1`, then each other site's gateway in file order.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

/// The local provider's emulated internet (TEST-NET-2): its routers' and floating IPs. A site
/// subnet there would be unreachable behind the emulated NAT.
pub const LOCAL_INTERNET: Ipv4Net = match Ipv4Net::new(Ipv4Addr::new(198, 51, 100, 0), 24) {
    Ok(n) => n,
    Err(_) => panic!("valid constant"),
};

pub const ROUTER_OFFSET: u32 = 1;
pub const DATA_STORE_OFFSET: u32 = 4;
pub const RELAY_OFFSET: u32 = 5;
pub const FIRST_WORKER_OFFSET: u32 = 6;

/// The address `offset` hosts above the network address, if it is a usable host address.
pub fn host(net: Ipv4Net, offset: u32) -> Option<Ipv4Addr> {
    let base = u32::from(net.network());
    let addr = base.checked_add(offset)?;
    // The broadcast address is not a host; a /31 or /32 has no room for our layout anyway.
    (addr < u32::from(net.broadcast()) && offset > 0).then(|| Ipv4Addr::from(addr))
}

/// The addresses a relay pair takes at the top of its site's subnet.
pub const PAIR_HOSTS: u32 = 3;

/// How many workers fit in a site subnet (below the relay pair's addresses if it has one).
pub fn worker_capacity(net: Ipv4Net, standby: bool) -> u64 {
    let hosts_below_broadcast = (1u64 << (32 - net.prefix_len())).saturating_sub(1);
    let pair = if standby { u64::from(PAIR_HOSTS) } else { 0 };
    hosts_below_broadcast.saturating_sub(u64::from(FIRST_WORKER_OFFSET) + pair)
}

/// The address `n` hosts below the broadcast address, if it is above the reserved low hosts.
fn below_broadcast(net: Ipv4Net, n: u32) -> Option<Ipv4Addr> {
    let addr = u32::from(net.broadcast()).checked_sub(n)?;
    (addr > u32::from(net.network()) + RELAY_OFFSET).then(|| Ipv4Addr::from(addr))
}

/// A relay pair's virtual address: the active relay's, the workers' next hop.
pub fn pair_vip(subnet: Ipv4Net) -> Option<Ipv4Addr> {
    below_broadcast(subnet, PAIR_HOSTS)
}

/// The LAN address of a relay pair's `member` (0 or 1).
pub fn pair_relay_ip(subnet: Ipv4Net, member: u32) -> Option<Ipv4Addr> {
    match member {
        0 | 1 => below_broadcast(subnet, PAIR_HOSTS - 1 - member),
        _ => None,
    }
}

/// How many tunnel addresses (gateways) fit in the overlay.
pub fn tunnel_capacity(net: Ipv4Net) -> u64 {
    (1u64 << (32 - net.prefix_len())).saturating_sub(2)
}

pub fn router_ip(subnet: Ipv4Net) -> Option<Ipv4Addr> {
    host(subnet, ROUTER_OFFSET)
}

pub fn relay_ip(subnet: Ipv4Net) -> Option<Ipv4Addr> {
    host(subnet, RELAY_OFFSET)
}

pub fn data_store_ip(subnet: Ipv4Net) -> Option<Ipv4Addr> {
    host(subnet, DATA_STORE_OFFSET)
}

/// The `index`-th worker of a site (0-based across all its worker groups).
pub fn worker_ip(subnet: Ipv4Net, index: u32) -> Option<Ipv4Addr> {
    host(subnet, FIRST_WORKER_OFFSET.checked_add(index)?)
}

/// Tunnel address of the relay with rank `rank` (0 = the master).
pub fn tunnel_ip(overlay: Ipv4Net, rank: u32) -> Option<Ipv4Addr> {
    host(overlay, rank.checked_add(1)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_of_a_slash_24() {
        let net: Ipv4Net = "10.20.0.0/24".parse().unwrap();
        assert_eq!(router_ip(net), Some(Ipv4Addr::new(10, 20, 0, 1)));
        assert_eq!(relay_ip(net), Some(Ipv4Addr::new(10, 20, 0, 5)));
        assert_eq!(worker_ip(net, 0), Some(Ipv4Addr::new(10, 20, 0, 6)));
        assert_eq!(worker_ip(net, 248), Some(Ipv4Addr::new(10, 20, 0, 254)));
        assert_eq!(
            worker_ip(net, 249),
            None,
            "the broadcast address is no worker"
        );
        assert_eq!(worker_capacity(net, false), 249);
        assert_eq!(worker_capacity(net, true), 246);
        assert_eq!(pair_vip(net), Some(Ipv4Addr::new(10, 20, 0, 252)));
        assert_eq!(pair_relay_ip(net, 0), Some(Ipv4Addr::new(10, 20, 0, 253)));
        assert_eq!(pair_relay_ip(net, 1), Some(Ipv4Addr::new(10, 20, 0, 254)));
        assert_eq!(pair_relay_ip(net, 2), None);
        assert_eq!(
            worker_ip(net, 245),
            Some(Ipv4Addr::new(10, 20, 0, 251)),
            "the last worker a standby site holds sits below the pair"
        );
    }

    #[test]
    fn small_subnets_have_small_capacity() {
        let net: Ipv4Net = "10.20.0.0/29".parse().unwrap();
        assert_eq!(worker_capacity(net, false), 1);
        assert_eq!(worker_capacity(net, true), 0);
        assert_eq!(
            pair_vip(net),
            None,
            "a /29 has no room for a pair above its relay"
        );
        assert_eq!(worker_ip(net, 0), Some(Ipv4Addr::new(10, 20, 0, 6)));
        assert_eq!(worker_ip(net, 1), None);
        let overlay: Ipv4Net = "10.0.0.0/30".parse().unwrap();
        assert_eq!(tunnel_capacity(overlay), 2);
        assert_eq!(tunnel_ip(overlay, 1), Some(Ipv4Addr::new(10, 0, 0, 2)));
        assert_eq!(tunnel_ip(overlay, 2), None);
    }
}
