use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;

use ipnet::IpNet;

use crate::state::{B64, DesiredDevice, DesiredPeer, DeviceState, Key, PeerState};

/// What must be sent to a device to turn its observed state into the desired one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceChanges {
    /// The private key differs (or is unset).
    pub set_private_key: bool,
    /// New listen port.
    pub set_listen_port: Option<u16>,
    /// New firewall mark (0 clears it).
    pub set_fwmark: Option<u32>,
    /// Peer changes: removals first, then additions and updates in desired order.
    pub peers: Vec<PeerChange>,
}

impl DeviceChanges {
    /// True if the device already matches.
    pub fn is_empty(&self) -> bool {
        !self.set_private_key
            && self.set_listen_port.is_none()
            && self.set_fwmark.is_none()
            && self.peers.is_empty()
    }
}

/// A change to one peer. Only changed fields of an existing peer are set.
#[derive(Clone, PartialEq, Eq)]
pub enum PeerChange {
    /// A new peer.
    Add(DesiredPeer),
    /// An existing peer with some fields changed; `None` fields are unchanged.
    Update {
        /// The peer's public key.
        public_key: Key,
        /// New endpoint.
        endpoint: Option<SocketAddr>,
        /// New full allowed-IP list (replaces the old one).
        allowed_ips: Option<Vec<IpNet>>,
        /// New keepalive interval; `Some(0)` turns it off.
        persistent_keepalive: Option<u16>,
        /// New preshared key; `Some([0; 32])` removes it.
        preshared_key: Option<Key>,
    },
    /// A peer that is not desired any more.
    Remove {
        /// The peer's public key.
        public_key: Key,
    },
}

impl PeerChange {
    /// The public key of the peer this change is about.
    pub fn public_key(&self) -> &Key {
        match self {
            PeerChange::Add(p) => &p.public_key,
            PeerChange::Update { public_key, .. } | PeerChange::Remove { public_key } => public_key,
        }
    }
}

impl fmt::Debug for PeerChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerChange::Add(p) => f.debug_tuple("Add").field(p).finish(),
            PeerChange::Update {
                public_key,
                endpoint,
                allowed_ips,
                persistent_keepalive,
                preshared_key,
            } => f
                .debug_struct("Update")
                .field("public_key", &B64(public_key))
                .field("endpoint", endpoint)
                .field("allowed_ips", allowed_ips)
                .field("persistent_keepalive", persistent_keepalive)
                .field("preshared_key", &preshared_key.is_some())
                .finish(),
            PeerChange::Remove { public_key } => f
                .debug_struct("Remove")
                .field("public_key", &B64(public_key))
                .finish(),
        }
    }
}

/// Allowed IPs compared as the device stores them: host bits cleared, order and duplicates
/// ignored.
fn ip_set(ips: &[IpNet]) -> BTreeSet<IpNet> {
    ips.iter().map(IpNet::trunc).collect()
}

fn peer_update(observed: &PeerState, desired: &DesiredPeer) -> Option<PeerChange> {
    // A desired `None` endpoint means "passive": keep whatever was learnt.
    let endpoint = desired.endpoint.filter(|e| observed.endpoint != Some(*e));
    let allowed_ips = (ip_set(&observed.allowed_ips) != ip_set(&desired.allowed_ips))
        .then(|| desired.allowed_ips.clone());
    let want_ka = desired.persistent_keepalive.unwrap_or(0);
    let persistent_keepalive =
        (observed.persistent_keepalive.unwrap_or(0) != want_ka).then_some(want_ka);
    let preshared_key = (observed.preshared_key != desired.preshared_key)
        .then(|| desired.preshared_key.unwrap_or([0; 32]));
    if endpoint.is_none()
        && allowed_ips.is_none()
        && persistent_keepalive.is_none()
        && preshared_key.is_none()
    {
        return None;
    }
    Some(PeerChange::Update {
        public_key: desired.public_key,
        endpoint,
        allowed_ips,
        persistent_keepalive,
        preshared_key,
    })
}

/// Computes the changes that turn `observed` into `desired`. Pure; unchanged peers produce
/// nothing. A peer listed twice in `desired` counts once (first wins; see
/// [`DesiredDevice::validate`]).
pub fn diff(observed: &DeviceState, desired: &DesiredDevice) -> DeviceChanges {
    let by_key: HashMap<&Key, &PeerState> =
        observed.peers.iter().map(|p| (&p.public_key, p)).collect();
    let wanted: HashSet<&Key> = desired.peers.iter().map(|p| &p.public_key).collect();

    let mut peers: Vec<PeerChange> = observed
        .peers
        .iter()
        .filter(|p| !wanted.contains(&p.public_key))
        .map(|p| PeerChange::Remove {
            public_key: p.public_key,
        })
        .collect();

    let mut seen = HashSet::new();
    for want in &desired.peers {
        if !seen.insert(want.public_key) {
            continue;
        }
        match by_key.get(&want.public_key) {
            None => peers.push(PeerChange::Add(want.clone())),
            Some(have) => peers.extend(peer_update(have, want)),
        }
    }

    DeviceChanges {
        set_private_key: observed.private_key != Some(desired.private_key),
        set_listen_port: desired.listen_port.filter(|p| *p != observed.listen_port),
        set_fwmark: desired
            .fwmark
            .filter(|m| *m != observed.fwmark.unwrap_or(0)),
        peers,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn desired_peer(k: u8) -> DesiredPeer {
        DesiredPeer {
            public_key: [k; 32],
            endpoint: Some(format!("192.0.2.{k}:51820").parse().unwrap()),
            allowed_ips: vec![net(&format!("198.51.100.{k}/32"))],
            persistent_keepalive: Some(25),
            preshared_key: None,
        }
    }

    fn observed_peer(p: &DesiredPeer) -> PeerState {
        PeerState {
            public_key: p.public_key,
            endpoint: p.endpoint,
            allowed_ips: p.allowed_ips.clone(),
            persistent_keepalive: p.persistent_keepalive,
            preshared_key: p.preshared_key,
            last_handshake_sec: 1_700_000_000,
            rx_bytes: 100,
            tx_bytes: 200,
            ..PeerState::default()
        }
    }

    fn desired(peers: Vec<DesiredPeer>) -> DesiredDevice {
        DesiredDevice {
            private_key: [9; 32],
            listen_port: Some(51820),
            fwmark: None,
            peers,
        }
    }

    fn observed_of(d: &DesiredDevice) -> DeviceState {
        DeviceState {
            private_key: Some(d.private_key),
            listen_port: d.listen_port.unwrap_or(0),
            fwmark: None,
            peers: d.peers.iter().map(observed_peer).collect(),
        }
    }

    #[test]
    fn empty_device_gets_everything() {
        let d = desired(vec![desired_peer(1), desired_peer(2)]);
        let c = diff(&DeviceState::default(), &d);
        assert!(c.set_private_key);
        assert_eq!(c.set_listen_port, Some(51820));
        assert_eq!(c.set_fwmark, None);
        assert_eq!(
            c.peers,
            vec![
                PeerChange::Add(desired_peer(1)),
                PeerChange::Add(desired_peer(2))
            ]
        );
    }

    #[test]
    fn identical_state_is_no_change() {
        let d = desired(vec![desired_peer(1), desired_peer(2)]);
        let c = diff(&observed_of(&d), &d);
        assert!(c.is_empty(), "{c:?}");
        assert_eq!(c, DeviceChanges::default());
    }

    #[test]
    fn allowed_ips_compare_as_normalised_sets() {
        let mut d = desired(vec![desired_peer(1)]);
        let mut o = observed_of(&d);
        o.peers[0].allowed_ips = vec![net("10.1.0.0/16"), net("198.51.100.1/32")];
        // Reordered, duplicated and with host bits set: still the same set.
        d.peers[0].allowed_ips = vec![
            net("198.51.100.1/32"),
            net("10.1.2.3/16"),
            net("198.51.100.1/32"),
        ];
        assert!(diff(&o, &d).is_empty());
    }

    #[test]
    fn only_changed_peer_and_fields_are_updated() {
        let d0 = desired(vec![desired_peer(1), desired_peer(2), desired_peer(3)]);
        let o = observed_of(&d0);
        let mut d = d0.clone();
        d.peers[1].persistent_keepalive = Some(10);
        d.peers[1].allowed_ips.push(net("10.20.0.0/24"));
        let c = diff(&o, &d);
        assert!(!c.set_private_key);
        assert_eq!(c.set_listen_port, None);
        assert_eq!(
            c.peers,
            vec![PeerChange::Update {
                public_key: [2; 32],
                endpoint: None,
                allowed_ips: Some(d.peers[1].allowed_ips.clone()),
                persistent_keepalive: Some(10),
                preshared_key: None,
            }]
        );
    }

    #[test]
    fn keepalive_none_and_zero_are_off() {
        let mut d = desired(vec![desired_peer(1)]);
        d.peers[0].persistent_keepalive = None;
        let mut o = observed_of(&d);
        o.peers[0].persistent_keepalive = Some(0);
        assert!(diff(&o, &d).is_empty());

        o.peers[0].persistent_keepalive = Some(25);
        let c = diff(&o, &d);
        assert_eq!(
            c.peers,
            vec![PeerChange::Update {
                public_key: [1; 32],
                endpoint: None,
                allowed_ips: None,
                persistent_keepalive: Some(0),
                preshared_key: None,
            }]
        );
    }

    #[test]
    fn endpoint_change_and_passive_peer() {
        let mut d = desired(vec![desired_peer(1), desired_peer(2)]);
        let mut o = observed_of(&d);
        // Peer 1 moved; peer 2 is passive and its endpoint was learnt.
        d.peers[0].endpoint = Some("192.0.2.100:51820".parse().unwrap());
        d.peers[1].endpoint = None;
        o.peers[1].endpoint = Some("192.0.2.77:40000".parse().unwrap());
        let c = diff(&o, &d);
        assert_eq!(
            c.peers,
            vec![PeerChange::Update {
                public_key: [1; 32],
                endpoint: d.peers[0].endpoint,
                allowed_ips: None,
                persistent_keepalive: None,
                preshared_key: None,
            }]
        );
    }

    #[test]
    fn removed_peers_come_first() {
        let d0 = desired(vec![desired_peer(1), desired_peer(2)]);
        let o = observed_of(&d0);
        let d = desired(vec![desired_peer(3), desired_peer(2)]);
        let c = diff(&o, &d);
        assert_eq!(
            c.peers,
            vec![
                PeerChange::Remove {
                    public_key: [1; 32]
                },
                PeerChange::Add(desired_peer(3)),
            ]
        );
    }

    #[test]
    fn device_fields() {
        let mut d = desired(vec![]);
        let mut o = observed_of(&d);
        o.private_key = Some([8; 32]);
        o.listen_port = 1000;
        d.fwmark = Some(0x51);
        let c = diff(&o, &d);
        assert!(c.set_private_key);
        assert_eq!(c.set_listen_port, Some(51820));
        assert_eq!(c.set_fwmark, Some(0x51));
        assert!(c.peers.is_empty());

        // `None` means "leave alone".
        d.listen_port = None;
        d.fwmark = None;
        o.private_key = Some(d.private_key);
        assert!(diff(&o, &d).is_empty());

        // Clearing a mark is a change; an absent mark equals 0.
        o.fwmark = Some(7);
        d.fwmark = Some(0);
        assert_eq!(diff(&o, &d).set_fwmark, Some(0));
        o.fwmark = None;
        assert!(diff(&o, &d).is_empty());
    }

    #[test]
    fn duplicate_desired_peer_counts_once() {
        let d = desired(vec![desired_peer(1), desired_peer(1)]);
        assert!(d.validate().is_err());
        let c = diff(&DeviceState::default(), &d);
        assert_eq!(c.peers, vec![PeerChange::Add(desired_peer(1))]);
    }
}
