//! The ledger: every object of a cluster, written before the object is created, so a crash
//! part-way is resumed by `up` and cleaned by `down`. Versioned JSON, replaced atomically.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use hybridgrid_core::plan::{Role, SgRule};
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
    /// Floating IPs of the site's nodes (the relay).
    #[serde(default)]
    pub floating_ips: BTreeMap<String, Ipv4Addr>,
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
        }
    }

    /// Reads a ledger; `None` if there is none. A ledger that does not parse is an error.
    pub fn load(path: &Path) -> Result<Option<Ledger>, LocalError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(LocalError::io(path)(e)),
        };
        let bad = |detail: String| LocalError::Ledger {
            path: path.to_owned(),
            detail,
        };
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        match value
            .get("format_version")
            .and_then(serde_json::Value::as_u64)
        {
            Some(v) if v == u64::from(LEDGER_FORMAT_VERSION) => {}
            Some(v) => {
                return Err(bad(format!(
                    "format_version {v}; this hybridgrid reads {LEDGER_FORMAT_VERSION}"
                )));
            }
            None => return Err(bad("no format_version".into())),
        }
        serde_json::from_value(value)
            .map(Some)
            .map_err(|e| bad(e.to_string()))
    }

    /// Writes temp + fsync + rename + fsync of the directory.
    pub fn save(&self, path: &Path) -> Result<(), LocalError> {
        let text = serde_json::to_string_pretty(self).map_err(|source| LocalError::Json {
            path: path.to_owned(),
            source,
        })?;
        write_atomic(path, text.as_bytes(), 0o644)
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

/// Replaces `path` with `data` atomically (same directory temp file, fsync, rename).
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), LocalError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(LocalError::io(dir))?;
    let tmp: PathBuf = dir.join(format!(
        ".{}.tmp{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id()
    ));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(LocalError::io(&tmp))?;
    f.write_all(data).map_err(LocalError::io(&tmp))?;
    f.sync_all().map_err(LocalError::io(&tmp))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(LocalError::io(path))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
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
        l.save(&path).unwrap();
        assert_eq!(Ledger::load(&path).unwrap(), Some(l));
        std::fs::write(&path, r#"{"format_version":2}"#).unwrap();
        assert!(Ledger::load(&path).is_err());
        std::fs::write(&path, "{not json").unwrap();
        assert!(Ledger::load(&path).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(Ledger::load(&path).unwrap(), None);
    }
}
