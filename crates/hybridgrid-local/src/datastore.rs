//! Data where it lives: each site's data store (the stand-in for the cloud's object storage),
//! Debian's nginx, not a server written here.
//!
//! - The data store of site `S` runs in its own namespace `hg-<cluster>-S-store`, attached to the
//!   site switch at `.4` (port security and the site's node security group apply, like a node),
//!   default route via the site router and the other sites via the site's relay, so other sites
//!   reach it only through the tunnels. It serves `<cluster state>/sites/S/store/` at
//!   `http://<.4>/` (read-only, with directory listings).
//! - The master's results store is the node agent's (`hybridgrid_agent::results`), the same on
//!   every provider; on this one its files are in the master's state directory.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use hybridgrid_core::plan::{Plan, Role, SgRule, SitePlan};
use ipnet::Ipv4Net;

use crate::infra::{self, Port};
use crate::ledger::write_atomic;
use crate::{Local, LocalError, names, sh};

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

/// Whether a site of this subnet gets a data store (it has room for the store's address).
pub fn has_store(subnet: Ipv4Net) -> bool {
    store_ip(subnet).is_some()
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

fn q(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', "'\\''"))
}

fn nginx_conf(dir: &Path, server: &str) -> String {
    let d = dir.display();
    format!(
        "# hybridgrid: generated, rewritten by `up`.\n\
         user root;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
         events {{ worker_connections 256; }}\n\
         http {{\n  access_log {d}/access.log;\n  sendfile on;\n  default_type application/octet-stream;\n\
         \x20 client_body_temp_path {d}/tmp/body;\n  proxy_temp_path {d}/tmp/proxy;\n\
         \x20 fastcgi_temp_path {d}/tmp/fastcgi;\n  uwsgi_temp_path {d}/tmp/uwsgi;\n  scgi_temp_path {d}/tmp/scgi;\n\
         {server}}}\n"
    )
}

/// Starts nginx with `conf` in the current namespaces of `enter` (a prefix command) unless its
/// PID file names a live process. Returns true if it started it.
fn start_nginx(
    dir: &Path,
    conf: &str,
    enter: &dyn Fn(&str) -> Result<String, LocalError>,
) -> Result<bool, LocalError> {
    for sub in ["tmp", "tmp/body"] {
        let p = dir.join(sub);
        std::fs::create_dir_all(&p).map_err(LocalError::io(&p))?;
    }
    let conf_path = dir.join("nginx.conf");
    write_atomic(&conf_path, conf.as_bytes(), 0o644)?;
    let pid_file = dir.join("nginx.pid");
    let out = enter(&format!(
        "f={pid}; if [ -f $f ] && kill -0 \"$(cat $f)\" 2>/dev/null; then echo running; \
         else rm -f $f; if nginx -e {err} -c {conf}; then echo started; \
         else sleep 1; kill -0 \"$(cat $f)\" && echo running; fi; fi",
        pid = q(&pid_file),
        err = q(&dir.join("error.log")),
        conf = q(&conf_path),
    ))?;
    Ok(out.lines().any(|l| l == "started"))
}

/// Creates the data store of `site` if it lacks one (or one interrupted part-way) and starts
/// its nginx; sets its routes to the other sites through the site's relay. `record` writes a
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
    // Other sites and the tunnel through the site's relay (idempotent: replace).
    if let Some(relay) = plan.relay_of(&site.name) {
        let routes: Vec<String> = plan
            .sites
            .iter()
            .filter(|s| s.name != site.name)
            .map(|s| s.subnet)
            .chain(std::iter::once(plan.tunnel.cidr))
            .map(|d| format!("route replace {d} via {}", relay.lan_ip))
            .collect();
        sh::ip_batch(Some(&ns), &routes)?;
    }
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

/// The site's store directory served by nginx in the store's namespace `ns` at `ip`; what it
/// did, if it started nginx.
fn serve_store(
    local: &Local,
    site: &str,
    ns: &str,
    ip: Ipv4Addr,
) -> Result<Option<String>, LocalError> {
    let store = store_dir(local.cluster_dir(), site);
    std::fs::create_dir_all(&store).map_err(LocalError::io(&store))?;
    let dir = local.cluster_dir().join("sites").join(site).join("nginx");
    let server = format!(
        "  server {{\n    listen {ip}:80;\n    root {};\n    autoindex on;\n  }}\n",
        store.display()
    );
    let started = start_nginx(&dir, &nginx_conf(&dir, &server), &|script| {
        sh::run("ip", &["netns", "exec", ns, "sh", "-c", script])
    })?;
    Ok(started.then(|| format!("data store of {site} serves {}", store.display())))
}
