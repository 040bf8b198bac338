//! The master's results store: where jobs put their output (`curl -T FILE URL`, an HTTP PUT) and
//! `jobs` reads it. A small HTTP/1.1 server (`hybridgrid agent results-store`) that accepts PUT
//! and GET of flat file names under `/results/`, from the cluster's own addresses only (its site
//! subnets and the tunnel); files are replaced atomically. Started and kept running by the
//! controller's agent.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use hybridgrid_core::plan::ResultsStore;
use ipnet::Ipv4Net;

use crate::AgentError;
use crate::sys::{self, write_atomic};

/// The store's process name (`comm`).
pub const PROCESS_NAME: &str = "hg-results";
/// The store's pid file, in the agent's state directory (the local provider's nodes share the
/// host's `/run`).
const PID_FILE: &str = "results-store.pid";
/// Largest upload accepted (a job's output, not its data).
const MAX_BODY: u64 = 1 << 30;

/// The folder of the results, inside the agent's state directory.
pub fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("results")
}

/// Whether the store runs.
pub fn runs(state_dir: &Path) -> bool {
    std::fs::read_to_string(state_dir.join(PID_FILE))
        .ok()
        .and_then(|p| p.trim().parse::<u32>().ok())
        .is_some_and(sys::alive)
}

/// Starts the store as a daemon of its own unless it runs.
pub fn ensure(
    store: &ResultsStore,
    state_dir: &Path,
    exe: &Path,
    tag: &str,
    actions: &mut Vec<String>,
) -> Result<(), AgentError> {
    if runs(state_dir) {
        return Ok(());
    }
    let dir = dir(state_dir);
    std::fs::create_dir_all(&dir).map_err(AgentError::io(&dir))?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args(["agent", "results-store", "--dir"])
        .arg(&dir)
        .arg("--pid-file")
        .arg(state_dir.join(PID_FILE))
        .args(["--listen", &format!("{}:{}", store.addr, store.port)])
        .args(["--tag", tag]);
    for net in &store.allow {
        cmd.args(["--allow", &net.to_string()]);
    }
    {
        use std::os::unix::process::CommandExt as _;
        let log_path = state_dir.join("results-store.log");
        let log = std::fs::File::create(&log_path).map_err(AgentError::io(&log_path))?;
        let log2 = log.try_clone().map_err(AgentError::io(&log_path))?;
        cmd.stdin(std::process::Stdio::null())
            .stdout(log)
            .stderr(log2)
            .process_group(0)
            .spawn()
            .map_err(|e| AgentError::Command {
                command: format!("{} agent results-store", exe.display()),
                detail: e.to_string(),
            })?;
    }
    sys::wait_for("the results store", Duration::from_secs(10), || {
        TcpStream::connect_timeout(
            &SocketAddr::from((store.addr, store.port)),
            Duration::from_millis(200),
        )
        .ok()
    })?;
    actions.push(format!("results store on {}:{}", store.addr, store.port));
    Ok(())
}

/// Serves `dir` on `listen` for `allow` until killed.
pub fn serve(
    dir: &Path,
    listen: SocketAddr,
    allow: &[Ipv4Net],
    pid_file: &Path,
) -> Result<(), AgentError> {
    // A name of its own in process lists (`/proc/PID/comm`), where the local provider looks.
    let _ = nix::sys::prctl::set_name(c"hg-results"); // = PROCESS_NAME
    let listener = TcpListener::bind(listen).map_err(|e| AgentError::Command {
        command: format!("listening on {listen}"),
        detail: e.to_string(),
    })?;
    std::fs::write(pid_file, std::process::id().to_string()).map_err(AgentError::io(pid_file))?;
    for stream in listener.incoming().flatten() {
        let allowed = match stream.peer_addr().map(|a| a.ip()) {
            Ok(IpAddr::V4(ip)) => allow.iter().any(|n| n.contains(&ip)),
            _ => false,
        };
        let dir = dir.to_owned();
        std::thread::spawn(move || {
            let _ = handle(stream, &dir, allowed);
        });
    }
    Ok(())
}

fn respond(s: &mut TcpStream, status: &str, body: &[u8]) -> std::io::Result<()> {
    write!(
        s,
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    s.write_all(body)
}

/// A flat file name: letters, digits, `.`, `-`, `_`; not starting with a dot.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

fn handle(mut stream: TcpStream, dir: &Path, allowed: bool) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let mut length: Option<u64> = None;
    let mut expect_continue = false;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h == "\r\n" || h == "\n" {
            break;
        }
        let lower = h.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            length = v.trim().parse().ok();
        }
        if lower.starts_with("expect:") && lower.contains("100-continue") {
            expect_continue = true;
        }
    }
    if !allowed {
        return respond(&mut stream, "403 Forbidden", b"only the cluster's nodes\n");
    }
    let Some(name) = path.strip_prefix("/results/").filter(|n| valid_name(n)) else {
        return respond(&mut stream, "404 Not Found", b"");
    };
    let file = dir.join(name);
    match method {
        "GET" => match std::fs::read(&file) {
            Ok(body) => respond(&mut stream, "200 OK", &body),
            Err(_) => respond(&mut stream, "404 Not Found", b""),
        },
        "PUT" => {
            let Some(len) = length.filter(|l| *l <= MAX_BODY) else {
                return respond(&mut stream, "411 Length Required", b"");
            };
            if expect_continue {
                stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
            }
            let mut body = Vec::with_capacity(len as usize);
            reader.take(len).read_to_end(&mut body)?;
            if body.len() as u64 != len {
                return respond(&mut stream, "400 Bad Request", b"short body\n");
            }
            match write_atomic(&file, &body, 0o644) {
                Ok(()) => respond(&mut stream, "201 Created", b""),
                Err(_) => respond(&mut stream, "500 Internal Server Error", b""),
            }
        }
        _ => respond(&mut stream, "405 Method Not Allowed", b""),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn request(addr: SocketAddr, text: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(text).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn put_then_get_and_strangers_and_bad_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let d = dir.path().to_owned();
        std::thread::spawn(move || {
            for (i, s) in l.incoming().flatten().enumerate() {
                // The fourth connection comes from a stranger.
                let _ = handle(s, &d, i != 3);
            }
        });
        let put = request(
            addr,
            b"PUT /results/7.out HTTP/1.1\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\nhello",
        );
        assert!(
            put.contains("100 Continue") && put.contains("201 Created"),
            "{put}"
        );
        assert_eq!(std::fs::read(dir.path().join("7.out")).unwrap(), b"hello");
        let get = request(addr, b"GET /results/7.out HTTP/1.1\r\n\r\n");
        assert!(
            get.starts_with("HTTP/1.1 200 OK") && get.ends_with("hello"),
            "{get}"
        );
        let bad = request(
            addr,
            b"PUT /results/../x HTTP/1.1\r\nContent-Length: 1\r\n\r\nx",
        );
        assert!(bad.starts_with("HTTP/1.1 404"), "{bad}");
        let stranger = request(addr, b"GET /results/7.out HTTP/1.1\r\n\r\n");
        assert!(stranger.starts_with("HTTP/1.1 403"), "{stranger}");
    }
}
