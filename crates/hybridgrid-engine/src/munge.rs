//! The cluster's munge key: 1024 random bytes made by `up` on this machine and kept in
//! `<state>/<cluster>/`[`KEY_FILE`] (0400), delivered by each provider into every Slurm node's
//! agent state (the node's own state on local, standard input over the node channel on
//! openstack), never in a plan, user data or log. `rotate --munge` makes a new one ([`renew`]).

use std::io::Read as _;
use std::path::Path;

use crate::state::{self, StateError};

/// The key, beside the cluster's ledger.
pub const KEY_FILE: &str = "munge.key";
const KEY_BYTES: usize = 1024;

/// The cluster's key, made if it has none. Nodes are configured in parallel: one thread makes
/// it, the others wait for it.
pub fn ensure(cluster_dir: &Path) -> Result<Vec<u8>, StateError> {
    static MAKING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = MAKING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let path = cluster_dir.join(KEY_FILE);
    match std::fs::read(&path) {
        Ok(key) if key.len() == KEY_BYTES => Ok(key),
        _ => renew(cluster_dir),
    }
}

/// A new key for the cluster, replacing the one it had.
pub fn renew(cluster_dir: &Path) -> Result<Vec<u8>, StateError> {
    let mut key = vec![0u8; KEY_BYTES];
    let random = Path::new("/dev/urandom");
    std::fs::File::open(random)
        .and_then(|mut f| f.read_exact(&mut key))
        .map_err(state::io(random))?;
    state::write_atomic(&cluster_dir.join(KEY_FILE), &key, 0o400)?;
    Ok(key)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests
mod tests {
    use super::*;

    #[test]
    fn a_key_is_kept_until_renewed() {
        let dir = tempfile::tempdir().unwrap();
        let first = ensure(dir.path()).unwrap();
        assert_eq!(first.len(), KEY_BYTES);
        assert_eq!(ensure(dir.path()).unwrap(), first);
        let second = renew(dir.path()).unwrap();
        assert_ne!(second, first);
        assert_eq!(ensure(dir.path()).unwrap(), second);
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o400);
    }
}
