//! What the lifecycle commands report, the same documents for every provider.

use std::net::Ipv4Addr;

use hybridgrid_core::diff::Change;
use hybridgrid_core::plan::{NodePlan, Role};
use serde::{Deserialize, Serialize};

/// What `up` did. `rounds[0]` is exactly the change list `plan` showed before it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UpReport {
    pub format_version: u32,
    pub provider: String,
    /// Per round, the changes applied, in order (the plan document's `Change` objects).
    pub rounds: Vec<Vec<Change>>,
    /// Changes the provider could make only in part, with why (`up` does not retry them).
    pub partial: Vec<String>,
    /// What is still pending and why (tunnels without a handshake, keys not reported yet), in
    /// words: each of `pending`'s notes.
    pub notes: Vec<String>,
    /// The same, by kind and node, for scripts and tests.
    #[serde(default)]
    pub pending: Vec<Pending>,
    pub seconds: f64,
}

/// Something `up` leaves pending once its provider settled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    pub kind: PendingKind,
    /// The node it is about (for a tunnel, the relay that has no handshake).
    pub node: String,
    /// In words, with what to do.
    pub note: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PendingKind {
    /// A relay has not reported its WireGuard public key (openstack: on its console).
    NoPublicKey,
    /// A relay has no WireGuard handshake with a peer yet.
    NoHandshake,
    /// A booted node did not answer over the node channel: the next `up` configures it.
    NoAnswer,
}

impl Pending {
    pub fn new(kind: PendingKind, node: &str, note: String) -> Self {
        Pending {
            kind,
            node: node.to_owned(),
            note,
        }
    }
}

impl UpReport {
    /// Every change applied, in words (`Change::summary`), in order.
    pub fn applied(&self) -> impl Iterator<Item = String> + '_ {
        self.rounds.iter().flatten().map(Change::summary)
    }

    pub fn change_count(&self) -> usize {
        self.rounds.iter().map(Vec::len).sum()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotDeleted {
    pub site: String,
    pub kind: String,
    pub name: String,
    pub id: Option<String>,
    pub error: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DownReport {
    /// What was removed, in words (`site: kind name (id)`, a namespace, a state directory).
    pub deleted: Vec<String>,
    /// What could not be removed, with the reason. Empty: nothing of the cluster is left.
    pub not_deleted: Vec<NotDeleted>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    pub format_version: u32,
    pub cluster: String,
    pub nodes: Vec<NodeStatus>,
    pub tunnels: Vec<TunnelStatus>,
    pub reachability: Vec<Reach>,
    /// The ages of the keys `up` keeps on this machine (the relays' own: `tunnels[].key_age_s`).
    #[serde(default)]
    pub keys: KeyAges,
}

impl StatusReport {
    /// Every node that should exist up (an on-demand worker asleep is at rest, not down) and
    /// every probed pair reachable.
    pub fn healthy(&self) -> bool {
        self.nodes.iter().all(|n| n.up || n.on_demand) && self.reachability.iter().all(|r| r.ok)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub name: String,
    pub site: String,
    pub role: Role,
    pub lan_ip: Ipv4Addr,
    pub tunnel_ip: Option<Ipv4Addr>,
    pub public_ip: Option<Ipv4Addr>,
    pub up: bool,
    /// The node's Slurm state as the controller sees it (`sinfo`), for Slurm nodes.
    #[serde(default)]
    pub slurm: Option<String>,
    /// An on-demand worker: not `up` is its resting state (powered down in Slurm), no fault.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub on_demand: bool,
    /// A relay of a pair (`gateway.standby`), as the provider found it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pair: Option<PairState>,
}

/// Which relay of a pair speaks for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PairState {
    /// It holds the pair's virtual address: the site's traffic passes it.
    Active,
    /// Its partner is active; it takes over when that one fails.
    Standby,
}

impl NodeStatus {
    /// `up` (for a relay of a pair `active` or `standby`), `asleep` (an on-demand worker that
    /// does not exist now) or `DOWN`.
    pub fn state_word(&self) -> &'static str {
        match (self.up, self.on_demand, self.pair) {
            (true, _, Some(PairState::Active)) => "active",
            (true, _, Some(PairState::Standby)) => "standby",
            (true, _, None) => "up",
            (false, true, _) => "asleep",
            (false, false, _) => "DOWN",
        }
    }

    /// Whether reachability probes include it: every node that should exist now.
    pub fn is_probed(&self) -> bool {
        self.up || !self.on_demand
    }

    /// A planned node's row: its addresses from the plan, `up` and `slurm` as observed.
    pub fn of(node: &NodePlan, up: bool, slurm: Option<String>) -> Self {
        NodeStatus {
            name: node.name.clone(),
            site: node.site.clone(),
            role: node.role,
            lan_ip: node.lan_ip,
            tunnel_ip: node.tunnel_ip,
            public_ip: node.public_ip,
            up,
            slurm,
            on_demand: node.on_demand,
            pair: None,
        }
    }
}

/// A handshake older than this is no session any more (WireGuard's reject-after-time): the
/// tunnel is broken, whoever looks at it (`status`, `graph`, `doctor`).
pub const HANDSHAKE_STALE_S: u64 = 180;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TunnelStatus {
    pub node: String,
    pub peer: String,
    pub endpoint: Option<String>,
    /// Seconds since the latest handshake; `None` if there was none.
    pub handshake_age_s: Option<u64>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    /// Whether the pair has a preshared key.
    #[serde(default)]
    pub preshared_key: bool,
    /// Seconds since `node`'s own WireGuard key was made (`rotate` makes a new one).
    #[serde(default)]
    pub key_age_s: Option<u64>,
}

/// How old the keys kept on this machine are (seconds since made; `None` where there is none),
/// and whether the cluster's keys are due for `rotate` (`tunnel.rotate_every`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct KeyAges {
    pub munge_s: Option<u64>,
    pub preshared_s: Option<u64>,
    /// The oldest key of the cluster: these two and every relay's (`tunnels[].key_age_s`).
    #[serde(default)]
    pub oldest_s: Option<u64>,
    /// `tunnel.rotate_every` in seconds.
    #[serde(default)]
    pub rotate_every_s: Option<u64>,
    /// The oldest key is at least `rotate_every_s` old.
    #[serde(default)]
    pub due: bool,
}

impl KeyAges {
    /// The ages of the keys kept here, with the relays' keys' ages, against `rotate_every_s`.
    pub fn new(
        munge_s: Option<u64>,
        preshared_s: Option<u64>,
        relay_keys_s: impl IntoIterator<Item = Option<u64>>,
        rotate_every_s: Option<u64>,
    ) -> Self {
        let oldest_s = relay_keys_s
            .into_iter()
            .chain([munge_s, preshared_s])
            .flatten()
            .max();
        KeyAges {
            munge_s,
            preshared_s,
            oldest_s,
            rotate_every_s,
            due: rotate_every_s
                .zip(oldest_s)
                .is_some_and(|(every, age)| age >= every),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reach {
    pub from: String,
    pub to: String,
    pub ok: bool,
}

#[cfg(test)]
mod key_ages_tests {
    use super::KeyAges;

    #[test]
    fn the_oldest_key_of_all_decides_whether_the_keys_are_due() {
        let ages = KeyAges::new(Some(100), Some(50), [Some(300), None], Some(200));
        assert_eq!(ages.oldest_s, Some(300));
        assert!(ages.due, "a relay's key is older than rotate_every");
        assert!(!KeyAges::new(Some(100), Some(50), [Some(150)], Some(200)).due);
        assert!(
            !KeyAges::new(Some(900), None, [], None).due,
            "no rotate_every"
        );
        assert!(
            !KeyAges::new(None, None, [None], Some(1)).due,
            "no key known"
        );
    }
}
