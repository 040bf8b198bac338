//! Stage two of reading a cluster file: raw values → the validated domain model.
//!
//! Every check runs even after an earlier one failed, so the user sees all problems at once. A
//! [`Cluster`] exists only when there were no errors; warnings travel alongside it.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::diag::{Diagnostic, Diagnostics, Pos, did_you_mean};
use crate::raw::{self, RawCluster, Sp};

mod reserved;
mod sites;
mod tunnel;
mod wan;
mod workload;

pub use wan::Wan;

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

    /// `slurm.resume_timeout` when the file gives none: how long a new node may take to boot.
    pub fn default_resume_timeout(self) -> u32 {
        match self {
            Provider::Local => 60,
            Provider::OpenStack => 900,
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
    /// openstack: the login user `up` and `exec` reach every node as (sudo); `None`: each
    /// node's image says (the openstack provider asks Glance).
    pub ssh_user: Option<String>,
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
    /// A preshared key on every pair of relays (default).
    pub preshared_keys: bool,
    /// `tunnel.rotate_every`: the keys are due for `rotate` once the oldest is this old
    /// (seconds; `None`: never).
    pub rotate_every_s: Option<u64>,
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
    /// `gateway.standby`: two relays that share the site's tunnel identity, one active (VRRP);
    /// on the master site they take the relay role from the master.
    #[serde(default)]
    pub standby: bool,
    pub workers: Vec<WorkerGroup>,
    /// local: the WAN conditions emulated on what leaves the site (`wan:`).
    #[serde(default)]
    pub wan: Option<Wan>,
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
    /// `None`: the flavor's vCPUs where the provider knows the flavor, else 1.
    pub cpus: Option<u32>,
    /// MiB, as Slurm's `RealMemory`. `None`: what a guest of the flavor's RAM has left after its
    /// kernel ([`crate::slurm_conf::usable_memory_mib`]), else 1024.
    pub memory_mib: Option<u64>,
    pub spec: NodeSpec,
    /// Slurm's power saving: `up` makes none of the group's workers; Slurm wakes up to `count`
    /// of them when jobs queue for their site and removes them after `suspend_time` idle.
    #[serde(default)]
    pub on_demand: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dataset {
    pub name: String,
    pub site: String,
    pub source: DataSource,
    pub size_gib: Option<u64>,
}

/// Where a dataset's bytes are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum DataSource {
    /// Objects under `prefix` (empty, or ending in `/`) in `bucket` of the site's object store.
    Store { bucket: String, prefix: String },
    /// Data outside the stores: a URL or an absolute path, given to jobs as written.
    Location { location: String },
}

impl DataSource {
    /// What a job is told: `s3://bucket/prefix`, or the location as written.
    pub fn url(&self) -> String {
        match self {
            DataSource::Store { bucket, prefix } => format!("s3://{bucket}/{prefix}"),
            DataSource::Location { location } => location.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlurmOptions {
    pub srun_port_range: (u16, u16),
    pub slurmd_timeout: u32,
    pub message_timeout: u32,
    pub default_partition: String,
    /// Seconds an on-demand worker may stay idle before Slurm removes it.
    #[serde(default = "default_suspend_time")]
    pub suspend_time: u32,
    /// Seconds Slurm waits for a woken on-demand worker to register before it gives up on it.
    #[serde(default = "default_resume_timeout")]
    pub resume_timeout: u32,
}

/// `slurm.suspend_time` when the file gives none.
pub const DEFAULT_SUSPEND_TIME: u32 = 600;

fn default_suspend_time() -> u32 {
    DEFAULT_SUSPEND_TIME
}

fn default_resume_timeout() -> u32 {
    Provider::Local.default_resume_timeout()
}

impl Cluster {
    /// Every node of the file: each site's relay and its workers.
    pub fn node_count(&self) -> u64 {
        self.sites.iter().map(|s| 1 + s.worker_count()).sum()
    }

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

    /// Whether any worker group is on demand (Slurm's power saving is on).
    pub fn has_on_demand(&self) -> bool {
        self.sites
            .iter()
            .flat_map(|s| &s.workers)
            .any(|g| g.on_demand)
    }
}

/// Why a cluster file could not be turned into a [`Cluster`].
#[derive(Debug, displaydoc::Display, thiserror::Error)]
pub enum LoadError {
    /// cannot read cluster file {path}
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

/// Reads and validates a cluster file. A file that is not UTF-8 is [`LoadError::Invalid`] with
/// one diagnostic at the first bad byte ([`utf8_diagnostic`]).
pub fn load(path: &Path) -> Result<Loaded, LoadError> {
    let bytes = std::fs::read(path).map_err(|source| LoadError::Read {
        path: path.to_owned(),
        source,
    })?;
    let (cluster, diagnostics) = match std::str::from_utf8(&bytes) {
        Ok(text) => validate_text(text),
        Err(e) => (None, Diagnostics(vec![utf8_diagnostic(&bytes, &e)])),
    };
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

/// The error of a file that is not UTF-8, at the line and column (in characters, 1-based) of its
/// first bad byte.
pub fn utf8_diagnostic(bytes: &[u8], error: &std::str::Utf8Error) -> Diagnostic {
    let good = &bytes[..error.valid_up_to()];
    // The part before the first bad byte is UTF-8 by definition.
    let before = std::str::from_utf8(good).unwrap_or_default();
    let line = before.matches('\n').count() + 1;
    let column = before
        .rsplit('\n')
        .next()
        .unwrap_or_default()
        .chars()
        .count()
        + 1;
    let byte = bytes.get(error.valid_up_to()).copied().unwrap_or_default();
    Diagnostic::error(
        Pos::new(line, column),
        "",
        format!("the file is not UTF-8 text: byte 0x{byte:02x} is not valid UTF-8 here"),
    )
    .with_help("save the cluster file as UTF-8")
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
        self.reserved_ranges(raw, &sites, tunnel.as_ref(), provider);
        self.node_names(&sites);
        self.master(raw, &sites);
        let datasets = self.datasets(raw, &sites);
        let slurm = self.slurm(raw, &sites, provider);

        if self.diags.has_errors() {
            return None;
        }
        Some(Cluster {
            name: name?.value.clone(),
            provider: provider?,
            admin_cidrs,
            ssh_public_key: raw.ssh_public_key.as_ref().map(|k| k.value.clone()),
            ssh_user: raw.ssh_user.as_ref().map(|u| u.value.clone()),
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

    /// The local provider's emulated internet is an error on `local` and a warning elsewhere.
    #[test]
    fn a_subnet_in_the_local_internet_warns_on_openstack() {
        let file = |provider: &str| {
            format!(
                "name: demo\nprovider: {provider}\nsites:\n  - name: a\n    master: true\n    cloud: a\n    subnet: 198.51.100.0/24\n    gateway: {{ flavor: f, image: i }}\n    workers: []\n"
            )
        };
        let (cluster, diags) = validate_text(&file("openstack"));
        assert!(cluster.is_some(), "{}", diags.render("f"));
        let text = diags.render("f");
        assert!(
            text.contains("warning: sites[0].subnet: 198.51.100.0/24 overlaps 198.51.100.0/24, the local provider's emulated internet"),
            "{text}"
        );
        let (cluster, diags) = validate_text(&file("local"));
        assert!(cluster.is_none() && diags.has_errors());
    }

    /// Line and column count characters: the `é` before the bad byte is one column.
    #[test]
    fn a_file_that_is_not_utf8_names_the_first_bad_byte() {
        let mut bytes = "name: demo\nsites:\n  - name: gi\u{e9}".as_bytes().to_vec();
        bytes.extend_from_slice(b"\xffssen\n");
        let e = std::str::from_utf8(&bytes).unwrap_err();
        let d = utf8_diagnostic(&bytes, &e);
        assert_eq!(d.pos, Pos::new(3, 14));
        assert_eq!(
            d.display("c.yaml").to_string(),
            "c.yaml:3:14: error: the file is not UTF-8 text: byte 0xff is not valid UTF-8 here\n  \
             help: save the cluster file as UTF-8"
        );
    }
}
