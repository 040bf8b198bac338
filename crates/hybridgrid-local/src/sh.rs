//! Running the system tools (`ip`, `nft`, `nsenter`) with their errors captured.

use std::path::Path;

use hybridgrid_agent::sys;

use crate::LocalError;

/// Runs a program, returns its stdout; a non-zero exit is an error with its stderr.
pub fn run(program: &str, args: &[&str]) -> Result<String, LocalError> {
    Ok(sys::run(program, args)?)
}

pub use sys::{net_of, ok};

/// `ip -n NS -batch -`: many changes to one namespace for one process start.
pub fn ip_batch(ns: Option<&str>, lines: &[String]) -> Result<(), LocalError> {
    Ok(sys::ip_batch(ns, lines)?)
}

/// Loads an nftables ruleset into a namespace (`None`: the current one), atomically.
pub fn nft(ns: Option<&str>, ruleset: &str) -> Result<(), LocalError> {
    Ok(sys::nft(ns, ruleset)?)
}

/// A path as one single-quoted shell word.
pub fn quote_path(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', "'\\''"))
}

pub fn netns_exists(ns: &str) -> bool {
    Path::new("/run/netns").join(ns).exists()
}

/// All named network namespaces on the host.
pub fn netns_list() -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}
