//! Waiting for a booting relay to report its WireGuard public key on its console.
//!
//! A relay's key exists only once the node agent ran in cloud-init, a minute or more after the
//! server is ACTIVE. `up` waits for it while the boot visibly progresses (the console log grows),
//! so it returns a cluster whose tunnels can come up, and gives up early on a server whose
//! console is still (a hung guest; a hypervisor without a console log) or whose cloud-init
//! finished without a key (the user data failed: the console says why).

use hybridgrid_engine::{Pending, PendingKind};
use std::time::{Duration, Instant};

use crate::site::SiteOps;
use crate::userdata;

/// A console log unchanged for this long means the boot is not progressing.
const STILL_FOR: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_secs(3);
/// What cloud-init prints when it is done, whatever the outcome.
const CLOUD_INIT_DONE: &str = "Cloud-init v.";
const FINISHED: &str = " finished at ";

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum KeyWait {
    Reported,
    /// The console did not change for [`STILL_FOR`].
    NoProgress,
    /// cloud-init finished and printed no key.
    FinishedWithout,
    TimedOut(u64),
}

impl KeyWait {
    pub(crate) fn note(&self, node: &str) -> String {
        match self {
            KeyWait::Reported => format!("{node} reported its WireGuard public key"),
            KeyWait::NoProgress => format!(
                "{node} has not reported its WireGuard public key and its console log stopped \
                 changing: is it booting? (`openstack console log show`); run `up` again once it did"
            ),
            KeyWait::FinishedWithout => format!(
                "{node} finished cloud-init without reporting its WireGuard public key: its user \
                 data failed, see its console log (`openstack console log show`)"
            ),
            KeyWait::TimedOut(s) => format!(
                "{node} has not reported its WireGuard public key on its console yet (waited {s} \
                 s); run `up` again once it did"
            ),
        }
    }
}

/// Whether to observe again (a server finished building, a key appeared), and what to tell the
/// user about relays still without a key, from each site's (servers waited for, key waits).
pub(crate) fn settled(
    keyless: &[&str],
    per_site: Vec<(bool, Vec<(String, KeyWait)>)>,
) -> (bool, Vec<Pending>) {
    let mut observe_again = false;
    let mut pending = Vec::new();
    let no_key = |node: &str, note: String| Pending::new(PendingKind::NoPublicKey, node, note);
    let mut waited_for = std::collections::BTreeSet::new();
    for (waited, keys) in per_site {
        observe_again |= waited;
        for (node, outcome) in keys {
            match outcome {
                KeyWait::Reported => observe_again = true,
                other => pending.push(no_key(&node, other.note(&node))),
            }
            waited_for.insert(node);
        }
    }
    // Relays without a server to wait for (not created yet): pending too, unless observing again
    if !observe_again {
        for n in keyless.iter().filter(|n| !waited_for.contains(**n)) {
            let note = format!("{n} has not reported its WireGuard public key on its console yet");
            pending.push(no_key(n, note));
        }
    }
    (observe_again, pending)
}

/// Whether `console` shows cloud-init's final line.
pub(crate) fn cloud_init_finished(console: &str) -> bool {
    console
        .lines()
        .any(|l| l.contains(CLOUD_INIT_DONE) && l.contains(FINISHED))
}

/// Polls the relay's console until its key appears, the boot stops progressing or `limit` passed.
pub(crate) async fn await_relay_key(ops: &SiteOps, server_id: &str, limit: Duration) -> KeyWait {
    let t0 = Instant::now();
    let mut last = String::new();
    let mut changed = Instant::now();
    loop {
        let console = ops.console_output(server_id).await.unwrap_or_default();
        if userdata::public_key_from_console(&console).is_some() {
            return KeyWait::Reported;
        }
        if cloud_init_finished(&console) {
            return KeyWait::FinishedWithout;
        }
        if console != last {
            last = console;
            changed = Instant::now();
        } else if changed.elapsed() >= STILL_FOR {
            return KeyWait::NoProgress;
        }
        if t0.elapsed() >= limit {
            return KeyWait::TimedOut(t0.elapsed().as_secs());
        }
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cloud_init_final_line_is_recognised() {
        let done = "[  83.6] cloud-init[612]: Cloud-init v. 22.4.2 finished at Tue, 01 Dec 2026 \
                    22:24:49 +0000. Datasource DataSourceOpenStackLocal [net,ver=2].  Up 83.67 seconds";
        assert!(cloud_init_finished(done));
        assert!(!cloud_init_finished(
            "Cloud-init v. 22.4.2 running 'modules:final' at Tue, 01 Dec 2026 22:24:48 +0000."
        ));
        assert!(!cloud_init_finished(
            "FAKE CONSOLE OUTPUT\nANOTHER\nLAST LINE"
        ));
    }
}
