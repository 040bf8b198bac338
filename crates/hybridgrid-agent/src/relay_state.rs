//! `agent relay-state`, keepalived's notify program on a relay of a pair: the configuration
//! applied again when VRRP moves the role (the device's peers and the routes follow who holds the
//! virtual address, [`crate::vrrp`]), and on taking over, every handshake started at once.

use std::path::Path;
use std::time::Duration;

use hybridgrid_core::node::NodeConfig;

use crate::AgentError;
use crate::sys;
use crate::vrrp::{active, start_handshakes};

/// `agent relay-state`: keepalived changed this relay's state (`vrrp`: what it appends — type,
/// name, state, priority). The configuration is applied again under the agent's lock, so the
/// device's peers follow the state; a relay that became active starts its handshakes at once.
pub fn state_changed(
    state_dir: &Path,
    exe: &Path,
    tag: &str,
    vrrp: &[String],
) -> Result<(), AgentError> {
    let read = || -> Result<NodeConfig, AgentError> {
        let path = state_dir.join(crate::node::NODE_CONFIG_FILE);
        let text = std::fs::read_to_string(&path).map_err(AgentError::io(&path))?;
        serde_json::from_str(&text).map_err(|source| AgentError::Json { path, source })
    };
    let became_active = vrrp.get(2).is_some_and(|s| s == "MASTER");
    if became_active && let Some(pair) = read()?.pair {
        // keepalived adds the address as it becomes master; the apply below goes by it.
        let _ = sys::wait_for("the pair's virtual address", Duration::from_secs(2), || {
            active(&pair).then_some(())
        });
    }
    // Read under the lock: `up` may have written a newer configuration meanwhile.
    let _lock = crate::node::lock(state_dir)?;
    let config = read()?;
    let report = crate::node::apply_locked(&config, state_dir, exe, tag, Duration::ZERO)?;
    if became_active && let Some(wg) = &config.wireguard {
        start_handshakes(wg);
    }
    log_line(
        state_dir,
        &format!("{} → {:?}", vrrp.join(" "), report.actions),
    );
    Ok(())
}

/// A line in the state folder's [`crate::vrrp::RELAY_STATE_LOG`] (keepalived discards the
/// program's output).
fn log_line(state_dir: &Path, line: &str) {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    sys::append_line(
        &state_dir.join(crate::vrrp::RELAY_STATE_LOG),
        &format!("{stamp:.3} {line}"),
    );
}
