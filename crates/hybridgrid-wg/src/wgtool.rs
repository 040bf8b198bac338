//! The kernel backend: the kernel module's generic-netlink interface, driven through `wg(8)` from
//! wireguard-tools. `wg` speaks netlink to kernel devices and the UAPI socket to userspace ones, so
//! this code path is exercised here against a userspace device although this machine has no module.

use std::io::Write as _;
use std::net::SocketAddr;
use std::process::{Command, Stdio};

use ipnet::IpNet;

use crate::WgError;
use crate::diff::{DeviceChanges, PeerChange};
use crate::state::{DesiredDevice, DeviceState, PeerState, key_from_base64, key_to_base64};

fn tool_error(ifname: &str, detail: impl Into<String>) -> WgError {
    WgError::Tool {
        ifname: ifname.to_owned(),
        detail: detail.into(),
    }
}

/// Runs `wg ARGS`, feeding `stdin`; returns its standard output.
fn wg(ifname: &str, args: &[String], stdin: Option<&str>) -> Result<String, WgError> {
    let mut child = Command::new("wg")
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            tool_error(
                ifname,
                format!("cannot run wg ({e}); install wireguard-tools"),
            )
        })?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes())
            .map_err(|e| tool_error(ifname, format!("writing to wg: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| tool_error(ifname, format!("waiting for wg: {e}")))?;
    if !out.status.success() {
        return Err(tool_error(
            ifname,
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `wg show IFNAME dump`, parsed.
pub(crate) fn read(ifname: &str) -> Result<DeviceState, WgError> {
    parse_dump(
        ifname,
        &wg(ifname, &["show".into(), ifname.into(), "dump".into()], None)?,
    )
}

/// Applies `changes` with one `wg set`; the private key goes through standard input, never
/// argv, and preshared keys through files only root can read ([`PresharedFiles`]).
pub(crate) fn apply(
    ifname: &str,
    desired: &DesiredDevice,
    changes: &DeviceChanges,
) -> Result<(), WgError> {
    if changes.is_empty() {
        return Ok(());
    }
    let psk = PresharedFiles::write(ifname, changes)?;
    let (args, key) = set_args(ifname, desired, changes, psk.dir());
    wg(ifname, &args, key.as_deref()).map(|_| ())
}

/// The preshared keys of a change, one file each (named by the peer's place in the change) in a
/// folder of mode 0700 under `/run`, removed when dropped: `wg set` reads them from there, and
/// standard input carries the private key.
struct PresharedFiles(Option<std::path::PathBuf>);

impl PresharedFiles {
    fn write(ifname: &str, changes: &DeviceChanges) -> Result<Self, WgError> {
        let keys: Vec<(usize, &crate::state::Key)> = changes
            .peers
            .iter()
            .enumerate()
            .filter_map(|(i, c)| preshared_of(c).map(|k| (i, k)))
            .collect();
        if keys.is_empty() {
            return Ok(PresharedFiles(None));
        }
        use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
        let dir = std::path::PathBuf::from(format!(
            "/run/hybridgrid-wg-{ifname}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let failed = |e: std::io::Error| tool_error(ifname, format!("preshared key files: {e}"));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(failed)?;
        let files = PresharedFiles(Some(dir.clone()));
        for (i, key) in keys {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(dir.join(i.to_string()))
                .map_err(failed)?;
            f.write_all(format!("{}\n", key_to_base64(key)).as_bytes())
                .map_err(failed)?;
        }
        Ok(files)
    }

    fn dir(&self) -> Option<&std::path::Path> {
        self.0.as_deref()
    }
}

impl Drop for PresharedFiles {
    fn drop(&mut self) {
        if let Some(dir) = &self.0 {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// The preshared key a change sets (the all-zero key removes it).
fn preshared_of(change: &PeerChange) -> Option<&crate::state::Key> {
    match change {
        PeerChange::Add(p) => p.preshared_key.as_ref(),
        PeerChange::Update { preshared_key, .. } => preshared_key.as_ref(),
        PeerChange::Remove { .. } => None,
    }
}

/// The arguments of `wg set` for `changes`, and the private key to pass on standard input;
/// the preshared key of the change's `i`-th peer is read from `psk_dir/i`.
pub fn set_args(
    ifname: &str,
    desired: &DesiredDevice,
    changes: &DeviceChanges,
    psk_dir: Option<&std::path::Path>,
) -> (Vec<String>, Option<String>) {
    let mut a: Vec<String> = vec!["set".into(), ifname.into()];
    let mut key = None;
    if changes.set_private_key {
        a.extend(["private-key".into(), "/dev/stdin".into()]);
        key = Some(key_to_base64(&desired.private_key) + "\n");
    }
    if let Some(port) = changes.set_listen_port {
        a.extend(["listen-port".into(), port.to_string()]);
    }
    if let Some(mark) = changes.set_fwmark {
        a.extend(["fwmark".into(), mark.to_string()]);
    }
    let ips = |ips: &[IpNet]| {
        ips.iter()
            .map(|ip| ip.trunc().to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    for (i, change) in changes.peers.iter().enumerate() {
        a.extend(["peer".into(), key_to_base64(change.public_key())]);
        if let (Some(dir), Some(_)) = (psk_dir, preshared_of(change)) {
            a.extend([
                "preshared-key".into(),
                dir.join(i.to_string()).display().to_string(),
            ]);
        }
        match change {
            PeerChange::Remove { .. } => a.push("remove".into()),
            PeerChange::Add(p) => {
                if let Some(e) = p.endpoint {
                    a.extend(["endpoint".into(), e.to_string()]);
                }
                a.extend([
                    "persistent-keepalive".into(),
                    p.persistent_keepalive.unwrap_or(0).to_string(),
                ]);
                a.extend(["allowed-ips".into(), ips(&p.allowed_ips)]);
            }
            PeerChange::Update {
                endpoint,
                allowed_ips,
                persistent_keepalive,
                ..
            } => {
                if let Some(e) = endpoint {
                    a.extend(["endpoint".into(), e.to_string()]);
                }
                if let Some(ka) = persistent_keepalive {
                    a.extend(["persistent-keepalive".into(), ka.to_string()]);
                }
                if let Some(list) = allowed_ips {
                    a.extend(["allowed-ips".into(), ips(list)]);
                }
            }
        }
    }
    (a, key)
}

fn none_or<T>(field: &str, parse: impl FnOnce(&str) -> Option<T>) -> Result<Option<T>, ()> {
    match field {
        "(none)" | "off" => Ok(None),
        f => parse(f).map(Some).ok_or(()),
    }
}

/// Parses `wg show IF dump`: a line for the interface, then one per peer, tab-separated.
pub fn parse_dump(ifname: &str, text: &str) -> Result<DeviceState, WgError> {
    // The interface line starts with the private key: its fields are never echoed.
    let bad_interface = |line: &str| WgError::Protocol {
        ifname: ifname.to_owned(),
        detail: format!(
            "unexpected `wg show dump` interface line ({} fields; 4 expected)",
            line.split('\t').count()
        ),
    };
    // A peer line holds the pair's preshared key (second field): only the peer's public key is
    // named.
    let bad = |line: &str| WgError::Protocol {
        ifname: ifname.to_owned(),
        detail: format!(
            "unexpected `wg show dump` line of peer {:?}",
            line.split('\t').next().unwrap_or_default()
        ),
    };
    let mut lines = text.lines().filter(|l| !l.is_empty());
    let first = lines.next().ok_or_else(|| bad_interface(""))?;
    let f: Vec<&str> = first.split('\t').collect();
    let [private, _public, port, fwmark] = f.as_slice() else {
        return Err(bad_interface(first));
    };
    let mut state = DeviceState {
        private_key: none_or(private, |s| key_from_base64(s).ok())
            .map_err(|()| bad_interface(first))?,
        listen_port: port.parse().map_err(|_| bad_interface(first))?,
        fwmark: none_or(fwmark, |s| s.parse().ok()).map_err(|()| bad_interface(first))?,
        peers: Vec::new(),
    };
    for line in lines {
        let f: Vec<&str> = line.split('\t').collect();
        let [public, psk, endpoint, allowed, handshake, rx, tx, keepalive] = f.as_slice() else {
            return Err(bad(line));
        };
        let allowed_ips = match *allowed {
            "(none)" | "" => Vec::new(),
            list => list
                .split(',')
                .map(|s| s.parse::<IpNet>())
                .collect::<Result<_, _>>()
                .map_err(|_| bad(line))?,
        };
        state.peers.push(PeerState {
            public_key: key_from_base64(public).map_err(|_| bad(line))?,
            preshared_key: match *psk {
                "(none)" => None,
                k => Some(key_from_base64(k).map_err(|_| bad(line))?),
            },
            endpoint: none_or(endpoint, |s| s.parse::<SocketAddr>().ok())
                .map_err(|()| bad(line))?,
            allowed_ips,
            last_handshake_sec: handshake.parse().map_err(|_| bad(line))?,
            last_handshake_nsec: 0,
            rx_bytes: rx.parse().map_err(|_| bad(line))?,
            tx_bytes: tx.parse().map_err(|_| bad(line))?,
            persistent_keepalive: none_or(keepalive, |s| s.parse().ok())
                .map_err(|()| bad(line))?
                .filter(|k| *k != 0),
        });
    }
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::DesiredPeer;
    use std::path::Path;

    /// `wg show dump` output of any shape: interface and peer lines of tab-separated fields.
    fn dump_text() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let field = prop_oneof![
            Just(K1.to_owned()),
            Just("(none)".to_owned()),
            Just("off".to_owned()),
            Just("10.0.0.2/32,10.20.0.0/24".to_owned()),
            Just("192.0.2.1:51820".to_owned()),
            "[0-9]{0,22}",
            "[ -~]{0,20}",
        ];
        let line = prop::collection::vec(field, 0..10).prop_map(|f| f.join("\t"));
        prop::collection::vec(line, 0..8).prop_map(|l| l.join("\n"))
    }

    proptest::proptest! {
        /// Fuzzing (issue 11): the parser never panics, whatever `wg` printed.
        #[test]
        fn fuzz_parse_dump_never_panics(text in dump_text()) {
            let _ = parse_dump("wg0", &text);
        }
    }

    /// Regression (review of issue 11): the supervisor logs agent errors; a bad interface line
    /// (private key first) must not reach the log.
    #[test]
    fn regression_a_bad_dump_never_echoes_the_private_key() {
        for text in [
            format!("{K1}\t{K2}\tnot-a-port\toff\n"),
            format!("{K1}\t{K2}\n"),
        ] {
            let e = parse_dump("wg0", &text).unwrap_err().to_string();
            assert!(!e.contains(K1) && !e.contains(&K1[..20]), "{e}");
        }
    }

    #[test]
    fn regression_a_bad_peer_line_never_echoes_its_preshared_key() {
        let text =
            format!("{K3}\t{K2}\t51820\toff\n{K2}\t{K1}\tnot-an-endpoint\t(none)\t0\t0\t0\toff\n");
        let e = parse_dump("wg0", &text).unwrap_err().to_string();
        assert!(!e.contains(K1) && !e.contains(&K1[..20]), "{e}");
        assert!(e.contains(K2), "names the peer: {e}");
    }

    const K3: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";

    const K1: &str = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=";
    const K2: &str = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=";

    #[test]
    fn parses_a_dump() {
        let text = format!(
            "{K1}\t{K2}\t51820\toff\n{K2}\t(none)\t198.51.100.11:51820\t10.0.0.2/32,10.20.0.0/24\t1795604571\t920\t2120\t25\n{K1}\t(none)\t(none)\t(none)\t0\t0\t0\toff\n"
        );
        let s = parse_dump("wg0", &text).unwrap();
        assert_eq!(s.listen_port, 51820);
        assert_eq!(s.fwmark, None);
        assert_eq!(s.private_key, Some(key_from_base64(K1).unwrap()));
        assert_eq!(s.peers.len(), 2);
        let p = &s.peers[0];
        assert_eq!(p.endpoint, Some("198.51.100.11:51820".parse().unwrap()));
        assert_eq!(p.allowed_ips.len(), 2);
        assert_eq!(
            (p.last_handshake_sec, p.rx_bytes, p.tx_bytes),
            (1_795_604_571, 920, 2120)
        );
        assert_eq!(p.persistent_keepalive, Some(25));
        assert_eq!(s.peers[1].endpoint, None);
        assert_eq!(s.peers[1].persistent_keepalive, None);
        assert!(parse_dump("wg0", "garbage").is_err());
    }

    #[test]
    fn set_arguments_name_only_changes_and_keep_the_key_off_argv() {
        let peer = DesiredPeer {
            public_key: key_from_base64(K2).unwrap(),
            endpoint: Some("198.51.100.11:51820".parse().unwrap()),
            allowed_ips: vec![
                "10.0.0.2/32".parse().unwrap(),
                "10.20.0.0/24".parse().unwrap(),
            ],
            persistent_keepalive: Some(25),
            preshared_key: Some([7; 32]),
        };
        let desired = DesiredDevice {
            private_key: key_from_base64(K1).unwrap(),
            listen_port: Some(51820),
            fwmark: None,
            peers: vec![peer.clone()],
        };
        let changes = crate::diff(&DeviceState::default(), &desired);
        let (args, key) = set_args("wg0", &desired, &changes, Some(Path::new("/run/psk")));
        assert_eq!(
            args.join(" "),
            format!(
                "set wg0 private-key /dev/stdin listen-port 51820 peer {K2} preshared-key /run/psk/0 endpoint 198.51.100.11:51820 persistent-keepalive 25 allowed-ips 10.0.0.2/32,10.20.0.0/24"
            )
        );
        assert!(
            !args.iter().any(|a| a.contains(K1)),
            "the private key is never an argument"
        );
        assert!(
            !args.iter().any(|a| a.contains(&key_to_base64(&[7; 32]))),
            "nor the preshared key"
        );
        assert_eq!(key.as_deref(), Some(format!("{K1}\n").as_str()));
    }
}
