//! `doctor` on relay pairs (`gateway.standby`): a pair is ready to fail over when exactly one of
//! its relays holds the virtual address and the other stands by in VRRP's BACKUP state. The
//! state is what `agent relay-state` last logged: after a failed apply of its it may be older.

use std::collections::BTreeMap;

use super::{Diagnosis, Kind, PairRelayFacts};

impl Diagnosis<'_> {
    /// Pairs whose two relays both hold the address (VRRP between them does not pass), and
    /// standbys that could not take over (keepalived not running, or in FAULT). A relay that
    /// is down is already a finding of its own.
    pub(super) fn relay_pairs(&mut self) {
        let mut by_pair: BTreeMap<&str, Vec<&PairRelayFacts>> = BTreeMap::new();
        for r in &self.f.pair_relays {
            by_pair.entry(r.pair.as_str()).or_default().push(r);
        }
        for (pair, relays) in by_pair {
            let holders: Vec<&str> = relays
                .iter()
                .filter(|r| r.holds_address)
                .map(|r| r.node.as_str())
                .collect();
            let all_stand_by = relays.len() > 1 && holders.is_empty();
            if all_stand_by {
                self.push(
                    Kind::PairNotReady,
                    pair,
                    format!(
                        "no relay of pair {pair} holds its virtual address: the site's \
                         cross-site traffic has no way out"
                    ),
                    "Run `hybridgrid up` (it applies both relays again); `doctor` names a \
                     relay that cannot take the role."
                        .into(),
                );
            }
            if holders.len() > 1 {
                self.push(
                    Kind::PairNotReady,
                    pair,
                    format!(
                        "both relays of pair {pair} ({}) hold its virtual address: VRRP (IP \
                         protocol 112) does not pass between them",
                        holders.join(", ")
                    ),
                    "Admit all traffic within the site between the two relays (the site's \
                     `nodes` group does: run `hybridgrid up` to put a removed rule back)."
                        .into(),
                );
            }
            for r in relays.iter().filter(|r| !r.holds_address) {
                if let Some((why, fix)) = standby_unready(r) {
                    self.push(
                        Kind::PairNotReady,
                        &r.node,
                        format!(
                            "{}, the standby of pair {pair}, could not take over: {why}",
                            r.node
                        ),
                        fix.into(),
                    );
                }
            }
        }
    }
}

/// Why a standby could not take over, and what to do; `None` when it stands by.
fn standby_unready(r: &PairRelayFacts) -> Option<(&'static str, &'static str)> {
    match r.vrrp.as_deref() {
        None => Some((
            "keepalived does not run on it",
            "Run `hybridgrid up`: the agent starts keepalived again.",
        )),
        Some("FAULT") => Some((
            "it is in VRRP's FAULT state (its tunnel device or its forwarding is down, or it \
             stays out after both relays held the address)",
            "Its supervisor repairs its data path within seconds; otherwise run `hybridgrid up`.",
        )),
        Some(_) => None,
    }
}
