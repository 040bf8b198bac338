//! The master's results store: where jobs put their output (`curl -T FILE URL`, an HTTP PUT) and
//! `jobs` reads it. A small HTTP/1.1 server (`hybridgrid agent results-store`) that accepts PUT
//! and GET of flat file names under `/results/`, from the cluster's own addresses only (its site
//! subnets and the tunnel) and only with the cluster's token (`Authorization: Bearer`,
//! [`hybridgrid_core::keys::results_token`]); files are replaced atomically. Started and kept
//! running by the controller's agent.

use std::io::{BufRead, BufReader, Read as _, Write as _};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

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
/// How long the token before a rotation is still accepted: a job that loaded its environment
/// before the switch and uploads right after it is not refused.
const TOKEN_GRACE: Duration = Duration::from_secs(600);

/// The folder of the results, inside the agent's state directory.
pub fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("results")
}

/// The store's pid: alive and named [`PROCESS_NAME`] (a pid file outlives its process, and the
/// local provider's nodes share the host's process ids).
fn pid(state_dir: &Path) -> Option<u32> {
    std::fs::read_to_string(state_dir.join(PID_FILE))
        .ok()
        .and_then(|p| p.trim().parse::<u32>().ok())
        .filter(|p| sys::alive(*p))
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm"))
                .is_ok_and(|c| c.trim() == PROCESS_NAME)
        })
}

/// Whether the store runs.
pub fn runs(state_dir: &Path) -> bool {
    pid(state_dir).is_some()
}

/// A store an agent from before the token started (its command line names no munge key): it
/// would accept anyone's upload, so it is replaced.
fn checks_no_token(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|line| !line.split(|b| *b == 0).any(|arg| arg == b"--munge-key"))
}

/// Starts the store as a daemon of its own unless it runs; its token comes from the munge key at
/// `munge_key`.
pub fn ensure(
    store: &ResultsStore,
    state_dir: &Path,
    munge_key: &Path,
    exe: &Path,
    tag: &str,
    actions: &mut Vec<String>,
) -> Result<(), AgentError> {
    match pid(state_dir) {
        Some(old) if checks_no_token(old) => sys::stop_processes(&[old]),
        Some(_) => return Ok(()),
        None => {}
    }
    let dir = dir(state_dir);
    std::fs::create_dir_all(&dir).map_err(AgentError::io(&dir))?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args(["agent", "results-store", "--dir"])
        .arg(&dir)
        .arg("--pid-file")
        .arg(state_dir.join(PID_FILE))
        .arg("--munge-key")
        .arg(munge_key)
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

/// The tokens the store accepts: the one derived from the munge key the node has now, and for
/// [`TOKEN_GRACE`] after it changed the one before. The key is read at every request, so a
/// rotation needs no restart.
#[derive(Debug)]
struct Tokens {
    munge_key: PathBuf,
    seen: Mutex<SeenTokens>,
}

#[derive(Debug, Default)]
struct SeenTokens {
    current: Option<String>,
    previous: Option<(String, Instant)>,
}

impl Tokens {
    fn new(munge_key: PathBuf) -> Self {
        Tokens {
            munge_key,
            seen: Mutex::default(),
        }
    }

    fn accepts(&self, given: Option<&str>) -> bool {
        let Some(given) = given else {
            return false;
        };
        let now = std::fs::read(&self.munge_key)
            .ok()
            .map(|key| hybridgrid_core::keys::results_token(&key));
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if now != seen.current {
            if let Some(old) = seen.current.take() {
                // The grace counts from the key's change, not from the first request after it.
                let changed = std::fs::metadata(&self.munge_key)
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .unwrap_or_default();
                let since = Instant::now()
                    .checked_sub(changed)
                    .unwrap_or_else(Instant::now);
                seen.previous = Some((old, since));
            }
            seen.current = now;
        }
        let is = |token: &str| same_bytes(token.as_bytes(), given.as_bytes());
        seen.current.as_deref().is_some_and(is)
            || seen
                .previous
                .as_ref()
                .is_some_and(|(token, since)| since.elapsed() < TOKEN_GRACE && is(token))
    }
}

/// Equal, compared in a time that does not tell how much of a guess was right.
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

/// Serves `dir` on `listen` for `allow`, with the token derived from `munge_key`, until killed.
pub fn serve(
    dir: &Path,
    listen: SocketAddr,
    allow: &[Ipv4Net],
    pid_file: &Path,
    munge_key: PathBuf,
) -> Result<(), AgentError> {
    // A name of its own in process lists (`/proc/PID/comm`), where the local provider looks.
    let _ = nix::sys::prctl::set_name(c"hg-results"); // = PROCESS_NAME
    let listener = TcpListener::bind(listen).map_err(|e| AgentError::Command {
        command: format!("listening on {listen}"),
        detail: e.to_string(),
    })?;
    std::fs::write(pid_file, std::process::id().to_string()).map_err(AgentError::io(pid_file))?;
    let tokens = std::sync::Arc::new(Tokens::new(munge_key));
    for stream in listener.incoming().flatten() {
        let allowed = match stream.peer_addr().map(|a| a.ip()) {
            Ok(IpAddr::V4(ip)) => allow.iter().any(|n| n.contains(&ip)),
            _ => false,
        };
        let dir = dir.to_owned();
        let tokens = tokens.clone();
        std::thread::spawn(move || {
            let _ = handle(stream, &dir, allowed, &tokens);
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

/// A request's line and the headers the store reads; the body is left in the reader.
#[derive(Debug, Default)]
struct Head {
    method: String,
    path: String,
    length: Option<u64>,
    expect_continue: bool,
    bearer: Option<String>,
}

fn read_head(reader: &mut impl BufRead) -> std::io::Result<Head> {
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let mut head = Head {
        method: parts.next().unwrap_or_default().to_owned(),
        path: parts.next().unwrap_or_default().to_owned(),
        ..Head::default()
    };
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h == "\r\n" || h == "\n" {
            return Ok(head);
        }
        let Some((name, value)) = h.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => head.length = value.parse().ok(),
            "expect" => head.expect_continue = value.eq_ignore_ascii_case("100-continue"),
            "authorization" => {
                head.bearer = value.strip_prefix("Bearer ").map(|t| t.trim().to_owned());
            }
            _ => {}
        }
    }
}

fn handle(
    mut stream: TcpStream,
    dir: &Path,
    allowed: bool,
    tokens: &Tokens,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let head = read_head(&mut reader)?;
    if !allowed {
        return respond(&mut stream, "403 Forbidden", b"only the cluster's nodes\n");
    }
    if !tokens.accepts(head.bearer.as_deref()) {
        return respond(
            &mut stream,
            "401 Unauthorized",
            b"the cluster's token is missing or wrong (Authorization: Bearer)\n",
        );
    }
    let Some(name) = head
        .path
        .strip_prefix("/results/")
        .filter(|n| valid_name(n))
    else {
        return respond(&mut stream, "404 Not Found", b"");
    };
    let file = dir.join(name);
    match head.method.as_str() {
        "GET" => match std::fs::read(&file) {
            Ok(body) => respond(&mut stream, "200 OK", &body),
            Err(_) => respond(&mut stream, "404 Not Found", b""),
        },
        "PUT" => {
            let Some(len) = head.length.filter(|l| *l <= MAX_BODY) else {
                return respond(&mut stream, "411 Length Required", b"");
            };
            if head.expect_continue {
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
    use hybridgrid_core::jobs::{RESULTS_TOKEN_VAR, results_curl};
    use hybridgrid_core::keys::results_token;

    fn request(addr: SocketAddr, text: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(text).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    /// A store on a free port whose munge key is `<dir>/munge.key`; a request whose path names
    /// a `stranger` is treated as from outside the cluster.
    fn store(dir: &Path) -> SocketAddr {
        std::fs::write(dir.join("munge.key"), b"first key").unwrap();
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let (d, tokens) = (dir.to_owned(), Tokens::new(dir.join("munge.key")));
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                // A stranger: a request that says so in its path (the test has one address).
                let mut peek = [0u8; 64];
                let n = s.peek(&mut peek).unwrap_or(0);
                let stranger = String::from_utf8_lossy(&peek[..n]).contains("stranger");
                let _ = handle(s, &d, !stranger, &tokens);
            }
        });
        addr
    }

    fn with_token(method_path: &str, token: &str, rest: &str) -> Vec<u8> {
        format!("{method_path} HTTP/1.1\r\nAuthorization: Bearer {token}\r\n{rest}").into_bytes()
    }

    #[test]
    fn put_then_get_with_the_token_and_strangers_bad_names_and_no_token_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let addr = store(dir.path());
        let token = results_token(b"first key");
        let put = request(
            addr,
            &with_token(
                "PUT /results/7.out",
                &token,
                "Content-Length: 5\r\nExpect: 100-continue\r\n\r\nhello",
            ),
        );
        assert!(
            put.contains("100 Continue") && put.contains("201 Created"),
            "{put}"
        );
        assert_eq!(std::fs::read(dir.path().join("7.out")).unwrap(), b"hello");
        let get = request(addr, &with_token("GET /results/7.out", &token, "\r\n"));
        assert!(
            get.starts_with("HTTP/1.1 200 OK") && get.ends_with("hello"),
            "{get}"
        );
        let bad = request(
            addr,
            &with_token("PUT /results/../x", &token, "Content-Length: 1\r\n\r\nx"),
        );
        assert!(bad.starts_with("HTTP/1.1 404"), "{bad}");
        let stranger = request(addr, &with_token("GET /results/stranger", &token, "\r\n"));
        assert!(stranger.starts_with("HTTP/1.1 403"), "{stranger}");
        let none = request(addr, b"GET /results/7.out HTTP/1.1\r\n\r\n");
        assert!(none.starts_with("HTTP/1.1 401"), "{none}");
        let wrong = request(
            addr,
            &with_token(
                "PUT /results/8.out",
                &results_token(b"x"),
                "Content-Length: 1\r\n\r\nx",
            ),
        );
        assert!(wrong.starts_with("HTTP/1.1 401"), "{wrong}");
        assert!(!dir.path().join("8.out").exists());
    }

    /// A pid file outlives its store: a live process of another name behind it (here this test)
    /// is not the store, and nothing kills it as an old one.
    #[test]
    fn regression_a_pid_reused_by_another_process_is_not_the_store() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(PID_FILE), std::process::id().to_string()).unwrap();
        assert!(!runs(dir.path()));
        assert_eq!(pid(dir.path()), None);
    }

    #[test]
    fn after_a_munge_key_rotation_the_new_token_and_for_a_while_the_old_one_are_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let addr = store(dir.path());
        let old = results_token(b"first key");
        let get = |token: &str| request(addr, &with_token("GET /results/none", token, "\r\n"));
        assert!(
            get(&old).starts_with("HTTP/1.1 404"),
            "the old token is accepted"
        );
        std::fs::write(dir.path().join("munge.key"), b"second key").unwrap();
        let new = results_token(b"second key");
        assert!(
            get(&new).starts_with("HTTP/1.1 404"),
            "the new token is accepted"
        );
        assert!(
            get(&old).starts_with("HTTP/1.1 404"),
            "the old one for a while"
        );
        let tokens = Tokens::new(dir.path().join("munge.key"));
        assert!(tokens.accepts(Some(&new)));
        assert!(
            !tokens.accepts(Some(&old)),
            "a store that never saw the old key"
        );
    }

    /// What batch scripts and `jobs` run: the token from the environment reaches the store as the
    /// header, through curl's configuration on standard input.
    #[test]
    fn results_curl_sends_the_token_from_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let addr = store(dir.path());
        let out = dir.path().join("upload");
        std::fs::write(&out, b"result").unwrap();
        let put = results_curl(&format!(
            "-sf -T {} http://{addr}/results/9.out",
            out.display()
        ));
        let status = std::process::Command::new("sh")
            .args(["-c", &put])
            .env(RESULTS_TOKEN_VAR, results_token(b"first key"))
            .status()
            .unwrap();
        assert!(status.success(), "{put}");
        assert_eq!(std::fs::read(dir.path().join("9.out")).unwrap(), b"result");
        let refused = std::process::Command::new("sh")
            .args(["-c", &put])
            .env(RESULTS_TOKEN_VAR, "not-the-token")
            .status()
            .unwrap();
        assert!(!refused.success(), "curl -f fails on 401");
    }
}
