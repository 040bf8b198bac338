//! Data where it lives: the object store (S3) of each site that holds a dataset in a bucket —
//! OpenStack Swift from Debian's packages (`crate::swift`), not a server written here.
//!
//! - The data store of site `S` runs in its own namespace `hg-<cluster>-S-store`, attached to the
//!   site switch at `.4` (port security and the site's node security group apply, like a node),
//!   default route via the site router and the other sites via the site's relay, so other sites
//!   reach it only through the tunnels. S3 at `http://<.4>:8080`, region `S`, one key per site
//!   (`<cluster state>/sites/S/store/keys`, 0600), objects under `<cluster state>/sites/S/store/srv`.
//! - An nftables counter in the store's namespace counts the bytes the store sends
//!   ([`served_bytes`]): what `jobs` reports as read from each site's store.
//! - Sites without such a dataset run no store. A store whose datasets left the cluster file
//!   stays (it holds data) until `down`.
//! - The master's results store is the node agent's (`hybridgrid_agent::results`), the same on
//!   every provider; on this one its files are in the master's state directory.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use hybridgrid_core::plan::{NodePlan, Plan, Role, SgRule, SitePlan, SlurmRole};
use ipnet::Ipv4Net;

use crate::infra::{self, Port};
use crate::ledger::write_atomic;
use hybridgrid_core::store::StoreAccess;

use crate::{Local, LocalError, names, sh, swift};

/// The store's pseudo node name: `<site>-store` (no node name ends that way).
pub fn store_node(site: &str) -> String {
    format!("{site}-store")
}

pub fn ns_store(cluster: &str, site: &str) -> String {
    names::ns_node(cluster, &store_node(site))
}

/// Where the data store of `site` keeps its objects.
pub fn store_dir(cluster_dir: &Path, site: &str) -> PathBuf {
    cluster_dir.join("sites").join(site).join("store")
}

/// Where job results land on the master.
pub fn results_dir(local: &Local, plan: &Plan) -> Option<PathBuf> {
    let master = plan.nodes.iter().find(|n| n.role == Role::Master)?;
    Some(hybridgrid_agent::results::dir(
        &local.node_dir(&master.name),
    ))
}

/// Whether `site` (of this subnet) runs a data store: it holds a dataset in a bucket and has room
/// for the store's address.
pub fn has_store(plan: &Plan, site: &str, subnet: Ipv4Net) -> bool {
    plan.site_has_store_data(site) && store_ip(subnet).is_some()
}

fn store_ip(subnet: Ipv4Net) -> Option<Ipv4Addr> {
    hybridgrid_core::addr::data_store_ip(subnet)
}

/// The store's switch port, if the store of `site` exists: for port security.
pub fn port(cluster: &str, site: &str, subnet: Ipv4Net) -> Option<Port> {
    let ip = store_ip(subnet)?;
    sh::netns_exists(&ns_store(cluster, site)).then(|| Port {
        name: names::node_port(subnet, ip),
        mac: names::node_mac(ip),
        ip,
        pairs: Vec::new(),
    })
}

/// The store admits what the site's nodes admit (the `<cluster>-<site>-nodes` group).
pub fn render_security_group(
    cluster: &str,
    site: &str,
    rules: &[&SgRule],
    stateless: bool,
) -> Result<(), LocalError> {
    if !sh::netns_exists(&ns_store(cluster, site)) {
        return Ok(());
    }
    infra::render_security_groups(cluster, &store_node(site), rules, stateless)
}

/// Creates the data store of `site` if it holds a dataset in a bucket and lacks one (or one
/// interrupted part-way) and starts its Swift; sets its routes to the other sites through the site's relay. `record` writes a
/// namespace to the ledger before it is created. Returns what it did.
pub fn ensure_site(
    local: &Local,
    plan: &Plan,
    site_name: &str,
    record: &dyn Fn(&str) -> Result<(), LocalError>,
) -> Result<Vec<String>, LocalError> {
    let cluster = plan.cluster.as_str();
    let mut done = Vec::new();
    let Some(site) = plan.site(site_name) else {
        return Ok(done);
    };
    if !plan.site_has_store_data(site_name) {
        return Ok(done);
    }
    let ns = ns_store(cluster, &site.name);
    let Some(ip) = store_ip(site.subnet) else {
        return Ok(done);
    };
    let sw = names::ns_switch(cluster, &site.name);
    if !sh::netns_exists(&sw) {
        return Ok(done);
    }
    // A store interrupted part-way (no address yet) is made again.
    if !has_address(&ns, ip) {
        record(&ns)?;
        create_store_net(site, &ns, &sw, ip)?;
        done.push(format!("+ data store of {} at {ip}", site.name));
    }
    // Other sites and the tunnel through the site's relay, or its pair's virtual address
    // (idempotent: replace).
    let routes: Vec<String> = plan
        .sites
        .iter()
        .filter(|s| s.name != site.name)
        .map(|s| s.subnet)
        .chain(std::iter::once(plan.tunnel.cidr))
        .map(|d| format!("route replace {d} via {}", site.next_hop))
        .collect();
    sh::ip_batch(Some(&ns), &routes)?;
    done.extend(serve_store(local, &site.name, &ns, ip)?);
    Ok(done)
}

/// Whether the store's namespace `ns` exists and holds its address `ip`.
fn has_address(ns: &str, ip: Ipv4Addr) -> bool {
    sh::netns_exists(ns)
        && sh::run(
            "ip",
            &["-n", ns, "-4", "-o", "addr", "show", "dev", names::LAN_IF],
        )
        .is_ok_and(|o| o.contains(&format!(" {ip}/")))
}

/// The store's namespace `ns` made afresh, with a port on the site switch `sw` and `ip` on it.
fn create_store_net(site: &SitePlan, ns: &str, sw: &str, ip: Ipv4Addr) -> Result<(), LocalError> {
    let port = names::node_port(site.subnet, ip);
    let _ = sh::run("ip", &["-n", sw, "link", "del", &port]);
    infra::fresh_netns(ns)?;
    sh::ip_batch(
        Some(sw),
        &[
            format!(
                "link add {port} mtu {} type veth peer name {} netns {ns}",
                site.underlay_mtu,
                names::LAN_IF
            ),
            format!("link set {port} master {} up", names::BRIDGE),
        ],
    )?;
    sh::ip_batch(
        Some(ns),
        &[
            format!(
                "link set {} address {} mtu {} up",
                names::LAN_IF,
                names::node_mac(ip),
                site.underlay_mtu
            ),
            format!(
                "addr add {ip}/{} dev {}",
                site.subnet.prefix_len(),
                names::LAN_IF
            ),
            format!("route add default via {}", site.router_ip),
        ],
    )
}

/// The site's Swift configured and started in the store's namespace `ns` at `ip`, with the
/// counter of the bytes it sends; what it did, if it started a server.
fn serve_store(
    local: &Local,
    site: &str,
    ns: &str,
    ip: Ipv4Addr,
) -> Result<Option<String>, LocalError> {
    let dir = store_dir(local.cluster_dir(), site);
    let keys = store_keys(&dir)?;
    let layout = swift::Layout::new(&dir);
    let rings = local.cluster_dir().join("swift-rings");
    swift::configure(&layout, &rings, (ip, site), &keys.secret, &keys.hash)?;
    ensure_counter(ns)?;
    let started = swift::start(&layout, ns, ip)?;
    Ok(started.then(|| format!("data store of {site}: S3 at http://{ip}:{}", swift::PORT)))
}

/// The store's secrets: the S3 secret key and Swift's hash suffix, made once (0600).
struct StoreKeys {
    secret: String,
    hash: String,
}

fn store_keys(dir: &Path) -> Result<StoreKeys, LocalError> {
    let path = dir.join("keys");
    let parse = |text: &str| {
        let mut lines = text.lines();
        let (secret, hash) = (lines.next()?, lines.next()?);
        (secret.len() == 40 && hash.len() == 40).then(|| StoreKeys {
            secret: secret.to_owned(),
            hash: hash.to_owned(),
        })
    };
    if let Some(keys) = std::fs::read_to_string(&path)
        .ok()
        .as_deref()
        .and_then(parse)
    {
        return Ok(keys);
    }
    std::fs::create_dir_all(dir).map_err(LocalError::io(dir))?;
    let keys = StoreKeys {
        secret: random_hex()?,
        hash: random_hex()?,
    };
    write_atomic(
        &path,
        format!("{}\n{}\n", keys.secret, keys.hash).as_bytes(),
        0o600,
    )?;
    Ok(keys)
}

/// 20 random bytes in hex.
fn random_hex() -> Result<String, LocalError> {
    let mut bytes = [0u8; 20];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .map_err(LocalError::io("/dev/urandom"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// How this host reaches the store of `site`, if the site has one: S3 at the store's address,
/// from inside the store's namespace.
pub fn access(local: &Local, plan: &Plan, site: &str) -> Result<Option<StoreAccess>, LocalError> {
    let Some(sp) = plan.site(site) else {
        return Ok(None);
    };
    let Some(ip) = store_ip(sp.subnet).filter(|_| plan.site_has_store_data(site)) else {
        return Ok(None);
    };
    let keys = store_keys(&store_dir(local.cluster_dir(), site))?;
    Ok(Some(StoreAccess {
        site: site.to_owned(),
        endpoint: format!("http://{ip}:{}", swift::PORT),
        region: site.to_owned(),
        access_key: swift::ACCESS_KEY.to_owned(),
        secret_key: keys.secret,
        netns: Some(ns_store(&plan.cluster, site)),
    }))
}

/// The Swift servers of the cluster's stores wherever they run, by their configuration's path on
/// their command line: also those left in a namespace that an `up` killed part-way replaced,
/// which no named namespace holds (`down` stops them).
pub fn servers_anywhere(cluster_dir: &Path) -> Vec<u32> {
    let sites = format!("{}/sites/", cluster_dir.display());
    infra::live_pids(|pid| {
        let cmd = infra::cmdline(pid);
        cmd.contains("swift-") && cmd.contains(&sites)
    })
}

/// Whether the process names of a store's namespace include every Swift server.
pub fn all_running(names: &std::collections::BTreeSet<String>) -> bool {
    swift::process_names().iter().all(|n| names.contains(n))
}

/// The store keys of `node`'s site for its jobs, in the node's own state (0600, the agent puts
/// them where jobs load them): only on Slurm nodes of a site with a store; removed elsewhere.
pub fn deliver_job_env(
    local: &Local,
    plan: &Plan,
    node: &NodePlan,
    role: SlurmRole,
) -> Result<(), LocalError> {
    let path = local
        .node_dir(&node.name)
        .join(hybridgrid_agent::slurm::STORE_ENV_FILE);
    let env = access(local, plan, &node.site)?
        .filter(|_| role != SlurmRole::None)
        .map(|a| a.job_env());
    let bytes = env.as_ref().map(String::as_bytes);
    Ok(hybridgrid_engine::state::write_or_remove(
        &path, bytes, 0o600,
    )?)
}

/// Every bucket of the plan's datasets made in its site's store where it is missing (`up`
/// settles here, so a dataset added to a running cluster gets its bucket); what it made.
pub fn ensure_buckets(local: &Local, plan: &Plan) -> Result<Vec<String>, LocalError> {
    let mut made = Vec::new();
    for site in &plan.sites {
        let Some(access) = access(local, plan, &site.name)? else {
            continue;
        };
        let buckets = plan.site_buckets(&site.name);
        let new = hybridgrid_store::open(&access, |store| {
            let mut new = Vec::new();
            for b in &buckets {
                if store.ensure_bucket(b)? {
                    new.push(format!("bucket {b} made in the store of {}", site.name));
                }
            }
            Ok(new)
        })?;
        made.extend(new);
    }
    Ok(made)
}

const COUNTER_TABLE: &str = "hybridgrid_store";

/// An nftables counter of what the store sends from its S3 port (idempotent).
fn ensure_counter(ns: &str) -> Result<(), LocalError> {
    let rules = format!(
        "table inet {COUNTER_TABLE} {{\n  counter served {{ }}\n  chain out {{\n    \
         type filter hook output priority 0; policy accept;\n    \
         tcp sport {} counter name served\n  }}\n}}\n",
        swift::PORT
    );
    if crate::live::nft_table(ns, "inet", COUNTER_TABLE).is_some() {
        return Ok(());
    }
    sh::nft(Some(ns), &rules)
}

/// The bytes the store of `site` has sent (its S3 answers, headers included) since it started;
/// `None` if the site runs no store.
pub fn served_bytes(cluster: &str, site: &str) -> Option<u64> {
    let table = crate::live::nft_table(&ns_store(cluster, site), "inet", COUNTER_TABLE)?;
    // `counter served {` then `packets N bytes M`.
    let after = table
        .split("counter served {")
        .nth(1)?
        .split("bytes ")
        .nth(1)?;
    after.split_whitespace().next()?.parse().ok()
}
