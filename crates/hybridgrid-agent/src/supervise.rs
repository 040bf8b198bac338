//! The node's own supervisor: it keeps the node as its configuration says, without `up`.
//!
//! Every second it looks at what can go away cheaply (no process is started for a look): the
//! WireGuard device (`/proc/net/dev`), the Slurm daemons (their PID files), the planned routes
//! (`/proc/net/route`). Whatever is gone is applied again at once; every `period` the whole
//! configuration is applied again, for what a look does not see (peers, sysctls, the Slurm
//! controller's view).

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use hybridgrid_core::plan::{NodeConfig, Route};

use crate::AgentError;
use crate::node::{apply_locked, interface_exists, lock, read_applied};

/// The node's own supervisor (run by the process that holds the node's namespaces on local, by
/// a systemd unit on a cloud VM): a WireGuard device, Slurm daemon or planned route that is gone
/// is brought back within about a second; every `period`, the whole configuration in
/// `state_dir/node.json` is applied again, so peers and forwarding changed by hand come back.
/// `period` zero: no supervision. Never returns.
pub fn supervise(
    state_dir: &Path,
    exe: &Path,
    tag: &str,
    period: Duration,
    on_error: &dyn Fn(&AgentError),
) -> ! {
    let mut last = Instant::now();
    loop {
        std::thread::sleep(Duration::from_secs(1));
        reap_children();
        if period.is_zero() {
            continue;
        }
        let read = || {
            std::fs::read_to_string(state_dir.join(crate::node::NODE_CONFIG_FILE))
                .ok()
                .and_then(|t| serde_json::from_str::<NodeConfig>(&t).ok())
        };
        // Only a node that applied once is supervised: `up` makes the first apply.
        let (Some(config), Some(applied)) = (read(), read_applied(state_dir)) else {
            continue;
        };
        if something_is_gone(&config, &applied, state_dir) || last.elapsed() >= period {
            last = Instant::now();
            // The configuration is read again under the lock: `up` may have written a newer
            // one while this waited for it.
            let result = lock(state_dir).and_then(|_lock| match read() {
                Some(config) => {
                    apply_locked(&config, state_dir, exe, tag, Duration::ZERO).map(drop)
                }
                None => Ok(()),
            });
            if let Err(e) = result {
                on_error(&e);
            }
        }
    }
}

/// The WireGuard device, a Slurm daemon or a planned route is missing: a look, no process.
/// `applied`: what the agent last applied (its Slurm role says which daemons must run).
fn something_is_gone(config: &NodeConfig, applied: &NodeConfig, state_dir: &Path) -> bool {
    let device_gone = config
        .wireguard
        .as_ref()
        .is_some_and(|w| !interface_exists(&w.name));
    let daemon_dead = !crate::slurm::daemons_run(applied.slurm.role, state_dir);
    // A route deleted by hand came back only with the next full apply, and a worker's full
    // apply asks the Slurm controller, which that very route leads to (31 s on the test bed).
    let route_gone = std::fs::read_to_string("/proc/net/route")
        .is_ok_and(|table| !missing_routes(&config.routes, &table).is_empty());
    device_gone || daemon_dead || route_gone
}

/// The routes of `wanted` that the kernel's main table (`/proc/net/route`'s text) lacks:
/// destination and prefix, and the next hop or device where the route names one.
fn missing_routes<'a>(wanted: &'a [Route], proc_net_route: &str) -> Vec<&'a Route> {
    let live: Vec<ProcRoute> = proc_net_route
        .lines()
        .skip(1)
        .filter_map(ProcRoute::parse)
        .collect();
    wanted
        .iter()
        .filter(|r| {
            !live.iter().any(|l| {
                l.dst == r.destination.network()
                    && l.prefix == r.destination.prefix_len()
                    && r.via.is_none_or(|v| l.gateway == v)
                    && r.device.as_ref().is_none_or(|d| &l.iface == d)
            })
        })
        .collect()
}

/// One line of `/proc/net/route`.
struct ProcRoute {
    iface: String,
    dst: Ipv4Addr,
    gateway: Ipv4Addr,
    prefix: u8,
}

impl ProcRoute {
    fn parse(line: &str) -> Option<ProcRoute> {
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
}

/// The kernel prints each address as the 32-bit number in memory (network order bytes read
/// as a native integer), in hex.
fn addr(hex: &str) -> Option<Ipv4Addr> {
    let raw = u32::from_str_radix(hex, 16).ok()?;
    Some(Ipv4Addr::from(raw.to_ne_bytes()))
}

/// Collects exited children (the WireGuard daemons this process started): no zombies.
fn reap_children() {
    use nix::sys::wait::{WaitPidFlag, waitpid};
    while let Ok(status) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
        if matches!(status, nix::sys::wait::WaitStatus::StillAlive) {
            break;
        }
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
    fn planned_routes_present_are_not_missing_and_a_deleted_one_is() {
        let wanted = [
            route("10.0.0.0/24", Some("10.82.0.5"), None),
            route("10.81.0.0/24", Some("10.82.0.5"), Some("ens2")),
        ];
        assert!(missing_routes(&wanted, TABLE).is_empty());
        // `ip route del 10.81.0.0/24` by hand.
        let without: String = TABLE
            .lines()
            .filter(|l| !l.contains("0000510A"))
            .collect::<Vec<_>>()
            .join("\n");
        let missing = missing_routes(&wanted, &without);
        assert_eq!(missing, [&wanted[1]]);
        // Another next hop or another prefix is not the planned route.
        let elsewhere = [
            route("10.81.0.0/24", Some("10.82.0.1"), None),
            route("10.81.0.0/16", Some("10.82.0.5"), None),
            route("10.81.0.0/24", None, Some("wg0")),
        ];
        assert_eq!(missing_routes(&elsewhere, TABLE).len(), 3);
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
