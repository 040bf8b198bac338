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
