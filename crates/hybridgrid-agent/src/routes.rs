//! The kernel's IPv4 routes as the agent compares them with the planned ones ([`LiveRoutes`]):
//! read from `/proc/net/route` (no process: the supervisor's one-second look, and the periodic
//! apply of a node whose routes name no source address, i.e. every node but a relay), or from
//! `ip -j route show` where a planned route names a source address, which `/proc/net/route` does
//! not show (a relay's tunnel routes).

use std::net::Ipv4Addr;
use std::path::PathBuf;

use hybridgrid_core::plan::Route;
use ipnet::Ipv4Net;
use serde::Deserialize;

use crate::{AgentError, sys};

/// The main table, read the cheapest way that shows what the planned routes name.
#[derive(Debug)]
pub enum LiveRoutes {
    Proc(Vec<ProcRoute>),
    Ip(Vec<IpRoute>),
}

impl LiveRoutes {
    /// The table as `wanted` needs it: with source addresses (`ip`) only where one names one.
    pub fn read(wanted: &[Route]) -> Result<Self, AgentError> {
        if wanted.iter().any(|r| r.src.is_some()) {
            let text = sys::run("ip", &["-j", "-4", "route", "show"])?;
            let routes = serde_json::from_str(&text).map_err(|source| AgentError::Json {
                path: PathBuf::from("ip -j route show"),
                source,
            })?;
            return Ok(LiveRoutes::Ip(routes));
        }
        let table = std::fs::read_to_string("/proc/net/route")
            .map_err(AgentError::io("/proc/net/route"))?;
        Ok(LiveRoutes::from_proc(&table))
    }

    /// `/proc/net/route`'s text, parsed.
    pub fn from_proc(table: &str) -> Self {
        LiveRoutes::Proc(table.lines().skip(1).filter_map(ProcRoute::parse).collect())
    }

    /// Whether the table has `r`: destination and prefix, and the next hop, device and source
    /// where `r` names them (the source only where the table shows it).
    pub fn has(&self, r: &Route) -> bool {
        match self {
            LiveRoutes::Proc(live) => live.iter().any(|l| {
                l.is_for(r.destination)
                    && r.via.is_none_or(|v| l.gateway == v)
                    && r.device.as_ref().is_none_or(|d| &l.iface == d)
            }),
            LiveRoutes::Ip(live) => live.iter().any(|l| l.matches(r)),
        }
    }

    /// The destinations of `/proc/net/route`'s text, the default route left out (as `ip route`
    /// names it `default`, not a network).
    pub fn destinations_in_proc(table: &str) -> Vec<Ipv4Net> {
        table
            .lines()
            .skip(1)
            .filter_map(ProcRoute::parse)
            .filter(|r| r.prefix > 0)
            .filter_map(|r| Ipv4Net::new(r.dst, r.prefix).ok())
            .collect()
    }

    /// Whether the table has a route to `destination`, whatever its next hop.
    pub fn has_destination(&self, destination: Ipv4Net) -> bool {
        match self {
            LiveRoutes::Proc(live) => live.iter().any(|l| l.is_for(destination)),
            LiveRoutes::Ip(live) => live.iter().any(|l| l.dst == destination.to_string()),
        }
    }
}

/// One line of `/proc/net/route`.
#[derive(Debug)]
pub struct ProcRoute {
    iface: String,
    dst: Ipv4Addr,
    gateway: Ipv4Addr,
    prefix: u8,
}

impl ProcRoute {
    pub fn parse(line: &str) -> Option<ProcRoute> {
        let f: Vec<&str> = line.split_whitespace().collect();
        // Iface Destination Gateway Flags RefCnt Use Metric Mask ...
        let (iface, dst, gateway, mask) = (f.first()?, f.get(1)?, f.get(2)?, f.get(7)?);
        Some(ProcRoute {
            iface: (*iface).to_owned(),
            dst: addr(dst)?,
            gateway: addr(gateway)?,
            prefix: u8::try_from(addr(mask)?.to_bits().count_ones()).ok()?,
        })
    }

    fn is_for(&self, destination: Ipv4Net) -> bool {
        self.dst == destination.network() && self.prefix == destination.prefix_len()
    }
}

/// The kernel prints each address as the 32-bit number in memory (network order bytes read
/// as a native integer), in hex.
fn addr(hex: &str) -> Option<Ipv4Addr> {
    let raw = u32::from_str_radix(hex, 16).ok()?;
    Some(Ipv4Addr::from(raw.to_ne_bytes()))
}

/// One route of `ip -j route show`.
#[derive(Debug, Deserialize)]
pub struct IpRoute {
    dst: String,
    gateway: Option<String>,
    dev: Option<String>,
    prefsrc: Option<String>,
}

impl IpRoute {
    fn matches(&self, r: &Route) -> bool {
        self.dst == r.destination.to_string()
            && r.via
                .is_none_or(|v| self.gateway.as_deref() == Some(v.to_string().as_str()))
            && r.device
                .as_ref()
                .is_none_or(|d| self.dev.as_ref() == Some(d))
            && r.src
                .is_none_or(|s| self.prefsrc.as_deref() == Some(s.to_string().as_str()))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests
mod tests {
    use super::*;

    /// A worker's main table as this kernel prints it (little-endian x86).
    const TABLE: &str = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
        ens2\t00000000\t0100520A\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
        ens2\t0000000A\t0500520A\t0003\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
        ens2\t0000510A\t0500520A\t0003\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
        ens2\t0000520A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";

    fn route(dst: &str, via: Option<&str>, dev: Option<&str>) -> Route {
        Route {
            destination: dst.parse().unwrap(),
            via: via.map(|v| v.parse().unwrap()),
            device: dev.map(str::to_owned),
            src: None,
        }
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn the_destinations_are_what_ip_route_shows_without_the_default() {
        let want: Vec<Ipv4Net> = ["10.0.0.0/24", "10.81.0.0/24", "10.82.0.0/24"]
            .iter()
            .map(|n| n.parse().unwrap())
            .collect();
        assert_eq!(LiveRoutes::destinations_in_proc(TABLE), want);
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn planned_routes_present_are_found_and_a_deleted_one_is_not() {
        let wanted = [
            route("10.0.0.0/24", Some("10.82.0.5"), None),
            route("10.81.0.0/24", Some("10.82.0.5"), Some("ens2")),
        ];
        let live = LiveRoutes::from_proc(TABLE);
        assert!(wanted.iter().all(|r| live.has(r)));
        // `ip route del 10.81.0.0/24` by hand.
        let without: String = TABLE
            .lines()
            .filter(|l| !l.contains("0000510A"))
            .collect::<Vec<_>>()
            .join("\n");
        let live = LiveRoutes::from_proc(&without);
        assert!(live.has(&wanted[0]) && !live.has(&wanted[1]));
        assert!(!live.has_destination("10.81.0.0/24".parse().unwrap()));
        // Another next hop or another prefix is not the planned route.
        let live = LiveRoutes::from_proc(TABLE);
        for elsewhere in [
            route("10.81.0.0/24", Some("10.82.0.1"), None),
            route("10.81.0.0/16", Some("10.82.0.5"), None),
            route("10.81.0.0/24", None, Some("wg0")),
        ] {
            assert!(!live.has(&elsewhere), "{elsewhere:?}");
        }
        assert!(live.has_destination("10.81.0.0/24".parse().unwrap()));
    }

    #[test]
    fn this_kernels_own_table_parses() {
        // Whatever the machine has: every line after the header is a route we can read.
        let table = std::fs::read_to_string("/proc/net/route").unwrap();
        let lines = table.lines().skip(1).count();
        assert_eq!(
            table.lines().skip(1).filter_map(ProcRoute::parse).count(),
            lines
        );
    }
}
