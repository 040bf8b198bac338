use std::fmt;
use std::net::SocketAddr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ipnet::IpNet;

use crate::WgError;

/// A WireGuard key (private, public or preshared): 32 raw bytes.
pub type Key = [u8; 32];

/// Parses a key in the usual base64 form (`wg genkey` output).
pub fn key_from_base64(s: &str) -> Result<Key, WgError> {
    let bytes = STANDARD
        .decode(s.trim())
        .map_err(|e| WgError::InvalidKey(e.to_string()))?;
    bytes
        .try_into()
        .map_err(|v: Vec<u8>| WgError::InvalidKey(format!("{} bytes, want 32", v.len())))
}

/// Formats a key in the usual base64 form.
pub fn key_to_base64(key: &Key) -> String {
    STANDARD.encode(key)
}

/// Debug helper: public keys as base64, never private ones.
pub(crate) struct B64<'a>(pub &'a Key);

impl fmt::Debug for B64<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&key_to_base64(self.0))
    }
}

/// The configuration a node's WireGuard device should have.
#[derive(Clone, PartialEq, Eq)]
pub struct DesiredDevice {
    /// The device's private key.
    pub private_key: Key,
    /// UDP listen port; `None` leaves the device's current port alone.
    pub listen_port: Option<u16>,
    /// Firewall mark for outgoing packets; `None` leaves it alone, `Some(0)` clears it.
    pub fwmark: Option<u32>,
    /// The full peer set: peers not listed here are removed.
    pub peers: Vec<DesiredPeer>,
}

impl fmt::Debug for DesiredDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DesiredDevice")
            .field("private_key", &"<redacted>")
            .field("listen_port", &self.listen_port)
            .field("fwmark", &self.fwmark)
            .field("peers", &self.peers)
            .finish()
    }
}

impl DesiredDevice {
    /// Checks what the device would reject: the same peer twice.
    pub fn validate(&self) -> Result<(), WgError> {
        let mut seen = std::collections::HashSet::new();
        for p in &self.peers {
            if !seen.insert(p.public_key) {
                return Err(WgError::DuplicatePeer(key_to_base64(&p.public_key)));
            }
        }
        Ok(())
    }
}

/// One peer of a [`DesiredDevice`].
#[derive(Clone, PartialEq, Eq)]
pub struct DesiredPeer {
    /// The peer's public key.
    pub public_key: Key,
    /// Where to send to; `None` for a passive peer (its endpoint is learnt, never reset).
    pub endpoint: Option<SocketAddr>,
    /// Source addresses accepted from, and routed to, this peer.
    pub allowed_ips: Vec<IpNet>,
    /// Keepalive interval in seconds; `None` (or 0) is off.
    pub persistent_keepalive: Option<u16>,
    /// The pair's preshared key; `None`: none (the device's all-zero key).
    pub preshared_key: Option<Key>,
}

impl fmt::Debug for DesiredPeer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DesiredPeer")
            .field("public_key", &B64(&self.public_key))
            .field("endpoint", &self.endpoint)
            .field("allowed_ips", &self.allowed_ips)
            .field("persistent_keepalive", &self.persistent_keepalive)
            .field("preshared_key", &self.preshared_key.is_some())
            .finish()
    }
}

/// A device as reported by UAPI `get=1`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct DeviceState {
    /// The device's private key, if one is set.
    pub private_key: Option<Key>,
    /// Configured UDP listen port (0 = none/random).
    pub listen_port: u16,
    /// Firewall mark, if set.
    pub fwmark: Option<u32>,
    /// Peers in the order the device listed them.
    pub peers: Vec<PeerState>,
}

impl fmt::Debug for DeviceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceState")
            .field(
                "private_key",
                &self.private_key.map(|_| "<redacted>").unwrap_or("<none>"),
            )
            .field("listen_port", &self.listen_port)
            .field("fwmark", &self.fwmark)
            .field("peers", &self.peers)
            .finish()
    }
}

impl DeviceState {
    /// The peer with this public key, if present.
    pub fn peer(&self, public_key: &Key) -> Option<&PeerState> {
        self.peers.iter().find(|p| &p.public_key == public_key)
    }
}

/// One peer of a [`DeviceState`].
#[derive(Clone, Default, PartialEq, Eq)]
pub struct PeerState {
    /// The peer's public key.
    pub public_key: Key,
    /// The preshared key, if one is set (`Debug` shows only whether).
    pub preshared_key: Option<Key>,
    /// Current endpoint (configured or learnt).
    pub endpoint: Option<SocketAddr>,
    /// Allowed IPs as the device reports them.
    pub allowed_ips: Vec<IpNet>,
    /// Latest handshake, seconds since the Unix epoch; 0 = never.
    pub last_handshake_sec: u64,
    /// Nanosecond part of the latest handshake.
    pub last_handshake_nsec: u32,
    /// Bytes received from this peer.
    pub rx_bytes: u64,
    /// Bytes sent to this peer.
    pub tx_bytes: u64,
    /// Keepalive interval in seconds; `None` is off.
    pub persistent_keepalive: Option<u16>,
}

impl fmt::Debug for PeerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerState")
            .field("public_key", &B64(&self.public_key))
            .field("has_preshared_key", &self.preshared_key.is_some())
            .field("endpoint", &self.endpoint)
            .field("allowed_ips", &self.allowed_ips)
            .field("last_handshake_sec", &self.last_handshake_sec)
            .field("rx_bytes", &self.rx_bytes)
            .field("tx_bytes", &self.tx_bytes)
            .field("persistent_keepalive", &self.persistent_keepalive)
            .finish()
    }
}
