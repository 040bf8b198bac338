use std::io;
use std::path::PathBuf;

/// Errors of WireGuard device handling.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WgError {
    /// The interface name is not a valid Linux interface name.
    #[error("invalid interface name {0:?}: need 1-15 characters, no '/', whitespace or ':'")]
    InvalidIfname(String),

    /// A key is not 32 bytes of base64 (or hex, on the UAPI socket).
    #[error("invalid WireGuard key: {0}")]
    InvalidKey(String),

    /// The desired configuration lists the same peer public key twice.
    #[error("desired config lists peer {0} more than once")]
    DuplicatePeer(String),

    /// No userspace device answers on the UAPI socket (not running, or wrong socket dir).
    #[error("cannot connect to WireGuard UAPI socket {path}: {source}")]
    Connect {
        /// Socket path tried.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: io::Error,
    },

    /// Reading or writing the UAPI socket failed or timed out.
    #[error("I/O error on WireGuard UAPI socket {path}: {source}")]
    Io {
        /// Socket path.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: io::Error,
    },

    /// The device answered a request with a non-zero errno.
    #[error("WireGuard device {ifname} rejected the {op} request: errno={errno}")]
    Rejected {
        /// Interface name.
        ifname: String,
        /// `get` or `set`.
        op: &'static str,
        /// errno from the device.
        errno: i64,
    },

    /// The device's answer does not follow the UAPI protocol.
    #[error("malformed UAPI response from {ifname}: {detail}")]
    Protocol {
        /// Interface name.
        ifname: String,
        /// What was wrong.
        detail: String,
    },

    /// `wg(8)`, which drives kernel devices over netlink, failed or is missing.
    #[error("wg(8) failed for {ifname}: {detail}")]
    Tool {
        /// Interface name.
        ifname: String,
        /// What `wg` said, or why it could not run.
        detail: String,
    },

    /// Another daemon already serves this UAPI socket.
    #[error("UAPI socket {0} is already served by a running daemon")]
    SocketInUse(PathBuf),

    /// Setting up the UAPI socket of the userspace device failed.
    #[error("cannot set up UAPI socket {path}: {source}")]
    Socket {
        /// Socket path.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: io::Error,
    },

    /// Creating or starting the userspace device failed.
    #[error("cannot start userspace WireGuard device {ifname}: {detail}")]
    DeviceStart {
        /// Interface name.
        ifname: String,
        /// gotatun's error, flattened (it is not a `std::error::Error`).
        detail: String,
    },

    /// The userspace device stopped on a fatal error.
    #[error("userspace WireGuard device {0} failed")]
    DeviceFailed(String),

    /// Creating the async runtime or signal handlers for the daemon failed.
    #[error("cannot set up the daemon runtime: {0}")]
    Runtime(#[source] io::Error),
}
