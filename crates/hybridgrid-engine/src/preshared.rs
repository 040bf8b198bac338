//! The tunnels' preshared keys (`tunnel.preshared_keys`): one random key per pair of relays,
//! made by `up` on this machine — the one party both relays of a pair already trust, since it
//! delivers their configuration — and kept in `<state>/<cluster>/`[`KEYS_FILE`] (0600), so that
//! a relay made again gets its pairs' keys again. Each relay receives only its own pairs' keys
//! ([`PRESHARED_KEYS_FILE`] in the agent's state, 0600: the node's own state on local, standard
//! input over the node channel on openstack), never in a plan, user data or log.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::Path;

use base64::Engine as _;
pub use hybridgrid_core::node::PRESHARED_KEYS_FILE;
use hybridgrid_core::plan::Plan;
use serde::{Deserialize, Serialize};

use crate::state::{self, StateError};

/// The keys, beside the cluster's ledger.
pub const KEYS_FILE: &str = "preshared-keys.json";
const FORMAT_VERSION: u32 = 1;

/// Pair (`"a|b"`, node names in order) → key (base64). `Debug` shows the pairs only.
#[derive(Clone, Default, Serialize, Deserialize)]
pub struct PresharedKeys {
    format_version: u32,
    pairs: BTreeMap<String, String>,
}

impl std::fmt::Debug for PresharedKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PresharedKeys")
            .field("pairs", &self.pairs.keys().collect::<Vec<_>>())
            .finish()
    }
}

fn pair_name(a: &str, b: &str) -> String {
    if a < b {
        format!("{a}|{b}")
    } else {
        format!("{b}|{a}")
    }
}

/// The pairs of relays the plan's tunnels join (none when preshared keys are off), by their
/// names in the mesh (a relay pair's two relays are one end under the pair's identity).
fn pairs(plan: &Plan) -> Vec<String> {
    if !plan.tunnel.preshared_keys {
        return Vec::new();
    }
    let mut relays: Vec<&str> = plan
        .nodes
        .iter()
        .filter(|n| n.is_relay())
        .map(|n| n.mesh_name())
        .collect();
    relays.sort_unstable();
    relays.dedup();
    let mut out = Vec::new();
    for (i, a) in relays.iter().enumerate() {
        for b in &relays[i + 1..] {
            out.push(pair_name(a, b));
        }
    }
    out
}

/// The cluster's keys, a new one made for each pair the plan has and the file lacks; pairs no
/// longer planned are forgotten. Written back only when something changed.
pub fn ensure(cluster_dir: &Path, plan: &Plan) -> Result<PresharedKeys, StateError> {
    make(cluster_dir, plan, Keep::Kept)
}

/// A new key for every pair the plan has (`rotate --preshared`).
pub fn renew(cluster_dir: &Path, plan: &Plan) -> Result<PresharedKeys, StateError> {
    make(cluster_dir, plan, Keep::Renewed)
}

#[derive(PartialEq)]
enum Keep {
    Kept,
    Renewed,
}

fn make(cluster_dir: &Path, plan: &Plan, keep: Keep) -> Result<PresharedKeys, StateError> {
    let path = cluster_dir.join(KEYS_FILE);
    let kept: PresharedKeys = state::load(&path, FORMAT_VERSION)?.unwrap_or_default();
    let wanted = pairs(plan);
    let mut keys = PresharedKeys {
        format_version: FORMAT_VERSION,
        pairs: BTreeMap::new(),
    };
    for pair in wanted {
        let key = match kept.pairs.get(&pair) {
            Some(k) if keep == Keep::Kept => k.clone(),
            _ => random_key()?,
        };
        keys.pairs.insert(pair, key);
    }
    if keys.pairs != kept.pairs {
        match keys.pairs.is_empty() {
            true => remove(cluster_dir)?,
            false => state::save(&path, &keys, 0o600)?,
        }
    }
    Ok(keys)
}

/// The keys as [`ensure`] last kept them.
pub fn load(cluster_dir: &Path) -> Result<PresharedKeys, StateError> {
    Ok(state::load(&cluster_dir.join(KEYS_FILE), FORMAT_VERSION)?.unwrap_or_default())
}

/// Forgets the cluster's keys (`down`).
pub fn remove(cluster_dir: &Path) -> Result<(), StateError> {
    state::write_or_remove(&cluster_dir.join(KEYS_FILE), None, 0o600)
}

pub(crate) fn random_key() -> Result<String, StateError> {
    let mut key = [0u8; 32];
    let random = Path::new("/dev/urandom");
    std::fs::File::open(random)
        .and_then(|mut f| f.read_exact(&mut key))
        .map_err(state::io(random))?;
    Ok(base64::engine::general_purpose::STANDARD.encode(key))
}

impl PresharedKeys {
    /// How many pairs have a key.
    pub fn pair_count(&self) -> usize {
        self.pairs.len()
    }

    /// What the relay known in the mesh as `node` ([`NodePlan::mesh_name`]) receives: its
    /// peers' names → the pair's key, as JSON; `None` when it is in no pair (not a relay, or
    /// preshared keys off).
    ///
    /// [`NodePlan::mesh_name`]: hybridgrid_core::plan::NodePlan::mesh_name
    pub fn for_node(&self, node: &str) -> Option<String> {
        let mine: BTreeMap<&str, &str> = self
            .pairs
            .iter()
            .filter_map(|(pair, key)| {
                let (a, b) = pair.split_once('|')?;
                match (a == node, b == node) {
                    (true, _) => Some((b, key.as_str())),
                    (_, true) => Some((a, key.as_str())),
                    _ => None,
                }
            })
            .collect();
        (!mine.is_empty()).then(|| serde_json::to_string(&mine).unwrap_or_default())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests
mod tests {
    use super::*;

    fn plan(sites: &[&str], preshared: bool) -> Plan {
        let mut text = format!("name: psk\ntunnel:\n  preshared_keys: {preshared}\nsites:\n");
        for (i, s) in sites.iter().enumerate() {
            text.push_str(&format!(
                "  - name: {s}\n    subnet: 10.{}.0.0/24\n    master: {}\n    workers:\n      - count: 1\n",
                30 + i,
                i == 0
            ));
        }
        let path = std::env::temp_dir().join(format!(
            "hg-psk-{}-{}.yaml",
            std::process::id(),
            sites.len()
        ));
        std::fs::write(&path, text).unwrap();
        let cluster = hybridgrid_core::model::load(&path).unwrap().cluster;
        std::fs::remove_file(&path).unwrap();
        hybridgrid_core::reconcile::plan(&cluster, &Default::default())
    }

    fn key_of(keys: &PresharedKeys, node: &str, peer: &str) -> String {
        let mine: BTreeMap<String, String> =
            serde_json::from_str(&keys.for_node(node).unwrap()).unwrap();
        mine[peer].clone()
    }

    #[test]
    fn each_pair_of_relays_shares_one_key_kept_across_runs_and_forgotten_with_its_pair() {
        let dir = tempfile::tempdir().unwrap();
        let three = plan(&["a", "b", "c"], true);
        let keys = ensure(dir.path(), &three).unwrap();
        let relays = ["a-master", "b-gw", "c-gw"];
        for x in relays {
            for y in relays.iter().filter(|y| **y != x) {
                assert_eq!(key_of(&keys, x, y), key_of(&keys, y, x));
            }
        }
        assert_ne!(
            key_of(&keys, "a-master", "b-gw"),
            key_of(&keys, "a-master", "c-gw")
        );
        assert_eq!(keys.for_node("a-worker-1"), None, "workers are in no pair");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(dir.path().join(KEYS_FILE))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        // The next run keeps the keys; a site removed takes its pairs' keys with it.
        let again = ensure(dir.path(), &three).unwrap();
        assert_eq!(
            key_of(&again, "a-master", "b-gw"),
            key_of(&keys, "a-master", "b-gw")
        );
        let two = ensure(dir.path(), &plan(&["a", "b"], true)).unwrap();
        assert_eq!(two.pairs.len(), 1);
        assert!(!format!("{two:?}").contains(&key_of(&two, "a-master", "b-gw")));
        // Off: no keys, and no file.
        let off = ensure(dir.path(), &plan(&["a", "b"], false)).unwrap();
        assert_eq!(off.for_node("a-master"), None);
        assert!(!dir.path().join(KEYS_FILE).exists());
    }

    #[test]
    fn renewing_changes_every_pairs_key_and_keeps_them() {
        let dir = tempfile::tempdir().unwrap();
        let three = plan(&["a", "b", "c"], true);
        let before = ensure(dir.path(), &three).unwrap();
        let after = renew(dir.path(), &three).unwrap();
        for (x, y) in [("a-master", "b-gw"), ("a-master", "c-gw"), ("b-gw", "c-gw")] {
            assert_ne!(key_of(&after, x, y), key_of(&before, x, y));
            assert_eq!(key_of(&after, y, x), key_of(&after, x, y));
        }
        let kept = ensure(dir.path(), &three).unwrap();
        assert_eq!(
            key_of(&kept, "b-gw", "c-gw"),
            key_of(&after, "b-gw", "c-gw")
        );
    }
}
