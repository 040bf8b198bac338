//! The words the plan, the observed state and the changes share: node roles, security-group
//! rules, and a node's own configuration (what its agent applies).

use std::net::{Ipv4Addr, SocketAddrV4};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::keys::PublicKey;

/// The WireGuard interface every relay node gets.
pub const WG_INTERFACE: &str = "wg0";
/// A relay's preshared keys, in its agent's state directory (0600): `{"peer node": "base64"}`,
/// delivered by the provider (`hybridgrid_engine::preshared`).
pub const PRESHARED_KEYS_FILE: &str = "preshared-keys.json";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Master,
    Gateway,
    Worker,
}

impl Role {
    /// Master and gateways relay traffic between sites and hold a WireGuard interface.
    pub fn is_relay(self) -> bool {
        matches!(self, Role::Master | Role::Gateway)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Master => "master",
            Role::Gateway => "gateway",
            Role::Worker => "worker",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Any,
    Tcp,
    Udp,
    Icmp,
}

/// Where a rule admits traffic from.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Remote {
    Cidr(Ipv4Net),
    /// The public IP of this node, /32, once the cloud has allocated it.
    PendingPublicIp(String),
}

/// An ingress rule, IPv4 (egress stays open, as in OpenStack's default groups).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SgRule {
    pub protocol: Protocol,
    /// Inclusive destination port range; `None` for all ports.
    pub ports: Option<(u16, u16)>,
    pub remote: Remote,
    pub description: String,
}

impl SgRule {
    /// What the rule admits, without its description: `udp 51820 from 198.51.100.20/32`.
    pub fn match_text(&self) -> String {
        let proto = match self.protocol {
            Protocol::Any => "any",
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Icmp => "icmp",
        };
        let ports = match self.ports {
            None => String::new(),
            Some((a, b)) if a == b => format!(" {a}"),
            Some((a, b)) => format!(" {a}-{b}"),
        };
        let remote = match &self.remote {
            Remote::Cidr(net) => net.to_string(),
            Remote::PendingPublicIp(node) => format!("<public IP of {node}>/32"),
        };
        format!("{proto}{ports} from {remote}")
    }

    /// The rule's identity in the cloud: everything but the description.
    pub fn key(&self) -> (Protocol, Option<(u16, u16)>, Remote) {
        (self.protocol, self.ports, self.remote.clone())
    }
}

/// The node's own part of the plan, applied by `hybridgrid agent` on the node. Derived on demand
/// ([`Plan::node_config`]): workers of a site share most of it, and holding one per node would make
/// the plan of a large cluster quadratic in size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeConfig {
    pub hostname: String,
    /// `/etc/hosts` entries: every node of the cluster.
    pub hosts: Vec<(Ipv4Addr, String)>,
    pub ip_forward: bool,
    /// Clamp TCP MSS of forwarded SYNs to the path MTU (relays).
    pub mss_clamp: bool,
    pub routes: Vec<Route>,
    pub wireguard: Option<WgInterface>,
    pub slurm: SlurmSetup,
    /// A worker whose site holds a dataset in its object store: its jobs read it with an S3
    /// client (the agent installs `awscli` where the image lacks it).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub store_client: bool,
    /// A relay of a standby pair (`gateway.standby`): how it agrees with its partner which of
    /// them is active (VRRP). Both hold the site's tunnel identity; only the active one speaks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pair: Option<RelayPair>,
}

/// One relay's view of its site's relay pair.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayPair {
    /// The name the pair goes by in the mesh: its peers, floating IP and preshared keys
    /// (`<site>-gw`, what a single gateway is called).
    pub identity: String,
    /// The virtual address the active relay holds on the site LAN (the workers' next hop).
    pub vip: Ipv4Net,
    /// This relay's own LAN address (VRRP's adverts leave from it).
    pub lan_ip: Ipv4Addr,
    pub partner: String,
    pub partner_ip: Ipv4Addr,
    /// VRRP's virtual router id, unique among the cluster's pairs (1–255).
    pub router_id: u8,
    /// The site router: where the active relay's own traffic to the internet leaves, from the
    /// virtual address (so peers see the pair's one public IP).
    pub router_ip: Ipv4Addr,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Route {
    pub destination: Ipv4Net,
    /// Next hop on the LAN (workers), or `None` for a route through `device`.
    pub via: Option<Ipv4Addr>,
    pub device: Option<String>,
    /// Source address for traffic the node itself originates on this route.
    pub src: Option<Ipv4Addr>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WgInterface {
    pub name: String,
    /// The relay's tunnel IP with the overlay's prefix length.
    pub address: Ipv4Net,
    pub listen_port: u16,
    pub mtu: u16,
    /// `None` until the node made its key.
    pub public_key: Option<PublicKey>,
    /// Each peer under the pair's preshared key, which the provider delivers apart from this
    /// configuration (`PRESHARED_KEYS_FILE` in the agent's state; never in a plan).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub preshared_keys: bool,
    pub peers: Vec<WgPeer>,
}

impl WgInterface {
    /// The interface once every relay in `keys` uses its new key: this node's own public key and
    /// each peer's replaced where `keys` names the node (`rotate`: what a relay switches to, all
    /// relays at once). Pure.
    pub fn with_new_keys(
        &self,
        own: &str,
        keys: &std::collections::BTreeMap<String, PublicKey>,
    ) -> Self {
        let mut out = self.clone();
        if let Some(k) = keys.get(own) {
            out.public_key = Some(*k);
        }
        for p in &mut out.peers {
            if let Some(k) = keys.get(&p.node) {
                p.public_key = Some(*k);
            }
        }
        out
    }
}

/// What a node switches to in `rotate` (standard input of `agent rotate-switch`, the one way its
/// secrets travel). `Debug` shows no key.
#[derive(Clone, Serialize, Deserialize)]
pub struct KeySwitch {
    /// The node's configuration with its peers' new public keys (its `node.json` from now on).
    pub config: NodeConfig,
    /// The key the node staged becomes its WireGuard key.
    #[serde(default)]
    pub next_key: bool,
    /// The relay's pairs' preshared keys (peer → base64, JSON), as `PRESHARED_KEYS_FILE` holds them.
    #[serde(default)]
    pub preshared_keys: Option<String>,
    /// The cluster's new munge key (base64).
    #[serde(default)]
    pub munge_key: Option<String>,
}

impl std::fmt::Debug for KeySwitch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySwitch")
            .field("node", &self.config.hostname)
            .field("next_key", &self.next_key)
            .field("preshared_keys", &self.preshared_keys.is_some())
            .field("munge_key", &self.munge_key.is_some())
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WgPeer {
    pub node: String,
    pub site: String,
    /// `None` until the peer made its key: the peer cannot be configured yet.
    pub public_key: Option<PublicKey>,
    /// `None` until the peer's public IP is known.
    pub endpoint: Option<SocketAddrV4>,
    /// The peer's tunnel /32 and its site subnet: disjoint across peers.
    pub allowed_ips: Vec<Ipv4Net>,
    pub persistent_keepalive: Option<u16>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SlurmRole {
    Controller,
    Compute,
    None,
}

/// The node's part of Slurm, set up by the agent: munged everywhere, `slurmctld` on the
/// controller, configless `slurmd` on compute nodes; a compute node the running slurmctld does
/// not know (added later) joins as a dynamic node (`slurmd -Z`), so that growing the cluster
/// never restarts the controller.
///
/// `role` is [`SlurmRole::None`] on gateways and, on every node, until the WireGuard mesh is
/// complete: slurmd at the other sites reaches slurmctld only through the tunnels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlurmSetup {
    pub role: SlurmRole,
    pub controller_addr: Ipv4Addr,
    pub ctld_port: u16,
    /// Controller: the `slurm.conf` slurmctld starts with (and serves to configless slurmd).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub conf: String,
    /// Controller: each partition's planned members; the agent keeps slurmctld's partitions so
    /// and deletes dynamic nodes that left the plan.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub partitions: Vec<PartitionMembers>,
    /// Compute: what the node registers with.
    #[serde(default)]
    pub cpus: u32,
    #[serde(default)]
    pub memory_mib: u64,
    /// Compute: its site, as a Slurm feature.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub feature: String,
    /// Controller: the results store jobs upload their output to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub results_store: Option<ResultsStore>,
    /// Compute: slurmd reports the node booted when slurmd starts (`slurmd -b`). Slurm counts a
    /// woken node as up only once it reports a boot after the wake-up; the local provider's
    /// nodes share the host's kernel and with it its boot time.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub boot_at_start: bool,
    /// Controller with on-demand workers: the power service's socket, which Slurm's power
    /// programs ask to make and remove nodes ([`crate::power`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power_service: Option<String>,
}

/// The master's results store: HTTP PUT and GET of `/results/<file>` on `addr:port`, from
/// `allow` only (the cluster's site subnets and the tunnel).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultsStore {
    pub addr: Ipv4Addr,
    pub port: u16,
    pub allow: Vec<Ipv4Net>,
}

/// The results store's port on the master.
pub const RESULTS_PORT: u16 = 8080;

impl SlurmSetup {
    /// No Slurm on this node (gateways; everyone before the mesh is complete).
    pub fn none(controller_addr: Ipv4Addr, ctld_port: u16) -> Self {
        SlurmSetup {
            role: SlurmRole::None,
            controller_addr,
            ctld_port,
            conf: String::new(),
            partitions: Vec::new(),
            cpus: 0,
            memory_mib: 0,
            feature: String::new(),
            results_store: None,
            power_service: None,
            boot_at_start: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionMembers {
    pub name: String,
    pub nodes: Vec<String>,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests
mod key_switch_tests {
    use super::*;
    use crate::keys::PrivateKey;

    fn peer(node: &str, key: &str) -> WgPeer {
        WgPeer {
            node: node.into(),
            site: node.into(),
            public_key: Some(PrivateKey::from_seed(key).public_key()),
            endpoint: None,
            allowed_ips: Vec::new(),
            persistent_keepalive: None,
        }
    }

    #[test]
    fn new_keys_replace_the_own_key_and_those_of_the_peers_named_only() {
        let wg = WgInterface {
            name: "wg0".into(),
            address: "10.0.0.1/24".parse().unwrap(),
            listen_port: 51820,
            mtu: 1420,
            public_key: Some(PrivateKey::from_seed("a-old").public_key()),
            preshared_keys: true,
            peers: vec![peer("b", "b-old"), peer("c", "c-old")],
        };
        let new = |s: &str| PrivateKey::from_seed(s).public_key();
        let keys = [
            ("a".to_owned(), new("a-new")),
            ("b".to_owned(), new("b-new")),
        ]
        .into_iter()
        .collect();
        let after = wg.with_new_keys("a", &keys);
        assert_eq!(after.public_key, Some(new("a-new")));
        assert_eq!(after.peers[0].public_key, Some(new("b-new")));
        assert_eq!(
            after.peers[1].public_key,
            Some(new("c-old")),
            "c was not renewed"
        );
        assert_eq!(after.peers[0].allowed_ips, wg.peers[0].allowed_ips);
    }

    #[test]
    fn a_key_switch_shows_no_key_in_debug() {
        let switch = KeySwitch {
            config: NodeConfig {
                hostname: "n".into(),
                hosts: Vec::new(),
                ip_forward: false,
                mss_clamp: false,
                routes: Vec::new(),
                wireguard: None,
                slurm: SlurmSetup::none([10, 0, 0, 1].into(), 6817),
                store_client: false,
                pair: None,
            },
            next_key: true,
            preshared_keys: Some("{\"b\":\"cHNr\"}".into()),
            munge_key: Some("bXVuZ2U=".into()),
        };
        let text = format!("{switch:?}");
        assert!(
            !text.contains("cHNr") && !text.contains("bXVuZ2U="),
            "{text}"
        );
    }
}
