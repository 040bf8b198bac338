//! Key rotation on the node, in two steps the engine takes on every relay at once
//! (`engine::rotate`): `stage` makes the relay's next WireGuard key and tells its public half (the
//! device is not touched), and `switch` puts everything new in place under the agent's lock —
//! the next key as the key, the peers' new public keys (the configuration), the pairs' preshared
//! keys, the munge key — and applies it in one go, so the supervisor never applies half of it.
//!
//! No tunnel waits on a rejected handshake: every relay knows every other's next key before any
//! switches, and whichever of a pair switches last sends its handshake to a peer that already
//! has its new key.

use std::path::Path;

use base64::Engine as _;
use hybridgrid_core::keys::PublicKey;
use hybridgrid_core::node::{KeySwitch, PRESHARED_KEYS_FILE};

use crate::node::{AgentReport, NODE_CONFIG_FILE, apply_locked, lock, make_key_file};
use crate::sys::write_atomic;
use crate::{AgentError, slurm};

/// The relay's next WireGuard key, made by [`stage`], the key after [`switch`].
pub const NEXT_KEY_FILE: &str = "wg/next.key";

/// Makes the node's next key unless it has one (a rotation tried again after a failure uses the
/// same key, which the other relays may already have), and returns its public half.
pub fn stage(state_dir: &Path) -> Result<PublicKey, AgentError> {
    let _lock = lock(state_dir)?;
    let path = state_dir.join(NEXT_KEY_FILE);
    let key = match std::fs::read_to_string(&path) {
        Ok(text) => hybridgrid_core::keys::PrivateKey::from_base64(text.trim())?,
        Err(_) => make_key_file(state_dir, &path)?,
    };
    Ok(key.public_key())
}

/// Puts `switch` in place and applies it (see the module's comment). A node told to take its
/// next key that has none fails before anything changed.
pub fn switch(
    switch: &KeySwitch,
    state_dir: &Path,
    exe: &Path,
    tag: &str,
) -> Result<AgentReport, AgentError> {
    let _lock = lock(state_dir)?;
    let next = state_dir.join(NEXT_KEY_FILE);
    if switch.next_key && !next.is_file() {
        return Err(AgentError::NoNextKey { path: next });
    }
    let munge_key = switch
        .munge_key
        .as_deref()
        .map(|k| base64::engine::general_purpose::STANDARD.decode(k))
        .transpose()
        .map_err(|_| AgentError::BadMungeKey)?;
    if let Some(keys) = &switch.preshared_keys {
        write_atomic(&state_dir.join(PRESHARED_KEYS_FILE), keys.as_bytes(), 0o600)?;
    }
    if let Some(key) = &munge_key {
        write_atomic(&state_dir.join(slurm::MUNGE_KEY_FILE), key, 0o400)?;
    }
    if switch.next_key {
        let current = state_dir.join(crate::node::PRIVATE_KEY_FILE);
        std::fs::rename(&next, &current).map_err(AgentError::io(&current))?;
    }
    let config_path = state_dir.join(NODE_CONFIG_FILE);
    let text =
        serde_json::to_vec_pretty(&switch.config).map_err(AgentError::encode("node.json"))?;
    // Root's only, as the node channel writes it (it names the node's whole configuration).
    write_atomic(&config_path, &text, 0o600)?;
    apply_locked(
        &switch.config,
        state_dir,
        exe,
        tag,
        std::time::Duration::ZERO,
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests
mod tests {
    use super::*;

    #[test]
    fn a_staged_key_is_kept_until_switched_and_never_replaces_the_current_one() {
        let dir = tempfile::tempdir().unwrap();
        let first = stage(dir.path()).unwrap();
        assert_eq!(
            stage(dir.path()).unwrap(),
            first,
            "a second stage keeps the key"
        );
        assert!(!dir.path().join(crate::node::PRIVATE_KEY_FILE).exists());
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(dir.path().join(NEXT_KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_switch_to_a_key_never_staged_fails_before_changing_anything() {
        let dir = tempfile::tempdir().unwrap();
        let config = hybridgrid_core::plan::NodeConfig {
            hostname: "a-master".into(),
            hosts: Vec::new(),
            ip_forward: true,
            mss_clamp: true,
            routes: Vec::new(),
            wireguard: None,
            slurm: hybridgrid_core::plan::SlurmSetup::none([10, 1, 0, 5].into(), 6817),
            store_client: false,
            pair: None,
        };
        let switch = KeySwitch {
            config,
            next_key: true,
            preshared_keys: Some("{}".into()),
            munge_key: Some("c2VjcmV0".into()),
        };
        let e = super::switch(&switch, dir.path(), Path::new("/bin/false"), "t").unwrap_err();
        assert!(matches!(e, AgentError::NoNextKey { .. }), "{e}");
        assert!(!dir.path().join(PRESHARED_KEYS_FILE).exists());
        assert!(!dir.path().join(slurm::MUNGE_KEY_FILE).exists());
        assert!(!format!("{switch:?}").contains("c2VjcmV0"));
    }
}
