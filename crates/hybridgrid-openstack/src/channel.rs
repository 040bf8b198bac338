//! The node channel: OpenSSH as the image's login user to a relay's floating IP and, through
//! that relay, to the workers of its site on their site address (OpenSSH's `ProxyJump`,
//! spelled as a `ProxyCommand` so that the options below hold for both hops). The user's own
//! SSH set-up applies as it does for `ssh`: `~/.ssh/config`, the agent, their keys; the cluster
//! file's `ssh_public_key` adds its private half when it lies beside it.
//!
//! Host keys are the cluster's own (`<state>/<cluster>/ssh/known_hosts`), each under the node's
//! name (`HostKeyAlias`): accepted on first contact, refused if they change later while the
//! node's machine is the same ([`Channel::forget_replaced`]: a node made again, such as an
//! on-demand worker woken anew, is met as a new machine). One
//! connection per node is shared by every command of a run (`ControlMaster`).
//!
//! What goes over the channel as standard input (the node's configuration, the munge key, the
//! agent binary) never appears in a command line, a log or an error.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt as _;

use crate::error::{OsError, Result};

/// How a node is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub node: String,
    /// The relay's floating IP, or the worker's site address.
    pub host: Ipv4Addr,
    /// The login user of the node's image.
    pub user: String,
    /// For a worker: its site's relay.
    pub jump: Option<Hop>,
}

/// The relay a worker is reached through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hop {
    pub node: String,
    /// Its floating IP.
    pub host: Ipv4Addr,
    pub user: String,
}

/// What a command on a node printed.
#[derive(Debug, Clone)]
pub struct Output {
    pub code: i32,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

impl Output {
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

#[derive(Debug, Clone)]
pub struct Channel {
    cluster: String,
    identity: Option<PathBuf>,
    dir: PathBuf,
    connect_timeout: Duration,
}

impl Channel {
    /// `dir` holds the cluster's known hosts and the shared connections' sockets; `home` is
    /// what `~/` stands for in `ssh_public_key`.
    pub fn new(
        cluster: &str,
        ssh_public_key: Option<&str>,
        home: Option<&Path>,
        dir: PathBuf,
    ) -> Self {
        Channel {
            cluster: cluster.to_owned(),
            identity: ssh_public_key.and_then(|k| private_key_beside(k, home)),
            dir,
            connect_timeout: Duration::from_secs(10),
        }
    }

    /// The options every hop gets.
    fn options(&self, node: &str) -> Vec<String> {
        let mut o = vec![
            "-o".into(),
            "BatchMode=yes".into(),
            "-o".into(),
            "StrictHostKeyChecking=accept-new".into(),
            "-o".into(),
            format!(
                "UserKnownHostsFile={}",
                self.dir.join("known_hosts").display()
            ),
            "-o".into(),
            format!("HostKeyAlias={}", self.host_key_alias(node)),
            "-o".into(),
            format!("ConnectTimeout={}", self.connect_timeout.as_secs()),
            "-o".into(),
            "ServerAliveInterval=10".into(),
            "-o".into(),
            "LogLevel=ERROR".into(),
        ];
        if let Some(id) = &self.identity {
            o.push("-i".into());
            o.push(id.display().to_string());
        }
        o
    }

    /// The `ssh` arguments that run `remote` on the target (`ssh … user@host -- remote`).
    pub fn args(&self, target: &Target, remote: &str) -> Vec<String> {
        let mut a = self.options(&target.node);
        a.extend([
            "-o".into(),
            "ControlMaster=auto".into(),
            "-o".into(),
            // %C: a hash of host, port, user: short enough for a socket path.
            format!("ControlPath={}/cm-%C", self.dir.display()),
            "-o".into(),
            "ControlPersist=60".into(),
        ]);
        if let Some(relay) = &target.jump {
            let hop: Vec<String> = self
                .options(&relay.node)
                .into_iter()
                .map(|w| shell_quote(&w))
                .collect();
            a.push("-o".into());
            a.push(format!(
                "ProxyCommand=ssh {} -W %h:%p {}@{}",
                hop.join(" "),
                relay.user,
                relay.host
            ));
        }
        a.push(format!("{}@{}", target.user, target.host));
        a.push("--".into());
        a.push(remote.to_owned());
        a
    }

    /// Runs the shell script `script` as root on the target (through `sudo` unless the login
    /// user is root), `input` on its standard input. A failed connection is an error; the
    /// script's own exit code is in the output.
    pub async fn run(&self, target: &Target, script: &str, input: &[u8]) -> Result<Output> {
        self.ensure_dir()?;
        let remote = if target.user == "root" {
            format!("sh -c {}", shell_quote(script))
        } else {
            format!("sudo -n sh -c {}", shell_quote(script))
        };
        let mut child = tokio::process::Command::new("ssh")
            .args(self.args(target, &remote))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(ssh_error(target))?;
        if let Some(mut stdin) = child.stdin.take() {
            // A script that does not read its input closes the pipe early: not an error.
            let _ = stdin.write_all(input).await;
        }
        let out = child.wait_with_output().await.map_err(ssh_error(target))?;
        output_of(target, out)
    }

    /// Like [`Channel::run`], and a non-zero exit is an error naming `what`.
    pub async fn run_ok(
        &self,
        target: &Target,
        what: &str,
        script: &str,
        input: &[u8],
    ) -> Result<Output> {
        let out = self.run(target, script, input).await?;
        if out.code != 0 {
            return Err(OsError::Channel {
                node: target.node.clone(),
                detail: format!(
                    "{what} failed (exit {}): {}",
                    out.code,
                    last_lines(&out.stderr)
                ),
            });
        }
        Ok(out)
    }

    /// Like [`Channel::run`] with the script run as the login user (no `sudo`), on a
    /// connection of its own that forwards the `ssh-agent` at `agent`: the node's own `ssh`
    /// logs in elsewhere with this channel's key (`store_files::hand_over_from_relay`).
    pub async fn run_with_agent(
        &self,
        target: &Target,
        script: &str,
        agent: &Path,
    ) -> Result<Output> {
        self.ensure_dir()?;
        let mut args = self.options(&target.node);
        args.extend([
            "-o".into(),
            "ControlPath=none".into(),
            // `ForwardAgent=PATH` forwarded nothing with Debian 12's OpenSSH (9.2): the socket
            // goes in SSH_AUTH_SOCK instead.
            "-o".into(),
            "ForwardAgent=yes".into(),
            format!("{}@{}", target.user, target.host),
            "--".into(),
            format!("sh -c {}", shell_quote(script)),
        ]);
        let out = tokio::process::Command::new("ssh")
            .args(&args)
            .env("SSH_AUTH_SOCK", agent)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .map_err(ssh_error(target))?;
        let mut out = output_of(target, out)?;
        out.stderr = last_lines(&out.stderr);
        Ok(out)
    }

    /// Writes `content` to `path` on the target with `mode` ([`install_stdin`]: on standard
    /// input only), or removes `path` when there is none; `what` names the delivery in an error.
    pub async fn put_or_remove(
        &self,
        target: &Target,
        what: &str,
        (path, mode): (&str, &str),
        content: Option<&[u8]>,
    ) -> Result<()> {
        match content {
            Some(bytes) => {
                self.run_ok(target, what, &install_stdin(path, mode), bytes)
                    .await
            }
            None => {
                self.run_ok(target, what, &format!("rm -f {path}"), b"")
                    .await
            }
        }
        .map(drop)
    }

    /// The private key this channel logs in with, when it names one.
    pub fn identity(&self) -> Option<&Path> {
        self.identity.as_deref()
    }

    /// The known-hosts lines of `node` (as `ssh-keygen -F` finds them under its alias).
    pub fn known_host_lines(&self, node: &str) -> Vec<String> {
        let out = std::process::Command::new("ssh-keygen")
            .args(["-F", &self.host_key_alias(node), "-f"])
            .arg(self.dir.join("known_hosts"))
            .stderr(Stdio::null())
            .output();
        out.map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
    }

    /// The known-hosts file and shared connections of the cluster.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The name a node's host key is kept under: the node's, not its address (a relay's floating
    /// IP or a worker's site address can belong to another cluster's node later).
    pub fn host_key_alias(&self, node: &str) -> String {
        format!("{}-{node}", self.cluster)
    }

    /// Forgets the host key of every node whose machine (`instances`: node → the provider's id
    /// of it) is not the one this channel last met under its name: a node made again has new
    /// host keys, and its next contact accepts them. Records the machines met.
    pub fn forget_replaced(&self, instances: &BTreeMap<String, String>) -> Result<()> {
        self.ensure_dir()?;
        let path = self.dir.join("instances.json");
        let mut met: BTreeMap<String, String> = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let known = self.dir.join("known_hosts");
        let mut changed = false;
        for (node, instance) in instances {
            if met.get(node) == Some(instance) {
                continue;
            }
            if known.exists() {
                // Quietly: a node never met has nothing to remove.
                let _ = std::process::Command::new("ssh-keygen")
                    .args(["-q", "-R", &self.host_key_alias(node), "-f"])
                    .arg(&known)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
            met.insert(node.clone(), instance.clone());
            changed = true;
        }
        if changed {
            let text = serde_json::to_vec_pretty(&met).unwrap_or_default();
            hybridgrid_engine::state::write_atomic(&path, &text, 0o600)?;
        }
        Ok(())
    }

    /// Makes [`Channel::dir`] unless it exists.
    pub fn ensure_dir(&self) -> Result<()> {
        std::fs::create_dir_all(&self.dir).map_err(|source| OsError::ChannelDir {
            path: self.dir.clone(),
            source,
        })
    }
}

/// A script that writes its standard input to `path` on a node with `mode`, replacing the file
/// at once (never readable by others while it is written: secrets go this way).
pub fn install_stdin(path: &str, mode: &str) -> String {
    format!(
        "set -e; umask 077; mkdir -p \"$(dirname {path})\"; rm -f {path}.part; \
         cat > {path}.part; chmod {mode} {path}.part; mv -f {path}.part {path}"
    )
}

/// What ssh's run of a command gave: ssh's own failure (exit 255: connection,
/// authentication, host key) is an error; the command's exit code and output otherwise.
fn output_of(target: &Target, out: std::process::Output) -> Result<Output> {
    let code = out.status.code().unwrap_or(255);
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    if code == 255 {
        return Err(OsError::Channel {
            node: target.node.clone(),
            detail: ssh_failure(target, stderr),
        });
    }
    Ok(Output {
        code,
        stdout: out.stdout,
        stderr,
    })
}

fn ssh_error(target: &Target) -> impl FnOnce(std::io::Error) -> OsError + '_ {
    move |source| OsError::Ssh {
        node: target.node.clone(),
        source,
    }
}

/// What ssh said when it failed; a refused login also names the user it tried and the key that
/// sets another.
fn ssh_failure(target: &Target, stderr: String) -> String {
    if stderr.is_empty() {
        return "ssh failed".into();
    }
    if !stderr.contains("Permission denied") {
        return stderr;
    }
    let users = match &target.jump {
        Some(relay) if relay.user != target.user => {
            format!(
                "`{}` (through {} as `{}`)",
                target.user, relay.node, relay.user
            )
        }
        _ => format!("`{}`", target.user),
    };
    format!(
        "{stderr} (logged in as {users}: the image's login user unless the cluster file's \
         `ssh_user` names another; set `ssh_user` if the image has a different one)"
    )
}

/// `path` with a leading `~/` as `home` (unchanged without a home: reading it then fails,
/// naming it).
pub(crate) fn expand_home(path: &str, home: Option<&Path>) -> PathBuf {
    match (path.trim().strip_prefix("~/"), home) {
        (Some(rest), Some(home)) => home.join(rest),
        _ => PathBuf::from(path.trim()),
    }
}

/// `X` for a public key file `X.pub` when `X` exists.
fn private_key_beside(public: &str, home: Option<&Path>) -> Option<PathBuf> {
    let path = expand_home(public, home);
    let private = PathBuf::from(path.to_str()?.strip_suffix(".pub")?);
    private.is_file().then_some(private)
}

fn last_lines(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(5)..].join(" | ")
}

/// Single quotes for `sh`.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_is_reached_through_its_relay_with_the_same_host_key_rules() {
        let ch = Channel::new("c1", None, None, PathBuf::from("/s/ssh"));
        let t = Target {
            node: "a-worker-1".into(),
            host: Ipv4Addr::new(10, 1, 0, 6),
            user: "debian".into(),
            jump: Some(Hop {
                node: "a-gw".into(),
                host: Ipv4Addr::new(203, 0, 113, 7),
                user: "debian".into(),
            }),
        };
        let args = ch.args(&t, "true");
        let proxy = args
            .iter()
            .find(|a| a.starts_with("ProxyCommand="))
            .expect("a proxy command");
        assert!(proxy.contains("'HostKeyAlias=c1-a-gw'"), "{proxy}");
        assert!(proxy.contains("'UserKnownHostsFile=/s/ssh/known_hosts'"));
        assert!(proxy.ends_with("-W %h:%p debian@203.0.113.7"), "{proxy}");
        assert!(args.contains(&"HostKeyAlias=c1-a-worker-1".to_owned()));
        assert!(args.contains(&"StrictHostKeyChecking=accept-new".to_owned()));
        assert_eq!(&args[args.len() - 3..], ["debian@10.1.0.6", "--", "true"]);
    }

    #[test]
    fn each_hop_logs_in_as_its_own_images_user_and_a_refusal_names_them() {
        let ch = Channel::new("c1", None, None, PathBuf::from("/s/ssh"));
        let t = Target {
            node: "b-worker-1".into(),
            host: Ipv4Addr::new(10, 2, 0, 6),
            user: "ubuntu".into(),
            jump: Some(Hop {
                node: "b-gw".into(),
                host: Ipv4Addr::new(203, 0, 113, 8),
                user: "debian".into(),
            }),
        };
        let args = ch.args(&t, "true");
        let proxy = args
            .iter()
            .find(|a| a.starts_with("ProxyCommand="))
            .unwrap();
        assert!(proxy.ends_with("-W %h:%p debian@203.0.113.8"), "{proxy}");
        assert_eq!(&args[args.len() - 3..], ["ubuntu@10.2.0.6", "--", "true"]);
        let said = ssh_failure(&t, "ubuntu@10.2.0.6: Permission denied (publickey).".into());
        assert!(
            said.contains("`ubuntu` (through b-gw as `debian`)"),
            "{said}"
        );
        assert!(said.contains("`ssh_user`"), "{said}");
        assert_eq!(
            ssh_failure(&t, "Connection refused".into()),
            "Connection refused"
        );
    }

    #[test]
    fn the_private_key_beside_the_public_one_is_used() {
        let dir = tempfile::tempdir().unwrap();
        let public = dir.path().join("id_ed25519.pub");
        std::fs::write(&public, "ssh-ed25519 AAAA test").unwrap();
        assert_eq!(private_key_beside(public.to_str().unwrap(), None), None);
        std::fs::write(dir.path().join("id_ed25519"), "private").unwrap();
        assert_eq!(
            private_key_beside(public.to_str().unwrap(), None),
            Some(dir.path().join("id_ed25519"))
        );
        assert_eq!(
            private_key_beside("~/id_ed25519.pub", Some(dir.path())),
            Some(dir.path().join("id_ed25519"))
        );
        assert_eq!(private_key_beside("ssh-ed25519 AAAA inline", None), None);
    }

    #[test]
    fn quoting_survives_single_quotes() {
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
    }
}
