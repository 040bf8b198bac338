//! What a node needs from its distribution's packages for its role, and installing what a stock
//! cloud image lacks (`agent install`, run over the openstack node channel before `apply`).
//!
//! A package counts as present when the file the agent uses from it exists, so a node whose image
//! already has everything starts no process here, and a host whose tools come from elsewhere is
//! judged by what the agent runs, not by dpkg's records. Installing uses apt (Debian and Ubuntu):
//! the distribution's own signed packages from whatever mirror the image's apt sources name.

use std::path::Path;
use std::process::Command;

use hybridgrid_core::plan::{NodeConfig, Role, SlurmRole};

use crate::AgentError;

/// A distribution package and the files that show it is installed (any one of them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Package {
    pub name: &'static str,
    pub proof: &'static [&'static str],
}

const fn package(name: &'static str, proof: &'static [&'static str]) -> Package {
    Package { name, proof }
}

// Every node: routes and addresses, the MSS clamp, and jobs' and the agent's HTTP client.
const IPROUTE2: Package = package("iproute2", &["/usr/sbin/ip", "/sbin/ip", "/bin/ip"]);
const NFTABLES: Package = package("nftables", &["/usr/sbin/nft", "/sbin/nft"]);
const CURL: Package = package("curl", &["/usr/bin/curl"]);
// Relays: `wg show` for people (the agent itself speaks the UAPI or netlink).
const WIREGUARD_TOOLS: Package = package("wireguard-tools", &["/usr/bin/wg"]);
// A relay of a pair: VRRP (the agent runs it with its own configuration; the package's own
// service has none, so it never starts).
const KEEPALIVED: Package = package("keepalived", &["/usr/sbin/keepalived"]);
// Slurm nodes.
const MUNGE: Package = package("munge", &["/usr/sbin/munged"]);
const SLURM_CLIENT: Package = package("slurm-client", &["/usr/bin/scontrol"]);
const SLURMCTLD: Package = package("slurmctld", &["/usr/sbin/slurmctld"]);
const SLURMD: Package = package("slurmd", &["/usr/sbin/slurmd"]);
// Workers at a site with a dataset in its store: how jobs read it
// (`aws --endpoint-url "$AWS_ENDPOINT_URL" s3 …`).
const AWSCLI: Package = package("awscli", &["/usr/bin/aws"]);

/// The packages `config`'s node needs, in a stable order; with `role`, also what the node will
/// need once its role is complete (a node's first configuration may come before the cluster's
/// mesh, without its Slurm part: one apt run instead of two).
pub fn needed(config: &NodeConfig, role: Option<Role>) -> Vec<Package> {
    let mut all = vec![IPROUTE2, NFTABLES, CURL];
    if config.wireguard.is_some() || role.is_some_and(Role::is_relay) {
        all.push(WIREGUARD_TOOLS);
    }
    if config.pair.is_some() {
        all.push(KEEPALIVED);
    }
    let slurm = match (config.slurm.role, role) {
        (SlurmRole::None, Some(Role::Master)) => SlurmRole::Controller,
        (SlurmRole::None, Some(Role::Worker)) => SlurmRole::Compute,
        (slurm, _) => slurm,
    };
    match slurm {
        SlurmRole::Controller => all.extend([MUNGE, SLURM_CLIENT, SLURMCTLD]),
        // A worker's agent asks slurmctld about itself with `sinfo` and `scontrol`.
        SlurmRole::Compute => all.extend([MUNGE, SLURM_CLIENT, SLURMD]),
        SlurmRole::None => {}
    }
    if config.store_client {
        all.push(AWSCLI);
    }
    all
}

/// Of the packages [`needed`], those none of whose files exist under `root` (`/` on a node).
pub fn missing(config: &NodeConfig, role: Option<Role>, root: &Path) -> Vec<Package> {
    needed(config, role)
        .into_iter()
        .filter(|p| {
            !p.proof
                .iter()
                .any(|f| root.join(f.trim_start_matches('/')).exists())
        })
        .collect()
}

/// What `agent install` did: the packages it installed, and the node's Slurm as its role's daemon
/// reports it (`slurm 22.05.8`; `None` on a node without a Slurm role).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InstallReport {
    pub installed: Vec<String>,
    /// What the node's first boot installed ([`boot_script`], run by cloud-init).
    #[serde(default)]
    pub installed_at_boot: Vec<String>,
    pub slurm_version: Option<String>,
}

/// Where the first boot's install ([`boot_script`]) records what it installed.
pub const BOOT_INSTALLED: &str = "/var/lib/hybridgrid/boot-installed";

/// A POSIX shell script for the node's first boot (cloud-init) that installs what [`needed`]
/// finds missing — judged by the same files — with no service started meanwhile, and records
/// the names in [`BOOT_INSTALLED`]. It overlaps apt with the rest of the cluster's boot; best
/// effort: what it could not install, `agent install` installs later or reports, located.
pub fn boot_script(config: &NodeConfig, role: Option<Role>) -> String {
    let checks: Vec<String> = needed(config, role)
        .iter()
        .map(|p| {
            let present: Vec<String> = p.proof.iter().map(|f| format!("[ -e {f} ]")).collect();
            format!("{} || m=\"$m {}\"", present.join(" || "), p.name)
        })
        .collect();
    format!(
        "m=''; {checks}; [ -z \"$m\" ] && exit 0; \
         printf '#!/bin/sh\\nexit 101\\n' > {POLICY_RC_D} && chmod 0755 {POLICY_RC_D}; \
         o='-q -y -o DPkg::Lock::Timeout=300 -o Dpkg::Options::=--force-confold'; \
         apt-get $o update && DEBIAN_FRONTEND=noninteractive apt-get $o install \
         --no-install-recommends $m && mkdir -p {dir} && echo $m > {BOOT_INSTALLED}; \
         rm -f {POLICY_RC_D}; systemctl disable -q munge slurmd slurmctld 2>/dev/null; true",
        checks = checks.join("; "),
        dir = "/var/lib/hybridgrid",
    )
}

/// Installs what `config`'s node (of `role`) needs and lacks, then asks its Slurm daemon for
/// its version.
pub fn install_and_report(
    config: &NodeConfig,
    role: Option<Role>,
) -> Result<InstallReport, AgentError> {
    let installed = install(config, role)?;
    // Reported once: the record is set aside after this report.
    let installed_at_boot = std::fs::read_to_string(BOOT_INSTALLED)
        .map(|t| t.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default();
    let _ = std::fs::rename(BOOT_INSTALLED, format!("{BOOT_INSTALLED}.reported"));
    let slurm = match role {
        Some(Role::Master) => SlurmRole::Controller,
        Some(Role::Worker) => SlurmRole::Compute,
        _ => config.slurm.role,
    };
    Ok(InstallReport {
        installed,
        installed_at_boot,
        slurm_version: slurm_version(slurm),
    })
}

/// What the role's Slurm daemon says its version is (`slurmd -V`).
pub fn slurm_version(role: SlurmRole) -> Option<String> {
    let daemon = match role {
        SlurmRole::Controller => "slurmctld",
        SlurmRole::Compute => "slurmd",
        SlurmRole::None => return None,
    };
    let out = Command::new(daemon).arg("-V").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (out.status.success() && !text.is_empty()).then_some(text)
}

/// The node's CPUs and memory as slurmd counts them (`slurmd -C`): what slurmctld compares
/// with what the node was declared with.
pub fn slurmd_counts() -> Option<hybridgrid_core::observed::MeasuredSize> {
    let out = Command::new("slurmd").arg("-C").output().ok()?;
    out.status.success().then_some(())?;
    hybridgrid_core::slurm_conf::measured_size(&String::from_utf8_lossy(&out.stdout))
}

/// Installs the packages `config` needs and the node lacks; their names (empty: nothing was
/// missing, nothing ran). The distribution's daemons of munge and Slurm are the agent's to start:
/// no service starts during the install (`policy-rc.d`), and their units are disabled after it.
pub fn install(config: &NodeConfig, role: Option<Role>) -> Result<Vec<String>, AgentError> {
    let names: Vec<String> = missing(config, role, Path::new("/"))
        .iter()
        .map(|p| p.name.to_owned())
        .collect();
    if names.is_empty() {
        return Ok(names);
    }
    let _no_services = NoServiceStarts::install()?;
    apt(&["update"], &names)?;
    let mut install = vec!["install", "--no-install-recommends"];
    install.extend(names.iter().map(String::as_str));
    apt(&install, &names)?;
    // Best effort: a unit that does not exist (a package without one) is no failure.
    let _ = Command::new("systemctl")
        .args(["disable", "-q", "munge", "slurmd", "slurmctld"])
        .output();
    Ok(names)
}

/// Runs `apt-get` non-interactively; on failure, an error naming `packages` and apt's own words.
fn apt(args: &[&str], packages: &[String]) -> Result<(), AgentError> {
    let out = Command::new("apt-get")
        .args([
            "-q",
            "-y",
            // A stock image's first boot may run apt's own timers: wait for its lock, not fail.
            "-o",
            "DPkg::Lock::Timeout=300",
            "-o",
            "Dpkg::Options::=--force-confold",
        ])
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .output()
        .map_err(|e| AgentError::PackageInstall {
            packages: packages.join(" "),
            detail: format!("apt-get could not start: {e}"),
        })?;
    if out.status.success() {
        return Ok(());
    }
    Err(AgentError::PackageInstall {
        packages: packages.join(" "),
        detail: apt_failure(
            &String::from_utf8_lossy(&out.stdout),
            &String::from_utf8_lossy(&out.stderr),
        ),
    })
}

/// apt's reason for a failure: its `E:` lines (the `W:` lines of an `update` that could not
/// fetch an index are its reason there), else the end of what it printed.
pub fn apt_failure(stdout: &str, stderr: &str) -> String {
    let lines: Vec<&str> = stderr.lines().chain(stdout.lines()).collect();
    let errors: Vec<&str> = lines
        .iter()
        .filter(|l| l.starts_with("E: "))
        .copied()
        .collect();
    let chosen = if errors.is_empty() {
        let warnings: Vec<&str> = lines
            .iter()
            .filter(|l| l.starts_with("W: "))
            .copied()
            .collect();
        if warnings.is_empty() {
            lines[lines.len().saturating_sub(3)..].to_vec()
        } else {
            warnings
        }
    } else {
        errors
    };
    let text = chosen.join("; ");
    if text.trim().is_empty() {
        "apt-get failed and printed nothing".to_owned()
    } else {
        text
    }
}

/// Debian's `policy-rc.d` (exit 101: "action forbidden") while packages install, removed again
/// on drop unless it was there before.
struct NoServiceStarts {
    made: bool,
}

const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";

impl NoServiceStarts {
    fn install() -> Result<NoServiceStarts, AgentError> {
        if Path::new(POLICY_RC_D).exists() {
            return Ok(NoServiceStarts { made: false });
        }
        crate::sys::write_atomic(Path::new(POLICY_RC_D), b"#!/bin/sh\nexit 101\n", 0o755)?;
        Ok(NoServiceStarts { made: true })
    }
}

impl Drop for NoServiceStarts {
    fn drop(&mut self) {
        if self.made {
            let _ = std::fs::remove_file(POLICY_RC_D);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use hybridgrid_core::plan::SlurmSetup;

    fn config(role: SlurmRole, relay: bool) -> NodeConfig {
        let mut slurm = SlurmSetup::none("10.0.0.1".parse().unwrap(), 6817);
        slurm.role = role;
        NodeConfig {
            hostname: "n".into(),
            hosts: Vec::new(),
            ip_forward: relay,
            mss_clamp: relay,
            routes: Vec::new(),
            wireguard: relay.then(|| hybridgrid_core::plan::WgInterface {
                name: "wg0".into(),
                address: "10.0.0.1/24".parse().unwrap(),
                listen_port: 51820,
                mtu: 1420,
                public_key: None,
                preshared_keys: false,
                peers: Vec::new(),
            }),
            slurm,
            store_client: false,
            pair: None,
        }
    }

    fn names(p: &[Package]) -> Vec<&str> {
        p.iter().map(|p| p.name).collect()
    }

    #[test]
    fn a_relay_of_a_pair_needs_keepalived() {
        let mut relay = config(SlurmRole::None, true);
        relay.pair = Some(hybridgrid_core::node::RelayPair {
            identity: "b-gw".into(),
            vip: "10.2.0.252/24".parse().unwrap(),
            lan_ip: "10.2.0.253".parse().unwrap(),
            partner: "b-gw-b".into(),
            partner_ip: "10.2.0.254".parse().unwrap(),
            router_id: 2,
            router_ip: "10.2.0.1".parse().unwrap(),
        });
        assert_eq!(
            names(&needed(&relay, Some(Role::Gateway))),
            [
                "iproute2",
                "nftables",
                "curl",
                "wireguard-tools",
                "keepalived"
            ]
        );
    }

    #[test]
    fn each_role_needs_its_own_packages() {
        assert_eq!(
            names(&needed(&config(SlurmRole::Controller, true), None)),
            [
                "iproute2",
                "nftables",
                "curl",
                "wireguard-tools",
                "munge",
                "slurm-client",
                "slurmctld"
            ]
        );
        assert_eq!(
            names(&needed(&config(SlurmRole::Compute, false), None)),
            [
                "iproute2",
                "nftables",
                "curl",
                "munge",
                "slurm-client",
                "slurmd"
            ]
        );
        assert_eq!(
            names(&needed(&config(SlurmRole::None, true), None)),
            ["iproute2", "nftables", "curl", "wireguard-tools"]
        );
        // Before the mesh is complete a master's configuration has no Slurm part yet: its role
        // brings the controller's packages into the same apt run.
        assert_eq!(
            names(&needed(&config(SlurmRole::None, true), Some(Role::Master))),
            [
                "iproute2",
                "nftables",
                "curl",
                "wireguard-tools",
                "munge",
                "slurm-client",
                "slurmctld"
            ]
        );
        assert_eq!(
            names(&needed(&config(SlurmRole::None, false), Some(Role::Worker))),
            [
                "iproute2",
                "nftables",
                "curl",
                "munge",
                "slurm-client",
                "slurmd"
            ]
        );
    }

    #[test]
    fn a_package_whose_file_exists_is_not_missing() {
        let root = tempfile::tempdir().unwrap();
        for f in [
            "usr/sbin/ip",
            "usr/sbin/nft",
            "usr/bin/curl",
            "usr/sbin/munged",
        ] {
            let p = root.path().join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, b"").unwrap();
        }
        let worker = config(SlurmRole::Compute, false);
        assert_eq!(
            names(&missing(&worker, None, root.path())),
            ["slurm-client", "slurmd"]
        );
        let reader = NodeConfig {
            store_client: true,
            ..worker
        };
        assert_eq!(
            names(&missing(&reader, None, root.path())),
            ["slurm-client", "slurmd", "awscli"]
        );
    }

    #[test]
    fn the_boot_script_checks_the_roles_packages_and_is_valid_shell() {
        let worker = config(SlurmRole::None, false);
        let script = boot_script(&worker, Some(Role::Worker));
        assert!(
            script.contains(r#"[ -e /usr/sbin/slurmd ] || m="$m slurmd""#),
            "{script}"
        );
        assert!(!script.contains("slurmctld ]"), "{script}");
        assert!(script.contains("--no-install-recommends $m"), "{script}");
        let syntax = Command::new("sh")
            .args(["-n", "-c", &script])
            .output()
            .unwrap();
        assert!(syntax.status.success(), "{script}");
    }

    #[test]
    fn apt_failure_names_apts_errors_first() {
        let stderr =
            "W: Some index files failed to download.\nE: Unable to locate package slurmd\n";
        assert_eq!(
            apt_failure("Reading package lists...\n", stderr),
            "E: Unable to locate package slurmd"
        );
        let update = "W: Failed to fetch http://deb.debian.org/debian/dists/bookworm/InRelease  \
                      Could not resolve 'deb.debian.org'\n";
        assert!(apt_failure("", update).contains("Could not resolve"));
        assert_eq!(apt_failure("", ""), "apt-get failed and printed nothing");
    }
}
