//! What a node tells the provider's `observe` (`hybridgrid agent report`): the configuration it
//! applied, as far as its live state still shows it (a WireGuard device that is gone, a Slurm
//! daemon that does not run), and its WireGuard public key. Never a private key or the munge key.

use std::path::Path;

use hybridgrid_core::keys::PublicKey;
use hybridgrid_core::observed::MeasuredSize;
use hybridgrid_core::plan::{NodeConfig, SlurmRole};
use serde::{Deserialize, Serialize};

use crate::node::{interface_exists, read_applied, read_public_key};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeReport {
    /// `None`: the agent never applied a configuration on this node.
    pub applied: Option<NodeConfig>,
    pub public_key: Option<PublicKey>,
    /// What the Slurm daemon of the node's applied role says (`slurmd -V`).
    #[serde(default)]
    pub slurm_version: Option<String>,
    /// A compute node's CPUs and memory as its slurmd counts them (`slurmd -C`).
    #[serde(default)]
    pub measured: Option<MeasuredSize>,
    /// A relay of a pair: whether it holds the pair's virtual address, and keepalived's state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pair: Option<PairReport>,
}

/// What a relay of a pair says of its part in it (`doctor`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PairReport {
    pub holds_address: bool,
    /// keepalived's state ([`crate::vrrp::state_word`]); `None` when keepalived does not run.
    pub vrrp: Option<String>,
}

pub fn report(state_dir: &Path) -> NodeReport {
    let applied = read_applied(state_dir);
    let role = applied.as_ref().map(|a| a.slurm.role);
    let slurm_version = role.and_then(crate::packages::slurm_version);
    let measured = role
        .filter(|r| *r == SlurmRole::Compute)
        .and_then(|_| crate::packages::slurmd_counts());
    let pair = applied
        .as_ref()
        .and_then(|a| a.pair.as_ref())
        .map(|p| PairReport {
            holds_address: crate::vrrp::active(p),
            vrrp: crate::vrrp::state_word(state_dir),
        });
    let applied = applied.map(|mut a| {
        if a.wireguard
            .as_ref()
            .is_some_and(|w| !interface_exists(&w.name))
        {
            a.wireguard = None;
        }
        if !crate::slurm::daemons_run(a.slurm.role, state_dir) {
            a.slurm.role = SlurmRole::None;
        }
        a
    });
    NodeReport {
        applied,
        public_key: read_public_key(state_dir),
        slurm_version,
        measured,
        pair,
    }
}
