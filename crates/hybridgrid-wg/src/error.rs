use std::io;
use std::path::PathBuf;

/// Errors of WireGuard device handling. The message is each variant's doc comment; a variant
/// with a `#[source]` names what failed and where, and its cause is the source's own text.
#[derive(Debug, displaydoc::Display, thiserror::Error)]
#[non_exhaustive]
pub enum WgError {
    // The interface name is not a valid Linux interface name.
    /// invalid interface name {0:?}: need 1-15 characters, no '/', whitespace or ':'
    InvalidIfname(String),

    // A key is not 32 bytes of base64 (or hex, on the UAPI socket).
    /// invalid WireGuard key: {0}
    InvalidKey(String),

    // The desired configuration lists the same peer public key twice.
    /// desired config lists peer {0} more than once
    DuplicatePeer(String),

    // No userspace device answers on the UAPI socket (not running, or wrong socket dir).
    /// cannot connect to WireGuard UAPI socket {path}
    Connect {
        /// Socket path tried.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: io::Error,
    },

    // Reading or writing the UAPI socket failed or timed out.
    /// I/O error on WireGuard UAPI socket {path}
    Io {
        /// Socket path.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: io::Error,
    },

    // The device answered a request with a non-zero errno.
    /// WireGuard device {ifname} rejected the {op} request: errno={errno}
    Rejected {
        /// Interface name.
        ifname: String,
        /// `get` or `set`.
        op: &'static str,
        /// errno from the device.
        errno: i64,
    },

    // The device's answer does not follow the UAPI protocol.
    /// malformed UAPI response from {ifname}: {detail}
    Protocol {
        /// Interface name.
        ifname: String,
        /// What was wrong.
        detail: String,
    },

    // `wg(8)`, which drives kernel devices over netlink, failed or is missing.
    /// wg(8) failed for {ifname}: {detail}
    Tool {
        /// Interface name.
        ifname: String,
        /// What `wg` said, or why it could not run.
        detail: String,
    },

    // Another daemon already serves this UAPI socket.
    /// UAPI socket {0} is already served by a running daemon
    SocketInUse(PathBuf),

    // Setting up the UAPI socket of the userspace device failed.
    /// cannot set up UAPI socket {path}
    Socket {
        /// Socket path.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: io::Error,
    },

    // Creating or starting the userspace device failed.
    /// cannot start userspace WireGuard device {ifname}: {detail}
    DeviceStart {
        /// Interface name.
        ifname: String,
        /// gotatun's error, flattened (it is not a `std::error::Error`).
        detail: String,
    },

    // The userspace device stopped on a fatal error.
    /// userspace WireGuard device {0} failed
    DeviceFailed(String),

    // Creating the async runtime or signal handlers for the daemon failed.
    /// cannot set up the daemon runtime
    Runtime(#[source] io::Error),
}
