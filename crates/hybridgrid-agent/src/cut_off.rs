//! The third part of a pair relay's health: an active relay whose tunnel reaches no other site
//! gives the role to its partner. Every peer sends a keepalive each `tunnel.keepalive` seconds,
//! so an active relay that heard nothing from any of its peers for [`silent_for`] is cut off
//! (its own path out is broken: a port, a route, the cloud's edge) — or every other site is
//! down. It cannot tell which, and its standby (no peers: it speaks for nobody) cannot test the
//! tunnel either; so the partner's judgement is its own history: a relay that took the role
//! over from a cut-off partner does not hand it back until it heard a peer itself (the outage
//! is not the relays' own: both saw it; the memory survives a restart of the supervisor, in
//! the state folder). A remote site's outage thus costs at most one switch, never a flap. Only
//! a partner that says it is ready (healthy, not staying out) takes it over.
//!
//! The device is read every [`CHECK_EVERY`] on the active relay only (through `wg` for the
//! kernel's device: one short process then, none in the one-second look otherwise).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// How often an active relay reads its device's counters.
pub const CHECK_EVERY: Duration = Duration::from_secs(5);

/// How long no peer may have sent anything before the relay counts as cut off: two and a half
/// keepalive intervals (one lost keepalive is no outage). `None` without keepalives: an idle
/// peer is then silent too, and nothing can be judged.
pub fn silent_for(keepalive_s: Option<u16>) -> Option<Duration> {
    keepalive_s
        .filter(|k| *k > 0)
        .map(|k| Duration::from_millis(u64::from(k) * 2_500))
}

/// What the active relay last saw of each peer: its received bytes, and when they last grew.
#[derive(Debug, Default)]
pub struct CutOff {
    heard: BTreeMap<String, (u64, Instant)>,
    checked: Option<Instant>,
    cut_off: bool,
    /// Whether a peer's bytes grew since this relay became active.
    heard_a_peer: bool,
}

impl CutOff {
    /// Whether the relay is cut off now: while it holds the address, the device's counters
    /// every [`CHECK_EVERY`] (`read`: each peer's key and received bytes; `None` when the
    /// device cannot be read, which the device check judges); otherwise it forgets them.
    pub fn look(
        &mut self,
        holds: bool,
        silent_for: Option<Duration>,
        read: impl FnOnce() -> Option<Vec<(String, u64)>>,
    ) -> bool {
        let Some(limit) = silent_for.filter(|_| holds) else {
            *self = CutOff::default();
            return false;
        };
        if self.checked.is_some_and(|t| t.elapsed() < CHECK_EVERY) {
            return self.cut_off;
        }
        let now = Instant::now();
        self.checked = Some(now);
        if let Some(peers) = read() {
            self.cut_off = self.update(peers, now, limit);
        }
        self.cut_off
    }

    /// Whether a peer's bytes grew since this relay became active (its first reading only
    /// starts the count).
    pub fn heard_a_peer(&self) -> bool {
        self.heard_a_peer
    }

    /// Takes a reading in: a peer whose bytes grew (or that is new) was heard now. Cut off when
    /// there are peers and none was heard within `limit`.
    fn update(&mut self, peers: Vec<(String, u64)>, now: Instant, limit: Duration) -> bool {
        let mut heard = BTreeMap::new();
        for (key, rx) in peers {
            let at = match self.heard.get(&key) {
                Some((before, at)) if *before == rx => *at,
                Some(_) => {
                    self.heard_a_peer = true;
                    now
                }
                None => now,
            };
            heard.insert(key, (rx, at));
        }
        self.heard = heard;
        !self.heard.is_empty()
            && self
                .heard
                .values()
                .all(|(_, at)| now.duration_since(*at) >= limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relay_is_cut_off_when_no_peer_sent_anything_for_the_limit() {
        let limit = Duration::from_secs(60);
        let t0 = Instant::now();
        let mut c = CutOff::default();
        let peers = |a: u64, b: u64| vec![("a".to_owned(), a), ("b".to_owned(), b)];
        assert!(
            !c.update(peers(10, 10), t0, limit),
            "first reading: just heard"
        );
        assert!(!c.update(peers(10, 10), t0 + Duration::from_secs(59), limit));
        assert!(
            !c.heard_a_peer(),
            "the first reading is no word from a peer"
        );
        // One peer still talks: not cut off (another site may be down, this relay is not).
        assert!(!c.update(peers(10, 20), t0 + Duration::from_secs(61), limit));
        assert!(!c.update(peers(10, 20), t0 + Duration::from_secs(100), limit));
        assert!(c.update(peers(10, 20), t0 + Duration::from_secs(122), limit));
        assert!(c.heard_a_peer());
        assert!(
            !CutOff::default().update(Vec::new(), t0, limit),
            "no peers: nothing to judge"
        );
    }

    #[test]
    fn without_keepalives_nothing_is_judged_and_a_standby_forgets() {
        assert_eq!(silent_for(Some(0)), None);
        assert_eq!(silent_for(None), None);
        assert_eq!(silent_for(Some(25)), Some(Duration::from_millis(62_500)));
        let mut c = CutOff {
            cut_off: true,
            ..CutOff::default()
        };
        assert!(!c.look(false, silent_for(Some(25)), || None));
        assert!(c.heard.is_empty() && c.checked.is_none());
    }
}
