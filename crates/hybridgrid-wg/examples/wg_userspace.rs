//! What `hybridgrid wg-userspace IFNAME` does, for manual runs:
//! `cargo run -p hybridgrid-wg --example wg_userspace -- IFNAME [SOCKET_DIR]`, then drive it
//! with `wg` (standard socket dir) and stop it with Ctrl-C or SIGTERM.

use hybridgrid_wg::{UserspaceOptions, WgError, run_userspace_device};

fn main() -> Result<(), WgError> {
    let mut args = std::env::args().skip(1);
    let ifname = args.next().unwrap_or_else(|| "wg0".to_owned());
    let mut opts = UserspaceOptions::default();
    if let Some(dir) = args.next() {
        opts.socket_dir = dir.into();
    }
    run_userspace_device(&ifname, &opts)
}
