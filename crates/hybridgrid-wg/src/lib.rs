//! WireGuard device handling for hybridgrid.
//!
//! This crate owns everything between "the node should have this WireGuard config" and the
//! device: the userspace device daemon (gotatun behind the standard UAPI unix socket, see
//! [`run_userspace_device`]), a small client for the cross-platform UAPI text protocol, the
//! [`Backend`] choice (userspace or kernel), the desired/observed state types and a pure
//! [`diff`] between them, and applying only what changed. Keys are plain 32-byte arrays: key
//! generation lives in the core crate.
//!
//! Touching only changed peers matters here: gotatun applies any change to an existing peer by
//! removing and re-adding it, which resets its session and counters.
//!
//! The device's data path uses the kernel's offloads (TSO on the TUN device, UDP segmentation
//! on the underlay socket) around gotatun's own device; see [`Offload`].
//!
//! Addresses, MTU and link state are not set here; the agent does that with `ip`.

mod backend;
mod diff;
mod error;
mod state;
mod task;
mod tun_offload;
mod uapi;
mod udp_gso;
mod userspace;
pub mod wgtool;

pub use backend::{Backend, DEFAULT_SOCKET_DIR, read_status};
pub use diff::{DeviceChanges, PeerChange, diff};
pub use error::WgError;
pub use state::{
    DesiredDevice, DesiredPeer, DeviceState, Key, PeerState, key_from_base64, key_to_base64,
};
pub use userspace::{
    DEFAULT_UDP_BUFFER_BYTES, Offload, UserspaceOptions, run_userspace_device,
    serve_userspace_device,
};
