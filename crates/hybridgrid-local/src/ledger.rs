//! The ledger: every object of a cluster, written before the object is created, so a crash
//! part-way is resumed by `up` and cleaned by `down`. Versioned JSON, replaced atomically.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;

use hybridgrid_core::plan::{Role, SgRule};
use hybridgrid_engine::state;
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::LocalError;

pub const LEDGER_FORMAT_VERSION: u32 = 1;

/// An object is `Creating` from the moment it is recorded until it fully exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ObjState {
    Creating,
    Ready,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ledger {
    pub format_version: u32,
    pub cluster: String,
    /// Security groups without connection tracking (tests).
    #[serde(default)]
    pub stateless_security_groups: bool,
    /// Namespaces of the cluster, recorded before each is created.
    pub namespaces: Vec<String>,
    pub inet: Option<ObjState>,
    pub sites: BTreeMap<String, SiteEntry>,
    pub nodes: BTreeMap<String, NodeEntry>,
    /// The host's neighbour-table limits `up` raised for the cluster, and what they were.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_neighbour_limits: Option<crate::host::RaisedLimits>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteEntry {
    pub index: u32,
    pub state: ObjState,
    pub subnet: Ipv4Net,
    pub router_ip: Ipv4Addr,
    pub router_public_ip: Ipv4Addr,
    pub underlay_mtu: u16,
    /// Security groups by name: the rules hybridgrid put in.
    #[serde(default)]
    pub security_groups: BTreeMap<String, Vec<SgRule>>,
    #[serde(default)]
    pub allowed_address_pairs: BTreeMap<String, Vec<Ipv4Net>>,
    /// Floating IPs of the site's relay, or of its relay pair by the pair's identity.
    #[serde(default)]
    pub floating_ips: BTreeMap<String, Ipv4Addr>,
    /// Relay pairs' virtual addresses by the pair's identity: where the router sends the pair's
    /// floating IP (whichever relay holds the address answers for it).
    #[serde(default)]
    pub virtual_addresses: BTreeMap<String, Ipv4Addr>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeEntry {
    pub site: String,
    pub role: Role,
    pub state: ObjState,
    pub lan_ip: Ipv4Addr,
    pub port: String,
    pub mac: String,
    /// The process holding the node's namespaces.
    pub holder_pid: Option<u32>,
}

impl Ledger {
    pub fn new(cluster: &str) -> Self {
        Ledger {
            format_version: LEDGER_FORMAT_VERSION,
            cluster: cluster.to_owned(),
            stateless_security_groups: false,
            namespaces: Vec::new(),
            inet: None,
            sites: BTreeMap::new(),
            nodes: BTreeMap::new(),
            host_neighbour_limits: None,
        }
    }

    /// Reads a ledger; `None` if there is none. A ledger that does not parse is an error.
    pub fn load(path: &Path) -> Result<Option<Ledger>, LocalError> {
        Ok(state::load(path, LEDGER_FORMAT_VERSION)?)
    }

    /// The text written to `path`: replaced atomically, mode 0600 (it names every resource of
    /// the cluster), by `Local::record`.
    pub fn encode(&self, path: &Path) -> Result<Vec<u8>, LocalError> {
        Ok(state::encode(path, self)?)
    }

    pub fn record_namespace(&mut self, ns: &str) {
        if !self.namespaces.iter().any(|n| n == ns) {
            self.namespaces.push(ns.to_owned());
        }
    }

    /// The lowest floating-IP slot not in use.
    pub fn free_floating_slot(&self) -> u32 {
        let used: Vec<Ipv4Addr> = self
            .sites
            .values()
            .flat_map(|s| s.floating_ips.values().copied())
            .collect();
        (0..)
            .find(|&slot| crate::names::floating_ip(slot).is_none_or(|ip| !used.contains(&ip)))
            .unwrap_or(0)
    }

    /// The lowest site index not in use.
    pub fn free_site_index(&self) -> u32 {
        (0..)
            .find(|i| self.sites.values().all(|s| s.index != *i))
            .unwrap_or(0)
    }
}

/// Replaces `path` with `data` atomically with `mode` (`hybridgrid_engine::state`).
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), LocalError> {
    Ok(state::write_atomic(path, data, mode)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_version_check() {
        let dir = std::env::temp_dir().join(format!("hg-ledger-test-{}", std::process::id()));
        let path = dir.join("ledger.json");
        let mut l = Ledger::new("demo");
        l.record_namespace("hg-demo-inet");
        write_atomic(&path, &l.encode(&path).unwrap(), state::PRIVATE).unwrap();
        assert_eq!(Ledger::load(&path).unwrap(), Some(l));
        std::fs::write(&path, r#"{"format_version":2}"#).unwrap();
        assert!(Ledger::load(&path).is_err());
        std::fs::write(&path, "{not json").unwrap();
        assert!(Ledger::load(&path).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(Ledger::load(&path).unwrap(), None);
    }
}
