use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::diff::{DeviceChanges, diff};
use crate::state::{DesiredDevice, DeviceState};
use crate::{WgError, uapi, wgtool};

/// Where `wg` and wireguard-go look for UAPI sockets.
pub const DEFAULT_SOCKET_DIR: &str = "/var/run/wireguard";

/// How a WireGuard device is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// A userspace daemon (gotatun, wireguard-go) serving `<socket_dir>/<ifname>.sock`.
    Userspace {
        /// Directory of the UAPI sockets.
        socket_dir: PathBuf,
    },
    /// The kernel module, configured over generic netlink by `wg(8)` (wireguard-tools).
    Kernel,
}

pub(crate) fn validate_ifname(ifname: &str) -> Result<(), WgError> {
    // The name becomes a socket path: no separators or dot-names.
    let ok = (1..=15).contains(&ifname.len())
        && ifname != "."
        && ifname != ".."
        && !ifname
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control());
    if ok {
        Ok(())
    } else {
        Err(WgError::InvalidIfname(ifname.to_owned()))
    }
}

impl Backend {
    /// The userspace backend with the standard socket directory.
    pub fn userspace() -> Self {
        Backend::Userspace {
            socket_dir: PathBuf::from(DEFAULT_SOCKET_DIR),
        }
    }

    /// [`Backend::Kernel`] if `ip link add type wireguard` works here (needs `CAP_NET_ADMIN`),
    /// else the standard userspace backend.
    pub fn detect() -> Self {
        if kernel_module_works() {
            Backend::Kernel
        } else {
            Backend::userspace()
        }
    }

    /// Reads the device's configuration, handshake times and counters.
    pub fn read_status(&self, ifname: &str) -> Result<DeviceState, WgError> {
        validate_ifname(ifname)?;
        match self {
            Backend::Userspace { socket_dir } => {
                uapi::get(&uapi::socket_path(socket_dir, ifname), ifname)
            }
            Backend::Kernel => wgtool::read(ifname),
        }
    }

    /// Sends `changes` (computed against `desired` by [`diff`]) in one UAPI `set`; nothing is
    /// sent when they are empty.
    pub fn apply(
        &self,
        ifname: &str,
        desired: &DesiredDevice,
        changes: &DeviceChanges,
    ) -> Result<(), WgError> {
        validate_ifname(ifname)?;
        if changes.is_empty() {
            return Ok(());
        }
        match self {
            Backend::Userspace { socket_dir } => uapi::set(
                &uapi::socket_path(socket_dir, ifname),
                ifname,
                &uapi::set_request(desired, changes),
            ),
            Backend::Kernel => wgtool::apply(ifname, desired, changes),
        }
    }

    /// Reads the device, diffs against `desired` and applies the difference. Returns what was
    /// changed (empty when the device already matched).
    pub fn sync(&self, ifname: &str, desired: &DesiredDevice) -> Result<DeviceChanges, WgError> {
        desired.validate()?;
        let observed = self.read_status(ifname)?;
        let changes = diff(&observed, desired);
        self.apply(ifname, desired, &changes)?;
        Ok(changes)
    }
}

fn kernel_module_works() -> bool {
    let probe = format!("hgwgp{}", std::process::id() % 10_000_000);
    let ip = |args: &[&str]| {
        Command::new("ip")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !ip(&["link", "add", &probe, "type", "wireguard"]) {
        return false;
    }
    ip(&["link", "del", &probe]);
    true
}

/// Status of `ifname` for `hybridgrid status`: from the standard userspace socket if there is
/// one, else through `wg(8)` for a kernel device, else the connect error.
pub fn read_status(ifname: &str) -> Result<DeviceState, WgError> {
    validate_ifname(ifname)?;
    let userspace = Backend::userspace();
    let sock = uapi::socket_path(Path::new(DEFAULT_SOCKET_DIR), ifname);
    if !sock.exists() && is_kernel_wireguard(ifname) {
        return Backend::Kernel.read_status(ifname);
    }
    userspace.read_status(ifname)
}

fn is_kernel_wireguard(ifname: &str) -> bool {
    std::fs::read_to_string(format!("/sys/class/net/{ifname}/uevent"))
        .is_ok_and(|u| u.lines().any(|l| l == "DEVTYPE=wireguard"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifname_validation() {
        for ok in ["wg0", "hg-mesh", "a", "x23456789012345"] {
            assert!(validate_ifname(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".", "..", "a/b", "wg 0", "x234567890123456", "wg0:1"] {
            assert!(validate_ifname(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn kernel_backend_reports_a_missing_device_as_a_tool_error() {
        let err = Backend::Kernel.read_status("hgwt-none0").unwrap_err();
        assert!(matches!(err, WgError::Tool { .. }), "{err}");
    }

    #[test]
    fn missing_socket_is_a_connect_error() {
        let b = Backend::Userspace {
            socket_dir: PathBuf::from("/nonexistent-hgwt"),
        };
        let err = b.read_status("wg0").unwrap_err();
        assert!(matches!(err, WgError::Connect { .. }), "{err}");
    }
}
