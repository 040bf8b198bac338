//! The node's own supervisor: it keeps the node as its configuration says, without `up`.
//!
//! Every second it looks at what can go away cheaply (no process is started for a look): the
//! WireGuard device (`/proc/net/dev`), the Slurm daemons (their PID files), the planned routes
//! (`/proc/net/route`); a relay of a pair also writes its health for keepalived. Whatever is gone is applied again at once; every `period` the whole
//! configuration is applied again, for what a look does not see (peers, sysctls, the Slurm
//! controller's view).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use hybridgrid_core::plan::NodeConfig;

use crate::AgentError;
use crate::node::{APPLIED_FILE, NODE_CONFIG_FILE, apply_locked, interface_exists, lock};

/// The node's own supervisor (run by the process that holds the node's namespaces on local, by
/// a systemd unit on a cloud VM): a WireGuard device, Slurm daemon or planned route that is gone
/// is brought back within about a second; every `period`, the whole configuration in
/// `state_dir/node.json` is applied again, so peers and forwarding changed by hand come back.
/// `period` zero: no supervision. Never returns.
pub fn supervise(
    state_dir: &Path,
    exe: &Path,
    tag: &str,
    period: Duration,
    on_error: &dyn Fn(&AgentError),
) -> ! {
    let mut last = Instant::now();
    let mut heartbeat: Option<crate::vrrp::Heartbeat> = None;
    let mut config_file = Watched::new(state_dir.join(NODE_CONFIG_FILE));
    let mut applied_file = Watched::new(state_dir.join(APPLIED_FILE));
    crate::slurm::defer_controller_check();
    loop {
        std::thread::sleep(Duration::from_secs(1));
        reap_children();
        if period.is_zero() {
            continue;
        }
        // Only a node that applied once is supervised: `up` makes the first apply.
        let (Some(config), Some(applied)) = (config_file.get(), applied_file.get()) else {
            continue;
        };
        let pair = match pair_look(config, state_dir, &mut heartbeat) {
            Ok(look) => look,
            Err(e) => {
                on_error(&e);
                PairLook::Fine
            }
        };
        if pair == PairLook::GivingUp {
            continue;
        }
        if pair == PairLook::Repair
            || something_is_gone(config, applied, state_dir)
            || last.elapsed() >= period
        {
            last = Instant::now();
            // The configuration is read again under the lock: `up` may have written a newer
            // one while this waited for it.
            let result = lock(state_dir).and_then(|_lock| match config_file.get() {
                Some(config) => apply_locked(config, state_dir, exe, tag, Duration::ZERO).map(drop),
                None => Ok(()),
            });
            if let Err(e) = result {
                on_error(&e);
            }
        }
    }
}

/// A node's JSON file, parsed again only when it was replaced or changed (its inode, length
/// or modification time differ): the one-second look read and parsed both of a node's files,
/// which hold the whole cluster's `/etc/hosts`, and at 1,050 nodes that was a third of the
/// machine.
struct Watched {
    path: PathBuf,
    stamp: Option<(u64, u64, SystemTime)>,
    value: Option<NodeConfig>,
}

impl Watched {
    fn new(path: PathBuf) -> Self {
        Watched {
            path,
            stamp: None,
            value: None,
        }
    }

    /// The file's content as it is now; `None` if it is missing or does not parse.
    fn get(&mut self) -> Option<&NodeConfig> {
        use std::os::unix::fs::MetadataExt as _;
        let stamp = std::fs::metadata(&self.path)
            .ok()
            .and_then(|m| Some((m.ino(), m.len(), m.modified().ok()?)));
        if stamp.is_none() || stamp != self.stamp {
            self.value = std::fs::read_to_string(&self.path)
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok());
            self.stamp = stamp;
        }
        self.value.as_ref()
    }
}

/// What a relay of a pair must do after its one-second look.
#[derive(Debug, PartialEq, Eq)]
enum PairLook {
    /// Healthy, or not in a pair.
    Fine,
    /// Its data path is broken while it still holds the virtual address: keepalived is told
    /// (the health file) and the repair waits until the partner took the role, so the relay
    /// comes back as the standby and never speaks for the pair with a half-repaired path.
    GivingUp,
    /// Broken and no longer active, or its keepalived is gone: apply now.
    Repair,
}

/// A relay of a pair writes its health for keepalived every second (no process): its data path,
/// and whether it must yield to its partner (both hold the address: VRRP between them is lost;
/// or it is cut off from every site and its partner is ready), and tells its partner where it
/// stands.
fn pair_look(
    config: &NodeConfig,
    state_dir: &Path,
    heartbeat: &mut Option<crate::vrrp::Heartbeat>,
) -> Result<PairLook, AgentError> {
    let (Some(pair), Some(wg)) = (&config.pair, &config.wireguard) else {
        *heartbeat = None;
        return Ok(PairLook::Fine);
    };
    if heartbeat.is_none() {
        *heartbeat = Some(crate::vrrp::Heartbeat::open(pair, state_dir)?);
    }
    let holds = crate::vrrp::active(pair);
    let healthy = crate::vrrp::healthy(&wg.name);
    let mut must_yield = false;
    if let Some(h) = heartbeat.as_mut() {
        let keepalive = wg.peers.first().and_then(|p| p.persistent_keepalive);
        let cut_off = healthy
            && h.cut_off(holds, crate::cut_off::silent_for(keepalive), || {
                let status = crate::node::wg_status(&wg.name, None).ok()?;
                Some(
                    status
                        .peers
                        .into_iter()
                        .map(|p| (p.public_key, p.rx_bytes))
                        .collect(),
                )
            });
        must_yield = h.must_yield(holds, cut_off);
        // A relay about to give the address up says so now: its partner need not wait for
        // this word to go stale before it speaks for the pair.
        h.say(match (holds, healthy, cut_off) {
            (_, false, _) => crate::vrrp::Word::Unready,
            (true, true, true) => crate::vrrp::Word::CutOff,
            (true, true, false) => crate::vrrp::Word::Active,
            // Staying out (FAULT) it could not take over.
            (false, true, _) if !must_yield => crate::vrrp::Word::Ready,
            (false, true, _) => crate::vrrp::Word::Unready,
        });
    }
    crate::vrrp::write_health(state_dir, healthy && !must_yield)?;
    // Whether the device should have its peers changed since the last apply (keepalived's
    // notify ran while the partner's word still counted, say).
    let speaks = crate::vrrp::speaks(Some(pair), state_dir);
    let settled = crate::vrrp::noted_speaking(state_dir) == Some(speaks);
    Ok(match (healthy, crate::vrrp::running(state_dir).is_some()) {
        (true, true) if settled => PairLook::Fine,
        (false, true) if holds => PairLook::GivingUp,
        _ => PairLook::Repair,
    })
}

/// The WireGuard device, a Slurm daemon or a planned route is missing: a look, no process.
/// `applied`: what the agent last applied (its Slurm role says which daemons must run).
fn something_is_gone(config: &NodeConfig, applied: &NodeConfig, state_dir: &Path) -> bool {
    let device_gone = config
        .wireguard
        .as_ref()
        .is_some_and(|w| !interface_exists(&w.name));
    let daemon_dead = !crate::slurm::daemons_run(applied.slurm.role, state_dir);
    // A route deleted by hand came back only with the next full apply, and a worker's full
    // apply asks the Slurm controller, which that very route leads to (31 s on the test bed).
    let route_gone = std::fs::read_to_string("/proc/net/route").is_ok_and(|table| {
        let live = crate::routes::LiveRoutes::from_proc(&table);
        let speaks = crate::vrrp::speaks(config.pair.as_ref(), state_dir);
        !crate::vrrp::routes_now(config, speaks)
            .iter()
            .all(|r| live.has(r))
    });
    device_gone || daemon_dead || route_gone
}

/// Collects exited children (the WireGuard daemons this process started): no zombies.
fn reap_children() {
    use nix::sys::wait::{WaitPidFlag, waitpid};
    while let Ok(status) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
        if matches!(status, nix::sys::wait::WaitStatus::StillAlive) {
            break;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests
mod tests {
    use super::*;

    #[test]
    fn regression_the_look_parses_a_nodes_file_only_when_it_was_replaced() {
        use std::os::unix::fs::MetadataExt as _;
        let dir = std::env::temp_dir().join(format!("hg-watched-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("node.json");
        let mut watched = Watched::new(path.clone());
        assert!(watched.get().is_none(), "no file yet");
        let mut config = NodeConfig {
            hostname: "a-worker-1".into(),
            hosts: Vec::new(),
            ip_forward: false,
            mss_clamp: false,
            routes: Vec::new(),
            wireguard: None,
            slurm: hybridgrid_core::plan::SlurmSetup::none("10.0.0.1".parse().unwrap(), 6817),
            store_client: false,
            pair: None,
        };
        let replace = |config: &NodeConfig| {
            let text = serde_json::to_string(config).unwrap();
            crate::sys::write_atomic(&path, text.as_bytes(), 0o644).unwrap();
        };
        replace(&config);
        assert_eq!(
            watched.get().map(|c| c.hostname.clone()),
            Some(config.hostname.clone())
        );
        // Garbage of the same length written in place, its time set back: the look keeps what
        // it parsed (it did not read the file again).
        let meta = std::fs::metadata(&path).unwrap();
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        std::fs::write(&path, vec![b'x'; usize::try_from(meta.len()).unwrap()]).unwrap();
        file.set_modified(meta.modified().unwrap()).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().ino(), meta.ino());
        assert!(watched.get().is_some(), "unchanged stamp: not parsed again");
        config.hostname = "renamed".into();
        replace(&config);
        assert_eq!(
            watched.get().map(|c| c.hostname.clone()),
            Some("renamed".into())
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
