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
        let (mut file, path) = acquire(cluster_dir, Mode::Alone, waiting)?;
        file.set_len(0).map_err(io(&path))?;
        file.rewind().map_err(io(&path))?;
        write!(file, "{command} (pid {})", std::process::id()).map_err(io(&path))?;
        Ok(OperationLock(file))
    }

    /// Waits until no process holds the lock alone, then holds it with the others that share it.
    pub fn shared(cluster_dir: &Path, waiting: &dyn Fn(&str)) -> Result<Self, StateError> {
        let (file, _) = acquire(cluster_dir, Mode::Shared, waiting)?;
        Ok(OperationLock(file))
    }
}

#[derive(Debug, Clone, Copy)]
enum Mode {
    Alone,
    Shared,
}

/// The lock in `mode`, waiting (and saying for whom) while another holds it. A `down` that held
/// it may have removed the folder meanwhile: a lock on a file no longer there locks nobody out,
/// so it is taken again on the file that is there now.
fn acquire(
    cluster_dir: &Path,
    mode: Mode,
    waiting: &dyn Fn(&str),
) -> Result<(File, std::path::PathBuf), StateError> {
    loop {
        let (mut file, path) = open(cluster_dir)?;
        let free = match mode {
            Mode::Alone => file.try_lock(),
            Mode::Shared => file.try_lock_shared(),
        };
        if free.is_err() {
            waiting(&holder(&mut file));
            match mode {
                Mode::Alone => file.lock(),
                Mode::Shared => file.lock_shared(),
            }
            .map_err(io(&path))?;
        }
        if is_still_there(&file, &path) {
            return Ok((file, path));
        }
    }
}

/// Whether `path` still names the file `file` has open.
fn is_still_there(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(held), Ok(named)) => held.ino() == named.ino() && held.dev() == named.dev(),
        _ => false,
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
    fn a_lock_whose_folder_was_removed_meanwhile_is_taken_on_the_new_file() {
        let dir = tempfile::tempdir().unwrap();
        let cluster = dir.path().join("demo");
        let down = OperationLock::exclusive(&cluster, "down", &|_| panic!("free")).unwrap();
        let (held, release) = (std::sync::mpsc::channel(), std::sync::mpsc::channel::<()>());
        let (c, held_tx, release_rx) = (cluster.clone(), held.0, release.1);
        let waiting_up = std::thread::spawn(move || {
            let lock = OperationLock::exclusive(&c, "up", &|_| {}).unwrap();
            held_tx.send(()).unwrap();
            release_rx.recv().unwrap();
            drop(lock);
        });
        std::thread::sleep(std::time::Duration::from_millis(200));
        // `down` removes the cluster's folder, lock file included, then ends.
        std::fs::remove_dir_all(&cluster).unwrap();
        drop(down);
        held.1.recv().unwrap();
        // The `up` that waited holds the file that is there now: nobody else gets it.
        let there = File::open(cluster.join(LOCK_FILE)).unwrap();
        assert!(
            there.try_lock().is_err(),
            "the waiter locked a file no longer there"
        );
        release.0.send(()).unwrap();
        waiting_up.join().unwrap();
    }

    #[test]
    fn shared_holders_do_not_wait_for_each_other() {
        let dir = tempfile::tempdir().unwrap();
        let _a = OperationLock::shared(dir.path(), &|_| panic!("free")).unwrap();
        let _b = OperationLock::shared(dir.path(), &|_| panic!("free")).unwrap();
    }
}
