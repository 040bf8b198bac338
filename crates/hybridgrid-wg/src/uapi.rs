//! Client side of the cross-platform UAPI text protocol
//! (<https://www.wireguard.com/xplatform/#configuration-protocol>).

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::WgError;
use crate::diff::{DeviceChanges, PeerChange};
use crate::state::{DesiredDevice, DeviceState, Key, PeerState};

/// A stuck daemon must not hang the agent.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

pub(crate) fn socket_path(dir: &Path, ifname: &str) -> PathBuf {
    dir.join(format!("{ifname}.sock"))
}

/// Sends one request and returns the response lines before the terminating blank line,
/// with the final `errno=N` checked and stripped.
fn transact(
    path: &Path,
    ifname: &str,
    op: &'static str,
    request: &str,
) -> Result<Vec<String>, WgError> {
    let stream = UnixStream::connect(path).map_err(|source| WgError::Connect {
        path: path.to_owned(),
        source,
    })?;
    let io_err = |source| WgError::Io {
        path: path.to_owned(),
        source,
    };
    stream.set_read_timeout(Some(IO_TIMEOUT)).map_err(io_err)?;
    stream.set_write_timeout(Some(IO_TIMEOUT)).map_err(io_err)?;
    (&stream).write_all(request.as_bytes()).map_err(io_err)?;

    let mut lines = Vec::new();
    for line in BufReader::new(&stream).lines() {
        let line = line.map_err(io_err)?;
        if line.is_empty() {
            break;
        }
        lines.push(line);
    }
    let protocol = |detail: String| WgError::Protocol {
        ifname: ifname.to_owned(),
        detail,
    };
    let last = lines
        .pop()
        .ok_or_else(|| protocol(format!("empty response to {op}")))?;
    let errno = last
        .strip_prefix("errno=")
        .and_then(|v| v.parse::<i64>().ok())
        .ok_or_else(|| protocol(format!("response to {op} ends with {last:?}, not errno=N")))?;
    if errno != 0 {
        return Err(WgError::Rejected {
            ifname: ifname.to_owned(),
            op,
            errno,
        });
    }
    Ok(lines)
}

pub(crate) fn get(path: &Path, ifname: &str) -> Result<DeviceState, WgError> {
    let lines = transact(path, ifname, "get", "get=1\n\n")?;
    parse_get(&lines).map_err(|detail| WgError::Protocol {
        ifname: ifname.to_owned(),
        detail,
    })
}

pub(crate) fn set(path: &Path, ifname: &str, request: &str) -> Result<(), WgError> {
    transact(path, ifname, "set", request).map(drop)
}

fn hex_key(s: &str) -> Result<Key, String> {
    // The value may be a private key: never echoed into an error.
    let bad = || {
        format!(
            "bad hex key ({} characters; 64 hex digits expected)",
            s.len()
        )
    };
    if s.len() != 64 || !s.is_ascii() {
        return Err(bad());
    }
    let mut key = [0u8; 32];
    for (i, b) in key.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(key)
}

fn to_hex(key: &Key) -> String {
    key.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn num<T: std::str::FromStr>(key: &str, v: &str) -> Result<T, String> {
    v.parse().map_err(|_| format!("bad {key} value {v:?}"))
}

/// Parses the body of a `get=1` response (without the errno line). Unknown keys are skipped.
pub(crate) fn parse_get(lines: &[String]) -> Result<DeviceState, String> {
    let mut dev = DeviceState::default();
    for line in lines {
        let (k, v) = line
            .split_once('=')
            .ok_or_else(|| format!("line without '=': {line:?}"))?;
        if k == "public_key" {
            dev.peers.push(PeerState {
                public_key: hex_key(v)?,
                ..PeerState::default()
            });
            continue;
        }
        match dev.peers.last_mut() {
            None => match k {
                "private_key" => dev.private_key = Some(hex_key(v)?),
                "listen_port" => dev.listen_port = num(k, v)?,
                "fwmark" => dev.fwmark = Some(num(k, v)?).filter(|m| *m != 0),
                _ => {}
            },
            Some(p) => match k {
                "preshared_key" => p.preshared_key = Some(hex_key(v)?).filter(|k| *k != [0; 32]),
                "endpoint" => p.endpoint = Some(num(k, v)?),
                "allowed_ip" => p.allowed_ips.push(num(k, v)?),
                "last_handshake_time_sec" => p.last_handshake_sec = num(k, v)?,
                "last_handshake_time_nsec" => p.last_handshake_nsec = num(k, v)?,
                "rx_bytes" => p.rx_bytes = num(k, v)?,
                "tx_bytes" => p.tx_bytes = num(k, v)?,
                "persistent_keepalive_interval" => {
                    p.persistent_keepalive = Some(num(k, v)?).filter(|s| *s != 0);
                }
                _ => {}
            },
        }
    }
    Ok(dev)
}

/// Builds the `set=1` request for `changes`; unchanged peers are not mentioned, and only
/// changed allowed-IP lists are replaced.
pub(crate) fn set_request(desired: &DesiredDevice, changes: &DeviceChanges) -> String {
    let mut r = String::from("set=1\n");
    // Writing to a String cannot fail.
    let mut kv = |k: &str, v: &dyn std::fmt::Display| {
        let _ = writeln!(r, "{k}={v}");
    };
    if changes.set_private_key {
        kv("private_key", &to_hex(&desired.private_key));
    }
    if let Some(port) = changes.set_listen_port {
        kv("listen_port", &port);
    }
    if let Some(mark) = changes.set_fwmark {
        kv("fwmark", &mark);
    }
    for change in &changes.peers {
        kv("public_key", &to_hex(change.public_key()));
        match change {
            PeerChange::Remove { .. } => kv("remove", &"true"),
            PeerChange::Add(p) => {
                if let Some(k) = &p.preshared_key {
                    kv("preshared_key", &to_hex(k));
                }
                if let Some(e) = p.endpoint {
                    kv("endpoint", &e);
                }
                if let Some(ka) = p.persistent_keepalive {
                    kv("persistent_keepalive_interval", &ka);
                }
                kv("replace_allowed_ips", &"true");
                for ip in &p.allowed_ips {
                    kv("allowed_ip", &ip.trunc());
                }
            }
            PeerChange::Update {
                endpoint,
                allowed_ips,
                persistent_keepalive,
                preshared_key,
                ..
            } => {
                // Don't resurrect a peer removed behind our back.
                kv("update_only", &"true");
                if let Some(k) = preshared_key {
                    kv("preshared_key", &to_hex(k));
                }
                if let Some(e) = endpoint {
                    kv("endpoint", e);
                }
                if let Some(ka) = persistent_keepalive {
                    kv("persistent_keepalive_interval", ka);
                }
                if let Some(ips) = allowed_ips {
                    kv("replace_allowed_ips", &"true");
                    for ip in ips {
                        kv("allowed_ip", &ip.trunc());
                    }
                }
            }
        }
    }
    r.push('\n');
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diff::diff;
    use crate::state::DesiredPeer;

    fn lines(s: &str) -> Vec<String> {
        s.lines().map(str::to_owned).collect()
    }

    /// A `get=1` body: known keys with good, bad and odd values, and arbitrary lines.
    fn uapi_body() -> impl proptest::strategy::Strategy<Value = Vec<String>> {
        use proptest::prelude::*;
        let key = prop::sample::select(vec![
            "private_key",
            "listen_port",
            "fwmark",
            "public_key",
            "preshared_key",
            "protocol_version",
            "endpoint",
            "persistent_keepalive_interval",
            "last_handshake_time_sec",
            "last_handshake_time_nsec",
            "rx_bytes",
            "tx_bytes",
            "allowed_ip",
            "errno",
            "",
        ]);
        let value = prop_oneof![
            Just("01".repeat(32)),
            Just("0".repeat(64)),
            Just("192.0.2.2:51820".to_owned()),
            Just("[2001:db8::1]:51820".to_owned()),
            Just("10.20.0.0/24".to_owned()),
            Just("18446744073709551616".to_owned()),
            "[0-9a-f]{0,70}",
            "[ -~]{0,30}",
        ];
        let line = prop_oneof![
            8 => (key, value).prop_map(|(k, v)| format!("{k}={v}")),
            1 => any::<String>(),
        ];
        prop::collection::vec(line, 0..40)
    }

    proptest::proptest! {
        /// Fuzzing (issue 11): a device's answer never makes the parser panic.
        #[test]
        fn fuzz_parse_get_never_panics(body in uapi_body()) {
            let _ = parse_get(&body);
        }
    }

    #[test]
    fn parses_get_response() {
        let body = format!(
            "private_key={}\nlisten_port=51820\nfwmark=0\n\
             public_key={}\npreshared_key={}\nprotocol_version=1\nendpoint=192.0.2.2:51820\n\
             persistent_keepalive_interval=0\nlast_handshake_time_sec=1700000000\n\
             last_handshake_time_nsec=5\nrx_bytes=10\ntx_bytes=20\n\
             allowed_ip=198.51.100.2/32\nallowed_ip=10.20.0.0/24\n\
             public_key={}\nendpoint=[2001:db8::1]:51820\npersistent_keepalive_interval=25\n\
             allowed_ip=2001:db8:1::/48\n",
            "01".repeat(32),
            "02".repeat(32),
            "00".repeat(32),
            "ab".repeat(32),
        );
        let d = parse_get(&lines(&body)).unwrap();
        assert_eq!(d.private_key, Some([1; 32]));
        assert_eq!(d.listen_port, 51820);
        assert_eq!(d.fwmark, None);
        assert_eq!(d.peers.len(), 2);
        let a = &d.peers[0];
        assert_eq!(a.public_key, [2; 32]);
        assert!(a.preshared_key.is_none());
        assert_eq!(a.endpoint, Some("192.0.2.2:51820".parse().unwrap()));
        assert_eq!(a.persistent_keepalive, None);
        assert_eq!(
            (a.last_handshake_sec, a.last_handshake_nsec),
            (1_700_000_000, 5)
        );
        assert_eq!((a.rx_bytes, a.tx_bytes), (10, 20));
        assert_eq!(a.allowed_ips.len(), 2);
        let b = &d.peers[1];
        assert_eq!(b.public_key, [0xab; 32]);
        assert_eq!(b.endpoint, Some("[2001:db8::1]:51820".parse().unwrap()));
        assert_eq!(b.persistent_keepalive, Some(25));
        assert_eq!(b.last_handshake_sec, 0);
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse_get(&lines("private_key=zz")).is_err());
        assert!(parse_get(&lines("listen_port")).is_err());
        assert!(
            parse_get(&lines(&format!(
                "public_key={}\nrx_bytes=x",
                "00".repeat(32)
            )))
            .is_err()
        );
    }

    #[test]
    fn set_request_mentions_only_changes() {
        let peer = |k: u8| DesiredPeer {
            public_key: [k; 32],
            endpoint: Some("192.0.2.1:51820".parse().unwrap()),
            allowed_ips: vec!["198.51.100.9/24".parse().unwrap()],
            persistent_keepalive: None,
            preshared_key: None,
        };
        let mut desired = DesiredDevice {
            private_key: [7; 32],
            listen_port: Some(51820),
            fwmark: None,
            peers: vec![peer(1), peer(2), peer(3)],
        };
        let mut observed = DeviceState {
            private_key: Some([7; 32]),
            listen_port: 51820,
            fwmark: None,
            peers: vec![],
        };
        for p in &desired.peers[..2] {
            observed.peers.push(PeerState {
                public_key: p.public_key,
                endpoint: p.endpoint,
                allowed_ips: p.allowed_ips.clone(),
                ..PeerState::default()
            });
        }
        observed.peers.push(PeerState {
            public_key: [4; 32],
            ..PeerState::default()
        });
        desired.peers[1].persistent_keepalive = Some(25);
        let req = set_request(&desired, &diff(&observed, &desired));
        let want = format!(
            "set=1\n\
             public_key={k4}\nremove=true\n\
             public_key={k2}\nupdate_only=true\npersistent_keepalive_interval=25\n\
             public_key={k3}\nendpoint=192.0.2.1:51820\nreplace_allowed_ips=true\n\
             allowed_ip=198.51.100.0/24\n\n",
            k2 = "02".repeat(32),
            k3 = "03".repeat(32),
            k4 = "04".repeat(32),
        );
        assert_eq!(req, want);
    }

    #[test]
    fn hex_roundtrip() {
        let k: Key = std::array::from_fn(|i| i as u8 * 7);
        assert_eq!(hex_key(&to_hex(&k)).unwrap(), k);
        assert!(hex_key("00").is_err());
    }
}
