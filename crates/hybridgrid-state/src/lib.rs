//! State on disk, the same rules for every crate that writes any (the CLI, the engine, both
//! providers, the node agent): where the user's state lives, versioned JSON documents, files
//! replaced atomically (temp file in the same directory with an explicit mode, fsync, rename,
//! fsync of the directory). A document that fails to parse, or has another version, is an error
//! naming the file — never an empty state.
//!
//! Architecture invariant: this crate reads no environment; the CLI's settings decide the root.

pub mod operation;

use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Files that name a cluster's resources (ledgers): readable by root only.
pub const PRIVATE: u32 = 0o600;

/// Where clusters keep their state when the user names no other place
/// (`HYBRIDGRID_STATE_DIR`): one folder per cluster below it.
pub const DEFAULT_ROOT: &str = "/var/lib/hybridgrid";

/// Why a state file could not be read or written.
#[derive(Debug, displaydoc::Display, thiserror::Error)]
pub enum StateError {
    /// {path}
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// {path} is corrupt: {detail}; nothing was changed (move the file away only if you know the resources it lists are gone)
    Corrupt { path: PathBuf, detail: String },
    /// {path} has format_version {found}; this hybridgrid reads version {expected}
    Version {
        path: PathBuf,
        found: u64,
        expected: u32,
    },
}

/// Wraps an I/O error on `path`.
pub fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Seconds since `path` was last written; `None` if it cannot be read.
pub fn age_s(path: &Path) -> Option<u64> {
    let modified = std::fs::metadata(path).ok()?.modified().ok()?;
    Some(modified.elapsed().map_or(0, |d| d.as_secs()))
}

/// Replaces `path` with `data`: a temp file beside it with `mode`, fsync, rename, fsync of the
/// directory. Readers see the old or the new file, never a part.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), StateError> {
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let tmp: PathBuf = dir.join(format!(
        ".{}.tmp{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id()
    ));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io(&tmp))?;
    // A temp file left by an earlier crash keeps its old mode: set it.
    f.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(io(&tmp))?;
    f.write_all(data).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io(path))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// `path` holding `data` (written with [`write_atomic`] only where it differs), or no `path`
/// when there is no data (one already absent is as good).
pub fn write_or_remove(path: &Path, data: Option<&[u8]>, mode: u32) -> Result<(), StateError> {
    match data {
        Some(data) if std::fs::read(path).ok().as_deref() == Some(data) => Ok(()),
        Some(data) => write_atomic(path, data, mode),
        None => match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(path)(e)),
            _ => Ok(()),
        },
    }
}

/// Writes `doc` as pretty JSON with [`write_atomic`]; `doc` carries its own `format_version`.
pub fn save<T: Serialize>(path: &Path, doc: &T, mode: u32) -> Result<(), StateError> {
    write_atomic(path, &encode(path, doc)?, mode)
}

/// The text [`save`] writes to `path` for `doc`.
pub fn encode<T: Serialize>(path: &Path, doc: &T) -> Result<Vec<u8>, StateError> {
    serde_json::to_vec_pretty(doc).map_err(|e| StateError::Corrupt {
        path: path.to_owned(),
        detail: e.to_string(),
    })
}

/// Reads a versioned document: `None` if the file does not exist; an error if it does not parse,
/// lacks `format_version` or has another one.
pub fn load<T: DeserializeOwned>(path: &Path, version: u32) -> Result<Option<T>, StateError> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(path)(e)),
    };
    let corrupt = |detail: String| StateError::Corrupt {
        path: path.to_owned(),
        detail,
    };
    let value: serde_json::Value =
        serde_json::from_slice(&text).map_err(|e| corrupt(e.to_string()))?;
    match value
        .get("format_version")
        .and_then(serde_json::Value::as_u64)
    {
        Some(v) if v == u64::from(version) => {}
        Some(found) => {
            return Err(StateError::Version {
                path: path.to_owned(),
                found,
                expected: version,
            });
        }
        None => return Err(corrupt("no format_version".into())),
    }
    serde_json::from_value(value)
        .map(Some)
        .map_err(|e| corrupt(e.to_string()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use serde::Deserialize;

    use super::*;

    #[test]
    fn a_file_is_written_with_its_mode_and_removed_when_there_is_nothing_for_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        write_or_remove(&path, Some(b"k1"), 0o600).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"k1");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        write_or_remove(&path, None, 0o600).unwrap();
        assert!(!path.exists());
        write_or_remove(&path, None, 0o600).unwrap();
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Doc {
        format_version: u32,
        items: Vec<String>,
    }

    #[test]
    fn round_trip_mode_and_every_bad_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/ledger.json");
        assert!(load::<Doc>(&path, 1).unwrap().is_none());
        let doc = Doc {
            format_version: 1,
            items: vec!["a".into()],
        };
        save(&path, &doc, PRIVATE).unwrap();
        assert_eq!(load::<Doc>(&path, 1).unwrap(), Some(doc));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        for (text, want) in [
            ("{not json", "is corrupt"),
            (r#"{"items": []}"#, "no format_version"),
            (r#"{"format_version": 1, "items": 3}"#, "is corrupt"),
            (r#"{"format_version": 2, "items": []}"#, "format_version 2"),
        ] {
            std::fs::write(&path, text).unwrap();
            let e = load::<Doc>(&path, 1).unwrap_err().to_string();
            assert!(e.contains(want) && e.contains("ledger.json"), "{text}: {e}");
        }
    }
}
