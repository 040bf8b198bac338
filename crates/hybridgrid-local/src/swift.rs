//! OpenStack Swift from Debian's packages as a site's object store, speaking S3 through Swift's
//! own `s3api` middleware: the same server the openstack test bed runs, and what research clouds
//! offer (Swift, or Ceph RadosGW with the same two APIs).
//!
//! One store is four processes in the store's namespace: the proxy (S3 on `<site .4>:8080`,
//! `tempauth` with one user per site) and the account, container and object servers on the
//! namespace's own loopback, one device, one replica. Everything lives in the site's store
//! directory: `etc/` (configurations and rings, `swift_dir`), `srv/` (the device), `run/` (PID
//! files, the servers' standard error). Logs go to a socket nobody reads (`run/log.sock`): the
//! proxy's access log would carry request URLs, and hybridgrid measures a store's bytes with a
//! counter instead (`datastore::served_bytes`).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use crate::ledger::write_atomic;
use crate::sh::quote_path as q;
use crate::{LocalError, sh};

/// The proxy's port: S3 and Swift's own API.
pub const PORT: u16 = 8080;
/// The tempauth account and user: the S3 access key is `account:user`.
pub const ACCESS_KEY: &str = "hybridgrid:data";
const SERVERS: [(&str, u16); 3] = [("account", 6202), ("container", 6201), ("object", 6200)];
/// Ring partitions (2^8): plenty for one device.
const PART_POWER: &str = "8";

/// The store's files, under the site's store directory.
#[derive(Debug, Clone)]
pub struct Layout {
    pub etc: PathBuf,
    pub srv: PathBuf,
    pub run: PathBuf,
}

impl Layout {
    pub fn new(store_dir: &Path) -> Self {
        Layout {
            etc: store_dir.join("etc"),
            srv: store_dir.join("srv"),
            run: store_dir.join("run"),
        }
    }
}

/// `swift.conf`: the hash prefix and suffix (the cluster's own, as Swift wants secret and stable
/// values) and one storage policy.
fn swift_conf(hash: &str) -> String {
    format!(
        "# hybridgrid: generated, rewritten by `up`.\n\
         [swift-hash]\nswift_hash_path_suffix = {hash}\nswift_hash_path_prefix = hybridgrid\n\n\
         [storage-policy:0]\nname = Policy-0\ndefault = yes\n"
    )
}

fn common(l: &Layout, name: &str, ip: &str, port: u16) -> String {
    format!(
        "# hybridgrid: generated, rewritten by `up`.\n[DEFAULT]\nbind_ip = {ip}\nbind_port = {port}\n\
         workers = 0\nuser = root\nswift_dir = {etc}\ndevices = {srv}\nmount_check = false\n\
         log_name = {name}\nlog_address = {run}/log.sock\n",
        etc = l.etc.display(),
        srv = l.srv.display(),
        run = l.run.display(),
    )
}

fn backend_conf(l: &Layout, name: &str, port: u16) -> String {
    format!(
        "{}\n[pipeline:main]\npipeline = {name}-server\n\n[app:{name}-server]\nuse = egg:swift#{name}\n\
         recon_cache_path = {run}\n",
        common(l, name, "127.0.0.1", port),
        run = l.run.display(),
    )
}

/// The proxy: S3 (`s3api`, region = the site's name) in front of tempauth with the site's key.
fn proxy_conf(l: &Layout, ip: Ipv4Addr, region: &str, secret: &str) -> String {
    let (account, user) = ACCESS_KEY.split_once(':').unwrap_or(("hybridgrid", "data"));
    let filters = [
        "catch_errors",
        "gatekeeper",
        "healthcheck",
        "proxy_logging",
        "memcache",
        "listing_formats",
        "copy",
        "slo",
        "dlo",
    ];
    let mut s = common(l, "proxy", &ip.to_string(), PORT);
    s.push_str(
        "\n[pipeline:main]\npipeline = catch_errors gatekeeper healthcheck proxy_logging memcache \
         listing_formats s3api tempauth copy slo dlo proxy_logging proxy-server\n\n\
         [app:proxy-server]\nuse = egg:swift#proxy\naccount_autocreate = true\n",
    );
    s.push_str(&format!(
        "\n[filter:s3api]\nuse = egg:swift#s3api\nlocation = {region}\n\n\
         [filter:tempauth]\nuse = egg:swift#tempauth\nuser_{account}_{user} = {secret} .admin\n"
    ));
    for f in filters {
        s.push_str(&format!("\n[filter:{f}]\nuse = egg:swift#{f}\n"));
    }
    s
}

/// Writes the configurations (0600: the proxy's holds the key) and copies in the rings, which are
/// the same for every store (one device on the namespace's loopback): built once per cluster in
/// `rings` (each `swift-ring-builder` run costs a second of CPU).
pub fn configure(
    l: &Layout,
    rings: &Path,
    (ip, region): (Ipv4Addr, &str),
    secret: &str,
    hash: &str,
) -> Result<(), LocalError> {
    for d in [&l.etc, &l.srv.join("d1"), &l.run] {
        std::fs::create_dir_all(d).map_err(LocalError::io(d))?;
    }
    write_atomic(
        &l.etc.join("swift.conf"),
        swift_conf(hash).as_bytes(),
        0o600,
    )?;
    let proxy = proxy_conf(l, ip, region, secret);
    write_atomic(&l.etc.join("proxy-server.conf"), proxy.as_bytes(), 0o600)?;
    for (name, port) in SERVERS {
        let conf = backend_conf(l, name, port);
        write_atomic(
            &l.etc.join(format!("{name}-server.conf")),
            conf.as_bytes(),
            0o600,
        )?;
        let ring = format!("{name}.ring.gz");
        if !l.etc.join(&ring).exists() {
            let template = template_ring(rings, name, port)?;
            let data = std::fs::read(&template).map_err(LocalError::io(&template))?;
            write_atomic(&l.etc.join(&ring), &data, 0o644)?;
        }
    }
    Ok(())
}

/// `<rings>/<name>.ring.gz` with the one device, built unless it exists (one builder at a time:
/// sites are set up in parallel). Built in a folder of this process's own and renamed into place:
/// a `swift-ring-builder` left running by a killed `up` writes only into its own folder.
fn template_ring(rings: &Path, name: &str, port: u16) -> Result<PathBuf, LocalError> {
    static BUILDING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = BUILDING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let ring = rings.join(format!("{name}.ring.gz"));
    if ring.exists() {
        return Ok(ring);
    }
    let work = rings.join(format!(".build-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(LocalError::io(&work))?;
    let builder = work.join(format!("{name}.builder"));
    let b = builder.display().to_string();
    let device = format!("r1z1-127.0.0.1:{port}/d1");
    sh::run("swift-ring-builder", &[&b, "create", PART_POWER, "1", "1"])?;
    sh::run("swift-ring-builder", &[&b, "add", &device, "1"])?;
    // `rebalance` exits 1 with a warning on a one-device ring that is balanced anyway.
    let _ = sh::run("swift-ring-builder", &[&b, "rebalance"]);
    let built = work.join(format!("{name}.ring.gz"));
    std::fs::rename(&built, &ring).map_err(|_| LocalError::Command {
        command: format!("swift-ring-builder {b} rebalance"),
        detail: "no ring was written".into(),
    })?;
    let _ = std::fs::remove_dir_all(&work);
    Ok(ring)
}

/// The processes' names as `/proc/PID/comm` shows them (the script's name, cut to 15 bytes).
pub fn process_names() -> Vec<String> {
    ["proxy", "account", "container", "object"]
        .iter()
        .map(|s| {
            let mut n = format!("swift-{s}-server");
            n.truncate(15);
            n
        })
        .collect()
}

/// Starts each server whose PID file names no live process of this namespace, in the namespace
/// `ns`; then waits (up to 30 s) until the proxy is healthy and its servers listen. Returns true if it
/// started any. A server left in a namespace that was made afresh since (an `up` killed part-way)
/// is stopped first: it holds no port here, and nothing else would stop it.
pub fn start(l: &Layout, ns: &str, ip: Ipv4Addr) -> Result<bool, LocalError> {
    let mut script = String::from(
        "started=\nhere=$(readlink /proc/self/ns/net)\n\
         ours() { [ -n \"$1\" ] && [ \"$(readlink /proc/$1/ns/net 2>/dev/null)\" = \"$here\" ]; }\n\
         swift() { case $(cat /proc/$1/comm 2>/dev/null) in swift-*) true ;; *) false ;; esac; }\n",
    );
    for name in ["account", "container", "object", "proxy"] {
        let pid = q(&l.run.join(format!("{name}.pid")));
        let conf = q(&l.etc.join(format!("{name}-server.conf")));
        let log = q(&l.run.join(format!("{name}.err")));
        script.push_str(&format!(
            "p=$(cat {pid} 2>/dev/null)\n\
             if ! ours \"$p\"; then [ -n \"$p\" ] && swift \"$p\" && kill \"$p\"; \
             setsid swift-{name}-server {conf} </dev/null >>{log} 2>&1 & echo $! > {pid}; started=1; fi\n"
        ));
    }
    // The proxy's health check answers before the servers behind it listen (a request then
    // gets 503): ready is the proxy healthy and every server answering HTTP at all.
    let backends: Vec<String> = SERVERS
        .iter()
        .map(|(_, port)| format!("curl -s -o /dev/null http://127.0.0.1:{port}/"))
        .collect();
    script.push_str(&format!(
        "for i in $(seq 150); do \
         curl -sf -o /dev/null http://{ip}:{PORT}/healthcheck && {} && {{ echo ${{started:+started}}; exit 0; }}; \
         sleep 0.2; done; echo 'the Swift proxy does not answer at {ip}:{PORT}' >&2; exit 1\n",
        backends.join(" && ")
    ));
    // The script's text is long and says nothing the reader needs: the error names the store,
    // the address and the proxy's last words.
    let out = sh::run("ip", &["netns", "exec", ns, "sh", "-c", &script]).map_err(|_| {
        let err = std::fs::read_to_string(l.run.join("proxy.err")).unwrap_or_default();
        let tail: Vec<&str> = err.lines().rev().take(3).collect();
        let last = tail.into_iter().rev().collect::<Vec<_>>().join(" | ");
        LocalError::Command {
            command: format!("swift-proxy-server in {ns}"),
            detail: format!(
                "no answer at http://{ip}:{PORT}/healthcheck, or from its servers, within 30 s{}",
                if last.is_empty() {
                    String::new()
                } else {
                    format!("; its log ends: {last}")
                }
            ),
        }
    })?;
    Ok(out.lines().any(|l| l == "started"))
}
