//! What every local cluster borrows from the host's kernel: the neighbour (ARP) table, one
//! table for all network namespaces. Its default limit (`net.ipv4.neigh.default.gc_thresh3`,
//! 1,024 entries) is below what a thousand-node cluster needs; past it the kernel drops the
//! packets whose next hop it cannot resolve ("neighbor table overflow"), and at 1,050 nodes
//! slurmd's connections to slurmctld were lost for seconds at a time. `up` raises the limits
//! the cluster needs and records the host's own values in the ledger first; `down` puts them
//! back unless another cluster runs or someone changed them since.

use serde::{Deserialize, Serialize};

use crate::LocalError;

/// Above this many entries the kernel collects neighbours eagerly.
const SOFT: &str = "/proc/sys/net/ipv4/neigh/default/gc_thresh2";
/// The most entries the table holds.
const HARD: &str = "/proc/sys/net/ipv4/neigh/default/gc_thresh3";

/// The neighbour table's limits (`gc_thresh2`, `gc_thresh3`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NeighbourLimits {
    pub soft: u32,
    pub hard: u32,
}

/// What `up` changed on the host: the limits before, and the ones it set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaisedLimits {
    pub before: NeighbourLimits,
    pub set: NeighbourLimits,
}

impl NeighbourLimits {
    /// What a cluster of `sites` sites and `namespaces` network namespaces needs, the host's
    /// own few beside: a worker knows its router and relay, a relay every node of its site,
    /// and each router every other router on the emulated internet (quadratic in sites). At
    /// 1,050 nodes on 50 sites the table held 3,500 entries while `status` probed, so a cluster
    /// of 220 nodes on 20 sites is near the kernel's default of 1,024 and one of 1,050 far
    /// past it.
    pub fn needed(sites: usize, namespaces: usize) -> Self {
        let n = u32::try_from(namespaces).unwrap_or(u32::MAX / 8);
        let s = u32::try_from(sites).unwrap_or(u32::MAX / 8);
        let hard = n
            .saturating_mul(4)
            .saturating_add(s.saturating_mul(s))
            .saturating_add(256);
        NeighbourLimits {
            soft: hard / 2,
            hard,
        }
    }

    fn covers(self, need: NeighbourLimits) -> bool {
        self.soft >= need.soft && self.hard >= need.hard
    }

    fn max(self, other: NeighbourLimits) -> Self {
        NeighbourLimits {
            soft: self.soft.max(other.soft),
            hard: self.hard.max(other.hard),
        }
    }
}

/// The host's limits now.
pub fn read() -> Result<NeighbourLimits, LocalError> {
    Ok(NeighbourLimits {
        soft: read_one(SOFT)?,
        hard: read_one(HARD)?,
    })
}

fn read_one(path: &str) -> Result<u32, LocalError> {
    let text = std::fs::read_to_string(path).map_err(LocalError::io(path))?;
    text.trim().parse().map_err(|_| LocalError::Command {
        command: format!("reading {path}"),
        detail: format!("not a number: {:?}", text.trim()),
    })
}

/// Sets the host's limits (the hard one first when raising, so soft ≤ hard throughout).
pub fn write(limits: NeighbourLimits) -> Result<(), LocalError> {
    let put =
        |path: &str, v: u32| std::fs::write(path, v.to_string()).map_err(LocalError::io(path));
    if read_one(HARD)? < limits.hard {
        put(HARD, limits.hard)?;
        put(SOFT, limits.soft)
    } else {
        put(SOFT, limits.soft)?;
        put(HARD, limits.hard)
    }
}

/// The limits to set for `need` when `now` does not cover it; `None` if it does.
pub fn raise_to(now: NeighbourLimits, need: NeighbourLimits) -> Option<NeighbourLimits> {
    (!now.covers(need)).then(|| now.max(need))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULT: NeighbourLimits = NeighbourLimits {
        soft: 512,
        hard: 1024,
    };

    #[test]
    fn a_thousand_nodes_need_more_than_the_kernels_default_and_a_few_do_not() {
        // 50 sites × 21 nodes, a router and a switch each, the internet.
        assert_eq!(
            raise_to(DEFAULT, NeighbourLimits::needed(50, 1_050 + 100 + 1)),
            Some(NeighbourLimits {
                soft: 3_680,
                hard: 7_360
            })
        );
        assert_eq!(
            raise_to(DEFAULT, NeighbourLimits::needed(3, 12 + 6 + 1)),
            None
        );
        let raised = NeighbourLimits {
            soft: 4096,
            hard: 8192,
        };
        assert_eq!(raise_to(raised, NeighbourLimits::needed(50, 1_151)), None);
    }

    #[test]
    fn a_limit_is_never_lowered() {
        let odd = NeighbourLimits {
            soft: 10_000,
            hard: 1024,
        };
        assert_eq!(
            raise_to(odd, NeighbourLimits::needed(10, 300)),
            Some(NeighbourLimits {
                soft: 10_000,
                hard: 1_556
            })
        );
    }
}
