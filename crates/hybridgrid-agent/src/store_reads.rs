//! What each site's object store sent to this node: one nftables counter per store, for the
//! stores a provider cannot count at (a cloud's store shows its users no counters). The
//! provider delivers the cluster's store endpoints (`STATE_DIR/`[`ENDPOINTS_FILE`], site → URL,
//! no secret) and reads the counters back with `agent store-reads`; `jobs` reports the
//! difference over a job as the bytes it read from each site's store.
//!
//! The table is loaded only when the endpoints change or the node booted since (a reload would
//! set the counters back to zero), so a periodic apply starts no process for it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::{SocketAddr, ToSocketAddrs as _};
use std::path::Path;

use crate::AgentError;
use crate::sys::{self, write_atomic};

/// The cluster's store endpoints, in the agent's state directory: `{"site": "https://host:port"}`.
pub const ENDPOINTS_FILE: &str = "store-endpoints.json";
/// What was loaded, and in which boot: the ruleset after the boot id.
const LOADED_FILE: &str = "store-reads.loaded";
const TABLE: &str = "hg_store_reads";
const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";

/// Loads (or removes) the counters for the delivered endpoints.
pub fn ensure(state_dir: &Path, actions: &mut Vec<String>) -> Result<(), AgentError> {
    let loaded_path = state_dir.join(LOADED_FILE);
    let loaded = std::fs::read_to_string(&loaded_path).ok();
    let Some(endpoints) = delivered(state_dir)? else {
        if loaded.is_some() {
            // Gone already (a reboot) is as good as removed.
            let _ = sys::run("nft", &["delete", "table", "inet", TABLE]);
            std::fs::remove_file(&loaded_path).map_err(AgentError::io(&loaded_path))?;
            actions.push("object store read counters removed".into());
        }
        return Ok(());
    };
    let stores = match resolve(&endpoints) {
        Ok(s) => s,
        // Not this apply's failure (its routes and Slurm matter more): the counters loaded stay,
        // and the next apply tries again.
        Err(e) => {
            actions.push(format!("object store read counters not loaded: {e}"));
            return Ok(());
        }
    };
    let boot = std::fs::read_to_string(BOOT_ID).unwrap_or_default();
    let ruleset = ruleset(&stores);
    let wanted = format!("{}\n{ruleset}", boot.trim());
    if loaded.as_deref() == Some(wanted.as_str()) {
        return Ok(());
    }
    // Declared first so that the delete cannot fail on a node without the table.
    sys::nft(
        None,
        &format!("table inet {TABLE} {{}}\ndelete table inet {TABLE}\n{ruleset}"),
    )?;
    write_atomic(&loaded_path, wanted.as_bytes(), 0o644)?;
    actions.push(format!(
        "object store read counters ({})",
        endpoints.keys().cloned().collect::<Vec<_>>().join(", ")
    ));
    Ok(())
}

/// The bytes each store has sent to this node since the counters were loaded (none loaded: an
/// empty map).
pub fn read() -> Result<BTreeMap<String, u64>, AgentError> {
    let Some(text) = sys::ok_stdout("nft", &["-j", "list", "counters", "table", "inet", TABLE])
    else {
        return Ok(BTreeMap::new());
    };
    parse_counters(&text).map_err(|source| AgentError::Json {
        path: format!("nft -j list counters table inet {TABLE}").into(),
        source,
    })
}

/// The endpoints the provider delivered, if it did.
fn delivered(state_dir: &Path) -> Result<Option<BTreeMap<String, String>>, AgentError> {
    let path = state_dir.join(ENDPOINTS_FILE);
    let Ok(text) = std::fs::read(&path) else {
        return Ok(None);
    };
    serde_json::from_slice(&text)
        .map(Some)
        .map_err(|source| AgentError::Json { path, source })
}

/// Each store's addresses (a name may resolve to several; sorted, so that the same answer in
/// another order does not reload the counters), by site.
fn resolve(
    endpoints: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, BTreeSet<SocketAddr>>, AgentError> {
    endpoints
        .iter()
        .map(|(site, url)| {
            let (host, port) = host_port(url).ok_or_else(|| AgentError::StoreEndpoint {
                site: site.clone(),
                url: url.clone(),
                detail: "not an http(s) URL".into(),
            })?;
            let addrs =
                (host.as_str(), port)
                    .to_socket_addrs()
                    .map_err(|e| AgentError::StoreEndpoint {
                        site: site.clone(),
                        url: url.clone(),
                        detail: e.to_string(),
                    })?;
            Ok((site.clone(), addrs.filter(SocketAddr::is_ipv4).collect()))
        })
        .collect()
}

/// Host and port of an `http(s)://host[:port][/…]` URL.
fn host_port(url: &str) -> Option<(String, u16)> {
    let (default, rest) = if let Some(r) = url.strip_prefix("https://") {
        (443, r)
    } else {
        (80, url.strip_prefix("http://")?)
    };
    let authority = rest.split('/').next()?;
    match authority.rsplit_once(':') {
        Some((host, port)) => Some((host.to_owned(), port.parse().ok()?)),
        None if !authority.is_empty() => Some((authority.to_owned(), default)),
        None => None,
    }
}

/// The table: a counter per site (site names are `[a-z][a-z0-9-]*`, valid nft names), a rule
/// per store address counting what it sends.
fn ruleset(stores: &BTreeMap<String, BTreeSet<SocketAddr>>) -> String {
    let mut r = format!("table inet {TABLE} {{\n");
    for site in stores.keys() {
        let _ = writeln!(r, "  counter {site} {{ }}");
    }
    r.push_str("  chain input {\n    type filter hook input priority 0; policy accept;\n");
    for (site, addrs) in stores {
        for a in addrs {
            let _ = writeln!(
                r,
                "    ip saddr {} tcp sport {} counter name \"{site}\"",
                a.ip(),
                a.port()
            );
        }
    }
    r.push_str("  }\n}\n");
    r
}

fn parse_counters(text: &str) -> Result<BTreeMap<String, u64>, serde_json::Error> {
    #[derive(serde::Deserialize)]
    struct Listing {
        nftables: Vec<Item>,
    }
    #[derive(serde::Deserialize)]
    struct Item {
        counter: Option<Counter>,
    }
    #[derive(serde::Deserialize)]
    struct Counter {
        name: String,
        bytes: u64,
    }
    let listing: Listing = serde_json::from_str(text)?;
    Ok(listing
        .nftables
        .into_iter()
        .filter_map(|i| i.counter)
        .map(|c| (c.name, c.bytes))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_url_gives_host_and_port() {
        assert_eq!(
            host_port("http://203.0.113.1:8091"),
            Some(("203.0.113.1".into(), 8091))
        );
        assert_eq!(
            host_port("https://s3.example.org/swift/v1"),
            Some(("s3.example.org".into(), 443))
        );
        assert_eq!(host_port("ftp://x"), None);
        assert_eq!(host_port("http://"), None);
    }

    #[test]
    fn the_ruleset_counts_each_store_under_its_site() {
        let stores = BTreeMap::from([(
            "giessen".to_owned(),
            BTreeSet::from(["203.0.113.1:8091".parse().unwrap()]),
        )]);
        let r = ruleset(&stores);
        assert!(r.contains("counter giessen { }"), "{r}");
        assert!(
            r.contains("ip saddr 203.0.113.1 tcp sport 8091 counter name \"giessen\""),
            "{r}"
        );
    }

    #[test]
    fn counters_are_read_from_nft_json() {
        let text = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}}, {"counter": {"family": "inet", "name": "b", "table": "hg_store_reads", "handle": 2, "packets": 3, "bytes": 4096}}]}"#;
        assert_eq!(
            parse_counters(text).unwrap(),
            BTreeMap::from([("b".to_owned(), 4096)])
        );
    }
}
