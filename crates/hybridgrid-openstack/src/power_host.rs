//! Where the power service on the master keeps its files, and what the provider reads there
//! when it runs in it ([`PowerHost`]); the service itself is `crate::power`.

use std::path::PathBuf;

use crate::error::{OsError, Result};
use crate::userdata::AGENT_STATE_DIR;

/// The service's files on the master: `cluster.json` and `clouds.yaml` (both 0600).
pub const POWER_CONFIG_DIR: &str = "/etc/hybridgrid/power";
/// The service's state root on the master: its ledger, known hosts and SSH key.
pub const POWER_STATE_DIR: &str = "/var/lib/hybridgrid/power";
/// The full `hybridgrid` on the master (the other nodes carry only the agent).
pub const POWER_BINARY: &str = "/usr/local/bin/hybridgrid";
/// The systemd unit running the service.
pub const POWER_UNIT: &str = "hybridgrid-power";
pub(crate) const SSH_KEY: &str = "id_ed25519";

/// The provider as the power service on the master runs it.
#[derive(Debug, Clone)]
pub struct PowerHost {
    /// The service's SSH key (private half; the public one beside it, `.pub`).
    pub ssh_key: PathBuf,
    /// The cluster's munge key as the master's agent keeps it.
    pub munge_key: PathBuf,
}

impl PowerHost {
    /// The paths `up` sets up on the master.
    pub fn on_master() -> Self {
        PowerHost {
            ssh_key: PathBuf::from(POWER_STATE_DIR).join(SSH_KEY),
            munge_key: PathBuf::from(AGENT_STATE_DIR).join(hybridgrid_agent::slurm::MUNGE_KEY_FILE),
        }
    }

    pub fn public_key_path(&self) -> PathBuf {
        let mut p = self.ssh_key.clone().into_os_string();
        p.push(".pub");
        PathBuf::from(p)
    }

    /// The service's public key, for the user data of the workers it makes.
    pub fn public_key(&self) -> Result<String> {
        let path = self.public_key_path();
        std::fs::read_to_string(&path)
            .map(|k| k.trim().to_owned())
            .map_err(|source| OsError::SshPublicKey { path, source })
    }

    pub fn read_munge_key(&self) -> Result<Vec<u8>> {
        std::fs::read(&self.munge_key).map_err(|source| OsError::PowerHostFile {
            path: self.munge_key.clone(),
            source,
        })
    }
}
