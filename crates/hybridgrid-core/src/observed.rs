//! What exists of a cluster, as a provider observed it: the input of the plan beside the file.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::keys::PublicKey;
use crate::node::{NodeConfig, SgRule};

/// What exists of a cluster, as a provider found it (its ledger and its cloud).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observed {
    pub nodes: BTreeMap<String, ObservedNode>,
    pub sites: BTreeMap<String, ObservedSite>,
    /// Public IPs allocated for a node but not attached to it (the node may not exist yet):
    /// the plan uses them as the node's endpoint, and attaching one is an `AssignPublicIp`.
    #[serde(default)]
    pub reserved_public_ips: BTreeMap<String, Ipv4Addr>,
}

impl Observed {
    /// The node's public IP: attached, else reserved for it. `node` may also be a relay
    /// pair's identity, whose public IP is its virtual address's.
    pub fn public_ip(&self, node: &str) -> Option<Ipv4Addr> {
        self.nodes
            .get(node)
            .and_then(|o| o.public_ip)
            .or_else(|| {
                self.sites
                    .values()
                    .find_map(|s| s.virtual_addresses.get(node)?.public_ip)
            })
            .or_else(|| self.reserved_public_ips.get(node).copied())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedNode {
    pub site: String,
    pub public_ip: Option<Ipv4Addr>,
    pub public_key: Option<PublicKey>,
    /// The node configuration its agent last applied, if any.
    pub applied: Option<NodeConfig>,
    /// What a booted worker's `slurmd -C` says it has (openstack; `None` before it reports).
    #[serde(default)]
    pub measured: Option<MeasuredSize>,
    /// The machine the node runs on as the provider names it (openstack: its server's id): a
    /// new one has new SSH host keys.
    #[serde(default)]
    pub instance: Option<String>,
}

/// A node's CPUs and memory as its own slurmd counts them (`slurmd -C`): slurmctld drains a
/// node that registers with less than it was declared with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeasuredSize {
    pub cpus: u32,
    pub real_memory_mib: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedSite {
    pub network: bool,
    /// Security groups hybridgrid created, by name, with the rules they hold.
    pub security_groups: BTreeMap<String, Vec<SgRule>>,
    /// Allowed-address pairs present on each node's port (the user's own included).
    pub allowed_address_pairs: BTreeMap<String, Vec<Ipv4Net>>,
    /// local: the WAN conditions emulated on what leaves the site, as the emulator runs them.
    #[serde(default)]
    pub wan: Option<crate::model::Wan>,
    /// openstack: the sizes of the flavors the cluster file names for this site, by name.
    #[serde(default)]
    pub flavors: BTreeMap<String, FlavorSize>,
    /// Relay pairs' virtual addresses hybridgrid made, by the pair's identity.
    #[serde(default)]
    pub virtual_addresses: BTreeMap<String, ObservedVirtualAddress>,
}

/// A relay pair's virtual address as it exists (openstack: an unbound port; local: the
/// router's record of it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedVirtualAddress {
    pub address: Ipv4Addr,
    pub public_ip: Option<Ipv4Addr>,
}

/// What a cloud's flavor gives a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlavorSize {
    pub vcpus: u32,
    pub ram_mib: u64,
}
