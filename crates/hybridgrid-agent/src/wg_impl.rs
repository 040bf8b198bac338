//! Which userspace WireGuard daemon the agent starts on relays. A benchmarking knob (hidden):
//! `HYBRIDGRID_WG_IMPL=wireguard-go` runs Debian's `wireguard-go` instead of the embedded gotatun
//! device, so the same cluster can compare both (`scripts/bench-local.sh`); `gotatun-none` and
//! `gotatun-tun` run the embedded device with fewer kernel offloads (`wg-userspace --offload`),
//! to measure each step. All serve the same UAPI socket, so `wg`, `status` and the agent work
//! unchanged.

use std::path::Path;
use std::process::Command;

pub const ENV: &str = "HYBRIDGRID_WG_IMPL";

/// The daemon's command line: `hybridgrid wg-userspace IF --tag TAG` (gotatun, the default) or
/// `wireguard-go -f IF`.
pub(crate) fn daemon_command(exe: &Path, ifname: &str, tag: &str) -> Command {
    let choice = std::env::var(ENV).unwrap_or_default();
    if choice == "wireguard-go" {
        let mut c = Command::new("wireguard-go");
        c.args(["-f", ifname]);
        // wireguard-go refuses to run on Linux without this.
        c.env("WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD", "1");
        c
    } else {
        let mut c = Command::new(exe);
        c.args(["wg-userspace", ifname, "--tag", tag]);
        // Only a value the daemon takes (else the default): a bad one would make it exit, and
        // its supervisor restart it, over and over. The benchmark checks what runs.
        if let Some(offload) = choice.strip_prefix("gotatun-")
            && offload.parse::<hybridgrid_wg::Offload>().is_ok()
        {
            c.args(["--offload", offload]);
        }
        c
    }
}

/// True if `cmdline` is one of the daemons [`daemon_command`] starts.
pub(crate) fn is_daemon(cmdline: &str) -> bool {
    cmdline.contains("wg-userspace") || cmdline.starts_with("wireguard-go ")
}
