//! Stage two of reading a cluster file: raw values → the validated domain model.
//!
//! Every check runs even after an earlier one failed, so the user sees all problems at once. A
//! [`Cluster`] exists only when there were no errors; warnings travel alongside it.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::addr;
use crate::diag::{Diagnostic, Diagnostics, Pos, did_you_mean};
use crate::raw::{self, NumberOrWord, RawCluster, Sp};

/// The underlay MTU of an OpenStack tenant network on VXLAN, the common case in research clouds.
pub const DEFAULT_UNDERLAY_MTU: u16 = 1450;
/// WireGuard's per-packet overhead with an IPv6 outer header (what `wg-quick` assumes).
pub const WG_OVERHEAD: u16 = 80;
/// The overhead with an IPv4 outer header: a tunnel MTU above underlay − 60 cannot work at all.
pub const WG_OVERHEAD_IPV4: u16 = 60;
pub const MIN_TUNNEL_MTU: u16 = 1280;
pub const SLURMCTLD_PORT: u16 = 6817;
pub const SLURMD_PORT: u16 = 6818;
/// The name of the partition that spans every site.
pub const ALL_PARTITION: &str = "all";
const MAX_CLUSTER_NAME: usize = 16;
const MAX_SITE_NAME: usize = 20;
const MAX_GROUP_NAME: usize = 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    Local,
    OpenStack,
}

impl Provider {
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Local => "local",
            Provider::OpenStack => "openstack",
        }
    }
}

/// A validated cluster. Sites keep file order; exactly one is the master site.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cluster {
    pub name: String,
    pub provider: Provider,
    /// Sources allowed to reach SSH on the nodes. Empty: SSH only from inside the cluster.
    pub admin_cidrs: Vec<Ipv4Net>,
    pub ssh_public_key: Option<String>,
    pub tunnel: Tunnel,
    pub sites: Vec<Site>,
    pub datasets: Vec<Dataset>,
    pub slurm: SlurmOptions,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tunnel {
    pub cidr: Ipv4Net,
    pub port: u16,
    /// Resolved: `auto` became the smallest underlay MTU minus [`WG_OVERHEAD`].
    pub mtu: u16,
    /// Seconds; 0 turns keepalives off.
    pub keepalive: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Site {
    pub name: String,
    pub subnet: Ipv4Net,
    pub master: bool,
    pub underlay_mtu: u16,
    /// OpenStack: the `clouds.yaml` entry of this site.
    pub cloud: Option<String>,
    /// OpenStack: an existing network to use instead of creating one.
    pub network: Option<String>,
    /// OpenStack: the external network for the router and floating IPs.
    pub external_network: Option<String>,
    /// The site's relay node: the master on the master site, the VPN gateway elsewhere.
    pub gateway: NodeSpec,
    pub workers: Vec<WorkerGroup>,
}

impl Site {
    pub fn worker_count(&self) -> u64 {
        self.workers.iter().map(|g| u64::from(g.count)).sum()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSpec {
    pub flavor: Option<String>,
    pub image: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerGroup {
    pub name: String,
    pub count: u32,
    pub cpus: u32,
    /// MiB, as Slurm's `RealMemory`.
    pub memory_mib: u64,
    pub spec: NodeSpec,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dataset {
    pub name: String,
    pub site: String,
    pub location: String,
    pub size_gib: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlurmOptions {
    pub srun_port_range: (u16, u16),
    pub slurmd_timeout: u32,
    pub message_timeout: u32,
    pub default_partition: String,
}

impl Cluster {
    pub fn master_site(&self) -> &Site {
        // Validation guarantees exactly one master site.
        self.sites
            .iter()
            .find(|s| s.master)
            .unwrap_or(&self.sites[0])
    }

    pub fn site(&self, name: &str) -> Option<&Site> {
        self.sites.iter().find(|s| s.name == name)
    }
}

/// Why a cluster file could not be turned into a [`Cluster`].
#[derive(Debug, displaydoc::Display, thiserror::Error)]
pub enum LoadError {
    /// cannot read cluster file {path}: {source}
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// {path} is not a valid cluster file
    Invalid {
        path: PathBuf,
        diagnostics: Diagnostics,
    },
}

/// A validated cluster with the warnings found on the way.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub cluster: Cluster,
    pub warnings: Diagnostics,
}

/// Reads and validates a cluster file.
pub fn load(path: &Path) -> Result<Loaded, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
        path: path.to_owned(),
        source,
    })?;
    let (cluster, diagnostics) = validate_text(&text);
    match cluster {
        Some(cluster) => Ok(Loaded {
            cluster,
            warnings: diagnostics,
        }),
        None => Err(LoadError::Invalid {
            path: path.to_owned(),
            diagnostics,
        }),
    }
}

/// Parses and validates a cluster file's text: the model if there were no errors, and every
/// diagnostic (errors and warnings) in file order.
pub fn validate_text(text: &str) -> (Option<Cluster>, Diagnostics) {
    let (raw, mut diags) = raw::parse(text);
    let cluster = raw.and_then(|raw| {
        let mut v = Validator { diags: &mut diags };
        v.cluster(&raw)
    });
    diags.sort();
    if diags.has_errors() {
        (None, diags)
    } else {
        (cluster, diags)
    }
}

/// The seed's overlay range.
fn default_tunnel_cidr() -> Ipv4Net {
    Ipv4Net::new_assert(Ipv4Addr::new(10, 0, 0, 0), 24)
}

struct Validator<'d> {
    diags: &'d mut Diagnostics,
}

/// Lowercase letters, digits and inner hyphens, starting with a letter: valid as a hostname label, a
/// Slurm node or partition name, a Neutron/Nova name and a Linux namespace name.
fn is_valid_name(s: &str, max: usize) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= max
        && b[0].is_ascii_lowercase()
        && !s.ends_with('-')
        && !s.contains("--")
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

impl Validator<'_> {
    fn error(
        &mut self,
        pos: Pos,
        path: impl Into<String>,
        msg: impl Into<String>,
        help: impl Into<String>,
    ) {
        self.diags
            .push(Diagnostic::error(pos, path, msg).with_help(help));
    }

    fn name(&mut self, name: &Sp<String>, path: String, what: &str, max: usize) -> bool {
        if is_valid_name(&name.value, max) {
            return true;
        }
        self.error(
            name.pos,
            path,
            format!("`{}` is not a valid {what} name", name.value),
            format!(
                "use 1 to {max} lowercase letters, digits and single hyphens, starting with a letter \
                 (it becomes part of hostnames and Slurm names)"
            ),
        );
        false
    }

    fn cidr(&mut self, s: &Sp<String>, path: String) -> Option<Ipv4Net> {
        let net: Ipv4Net = match s.value.parse() {
            Ok(n) => n,
            Err(_) => {
                let help = if s.value.contains(':') {
                    "hybridgrid plans IPv4 networks; write an IPv4 range such as 10.20.0.0/24"
                        .to_owned()
                } else if s.value.parse::<Ipv4Addr>().is_ok() {
                    format!("add a prefix length, e.g. `{}/24`", s.value)
                } else {
                    "write an IPv4 range in CIDR form, e.g. 10.20.0.0/24".to_owned()
                };
                self.error(
                    s.pos,
                    path,
                    format!("`{}` is not an IPv4 CIDR", s.value),
                    help,
                );
                return None;
            }
        };
        if net.addr() != net.network() {
            self.error(
                s.pos,
                path,
                format!("`{}` has host bits set", s.value),
                format!("the network address of this range is {}", net.trunc()),
            );
            return None;
        }
        Some(net)
    }

    fn port(&mut self, v: &Sp<u64>, path: String) -> Option<u16> {
        match u16::try_from(v.value) {
            Ok(p) if p > 0 => Some(p),
            _ => {
                self.error(
                    v.pos,
                    path,
                    format!("port {} is out of range", v.value),
                    "use a UDP port from 1 to 65535 (WireGuard's usual port is 51820)",
                );
                None
            }
        }
    }

    fn cluster(&mut self, raw: &RawCluster) -> Option<Cluster> {
        if let Some(v) = &raw.version
            && v.value != 1
        {
            self.error(
                v.pos,
                "version",
                format!("unknown file version {}", v.value),
                "this hybridgrid reads `version: 1`",
            );
        }
        let name = raw
            .name
            .as_ref()
            .filter(|n| self.name(n, "name".into(), "cluster", MAX_CLUSTER_NAME));
        let provider = match raw.provider.as_ref() {
            None => Some(Provider::Local),
            Some(p) => match p.value.as_str() {
                "local" => Some(Provider::Local),
                "openstack" => Some(Provider::OpenStack),
                other => {
                    let hint = did_you_mean(other, &["local", "openstack"])
                        .map(|s| format!("did you mean `{s}`?"))
                        .unwrap_or_else(|| "use `local` or `openstack`".into());
                    self.error(
                        p.pos,
                        "provider",
                        format!("unknown provider `{other}`"),
                        hint,
                    );
                    None
                }
            },
        };
        let admin_cidrs = self.admin_cidrs(raw);
        let sites = self.sites(raw, provider);
        let tunnel = self.tunnel(raw, &sites);
        self.overlaps(raw, &sites);
        self.master(raw, &sites);
        let datasets = self.datasets(raw, &sites);
        let slurm = self.slurm(raw, &sites);

        if self.diags.has_errors() {
            return None;
        }
        Some(Cluster {
            name: name?.value.clone(),
            provider: provider?,
            admin_cidrs,
            ssh_public_key: raw.ssh_public_key.as_ref().map(|k| k.value.clone()),
            tunnel: tunnel?,
            sites: sites
                .into_iter()
                .map(|(_, s)| s)
                .collect::<Option<Vec<_>>>()?,
            datasets,
            slurm: slurm?,
        })
    }

    fn admin_cidrs(&mut self, raw: &RawCluster) -> Vec<Ipv4Net> {
        let mut out = Vec::new();
        for (i, c) in raw.admin_cidrs.iter().enumerate() {
            let path = format!("admin_cidrs[{i}]");
            if let Some(net) = self.cidr(c, path.clone()) {
                if net.prefix_len() == 0 {
                    self.diags.push(
                        Diagnostic::warning(c.pos, path, "SSH will be open to the whole internet")
                            .with_help("name the networks you administer from, e.g. your institute's range"),
                    );
                }
                out.push(net);
            }
        }
        out
    }

    /// Each site with its raw form (for positions), or `None` where it had errors.
    fn sites<'r>(
        &mut self,
        raw: &'r RawCluster,
        provider: Option<Provider>,
    ) -> Vec<(&'r raw::RawSite, Option<Site>)> {
        let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
        let mut out = Vec::new();
        for (i, s) in raw.sites.iter().enumerate() {
            let path = format!("sites[{i}]");
            let mut ok = true;
            if let Some(n) = &s.name {
                ok &= self.name(n, format!("{path}.name"), "site", MAX_SITE_NAME);
                if n.value == ALL_PARTITION {
                    ok = false;
                    self.error(
                        n.pos,
                        format!("{path}.name"),
                        "`all` is reserved: it names the partition that spans every site",
                        "choose another site name",
                    );
                }
                if let Some(first) = seen.insert(&n.value, i) {
                    ok = false;
                    self.error(
                        n.pos,
                        format!("{path}.name"),
                        format!("site name `{}` is used twice", n.value),
                        format!("sites[{first}] already has this name; give each site its own"),
                    );
                }
            }
            let subnet = s
                .subnet
                .as_ref()
                .and_then(|c| self.cidr(c, format!("{path}.subnet")));
            if let Some(net) = subnet
                && net.prefix_len() > 29
            {
                ok = false;
                self.error(
                    s.subnet.as_ref().map(|c| c.pos).unwrap_or(s.pos),
                    format!("{path}.subnet"),
                    format!("{net} is too small for a site"),
                    "a site needs at least a /29 (router, cloud ports, relay node and a worker)",
                );
            }
            let underlay_mtu = match &s.underlay_mtu {
                None => Some(DEFAULT_UNDERLAY_MTU),
                Some(m) => match u16::try_from(m.value) {
                    Ok(v) if (MIN_TUNNEL_MTU + WG_OVERHEAD_IPV4..=9000).contains(&v) => Some(v),
                    _ => {
                        self.error(
                            m.pos,
                            format!("{path}.underlay_mtu"),
                            format!("underlay MTU {} is out of range", m.value),
                            format!("use the site network's MTU, from {} to 9000 (OpenStack VXLAN: 1450)", MIN_TUNNEL_MTU + WG_OVERHEAD_IPV4),
                        );
                        None
                    }
                },
            };
            let workers = self.worker_groups(s, &path, provider);
            if let (Some(net), Some(groups)) = (subnet, &workers) {
                let needed: u64 = groups.iter().map(|g| u64::from(g.count)).sum();
                let capacity = addr::worker_capacity(net);
                if needed > capacity {
                    ok = false;
                    self.error(
                        s.subnet.as_ref().map(|c| c.pos).unwrap_or(s.pos),
                        format!("{path}.subnet"),
                        format!(
                            "{net} holds at most {capacity} workers, but the site has {needed}"
                        ),
                        format!(
                            "use a larger subnet (hosts .1–.{} are reserved) or fewer workers",
                            addr::RELAY_OFFSET
                        ),
                    );
                }
            }
            if provider == Some(Provider::OpenStack) {
                if s.cloud.is_none() {
                    ok = false;
                    self.error(
                        s.pos,
                        format!("{path}.cloud"),
                        "an openstack site needs `cloud`",
                        "name this site's entry in clouds.yaml, e.g. `cloud: bielefeld`",
                    );
                }
                ok &= self.openstack_spec(&s.gateway, s.pos, &format!("{path}.gateway"));
            }
            let site = (ok && s.name.is_some()).then_some(()).and_then(|()| {
                Some(Site {
                    name: s.name.as_ref()?.value.clone(),
                    subnet: subnet?,
                    master: s.master.as_ref().is_some_and(|m| m.value),
                    underlay_mtu: underlay_mtu?,
                    cloud: s.cloud.as_ref().map(|c| c.value.clone()),
                    network: s.network.as_ref().map(|c| c.value.clone()),
                    external_network: s.external_network.as_ref().map(|c| c.value.clone()),
                    gateway: NodeSpec {
                        flavor: s.gateway.flavor.as_ref().map(|c| c.value.clone()),
                        image: s.gateway.image.as_ref().map(|c| c.value.clone()),
                    },
                    workers: workers?,
                })
            });
            out.push((s, site));
        }
        out
    }

    fn openstack_spec(&mut self, spec: &raw::RawNodeSpec, fallback: Pos, path: &str) -> bool {
        let pos = if spec.pos == Pos::default() {
            fallback
        } else {
            spec.pos
        };
        let mut ok = true;
        for (key, value) in [("flavor", &spec.flavor), ("image", &spec.image)] {
            if value.is_none() {
                ok = false;
                self.error(
                    pos,
                    format!("{path}.{key}"),
                    format!("an openstack node needs `{key}`"),
                    format!(
                        "name the {key} to boot this node with, as `openstack {key} list` shows it"
                    ),
                );
            }
        }
        ok
    }

    fn worker_groups(
        &mut self,
        s: &raw::RawSite,
        path: &str,
        provider: Option<Provider>,
    ) -> Option<Vec<WorkerGroup>> {
        let mut groups = Vec::new();
        let mut ok = true;
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        for (j, g) in s.workers.iter().enumerate() {
            let gpath = format!("{path}.workers[{j}]");
            let name = match &g.name {
                Some(n) => {
                    ok &= self.name(n, format!("{gpath}.name"), "worker group", MAX_GROUP_NAME);
                    n.value.clone()
                }
                None => "worker".to_owned(),
            };
            if let Some(first) = seen.insert(name.clone(), j) {
                ok = false;
                self.error(
                    g.name.as_ref().map(|n| n.pos).unwrap_or(g.pos),
                    format!("{gpath}.name"),
                    format!("worker group name `{name}` is used twice in this site"),
                    format!(
                        "{path}.workers[{first}] has it already; name each group (`name: big`)"
                    ),
                );
            }
            let count = g.count.as_ref().and_then(|c| match u32::try_from(c.value) {
                Ok(v) if v <= 10_000 => Some(v),
                _ => {
                    self.error(
                        c.pos,
                        format!("{gpath}.count"),
                        format!("{} workers is too many", c.value),
                        "use at most 10000 per group",
                    );
                    None
                }
            });
            let cpus = match &g.cpus {
                None => Some(1),
                Some(c) => match u32::try_from(c.value) {
                    Ok(v) if (1..=4096).contains(&v) => Some(v),
                    _ => {
                        self.error(
                            c.pos,
                            format!("{gpath}.cpus"),
                            format!("{} CPUs is out of range", c.value),
                            "use 1 to 4096",
                        );
                        None
                    }
                },
            };
            let memory_mib = match &g.memory {
                None => Some(1024),
                Some(m) if m.value >= 1 => Some(m.value),
                Some(m) => {
                    self.error(
                        m.pos,
                        format!("{gpath}.memory"),
                        "memory must be at least 1 MiB",
                        "give the worker's memory in MiB, e.g. `memory: 4096`",
                    );
                    None
                }
            };
            if provider == Some(Provider::OpenStack) {
                let spec = raw::RawNodeSpec {
                    pos: g.pos,
                    flavor: g.flavor.clone(),
                    image: g.image.clone(),
                };
                ok &= self.openstack_spec(&spec, g.pos, &gpath);
            }
            match (count, cpus, memory_mib) {
                (Some(count), Some(cpus), Some(memory_mib)) => groups.push(WorkerGroup {
                    name,
                    count,
                    cpus,
                    memory_mib,
                    spec: NodeSpec {
                        flavor: g.flavor.as_ref().map(|c| c.value.clone()),
                        image: g.image.as_ref().map(|c| c.value.clone()),
                    },
                }),
                _ => ok = false,
            }
        }
        ok.then_some(groups)
    }

    fn tunnel(
        &mut self,
        raw: &RawCluster,
        sites: &[(&raw::RawSite, Option<Site>)],
    ) -> Option<Tunnel> {
        let t = &raw.tunnel;
        let cidr = match &t.cidr {
            Some(c) => self.cidr(c, "tunnel.cidr".into()),
            None => Some(default_tunnel_cidr()),
        };
        if let Some(net) = cidr {
            let needed = sites.len() as u64;
            let capacity = addr::tunnel_capacity(net);
            if needed > capacity {
                self.error(
                    t.cidr.as_ref().map(|c| c.pos).unwrap_or(t.pos),
                    "tunnel.cidr",
                    format!(
                        "{net} has room for {capacity} gateways, but the cluster has {needed} sites"
                    ),
                    "use a larger tunnel range; a /24 holds 254 sites",
                );
            }
        }
        let port = match &t.port {
            None => Some(51820),
            Some(p) => self.port(p, "tunnel.port".into()),
        };
        let keepalive = match &t.keepalive {
            None => Some(25),
            Some(k) => {
                match u16::try_from(k.value) {
                    Ok(v) => Some(v),
                    Err(_) => {
                        self.error(k.pos, "tunnel.keepalive", format!("keepalive {} is out of range", k.value), "use seconds from 0 (off) to 65535; 25 suits NAT and stateful firewalls");
                        None
                    }
                }
            }
        };
        // The tunnel must fit the smallest underlay among the sites.
        let underlay = sites
            .iter()
            .filter_map(|(_, s)| s.as_ref().map(|s| s.underlay_mtu))
            .min()
            .unwrap_or(DEFAULT_UNDERLAY_MTU);
        let mtu = match &t.mtu {
            None => Some(underlay - WG_OVERHEAD),
            Some(Sp {
                value: NumberOrWord::Word(w),
                ..
            }) if w == "auto" => Some(underlay - WG_OVERHEAD),
            Some(Sp {
                value: NumberOrWord::Word(w),
                pos,
            }) => {
                self.error(
                    *pos,
                    "tunnel.mtu",
                    format!("`{w}` is not an MTU"),
                    "use `auto` or a number such as 1370",
                );
                None
            }
            Some(Sp {
                value: NumberOrWord::Number(n),
                pos,
            }) => {
                let n16 = u16::try_from(*n).unwrap_or(u16::MAX);
                if n16 < MIN_TUNNEL_MTU {
                    self.error(
                        *pos,
                        "tunnel.mtu",
                        format!("MTU {n} is below {MIN_TUNNEL_MTU}"),
                        format!(
                            "IPv6 and many tools need at least {MIN_TUNNEL_MTU}; `auto` gives {}",
                            underlay - WG_OVERHEAD
                        ),
                    );
                    None
                } else if u32::from(n16) + u32::from(WG_OVERHEAD_IPV4) > u32::from(underlay) {
                    self.error(
                        *pos,
                        "tunnel.mtu",
                        format!("MTU {n} does not fit the underlay MTU {underlay}: WireGuard adds 60 to 80 bytes"),
                        format!("use `auto` ({}) or at most {}", underlay - WG_OVERHEAD, underlay - WG_OVERHEAD_IPV4),
                    );
                    None
                } else {
                    if n16 + WG_OVERHEAD > underlay {
                        self.diags.push(
                            Diagnostic::warning(
                                *pos,
                                "tunnel.mtu",
                                format!("MTU {n} fits the underlay {underlay} only over IPv4"),
                            )
                            .with_help(format!(
                                "`auto` ({}) also works over IPv6 endpoints",
                                underlay - WG_OVERHEAD
                            )),
                        );
                    }
                    Some(n16)
                }
            }
        };
        Some(Tunnel {
            cidr: cidr?,
            port: port?,
            mtu: mtu?,
            keepalive: keepalive?,
        })
    }

    /// Site subnets and the tunnel must be disjoint: each is routed to exactly one place.
    fn overlaps(&mut self, raw: &RawCluster, sites: &[(&raw::RawSite, Option<Site>)]) {
        let mut ranges: Vec<(String, Pos, Ipv4Net)> = Vec::new();
        for (i, (rs, _)) in sites.iter().enumerate() {
            if let Some(c) = &rs.subnet
                && let Ok(net) = c.value.parse::<Ipv4Net>()
            {
                ranges.push((format!("sites[{i}].subnet"), c.pos, net.trunc()));
            }
        }
        let tunnel = match &raw.tunnel.cidr {
            Some(c) => c
                .value
                .parse::<Ipv4Net>()
                .ok()
                .map(|net| (c.pos, net.trunc())),
            None => None,
        };
        if let Some((pos, net)) = tunnel {
            ranges.push(("tunnel.cidr".into(), pos, net));
        }
        for (j, (path, pos, net)) in ranges.iter().enumerate() {
            if let Some((other, opos, onet)) = ranges[..j]
                .iter()
                .find(|(_, _, o)| o.contains(net) || net.contains(o))
            {
                self.error(
                    *pos,
                    path.clone(),
                    format!("{net} overlaps {other} ({onet}, line {})", opos.line),
                    "every site and the tunnel need their own, non-overlapping range",
                );
            }
        }
        // The default tunnel range was not written down: point at the site that collides with it.
        if raw.tunnel.cidr.is_none() {
            let default = default_tunnel_cidr();
            for (path, pos, net) in &ranges {
                if net.contains(&default) || default.contains(net) {
                    self.error(
                        *pos,
                        path.clone(),
                        format!("{net} overlaps the default tunnel range {default}"),
                        "set `tunnel.cidr` to a free range, e.g. `tunnel: { cidr: 172.16.0.0/24 }`",
                    );
                }
            }
        }
    }

    fn master(&mut self, raw: &RawCluster, sites: &[(&raw::RawSite, Option<Site>)]) {
        let masters: Vec<_> = sites
            .iter()
            .enumerate()
            .filter(|(_, (rs, _))| rs.master.as_ref().is_some_and(|m| m.value))
            .collect();
        match masters.as_slice() {
            [] if !sites.is_empty() => self.error(
                raw.sites_pos,
                "sites",
                "no site holds the master",
                "mark exactly one site with `master: true`",
            ),
            [_] | [] => {}
            [(first, _), rest @ ..] => {
                for (i, (rs, _)) in rest {
                    let pos = rs.master.as_ref().map(|m| m.pos).unwrap_or(rs.pos);
                    self.error(
                        pos,
                        format!("sites[{i}].master"),
                        "a second site claims the master",
                        format!(
                            "sites[{first}] is already the master site; a cluster has exactly one"
                        ),
                    );
                }
            }
        }
    }

    fn datasets(
        &mut self,
        raw: &RawCluster,
        sites: &[(&raw::RawSite, Option<Site>)],
    ) -> Vec<Dataset> {
        let site_names: Vec<&str> = sites
            .iter()
            .filter_map(|(rs, _)| rs.name.as_ref().map(|n| n.value.as_str()))
            .collect();
        let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
        let mut out = Vec::new();
        for (i, d) in raw.datasets.iter().enumerate() {
            let path = format!("datasets[{i}]");
            if let Some(n) = &d.name {
                self.name(n, format!("{path}.name"), "dataset", 40);
                if let Some(first) = seen.insert(&n.value, i) {
                    self.error(
                        n.pos,
                        format!("{path}.name"),
                        format!("dataset `{}` is defined twice", n.value),
                        format!("datasets[{first}] has this name already"),
                    );
                }
            }
            if let Some(s) = &d.site
                && !site_names.contains(&s.value.as_str())
            {
                let mut names = site_names.clone();
                names.dedup();
                let help = did_you_mean(&s.value, &names)
                    .map(|m| format!("did you mean `{m}`?"))
                    .unwrap_or_else(|| format!("the sites are: {}", names.join(", ")));
                self.error(
                    s.pos,
                    format!("{path}.site"),
                    format!("unknown site `{}`", s.value),
                    help,
                );
            }
            if let (Some(name), Some(site), Some(location)) = (&d.name, &d.site, &d.location) {
                out.push(Dataset {
                    name: name.value.clone(),
                    site: site.value.clone(),
                    location: location.value.clone(),
                    size_gib: d.size_gib.as_ref().map(|s| s.value),
                });
            }
        }
        out
    }

    fn slurm(
        &mut self,
        raw: &RawCluster,
        sites: &[(&raw::RawSite, Option<Site>)],
    ) -> Option<SlurmOptions> {
        let s = &raw.slurm;
        let srun_port_range = match &s.srun_port_range {
            None => Some((60001, 63000)),
            Some(r) => {
                let parsed = r.value.split_once('-').and_then(|(a, b)| {
                    Some((a.trim().parse::<u16>().ok()?, b.trim().parse::<u16>().ok()?))
                });
                match parsed {
                    Some((lo, hi))
                        if lo >= 1024
                            && lo <= hi
                            && !(lo..=hi).contains(&SLURMCTLD_PORT)
                            && !(lo..=hi).contains(&SLURMD_PORT) =>
                    {
                        Some((lo, hi))
                    }
                    _ => {
                        self.error(
                            r.pos,
                            "slurm.srun_port_range",
                            format!("`{}` is not a usable port range", r.value),
                            "write LOW-HIGH above 1023 and apart from Slurm's 6817/6818, e.g. 60001-63000",
                        );
                        None
                    }
                }
            }
        };
        let timeout = |v: &Option<Sp<u64>>, default: u32, key: &str, this: &mut Self| match v {
            None => Some(default),
            Some(t) => match u32::try_from(t.value) {
                Ok(x) if (1..=65_533).contains(&x) => Some(x),
                _ => {
                    this.error(
                        t.pos,
                        format!("slurm.{key}"),
                        format!("{} seconds is out of range", t.value),
                        "use 1 to 65533 seconds",
                    );
                    None
                }
            },
        };
        // WAN links drop and stall: be slower to declare nodes dead than Slurm's LAN defaults.
        let slurmd_timeout = timeout(&s.slurmd_timeout, 300, "slurmd_timeout", self);
        let message_timeout = timeout(&s.message_timeout, 30, "message_timeout", self);
        let site_names: Vec<&str> = sites
            .iter()
            .filter_map(|(rs, _)| rs.name.as_ref().map(|n| n.value.as_str()))
            .collect();
        let default_partition = match &s.default_partition {
            None => Some(ALL_PARTITION.to_owned()),
            Some(p) if p.value == ALL_PARTITION || site_names.contains(&p.value.as_str()) => {
                Some(p.value.clone())
            }
            Some(p) => {
                self.error(
                    p.pos,
                    "slurm.default_partition",
                    format!("there is no partition `{}`", p.value),
                    format!(
                        "partitions are `all` and one per site: {}",
                        site_names.join(", ")
                    ),
                );
                None
            }
        };
        Some(SlurmOptions {
            srun_port_range: srun_port_range?,
            slurmd_timeout: slurmd_timeout?,
            message_timeout: message_timeout?,
            default_partition: default_partition?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(is_valid_name("giessen", 20));
        assert!(is_valid_name("site-2", 20));
        assert!(!is_valid_name("Giessen", 20));
        assert!(!is_valid_name("2site", 20));
        assert!(!is_valid_name("site-", 20));
        assert!(!is_valid_name("gie_ssen", 20));
        assert!(!is_valid_name("", 20));
    }
}
