//! What a relay's WireGuard device reports (`hybridgrid agent wg-status` prints it as JSON): the
//! reading both providers bring to the engine's `status` and `doctor`.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// A WireGuard device as the agent reads it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WgStatus {
    pub listen_port: u16,
    pub peers: Vec<WgPeerStatus>,
    /// Seconds since the relay's private key was made (`rotate` makes a new one), when the agent
    /// was told its state directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_age_s: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WgPeerStatus {
    pub public_key: String,
    pub endpoint: Option<SocketAddr>,
    /// Unix seconds of the latest handshake; 0 if none yet.
    pub latest_handshake: u64,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    /// Whether the pair has a preshared key (never its value).
    #[serde(default)]
    pub preshared_key: bool,
}
