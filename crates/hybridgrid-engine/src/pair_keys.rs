//! The relay pairs' WireGuard keys (`gateway.standby`): a pair is one end of the mesh, so its two
//! relays hold one private key — the one private key of the mesh that lives on two nodes. It is
//! made by `up` on this machine (which already delivers both relays' configuration and the
//! tunnels' preshared keys), kept in `<state>/<cluster>/`[`KEYS_FILE`] (0600) so that a relay
//! made again gets the same key, and delivered to each relay of the pair into its agent state
//! (`wg/private.key`, 0600: the node's own state on local, standard input over the node channel
//! on openstack); never in a plan, user data or log. `down` forgets it.

use std::collections::BTreeMap;
use std::path::Path;

use hybridgrid_core::plan::Plan;
use serde::{Deserialize, Serialize};

use crate::state::{self, StateError};

/// The keys, beside the cluster's ledger.
pub const KEYS_FILE: &str = "pair-keys.json";
const FORMAT_VERSION: u32 = 1;

/// Pair identity (`<site>-gw`) → private key (base64). `Debug` shows the identities only.
#[derive(Clone, Default, Serialize, Deserialize)]
pub struct PairKeys {
    format_version: u32,
    keys: BTreeMap<String, String>,
}

impl std::fmt::Debug for PairKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PairKeys")
            .field("pairs", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// The cluster's pair keys: one made for each pair the plan has and the file lacks; pairs no
/// longer planned are forgotten. Written back only when something changed.
pub fn ensure(cluster_dir: &Path, plan: &Plan) -> Result<PairKeys, StateError> {
    let path = cluster_dir.join(KEYS_FILE);
    let kept: PairKeys = state::load(&path, FORMAT_VERSION)?.unwrap_or_default();
    let mut keys = PairKeys {
        format_version: FORMAT_VERSION,
        keys: BTreeMap::new(),
    };
    for pair in plan.sites.iter().filter_map(|s| s.pair.as_ref()) {
        // 32 random bytes are a WireGuard private key: the curve's clamping is applied where
        // the key is used (`wg genkey` clamps them in advance; it changes nothing).
        let key = match kept.keys.get(&pair.identity) {
            Some(k) => k.clone(),
            None => crate::preshared::random_key()?,
        };
        keys.keys.insert(pair.identity.clone(), key);
    }
    if keys.keys != kept.keys {
        match keys.keys.is_empty() {
            true => remove(cluster_dir)?,
            false => state::save(&path, &keys, 0o600)?,
        }
    }
    Ok(keys)
}

/// The keys as [`ensure`] last kept them.
pub fn load(cluster_dir: &Path) -> Result<PairKeys, StateError> {
    Ok(state::load(&cluster_dir.join(KEYS_FILE), FORMAT_VERSION)?.unwrap_or_default())
}

/// Forgets the cluster's pair keys (`down`).
pub fn remove(cluster_dir: &Path) -> Result<(), StateError> {
    state::write_or_remove(&cluster_dir.join(KEYS_FILE), None, 0o600)
}

impl PairKeys {
    /// The private key (base64) of the pair `identity`, for its two relays.
    pub fn for_pair(&self, identity: &str) -> Option<&str> {
        self.keys.get(identity).map(String::as_str)
    }
}
