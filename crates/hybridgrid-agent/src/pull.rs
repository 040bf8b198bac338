//! `hybridgrid agent pull`: configuration delivered after boot through the cloud's metadata
//! service (OpenStack `meta_data.json`). Reads the `meta` items ([`hybridgrid_core::node_meta`]),
//! merges the peers into the booted configuration and applies the result like `agent apply`.

use std::io::{Read as _, Write as _};
use std::net::{TcpStream, ToSocketAddrs as _};
use std::path::Path;
use std::time::Duration;

use hybridgrid_core::node_meta;
use hybridgrid_core::plan::NodeConfig;
use serde::{Deserialize, Serialize};

use crate::AgentError;
use crate::node::{self as agent, AgentReport};

/// Where the last delivered version is kept, in the agent's state directory.
pub const VERSION_FILE: &str = "metadata-version";

/// What one pull did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullReport {
    /// `hg_config_version` of the metadata; `None`: the metadata delivers nothing.
    pub version: Option<String>,
    /// Peers of the merged configuration.
    pub peers: usize,
    pub applied: AgentReport,
}

/// GET over plain HTTP (the link-local metadata service), the body of a 200 answer.
pub fn http_get(url: &str, timeout: Duration) -> Result<String, AgentError> {
    let io = |source| AgentError::HttpIo {
        url: url.to_owned(),
        source,
    };
    let answer = |detail: String| AgentError::Http {
        url: url.to_owned(),
        detail,
    };
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| AgentError::NotHttp {
            url: url.to_owned(),
        })?;
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let target = if hostport.contains(':') {
        hostport.to_owned()
    } else {
        format!("{hostport}:80")
    };
    let addr = target
        .to_socket_addrs()
        .map_err(io)?
        .next()
        .ok_or_else(|| answer(format!("{target} has no address")))?;
    let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(io)?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(io)?;
    let request = format!(
        "GET {path} HTTP/1.0\r\nHost: {hostport}\r\nAccept: application/json\r\n\
         Connection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).map_err(io)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).map_err(io)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| answer("no HTTP header".into()))?;
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or_default();
    if status != "200" {
        return Err(answer(format!("HTTP status {status}")));
    }
    Ok(body.to_owned())
}

/// Fetches the metadata, merges it into the configuration at `config_path` and applies it.
pub fn pull(
    metadata_url: &str,
    config_path: &Path,
    state_dir: &Path,
    exe: &Path,
    tag: &str,
) -> Result<PullReport, AgentError> {
    let text = std::fs::read_to_string(config_path).map_err(AgentError::io(config_path))?;
    let base: NodeConfig = serde_json::from_str(&text).map_err(|source| AgentError::Json {
        path: config_path.to_owned(),
        source,
    })?;
    let body = http_get(metadata_url, Duration::from_secs(10))?;
    let metadata = |source| AgentError::Metadata {
        url: metadata_url.to_owned(),
        source,
    };
    let meta = node_meta::meta_from_json(&body).map_err(metadata)?;
    let merged = node_meta::merge(&base, &meta).map_err(metadata)?;
    let applied = agent::apply(&merged, state_dir, exe, tag, Duration::ZERO)?;
    let version = meta.get(node_meta::VERSION_KEY).cloned();
    if let Some(v) = &version {
        let path = state_dir.join(VERSION_FILE);
        std::fs::write(&path, v).map_err(AgentError::io(&path))?;
    }
    Ok(PullReport {
        version,
        peers: merged.wireguard.as_ref().map_or(0, |w| w.peers.len()),
        applied,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn http_get_reads_the_body_of_a_200() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let t = std::thread::spawn(move || {
            for answer in ["200 OK", "404 Not Found"] {
                let (mut s, _) = l.accept().unwrap();
                let mut req = String::new();
                let mut buf = [0u8; 1024];
                while !req.contains("\r\n\r\n") {
                    let n = s.read(&mut buf).unwrap();
                    req.push_str(&String::from_utf8_lossy(&buf[..n]));
                }
                assert!(req.starts_with("GET /openstack/latest/meta_data.json HTTP/1.0\r\n"));
                write!(
                    s,
                    "HTTP/1.1 {answer}\r\nContent-Type: application/json\r\n\r\n{{\"meta\": {{}}}}"
                )
                .unwrap();
            }
        });
        let url = format!("http://127.0.0.1:{port}/openstack/latest/meta_data.json");
        let body = http_get(&url, Duration::from_secs(5)).unwrap();
        assert_eq!(body, "{\"meta\": {}}");
        assert!(http_get(&url, Duration::from_secs(5)).is_err());
        t.join().unwrap();
        assert!(http_get("https://x/", Duration::from_secs(1)).is_err());
    }
}
