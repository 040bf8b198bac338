//! The secret search both providers' tests run (issue 24): every secret of a cluster, looked for
//! in every place it must never be. Places are read into this process and searched here, so no
//! secret is ever a command line's argument, not even the search's.

#![allow(clippy::unwrap_used)] // a test helper

/// (what, bytes) of a secret or of a place.
pub type Named = (String, Vec<u8>);

/// "SECRET in PLACE" for every secret found in a place.
pub fn search(secrets: &[Named], places: &[Named]) -> Vec<String> {
    let mut found = Vec::new();
    for (secret, bytes) in secrets {
        // The bed's passwords are 11 characters.
        assert!(bytes.len() >= 8, "{secret} is too short to search for");
        for (place, content) in places {
            if memchr::memmem::find(content, bytes).is_some() {
                found.push(format!("{secret} in {place}"));
            }
        }
    }
    found
}

/// Every regular file under `dir` that `keep` admits, with its content.
pub fn files_under(dir: &std::path::Path, keep: &dyn Fn(&std::path::Path) -> bool) -> Vec<Named> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => todo.push(path),
                Ok(t) if t.is_file() && keep(&path) => {
                    if let Ok(bytes) = std::fs::read(&path) {
                        out.push((path.display().to_string(), bytes));
                    }
                }
                _ => {}
            }
        }
    }
    out
}

/// Every process's command line on this machine (what every user of the host can read).
pub fn command_lines() -> Vec<Named> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter_map(|e| {
            let bytes = std::fs::read(e.path().join("cmdline")).ok()?;
            let pid = e.file_name().to_string_lossy().into_owned();
            Some((format!("the command line of process {pid}"), bytes))
        })
        .collect()
}

/// The preshared keys `up` keeps in the cluster's state folder, one per pair of relays.
pub fn preshared_keys(cluster_dir: &std::path::Path) -> Vec<Named> {
    let psk: serde_json::Value =
        serde_json::from_slice(&std::fs::read(cluster_dir.join("preshared-keys.json")).unwrap())
            .unwrap();
    psk["pairs"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(pair, key)| {
            (
                format!("the preshared key of {pair}"),
                key.as_str().unwrap().as_bytes().to_vec(),
            )
        })
        .collect()
}

/// The munge key `up` keeps in the cluster's state folder, and the results store's token the
/// nodes derive from it.
pub fn munge_key_and_token(cluster_dir: &std::path::Path) -> Vec<Named> {
    let munge = std::fs::read(cluster_dir.join("munge.key")).unwrap();
    let token = hybridgrid_core::keys::results_token(&munge);
    vec![
        ("the munge key".into(), munge),
        ("the results store's token".into(), token.into_bytes()),
    ]
}
