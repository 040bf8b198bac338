//! The plan: everything a cluster needs, derived by a pure function from the validated cluster and
//! the observed state (which carries the nodes' public keys and public IPs once they exist).
//!
//! Architecture invariant: [`layout`] does no I/O, reads no clock and draws no randomness. Values the
//! cloud has not allocated yet (public IPs, public keys of nodes not yet booted) are `None` and shown
//! as pending; running the plan again after they exist fills them in.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::addr;
use crate::change::Change;
use crate::keys::PublicKey;
use crate::model::{ALL_PARTITION, Cluster, DataSource, Provider, SLURMCTLD_PORT, SLURMD_PORT};
pub use crate::node::{
    NodeConfig, PartitionMembers, Protocol, RESULTS_PORT, RelayPair, Remote, ResultsStore, Role,
    Route, SgRule, SlurmRole, SlurmSetup, WG_INTERFACE, WgInterface, WgPeer,
};
use crate::observed::{MeasuredSize, Observed, ObservedSite};
pub use crate::slurm_conf::{Partition, PowerSaving, SlurmPlan};

/// Version of the JSON plan document (`hybridgrid plan --json`); bumped on incompatible changes.
pub const PLAN_FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// Always `PLAN_FORMAT_VERSION`.
    pub format_version: u32,
    pub cluster: String,
    pub provider: Provider,
    pub tunnel: TunnelPlan,
    pub sites: Vec<SitePlan>,
    pub nodes: Vec<NodePlan>,
    pub slurm: SlurmPlan,
    pub datasets: Vec<DatasetPlan>,
    /// `/etc/hosts` entries of every node (the same on all nodes, so held once).
    pub hosts: Vec<(Ipv4Addr, String)>,
    /// What `up` would do, from the observed state to this plan, in the order it does it.
    pub changes: Vec<Change>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TunnelPlan {
    pub cidr: Ipv4Net,
    pub port: u16,
    pub mtu: u16,
    pub keepalive: u16,
    /// A preshared key on every pair of relays: each relay's agent reads its pairs' keys from
    /// its state (`PRESHARED_KEYS_FILE`), which the provider fills.
    #[serde(default)]
    pub preshared_keys: bool,
    /// `tunnel.rotate_every` in seconds: `status` says when the keys are due, and
    /// `rotate --when-due` rotates only then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotate_every_s: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SitePlan {
    pub name: String,
    pub subnet: Ipv4Net,
    pub master: bool,
    pub underlay_mtu: u16,
    pub router_ip: Ipv4Addr,
    /// Where the site's data store (object storage stand-in) listens.
    pub data_store_ip: Ipv4Addr,
    /// The node that relays this site's traffic to the other sites (of a pair: the first).
    pub relay: String,
    /// Where the site's other nodes send cross-site traffic: the relay's address, or a pair's
    /// virtual address.
    pub next_hop: Ipv4Addr,
    /// A relay pair's shared identity and both relays (`gateway.standby`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pair: Option<SitePair>,
    pub cloud: Option<String>,
    pub network: Option<String>,
    pub external_network: Option<String>,
    pub security_groups: Vec<SecurityGroup>,
    pub allowed_address_pairs: Vec<AddressPairs>,
    /// local: the WAN conditions emulated on what leaves the site.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wan: Option<crate::model::Wan>,
}

/// A site's relay pair as the site sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SitePair {
    /// The name the pair goes by in the mesh: `<site>-gw`.
    pub identity: String,
    /// The active relay's virtual address on the site LAN; the pair's public IP points at it.
    pub vip: Ipv4Addr,
    pub relays: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecurityGroup {
    /// Cloud-side name, unique per cluster: `<cluster>-<site>-nodes` or `<cluster>-<site>-gateway`.
    pub name: String,
    /// Nodes whose ports carry this group.
    pub members: Vec<String>,
    pub rules: Vec<SgRule>,
}

/// Addresses a node's port may send from besides its own (Neutron allowed-address pairs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressPairs {
    pub node: String,
    pub port_ip: Ipv4Addr,
    pub pairs: Vec<Ipv4Net>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodePlan {
    /// Hostname and Slurm node name, `<site>-master`, `<site>-gw` or `<site>-<group>-<n>`.
    pub name: String,
    pub site: String,
    pub role: Role,
    pub lan_ip: Ipv4Addr,
    /// Relays only.
    pub tunnel_ip: Option<Ipv4Addr>,
    /// Relays only: the floating IP; `None` until the cloud allocated it.
    pub public_ip: Option<Ipv4Addr>,
    pub cpus: u32,
    pub memory_mib: u64,
    pub flavor: Option<String>,
    pub image: Option<String>,
    /// Relays only: the node's WireGuard interface, one peer per other relay (full mesh).
    pub wireguard: Option<WgInterface>,
    /// A worker Slurm wakes when jobs need it (`on_demand: true`): it exists only while Slurm
    /// has it powered up, and its absence is no drift.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub on_demand: bool,
    /// A relay of its site's standby pair (`gateway.standby`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pair: Option<RelayPair>,
    /// openstack, a relay of a pair: its own floating IP, where this machine reaches it by SSH
    /// (`public_ip`, the pair's, reaches only the active relay, and neither before VRRP runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub own_public_ip: Option<Ipv4Addr>,
}

impl NodePlan {
    /// Whether the node relays its site's traffic to the other sites: it holds a tunnel
    /// address. A gateway always; the master unless its site has a relay pair.
    pub fn is_relay(&self) -> bool {
        self.tunnel_ip.is_some()
    }

    /// The name the node's site's relay goes by in the mesh (peers, floating IP, preshared
    /// keys): a pair's identity, else the relay's own name.
    pub fn mesh_name(&self) -> &str {
        self.pair.as_ref().map_or(&self.name, |p| &p.identity)
    }

    /// Where this machine reaches the relay itself: a pair's relay at its own public IP only
    /// (the pair's reaches whichever relay is active), any other at its public IP.
    pub fn reach_ip(&self) -> Option<Ipv4Addr> {
        match self.pair {
            Some(_) => self.own_public_ip,
            None => self.public_ip,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatasetPlan {
    pub name: String,
    pub site: String,
    #[serde(flatten)]
    pub source: DataSource,
    /// What a job is given: `s3://bucket/prefix` for data in the site's store, a location as
    /// written.
    pub url: String,
    /// The Slurm partition that runs jobs next to this dataset.
    pub partition: String,
}

impl DatasetPlan {
    /// The bucket in the site's object store, if the dataset lives there.
    pub fn bucket(&self) -> Option<&str> {
        match &self.source {
            DataSource::Store { bucket, .. } => Some(bucket),
            DataSource::Location { .. } => None,
        }
    }
}

/// Node names: stable, hostname-valid, documented in `docs/cluster-file.md`.
pub fn relay_name(site: &str, role: Role) -> String {
    match role {
        Role::Master => format!("{site}-master"),
        _ => format!("{site}-gw"),
    }
}

/// The relays of a standby pair: `<site>-gw-a` and `<site>-gw-b` (a worker's name ends in a
/// number, so none is ever one of these). Their mesh identity is [`relay_name`]'s gateway name.
pub fn pair_relay_names(site: &str) -> [String; 2] {
    [format!("{site}-gw-a"), format!("{site}-gw-b")]
}

/// A worker's CPUs and memory as Slurm is told them: the cluster file's, else its flavor's (as
/// the provider observed it) but never more than the booted node's `slurmd -C` counts (so
/// slurmctld never drains it for "Low RealMemory"), else 1 CPU and 1024 MiB.
fn worker_size(
    group: &crate::model::WorkerGroup,
    site: Option<&ObservedSite>,
    measured: Option<MeasuredSize>,
) -> (u32, u64) {
    let flavor = group
        .spec
        .flavor
        .as_ref()
        .and_then(|f| site?.flavors.get(f));
    let cpus = group
        .cpus
        .or(flavor.map(|f| at_most(f.vcpus, measured.map(|m| m.cpus))))
        .unwrap_or(1);
    let memory = group
        .memory_mib
        .or(flavor.map(|f| {
            at_most(
                crate::slurm_conf::usable_memory_mib(f.ram_mib),
                measured.map(|m| m.real_memory_mib),
            )
        }))
        .unwrap_or(1024);
    (cpus, memory)
}

/// The flavor's figure, lowered to what the node counted when it counted less.
fn at_most<T: Ord>(from_flavor: T, counted: Option<T>) -> T {
    match counted {
        Some(c) => c.min(from_flavor),
        None => from_flavor,
    }
}

pub fn worker_name(site: &str, group: &str, index: u32) -> String {
    format!("{site}-{group}-{index}")
}

/// Lays the cluster out: sites, nodes, addresses, groups, pairs, the mesh, Slurm — everything
/// but the changes ([`crate::reconcile::plan`] adds those). Pure.
pub(crate) fn layout(cluster: &Cluster, observed: &Observed) -> Plan {
    let overlay = cluster.tunnel.cidr;
    // Tunnel rank: the master first, then the other sites in file order.
    let ranked: Vec<_> = std::iter::once(cluster.master_site())
        .chain(cluster.sites.iter().filter(|s| !s.master))
        .collect();
    let mut nodes: Vec<NodePlan> = Vec::new();
    for (index, site) in cluster.sites.iter().enumerate() {
        let rank = ranked.iter().position(|s| s.name == site.name).unwrap_or(0) as u32;
        let tunnel_ip = addr::tunnel_ip(overlay, rank);
        if site.standby {
            if site.master {
                nodes.push(relay_node(site, None, observed));
            }
            let own_ips = cluster.provider == Provider::OpenStack;
            nodes.extend(pair_nodes(site, index, tunnel_ip, own_ips, observed));
        } else {
            nodes.push(relay_node(site, tunnel_ip, observed));
        }
        nodes.extend(worker_nodes(site, observed));
    }
    let hosts: Vec<(Ipv4Addr, String)> = nodes.iter().map(|n| (n.lan_ip, n.name.clone())).collect();
    mesh(cluster, observed, &mut nodes);
    let sites: Vec<SitePlan> = cluster
        .sites
        .iter()
        .map(|site| site_plan(cluster, site, &nodes))
        .collect();
    let slurm = slurm_plan(cluster, &nodes);
    Plan {
        format_version: PLAN_FORMAT_VERSION,
        cluster: cluster.name.clone(),
        provider: cluster.provider,
        tunnel: TunnelPlan {
            cidr: overlay,
            port: cluster.tunnel.port,
            mtu: cluster.tunnel.mtu,
            keepalive: cluster.tunnel.keepalive,
            preshared_keys: cluster.tunnel.preshared_keys,
            rotate_every_s: cluster.tunnel.rotate_every_s,
        },
        sites,
        nodes,
        slurm,
        datasets: dataset_plans(cluster),
        hosts,
        changes: Vec::new(),
    }
}

/// The site's relay pair: two gateways sharing the site's tunnel address (and, through their
/// identity, its key, public IP and preshared keys), at the top of the subnet. With `own_ips`
/// (openstack) each relay also has a public IP of its own, for SSH.
fn pair_nodes(
    site: &crate::model::Site,
    index: usize,
    tunnel_ip: Option<Ipv4Addr>,
    own_ips: bool,
    observed: &Observed,
) -> Vec<NodePlan> {
    let identity = relay_name(&site.name, Role::Gateway);
    let names = pair_relay_names(&site.name);
    let ip =
        |member: u32| addr::pair_relay_ip(site.subnet, member).unwrap_or(Ipv4Addr::UNSPECIFIED);
    let vip = addr::pair_vip(site.subnet).unwrap_or(Ipv4Addr::UNSPECIFIED);
    (0..2u32)
        .map(|member| {
            let other = 1 - member;
            let mut node = relay_node(site, tunnel_ip, observed);
            node.name = names[member as usize].clone();
            node.role = Role::Gateway;
            node.lan_ip = ip(member);
            node.public_ip = observed.public_ip(&identity);
            node.own_public_ip = own_ips.then(|| observed.public_ip(&node.name)).flatten();
            node.pair = Some(RelayPair {
                identity: identity.clone(),
                vip: Ipv4Net::new(vip, site.subnet.prefix_len()).unwrap_or_default(),
                lan_ip: ip(member),
                partner: names[other as usize].clone(),
                partner_ip: ip(other),
                // Unique per LAN is what VRRP needs; per cluster costs nothing more.
                router_id: u8::try_from(index % 255 + 1).unwrap_or(1),
                router_ip: addr::router_ip(site.subnet).unwrap_or(Ipv4Addr::UNSPECIFIED),
            });
            node
        })
        .collect()
}

/// The site's relay: the master at the master site, a gateway elsewhere. With `tunnel_ip`
/// `None`, the master of a site whose relays are a pair: a node like the others there.
fn relay_node(
    site: &crate::model::Site,
    tunnel_ip: Option<Ipv4Addr>,
    observed: &Observed,
) -> NodePlan {
    let role = if site.master {
        Role::Master
    } else {
        Role::Gateway
    };
    let name = relay_name(&site.name, role);
    NodePlan {
        public_ip: tunnel_ip.and(observed.public_ip(&name)),
        name,
        site: site.name.clone(),
        role,
        lan_ip: addr::relay_ip(site.subnet).unwrap_or(Ipv4Addr::UNSPECIFIED),
        tunnel_ip,
        cpus: 1,
        memory_mib: 1024,
        flavor: site.gateway.flavor.clone(),
        image: site.gateway.image.clone(),
        wireguard: None,
        on_demand: false,
        pair: None,
        own_public_ip: None,
    }
}

/// The site's workers, group by group, numbered from 1 in each group; their addresses in file
/// order across the groups.
fn worker_nodes(site: &crate::model::Site, observed: &Observed) -> Vec<NodePlan> {
    let mut nodes = Vec::new();
    let mut index = 0u32;
    for group in &site.workers {
        for n in 1..=group.count {
            let name = worker_name(&site.name, &group.name, n);
            let measured = observed.nodes.get(&name).and_then(|o| o.measured);
            let (cpus, memory_mib) = worker_size(group, observed.sites.get(&site.name), measured);
            nodes.push(NodePlan {
                public_ip: None,
                name,
                site: site.name.clone(),
                role: Role::Worker,
                lan_ip: addr::worker_ip(site.subnet, index).unwrap_or(Ipv4Addr::UNSPECIFIED),
                tunnel_ip: None,
                cpus,
                memory_mib,
                flavor: group.spec.flavor.clone(),
                image: group.spec.image.clone(),
                wireguard: None,
                on_demand: group.on_demand,
                pair: None,
                own_public_ip: None,
            });
            index += 1;
        }
    }
    nodes
}

/// One end of the mesh: a site's relay, or its pair under the pair's identity.
struct MeshEnd {
    name: String,
    site: String,
    tunnel_ip: Option<Ipv4Addr>,
    public_ip: Option<Ipv4Addr>,
}

/// The relays' full WireGuard mesh: each relay's device with every other site's relay (or
/// pair) as a peer (its tunnel address and its site's subnet), keys and endpoints as far as
/// they are observed. Both relays of a pair get the same device: one identity, one key.
fn mesh(cluster: &Cluster, observed: &Observed, nodes: &mut [NodePlan]) {
    let mut ends: Vec<MeshEnd> = Vec::new();
    for n in nodes.iter().filter(|n| n.is_relay()) {
        if !ends.iter().any(|e| e.name == n.mesh_name()) {
            ends.push(MeshEnd {
                name: n.mesh_name().to_owned(),
                site: n.site.clone(),
                tunnel_ip: n.tunnel_ip,
                public_ip: n.public_ip,
            });
        }
    }
    let subnet_of: BTreeMap<&str, Ipv4Net> = cluster
        .sites
        .iter()
        .map(|s| (s.name.as_str(), s.subnet))
        .collect();
    let key_of = |end: &str| mesh_key(nodes, observed, end);
    let keys: BTreeMap<String, Option<PublicKey>> = ends
        .iter()
        .map(|e| (e.name.clone(), key_of(&e.name)))
        .collect();
    for node in nodes.iter_mut().filter(|n| n.is_relay()) {
        let peers = ends
            .iter()
            .filter(|end| end.site != node.site)
            .map(|end| {
                let mut allowed_ips: Vec<Ipv4Net> = end
                    .tunnel_ip
                    .map(|ip| Ipv4Net::new(ip, 32).unwrap_or_default())
                    .into_iter()
                    .collect();
                allowed_ips.push(subnet_of[end.site.as_str()]);
                WgPeer {
                    node: end.name.clone(),
                    site: end.site.clone(),
                    public_key: keys[&end.name],
                    endpoint: end
                        .public_ip
                        .map(|ip| SocketAddrV4::new(ip, cluster.tunnel.port)),
                    allowed_ips,
                    persistent_keepalive: (cluster.tunnel.keepalive > 0)
                        .then_some(cluster.tunnel.keepalive),
                }
            })
            .collect();
        node.wireguard = Some(WgInterface {
            name: WG_INTERFACE.to_owned(),
            address: Ipv4Net::new(
                node.tunnel_ip.unwrap_or(Ipv4Addr::UNSPECIFIED),
                cluster.tunnel.cidr.prefix_len(),
            )
            .unwrap_or_default(),
            listen_port: cluster.tunnel.port,
            mtu: cluster.tunnel.mtu,
            public_key: keys[node.mesh_name()],
            preshared_keys: cluster.tunnel.preshared_keys,
            peers,
        });
    }
}

/// The public key a mesh end is known by: the relay's own, or for a pair the key its relays
/// report (they hold the same one; the first that reports it counts).
fn mesh_key(nodes: &[NodePlan], observed: &Observed, end: &str) -> Option<PublicKey> {
    nodes
        .iter()
        .filter(|n| n.is_relay() && n.mesh_name() == end)
        .find_map(|n| observed.nodes.get(&n.name).and_then(|o| o.public_key))
}

fn dataset_plans(cluster: &Cluster) -> Vec<DatasetPlan> {
    cluster
        .datasets
        .iter()
        .map(|d| DatasetPlan {
            name: d.name.clone(),
            site: d.site.clone(),
            source: d.source.clone(),
            url: d.source.url(),
            partition: d.site.clone(),
        })
        .collect()
}

fn site_plan(cluster: &Cluster, site: &crate::model::Site, nodes: &[NodePlan]) -> SitePlan {
    let relays: Vec<&NodePlan> = nodes
        .iter()
        .filter(|n| n.site == site.name && n.is_relay())
        .collect();
    let relay = relays.first().expect("every site has a relay node");
    let pair = relay.pair.as_ref().map(|p| SitePair {
        identity: p.identity.clone(),
        vip: p.vip.addr(),
        relays: relays.iter().map(|n| n.name.clone()).collect(),
    });
    let members: Vec<String> = nodes
        .iter()
        .filter(|n| n.site == site.name)
        .map(|n| n.name.clone())
        .collect();
    // Every other site's subnet and the overlay: where cross-site traffic comes from.
    let remote_sources: Vec<Ipv4Net> = cluster
        .sites
        .iter()
        .filter(|s| s.name != site.name)
        .map(|s| s.subnet)
        .chain(std::iter::once(cluster.tunnel.cidr))
        .collect();
    let mut pairs: Vec<Ipv4Net> = remote_sources.clone();
    // A pair's relays send from the virtual address too (whichever holds it).
    pairs.extend(pair.as_ref().and_then(|p| Ipv4Net::new(p.vip, 32).ok()));
    pairs.sort();
    SitePlan {
        name: site.name.clone(),
        subnet: site.subnet,
        master: site.master,
        underlay_mtu: site.underlay_mtu,
        router_ip: addr::router_ip(site.subnet).unwrap_or(Ipv4Addr::UNSPECIFIED),
        data_store_ip: addr::data_store_ip(site.subnet).unwrap_or(Ipv4Addr::UNSPECIFIED),
        relay: relay.name.clone(),
        next_hop: pair.as_ref().map_or(relay.lan_ip, |p| p.vip),
        cloud: site.cloud.clone(),
        network: site.network.clone(),
        external_network: site.external_network.clone(),
        wan: site.wan,
        security_groups: vec![
            SecurityGroup {
                name: format!("{}-{}-nodes", cluster.name, site.name),
                members,
                rules: node_rules(cluster, site, &remote_sources),
            },
            SecurityGroup {
                name: format!("{}-{}-gateway", cluster.name, site.name),
                members: relays.iter().map(|n| n.name.clone()).collect(),
                rules: gateway_rules(cluster, nodes, relay),
            },
        ],
        allowed_address_pairs: relays
            .iter()
            .map(|n| AddressPairs {
                node: n.name.clone(),
                port_ip: n.lan_ip,
                pairs: pairs.clone(),
            })
            .collect(),
        pair,
    }
}

/// The rules of the site's `nodes` group: everything within the site; ICMP, TCP, UDP and
/// Slurm's ports from every other site and the overlay; SSH from the admin networks.
fn node_rules(
    cluster: &Cluster,
    site: &crate::model::Site,
    remote_sources: &[Ipv4Net],
) -> Vec<SgRule> {
    let mut rules = vec![SgRule {
        protocol: Protocol::Any,
        ports: None,
        remote: Remote::Cidr(site.subnet),
        description: "all traffic within the site".into(),
    }];
    let (srun_lo, srun_hi) = cluster.slurm.srun_port_range;
    for &src in remote_sources {
        let from = describe_source(cluster, src);
        for (protocol, ports, what) in [
            (Protocol::Icmp, None, "ICMP"),
            (Protocol::Tcp, None, "TCP"),
            (Protocol::Udp, None, "UDP"),
            (
                Protocol::Tcp,
                Some((SLURMCTLD_PORT, SLURMCTLD_PORT)),
                "slurmctld",
            ),
            (Protocol::Tcp, Some((SLURMD_PORT, SLURMD_PORT)), "slurmd"),
            (
                Protocol::Tcp,
                Some((srun_lo, srun_hi)),
                "srun (SrunPortRange)",
            ),
        ] {
            rules.push(SgRule {
                protocol,
                ports,
                remote: Remote::Cidr(src),
                description: format!("{what} from {from}"),
            });
        }
    }
    for &admin in &cluster.admin_cidrs {
        rules.push(SgRule {
            protocol: Protocol::Tcp,
            ports: Some((22, 22)),
            remote: Remote::Cidr(admin),
            description: "SSH from admin network".into(),
        });
    }
    rules
}

/// The rules of the site's `gateway` group. A stateful group lets a one-sided handshake through
/// only until conntrack forgets it: every relay admits every other site's relay (or pair, by
/// its one public IP), explicitly (one without its public IP yet is pending).
fn gateway_rules(cluster: &Cluster, nodes: &[NodePlan], relay: &NodePlan) -> Vec<SgRule> {
    let mut seen = std::collections::BTreeSet::new();
    nodes
        .iter()
        .filter(|n| n.is_relay() && n.site != relay.site)
        .filter(|peer| seen.insert(peer.mesh_name()))
        .map(|peer| SgRule {
            protocol: Protocol::Udp,
            ports: Some((cluster.tunnel.port, cluster.tunnel.port)),
            remote: match peer.public_ip {
                Some(ip) => Remote::Cidr(Ipv4Net::new(ip, 32).unwrap_or_default()),
                None => Remote::PendingPublicIp(peer.mesh_name().to_owned()),
            },
            description: format!("WireGuard from {}", peer.mesh_name()),
        })
        .collect()
}

fn describe_source(cluster: &Cluster, net: Ipv4Net) -> String {
    match cluster.sites.iter().find(|s| s.subnet == net) {
        Some(s) => format!("site {}", s.name),
        None => "the tunnel overlay".into(),
    }
}

fn slurm_plan(cluster: &Cluster, nodes: &[NodePlan]) -> SlurmPlan {
    let master = nodes
        .iter()
        .find(|n| n.role == Role::Master)
        .expect("a validated cluster has a master");
    let mut partitions: Vec<Partition> = cluster
        .sites
        .iter()
        .map(|s| Partition {
            name: s.name.clone(),
            nodes: nodes
                .iter()
                .filter(|n| n.site == s.name && n.role == Role::Worker)
                .map(|n| n.name.clone())
                .collect(),
            default: cluster.slurm.default_partition == s.name,
        })
        .collect();
    partitions.push(Partition {
        name: ALL_PARTITION.into(),
        nodes: nodes
            .iter()
            .filter(|n| n.role == Role::Worker)
            .map(|n| n.name.clone())
            .collect(),
        default: cluster.slurm.default_partition == ALL_PARTITION,
    });
    SlurmPlan {
        cluster_name: cluster.name.clone(),
        controller: master.name.clone(),
        controller_addr: master.lan_ip,
        ctld_port: SLURMCTLD_PORT,
        slurmd_port: SLURMD_PORT,
        srun_port_range: cluster.slurm.srun_port_range,
        slurmd_timeout: cluster.slurm.slurmd_timeout,
        message_timeout: cluster.slurm.message_timeout,
        partitions,
        power: power_saving(cluster, nodes),
    }
}

/// Slurm's power saving when some workers are on demand; the static ones are never suspended.
fn power_saving(cluster: &Cluster, nodes: &[NodePlan]) -> Option<PowerSaving> {
    let workers = || nodes.iter().filter(|n| n.role == Role::Worker);
    workers().any(|n| n.on_demand).then(|| PowerSaving {
        suspend_time: cluster.slurm.suspend_time,
        resume_timeout: cluster.slurm.resume_timeout,
        static_nodes: workers()
            .filter(|n| !n.on_demand)
            .map(|n| n.name.clone())
            .collect(),
    })
}

impl Plan {
    /// The complete configuration the agent applies on `node`, `/etc/hosts` included.
    pub fn node_config(&self, node: &NodePlan) -> NodeConfig {
        NodeConfig {
            hosts: self.hosts.clone(),
            ..self.node_config_without_hosts(node)
        }
    }

    /// As [`Plan::node_config`] with `hosts` left empty: for comparisons that treat the (shared,
    /// large) hosts list separately.
    pub fn node_config_without_hosts(&self, node: &NodePlan) -> NodeConfig {
        let remote_subnets = self
            .sites
            .iter()
            .filter(|s| s.name != node.site)
            .map(|s| s.subnet);
        let mut routes: Vec<Route> = if node.is_relay() {
            remote_subnets
                .map(|destination| Route {
                    destination,
                    via: None,
                    device: Some(WG_INTERFACE.to_owned()),
                    // Without it, replies leave with the tunnel address and anti-spoofing drops them.
                    src: Some(node.lan_ip),
                })
                .collect()
        } else {
            let next_hop = self.site(&node.site).map(|s| s.next_hop);
            remote_subnets
                .chain(std::iter::once(self.tunnel.cidr))
                .map(|destination| Route {
                    destination,
                    via: next_hop,
                    device: None,
                    src: None,
                })
                .collect()
        };
        routes.sort();
        NodeConfig {
            hostname: node.name.clone(),
            hosts: Vec::new(),
            ip_forward: node.is_relay(),
            mss_clamp: node.is_relay(),
            routes,
            wireguard: node.wireguard.clone(),
            slurm: self.slurm_setup(node),
            store_client: node.role == Role::Worker && self.site_has_store_data(&node.site),
            pair: node.pair.clone(),
        }
    }

    /// Whether every relay knows every peer's key and endpoint: only then can slurmd at other
    /// sites reach slurmctld, so only then do nodes get their Slurm role.
    pub fn mesh_complete(&self) -> bool {
        self.nodes
            .iter()
            .filter_map(|n| n.wireguard.as_ref())
            .all(|w| {
                w.public_key.is_some()
                    && w.peers
                        .iter()
                        .all(|p| p.public_key.is_some() && p.endpoint.is_some())
            })
    }

    /// The URL jobs upload their output to (the master's results store).
    pub fn results_url(&self) -> String {
        format!(
            "http://{}:{RESULTS_PORT}/results/",
            self.slurm.controller_addr
        )
    }

    /// The planned workers as `slurm.conf` names them.
    pub fn conf_nodes(&self) -> Vec<crate::slurm_conf::ConfNode<'_>> {
        self.nodes
            .iter()
            .filter(|n| n.role == Role::Worker)
            .map(|n| crate::slurm_conf::ConfNode {
                name: &n.name,
                addr: n.lan_ip,
                cpus: n.cpus,
                memory_mib: n.memory_mib,
                feature: &n.site,
                on_demand: n.on_demand,
            })
            .collect()
    }

    fn slurm_setup(&self, node: &NodePlan) -> SlurmSetup {
        let sl = &self.slurm;
        let mut setup = SlurmSetup::none(sl.controller_addr, sl.ctld_port);
        if !self.mesh_complete() {
            return setup;
        }
        match node.role {
            Role::Gateway => {}
            Role::Master => {
                setup.role = SlurmRole::Controller;
                setup.results_store = Some(ResultsStore {
                    addr: node.lan_ip,
                    port: RESULTS_PORT,
                    allow: self
                        .sites
                        .iter()
                        .map(|s| s.subnet)
                        .chain(std::iter::once(self.tunnel.cidr))
                        .collect(),
                });
                setup.conf = crate::slurm_conf::slurm_conf(&self.cluster, sl, &self.conf_nodes());
                setup.power_service = sl
                    .power
                    .as_ref()
                    .map(|_| crate::power::power_socket(&self.cluster));
                let workers: Vec<String> = self
                    .nodes
                    .iter()
                    .filter(|n| n.role == Role::Worker)
                    .map(|n| n.name.clone())
                    .collect();
                setup.partitions = sl
                    .partitions
                    .iter()
                    .map(|p| PartitionMembers {
                        name: p.name.clone(),
                        nodes: if p.name == ALL_PARTITION {
                            workers.clone()
                        } else {
                            p.nodes.clone()
                        },
                    })
                    .collect();
            }
            Role::Worker => {
                setup.role = SlurmRole::Compute;
                setup.cpus = node.cpus;
                setup.memory_mib = node.memory_mib;
                setup.feature = node.site.clone();
                setup.boot_at_start = node.on_demand && self.provider == Provider::Local;
            }
        }
        setup
    }

    pub fn node(&self, name: &str) -> Option<&NodePlan> {
        self.nodes.iter().find(|n| n.name == name)
    }

    pub fn site(&self, name: &str) -> Option<&SitePlan> {
        self.sites.iter().find(|s| s.name == name)
    }

    /// Whether `site` holds a dataset in its object store: such a site runs a store (local) or
    /// has one in its cloud (openstack), and its Slurm nodes get the store's keys.
    pub fn site_has_store_data(&self, site: &str) -> bool {
        self.datasets
            .iter()
            .any(|d| d.site == site && d.bucket().is_some())
    }

    /// Whether any site holds a dataset in its object store.
    pub fn has_store_data(&self) -> bool {
        self.datasets.iter().any(|d| d.bucket().is_some())
    }

    /// The buckets of `site`'s datasets, each once.
    pub fn site_buckets(&self, site: &str) -> Vec<&str> {
        let mut b: Vec<&str> = self
            .datasets
            .iter()
            .filter(|d| d.site == site)
            .filter_map(DatasetPlan::bucket)
            .collect();
        b.sort_unstable();
        b.dedup();
        b
    }

    /// The relay known in the mesh as `name` (a peer's `node`): the relay itself, or the first
    /// relay of the pair with that identity (both share its tunnel and public addresses).
    pub fn mesh_end(&self, name: &str) -> Option<&NodePlan> {
        self.nodes
            .iter()
            .find(|n| n.is_relay() && n.mesh_name() == name)
    }

    /// The site's relay (of a pair: the first).
    pub fn relay_of(&self, site: &str) -> Option<&NodePlan> {
        self.nodes.iter().find(|n| n.site == site && n.is_relay())
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}
