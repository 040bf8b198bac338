//! The provider's ledger: every cloud resource of the cluster, recorded as *intended* before its
//! create call and with its id after. `down` deletes from it first, then searches tags for orphans.
//!
//! `<state_root>/<cluster>/openstack-ledger.json`, `format_version` 1, replaced atomically (temp
//! file, fsync, rename). A file that fails to parse is an error, never an empty ledger.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use hybridgrid_core::plan::NodeConfig;
use hybridgrid_engine::state;
use serde::{Deserialize, Serialize};

use crate::error::{OsError, Result};

pub const LEDGER_FORMAT_VERSION: u32 = 1;
pub const LEDGER_FILE: &str = "openstack-ledger.json";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Network,
    Subnet,
    Router,
    /// The router's interface on the subnet; `id` is the subnet's id.
    RouterInterface,
    SecurityGroup,
    Keypair,
    Port,
    Server,
    FloatingIp,
    /// A relay pair's soft anti-affinity server group (Nova).
    ServerGroup,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Network => "network",
            Kind::Subnet => "subnet",
            Kind::Router => "router",
            Kind::RouterInterface => "router_interface",
            Kind::SecurityGroup => "security_group",
            Kind::Keypair => "keypair",
            Kind::Port => "port",
            Kind::Server => "server",
            Kind::FloatingIp => "floating_ip",
            Kind::ServerGroup => "server_group",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// About to be created: the create call may or may not have gone through.
    Intended,
    Created,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resource {
    pub kind: Kind,
    pub name: String,
    pub id: Option<String>,
    pub state: State,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerSite {
    pub cloud: String,
    /// The site's subnet, so that a site removed from the file is still found (and removed).
    #[serde(default)]
    pub subnet: Option<ipnet::Ipv4Net>,
    /// By `<kind>/<name>`.
    pub resources: BTreeMap<String, Resource>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerData {
    pub format_version: u32,
    pub cluster: String,
    pub sites: BTreeMap<String, LedgerSite>,
    /// The node configuration each server received in its cloud-init user data at creation.
    #[serde(default)]
    pub delivered: BTreeMap<String, NodeConfig>,
    /// WireGuard public keys read from relays' console output.
    #[serde(default)]
    pub public_keys: BTreeMap<String, String>,
}

impl LedgerData {
    /// What the node applies: the configuration of its user data merged with what its server
    /// metadata delivers; `None` when the ledger has no user data of the node.
    pub fn applied_config(
        &self,
        node: &str,
        metadata: &BTreeMap<String, String>,
    ) -> Option<NodeConfig> {
        self.delivered
            .get(node)
            .and_then(|base| hybridgrid_core::node_meta::merge(base, metadata).ok())
    }
}

/// The ledger file and its content; every change is written through at once.
#[derive(Debug)]
pub struct Ledger {
    path: PathBuf,
    data: Mutex<LedgerData>,
}

pub fn key(kind: Kind, name: &str) -> String {
    format!("{}/{name}", kind.as_str())
}

impl Ledger {
    /// Opens the ledger (an empty one if the file does not exist; nothing is written yet). A
    /// file that does not parse, has another version or names another cluster is an error.
    pub fn open(path: PathBuf, cluster: &str) -> Result<Ledger> {
        let data = match state::load::<LedgerData>(&path, LEDGER_FORMAT_VERSION)? {
            Some(d) if d.cluster != cluster => {
                return Err(OsError::Ledger {
                    path,
                    message: format!("belongs to cluster `{}`", d.cluster),
                });
            }
            Some(d) => d,
            None => LedgerData {
                format_version: LEDGER_FORMAT_VERSION,
                cluster: cluster.to_owned(),
                sites: BTreeMap::new(),
                delivered: BTreeMap::new(),
                public_keys: BTreeMap::new(),
            },
        };
        Ok(Ledger {
            path,
            data: Mutex::new(data),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn snapshot(&self) -> LedgerData {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LedgerData> {
        self.data.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies `f` and writes the ledger before returning.
    pub fn update(&self, f: impl FnOnce(&mut LedgerData)) -> Result<()> {
        let mut d = self.lock();
        f(&mut d);
        write_atomic(&self.path, &d)
    }

    #[allow(clippy::too_many_arguments)]
    pub fn record(
        &self,
        site: &str,
        cloud: &str,
        subnet: ipnet::Ipv4Net,
        kind: Kind,
        name: &str,
        id: Option<&str>,
        state: State,
    ) -> Result<()> {
        self.update(|d| {
            let s = d.sites.entry(site.to_owned()).or_default();
            s.cloud = cloud.to_owned();
            s.subnet = Some(subnet);
            let r = s
                .resources
                .entry(key(kind, name))
                .or_insert_with(|| Resource {
                    kind,
                    name: name.to_owned(),
                    id: None,
                    state,
                });
            r.state = state;
            if let Some(id) = id {
                r.id = Some(id.to_owned());
            }
        })
    }

    pub fn forget(&self, site: &str, kind: Kind, name: &str) -> Result<()> {
        self.update(|d| {
            if let Some(s) = d.sites.get_mut(site) {
                s.resources.remove(&key(kind, name));
            }
        })
    }

    /// Forgets everything and removes the file (after `down` deleted everything).
    pub fn remove_file(&self) -> Result<()> {
        {
            let mut d = self.lock();
            d.sites.clear();
            d.delivered.clear();
            d.public_keys.clear();
        }
        match std::fs::remove_file(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(OsError::Ledger {
                path: self.path.clone(),
                message: e.to_string(),
            }),
        }
    }
}

/// Replaced atomically, mode 0600: it names every resource of the cluster.
fn write_atomic(path: &Path, data: &LedgerData) -> Result<()> {
    Ok(state::save(path, data, state::PRIVATE)?)
}
