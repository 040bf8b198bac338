//! One change of a cluster at a time: `up`, `down` and `rotate` hold the cluster's operation
//! lock alone ([`OperationLock::exclusive`]); the power service's requests share it
//! ([`OperationLock::shared`]: several wake-ups run at once, but none while keys change or `up`
//! runs). A command that has to wait says for whom first, instead of waiting in silence.
//!
//! The lock is `flock(2)` on `<cluster state>/`[`LOCK_FILE`]: the kernel releases it when the
//! holder exits, also when it is killed, so no stale lock outlives a process.

use std::fs::{File, OpenOptions};
use std::io::{Read as _, Seek as _, Write as _};
use std::path::Path;

use crate::{StateError, io};

/// The lock's file in the cluster's state folder; the last exclusive holder's pid and command
/// are its text.
pub const LOCK_FILE: &str = "operation.lock";

/// Held until dropped.
#[derive(Debug)]
pub struct OperationLock(#[allow(dead_code)] File);

impl OperationLock {
    /// Waits until no other process holds the lock, then holds it alone as `command`; tells
    /// `waiting` who holds it when it must wait.
    pub fn exclusive(
        cluster_dir: &Path,
        command: &str,
        waiting: &dyn Fn(&str),
    ) -> Result<Self, StateError> {
        let (mut file, path) = open(cluster_dir)?;
        if file.try_lock().is_err() {
            waiting(&holder(&mut file));
            file.lock().map_err(io(&path))?;
        }
        file.set_len(0).map_err(io(&path))?;
        file.rewind().map_err(io(&path))?;
        write!(file, "{command} (pid {})", std::process::id()).map_err(io(&path))?;
        Ok(OperationLock(file))
    }

    /// Waits until no process holds the lock alone, then holds it with the others that share it.
    pub fn shared(cluster_dir: &Path, waiting: &dyn Fn(&str)) -> Result<Self, StateError> {
        let (mut file, path) = open(cluster_dir)?;
        if file.try_lock_shared().is_err() {
            waiting(&holder(&mut file));
            file.lock_shared().map_err(io(&path))?;
        }
        Ok(OperationLock(file))
    }
}

fn open(cluster_dir: &Path) -> Result<(File, std::path::PathBuf), StateError> {
    std::fs::create_dir_all(cluster_dir).map_err(io(cluster_dir))?;
    let path = cluster_dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(io(&path))?;
    Ok((file, path))
}

/// Who holds the lock, as the last exclusive holder wrote it.
fn holder(file: &mut File) -> String {
    let mut text = String::new();
    let _ = file.read_to_string(&mut text);
    match text.trim() {
        "" => "another hybridgrid command".to_owned(),
        t => format!("`{t}`"),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn an_exclusive_holder_makes_the_next_wait_and_says_who_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let first = OperationLock::exclusive(dir.path(), "rotate", &|_| panic!("free")).unwrap();
        let told = Arc::new(Mutex::new(String::new()));
        let (d, t) = (dir.path().to_owned(), told.clone());
        let second = std::thread::spawn(move || {
            OperationLock::shared(&d, &|who| *t.lock().unwrap() = who.to_owned()).map(drop)
        });
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert!(
            !second.is_finished(),
            "a shared holder waits for the exclusive one"
        );
        drop(first);
        second.join().unwrap().unwrap();
        let told = told.lock().unwrap().clone();
        assert!(told.starts_with("`rotate (pid "), "{told}");
    }

    #[test]
    fn shared_holders_do_not_wait_for_each_other() {
        let dir = tempfile::tempdir().unwrap();
        let _a = OperationLock::shared(dir.path(), &|_| panic!("free")).unwrap();
        let _b = OperationLock::shared(dir.path(), &|_| panic!("free")).unwrap();
    }
}
