//! Slurm's power saving on the controller: the programs slurmctld runs to wake and remove
//! on-demand workers, and the return of workers whose wake-up failed.
//!
//! slurmctld runs [`RESUME_PROGRAM`] and the others as its own user with a host list. Each is a
//! small script calling `agent power`, which asks the provider's power service (a Unix socket,
//! [`hybridgrid_core::power`]) to make or remove the nodes. A node the service cannot make is set
//! DOWN at once with the cloud's reason (`sinfo -R`): Slurm requeues its jobs rather than
//! waiting out `ResumeTimeout`. The controller's agent returns such a node to service after a
//! hold-back that doubles with each failure of its group in a row (30 s, 60 s, … 8 min), so a
//! site out of quota is not asked again every few seconds.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader, Write as _};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hybridgrid_core::power::{PowerReply, PowerRequest, PowerVerb, group_of};
use hybridgrid_core::slurm_conf::{
    JOB_PROLOG_PROGRAM, RESUME_FAIL_PROGRAM, RESUME_PROGRAM, SUSPEND_PROGRAM,
};
use serde::{Deserialize, Serialize};

use crate::AgentError;
use crate::sys::{self, write_atomic};

/// How long a power program waits for the service's answer: a cloud server's boot included.
const ANSWER_WITHIN: Duration = Duration::from_secs(30 * 60);
/// Where the power programs write what they did (slurmctld discards their output).
const LOG: &str = "/var/log/slurm/hybridgrid-power.log";
/// The controller's record of failed wake-ups, in its state directory.
const HOLDS_FILE: &str = "power-holds.json";
/// The first hold-back after a failed wake-up; doubled for each further failure in a row.
const FIRST_HOLD: u64 = 30;
const LONGEST_HOLD: u64 = 8 * 60;
/// The reason a failed wake-up leaves on the node; the controller returns only these.
const REASON_PREFIX: &str = "hybridgrid: cannot make node: ";

/// The programs slurm.conf names, as scripts calling `exe agent power …` and, for slurmctld's
/// prolog, `exe agent wait-nodes-ready`; removed when the cluster has no on-demand workers
/// (`service` is `None`).
pub fn ensure_programs(
    service: Option<&str>,
    exe: &Path,
    actions: &mut Vec<String>,
) -> Result<(), AgentError> {
    let exe = match service {
        Some(_) => {
            let dir = Path::new(RESUME_PROGRAM).parent().unwrap_or(Path::new("/"));
            binary_slurm_can_run(exe, dir, actions)?
        }
        None => exe.to_owned(),
    };
    for (path, command) in [
        (RESUME_PROGRAM, "power resume"),
        (SUSPEND_PROGRAM, "power suspend"),
        (RESUME_FAIL_PROGRAM, "power suspend"),
        (JOB_PROLOG_PROGRAM, "wait-nodes-ready"),
    ] {
        let Some(service) = service else {
            if Path::new(path).exists() {
                std::fs::remove_file(path).map_err(AgentError::io(path))?;
                actions.push(format!("remove {path}"));
            }
            continue;
        };
        let service_arg = if command.starts_with("power") {
            format!(" --service '{service}'")
        } else {
            String::new()
        };
        let script = format!(
            "#!/bin/sh\n# hybridgrid: a Slurm program (slurm.conf), written by the node agent.\n\
             exec '{}' agent {command}{service_arg} \"$@\"\n",
            exe.display()
        );
        if std::fs::read_to_string(path).ok().as_deref() != Some(script.as_str()) {
            write_atomic(Path::new(path), script.as_bytes(), 0o755)?;
            actions.push(path.to_owned());
        }
    }
    Ok(())
}

/// Where the agent's binary lives may be closed to other users (a build under `/root`):
/// slurmctld runs the power programs as `slurm`, so then a copy beside them serves.
fn binary_slurm_can_run(
    exe: &Path,
    dir: &Path,
    actions: &mut Vec<String>,
) -> Result<PathBuf, AgentError> {
    use std::os::unix::fs::PermissionsExt as _;
    let open_to_all =
        |p: &Path| std::fs::metadata(p).is_ok_and(|m| m.permissions().mode() & 0o001 != 0);
    if exe.ancestors().all(open_to_all) {
        return Ok(exe.to_owned());
    }
    let copy = dir.join("hybridgrid-power-agent");
    // Copied again when the binary changed: another size, or built after the copy was made.
    let stamp = |p: &Path| {
        std::fs::metadata(p)
            .and_then(|m| Ok((m.len(), m.modified()?)))
            .ok()
    };
    let stale = match (stamp(&copy), stamp(exe)) {
        (Some((n, copied)), Some((m, built))) => n != m || built > copied,
        _ => true,
    };
    if stale {
        let part = copy.with_extension("part");
        std::fs::copy(exe, &part).map_err(AgentError::io(&part))?;
        std::fs::set_permissions(&part, std::fs::Permissions::from_mode(0o755))
            .map_err(AgentError::io(&part))?;
        std::fs::rename(&part, &copy).map_err(AgentError::io(&copy))?;
        actions.push(format!(
            "{} (slurm cannot reach {})",
            copy.display(),
            exe.display()
        ));
    }
    Ok(copy)
}

/// `agent power VERB --service SOCKET HOSTLIST`, as slurmctld runs it: asks the power service,
/// sets the nodes it could not make DOWN with its reason, and logs what happened. Returns the
/// service's reply.
pub fn run(verb: PowerVerb, service: &Path, hostlist: &str) -> Result<PowerReply, AgentError> {
    let nodes: Vec<String> = sys::run("scontrol", &["show", "hostnames", hostlist])?
        .lines()
        .map(str::to_owned)
        .collect();
    let request = PowerRequest { verb, nodes };
    let reply = ask(service, &request).unwrap_or_else(|e| {
        PowerReply::all_failed(
            &request.nodes,
            &format!(
                "the power service did not answer: {}",
                crate::error_chain(&e)
            ),
        )
    });
    log(&format!(
        "{} {}: done {:?}, failed {:?}",
        verb.as_str(),
        hostlist,
        reply.done,
        reply.failed
    ));
    if verb == PowerVerb::Resume {
        for (node, reason) in &reply.failed {
            mark_down(node, reason)?;
        }
    }
    Ok(reply)
}

/// One request line to the service, one reply line back.
fn ask(service: &Path, request: &PowerRequest) -> Result<PowerReply, AgentError> {
    let mut stream = UnixStream::connect(service).map_err(AgentError::io(service))?;
    stream
        .set_read_timeout(Some(ANSWER_WITHIN))
        .map_err(AgentError::io(service))?;
    let line = serde_json::to_string(request).map_err(AgentError::encode("the power request"))?;
    stream
        .write_all(format!("{line}\n").as_bytes())
        .map_err(AgentError::io(service))?;
    let mut answer = String::new();
    BufReader::new(stream)
        .read_line(&mut answer)
        .map_err(AgentError::io(service))?;
    serde_json::from_str(&answer).map_err(|source| AgentError::Json {
        path: service.to_owned(),
        source,
    })
}

/// DOWN with the reason, so Slurm requeues the node's jobs and shows why (`sinfo -R`), then
/// powered down: it stays `down~` with the reason (not waiting out `ResumeTimeout` as `down#`)
/// until the controller returns it ([`return_held_nodes`]).
fn mark_down(node: &str, reason: &str) -> Result<(), AgentError> {
    let reason = format!("{REASON_PREFIX}{}", one_line(reason, 200));
    let name = format!("NodeName={node}");
    sys::run(
        "scontrol",
        &["update", &name, "State=DOWN", &format!("Reason={reason}")],
    )?;
    sys::run("scontrol", &["update", &name, "State=POWER_DOWN_FORCE"]).map(drop)
}

/// How often slurmctld's prolog looks at the job's nodes while they power up.
const READY_POLL: Duration = Duration::from_millis(250);

/// `agent wait-nodes-ready`, slurmctld's prolog (`PrologSlurmctld`): returns once none of the
/// job's nodes (`SLURM_JOB_NODELIST`) is still powering up. Slurm 22.05 starts a job whose nodes
/// were woken when its prolog ends or at its periodic check (every 30 s), whichever is first, so
/// this is what starts a job on a woken worker seconds after it registered. A node that failed
/// (DOWN) ends the wait too: Slurm requeues the job. It always succeeds: a failing prolog would
/// hold the job, and slurmctld's own `ResumeTimeout` already bounds a wake-up.
pub fn wait_nodes_ready(hostlist: Option<&str>) -> Result<(), AgentError> {
    let Some(hostlist) = hostlist.filter(|h| !h.is_empty()) else {
        return Ok(());
    };
    let deadline = std::time::Instant::now() + ANSWER_WITHIN;
    while std::time::Instant::now() < deadline {
        let shown = sys::run("scontrol", &["show", "nodes", "-o", hostlist])?;
        if parse_nodes(&shown).iter().all(|n| !waking(&n.state)) {
            return Ok(());
        }
        std::thread::sleep(READY_POLL);
    }
    Ok(())
}

/// A node Slurm is still waking: powered down or powering up, and not failed.
fn waking(state: &str) -> bool {
    let flags: Vec<&str> = state.split('+').collect();
    let failed = flags.iter().any(|f| matches!(*f, "DOWN" | "FAIL"));
    !failed
        && flags
            .iter()
            .any(|f| matches!(*f, "POWERING_UP" | "POWERED_DOWN"))
}

fn one_line(text: &str, max: usize) -> String {
    let flat: String = text
        .chars()
        .map(|c| if c.is_control() || c == '"' { ' ' } else { c })
        .collect();
    flat.chars().take(max).collect()
}

fn log(line: &str) {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    sys::append_line(Path::new(LOG), &format!("{stamp} {line}"));
}

/// What the controller remembers of failed wake-ups between its runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holds {
    /// Node → when (Unix seconds) the controller first saw it DOWN after a failed wake-up.
    pub since: BTreeMap<String, u64>,
    /// Group (`<site>-<group>`) → failed wake-ups in a row.
    pub in_a_row: BTreeMap<String, u32>,
}

/// A node as `scontrol show nodes -o` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeState {
    pub name: String,
    /// `IDLE+CLOUD+POWERED_DOWN`, `DOWN+CLOUD`, …
    pub state: String,
    pub reason: String,
}

/// How long a node whose group failed `in_a_row` times stays DOWN.
pub fn hold_back(in_a_row: u32) -> Duration {
    let doublings = in_a_row.saturating_sub(1).min(8);
    Duration::from_secs((FIRST_HOLD << doublings).min(LONGEST_HOLD))
}

/// The holds after looking at `nodes` at `now`, and the nodes whose hold-back is over. Pure.
pub fn review(holds: &Holds, nodes: &[NodeState], now: u64) -> (Holds, Vec<String>) {
    let mut next = Holds {
        since: BTreeMap::new(),
        in_a_row: holds.in_a_row.clone(),
    };
    let mut release = Vec::new();
    for n in nodes {
        let group = group_of(&n.name).to_owned();
        if n.state.starts_with("DOWN") && n.reason.starts_with(REASON_PREFIX) {
            let since = match holds.since.get(&n.name) {
                Some(&t) => t,
                None => {
                    *next.in_a_row.entry(group.clone()).or_default() += 1;
                    now
                }
            };
            let hold = hold_back(next.in_a_row.get(&group).copied().unwrap_or(1));
            // Only once powered down (`down~`): resumed while powering down, it would wait
            // out ResumeTimeout.
            let powered_down = n.state.split('+').any(|f| f == "POWERED_DOWN");
            if powered_down && now.saturating_sub(since) >= hold.as_secs() {
                release.push(n.name.clone());
            } else {
                next.since.insert(n.name.clone(), since);
            }
        } else if is_running(&n.state) {
            next.in_a_row.remove(&group);
        }
    }
    (next, release)
}

/// Up and registered: a wake-up of its group worked.
fn is_running(state: &str) -> bool {
    let flags: Vec<&str> = state.split('+').collect();
    matches!(flags[0], "IDLE" | "ALLOCATED" | "MIXED" | "COMPLETING")
        && !flags
            .iter()
            .any(|f| f.starts_with("POWER") || *f == "NOT_RESPONDING")
}

/// On the controller with on-demand workers: nodes whose wake-up failed go back to service
/// (powered down, `idle~`) once their hold-back is over.
pub fn return_held_nodes(state_dir: &Path, actions: &mut Vec<String>) -> Result<(), AgentError> {
    let path = state_dir.join(HOLDS_FILE);
    let holds: Holds = std::fs::read_to_string(&path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    let nodes = parse_nodes(&sys::run("scontrol", &["show", "nodes", "-o"])?);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (next, release) = review(&holds, &nodes, now);
    for node in &release {
        sys::run(
            "scontrol",
            &["update", &format!("NodeName={node}"), "State=RESUME"],
        )?;
        actions.push(format!("{node}: back in service after a failed wake-up"));
    }
    if next != holds {
        let text = serde_json::to_string(&next).map_err(AgentError::encode(HOLDS_FILE))?;
        write_atomic(&path, text.as_bytes(), 0o600)?;
    }
    Ok(())
}

/// `scontrol show nodes -o`: one node per line, `Key=Value` words; `Reason=` runs to the end
/// of the line but for its ` [user@time]` stamp.
pub fn parse_nodes(text: &str) -> Vec<NodeState> {
    text.lines()
        .filter_map(|line| {
            let word = |key: &str| {
                line.split_whitespace()
                    .find_map(|w| w.strip_prefix(key))
                    .map(str::to_owned)
            };
            let reason = line
                .split_once(" Reason=")
                .map(|(_, r)| r.rsplit_once(" [").map_or(r, |(r, _)| r).trim().to_owned())
                .unwrap_or_default();
            Some(NodeState {
                name: word("NodeName=")?,
                state: word("State=")?,
                reason,
            })
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests
mod tests {
    use super::*;

    fn node(name: &str, state: &str, reason: &str) -> NodeState {
        NodeState {
            name: name.into(),
            state: state.into(),
            reason: reason.into(),
        }
    }

    #[test]
    fn scontrol_lines_give_state_and_reason_without_its_stamp() {
        let text = "NodeName=g-od-1 Arch=x86_64 CoresPerSocket=1 State=DOWN+CLOUD+POWERED_DOWN \
                    ThreadsPerCore=1 Reason=hybridgrid: cannot make node: quota exceeded [slurm@2026-12-05T07:40:00]\n\
                    NodeName=g-od-2 State=IDLE+CLOUD+POWERED_DOWN Partitions=g\n";
        assert_eq!(
            parse_nodes(text),
            vec![
                node(
                    "g-od-1",
                    "DOWN+CLOUD+POWERED_DOWN",
                    "hybridgrid: cannot make node: quota exceeded"
                ),
                node("g-od-2", "IDLE+CLOUD+POWERED_DOWN", ""),
            ]
        );
    }

    #[test]
    fn a_failed_node_returns_after_its_hold_back_which_doubles_in_a_row() {
        let failed = [node(
            "g-od-1",
            "DOWN+CLOUD+POWERED_DOWN",
            &format!("{REASON_PREFIX}quota"),
        )];
        let (h, back) = review(&Holds::default(), &failed, 1000);
        assert!(back.is_empty());
        assert_eq!(h.in_a_row["g-od"], 1);
        let (h2, back) = review(&h, &failed, 1029);
        assert!(back.is_empty());
        let (h3, back) = review(&h2, &failed, 1030);
        assert_eq!(back, vec!["g-od-1".to_owned()]);
        // It fails again: the second hold-back is twice as long.
        let (h4, _) = review(&h3, &failed, 1040);
        assert_eq!(h4.in_a_row["g-od"], 2);
        assert!(review(&h4, &failed, 1099).1.is_empty());
        assert_eq!(review(&h4, &failed, 1100).1, vec!["g-od-1".to_owned()]);
        // A node of the group that runs ends the series.
        let (h5, _) = review(&h4, &[node("g-od-2", "IDLE+CLOUD", "")], 1200);
        assert!(h5.in_a_row.is_empty());
    }

    #[test]
    fn a_node_still_powering_down_is_held_past_its_time() {
        let reason = format!("{REASON_PREFIX}quota");
        let (h, _) = review(
            &Holds::default(),
            &[node("g-od-1", "DOWN+CLOUD+POWERING_DOWN", &reason)],
            1000,
        );
        let (h, back) = review(
            &h,
            &[node("g-od-1", "DOWN+CLOUD+POWERING_DOWN", &reason)],
            1100,
        );
        assert!(back.is_empty());
        let (_, back) = review(
            &h,
            &[node("g-od-1", "DOWN+CLOUD+POWERED_DOWN", &reason)],
            1101,
        );
        assert_eq!(back, vec!["g-od-1".to_owned()]);
    }

    #[test]
    fn other_down_nodes_are_left_to_the_admin() {
        let (h, back) = review(
            &Holds::default(),
            &[node("g-od-1", "DOWN+CLOUD", "Not responding")],
            1000,
        );
        assert!(back.is_empty() && h == Holds::default());
    }

    #[test]
    fn a_binary_in_a_closed_directory_is_copied_where_slurm_can_run_it() {
        let closed = tempfile::tempdir().unwrap(); // 0700
        let exe = closed.path().join("hybridgrid");
        std::fs::write(&exe, b"#!/bin/sh\n").unwrap();
        let programs = tempfile::tempdir().unwrap();
        let mut actions = Vec::new();
        let copy = binary_slurm_can_run(&exe, programs.path(), &mut actions).unwrap();
        assert_eq!(copy, programs.path().join("hybridgrid-power-agent"));
        assert_eq!(std::fs::read(&copy).unwrap(), b"#!/bin/sh\n");
        assert_eq!(actions.len(), 1);
        // Unchanged: not copied again.
        binary_slurm_can_run(&exe, programs.path(), &mut actions).unwrap();
        assert_eq!(actions.len(), 1);
        // A binary every user reaches is used where it is.
        let sh = Path::new("/bin/sh");
        assert_eq!(
            binary_slurm_can_run(sh, programs.path(), &mut actions).unwrap(),
            sh
        );
    }

    #[test]
    fn the_hold_back_doubles_up_to_eight_minutes() {
        let secs: Vec<u64> = (1..=6).map(|n| hold_back(n).as_secs()).collect();
        assert_eq!(secs, vec![30, 60, 120, 240, 480, 480]);
    }

    #[test]
    fn a_job_waits_only_for_nodes_still_powering_up() {
        assert!(waking("ALLOCATED+CLOUD+POWERING_UP"));
        assert!(waking("IDLE+CLOUD+POWERED_DOWN"));
        assert!(!waking("ALLOCATED+CLOUD"));
        assert!(!waking("MIXED"));
        assert!(
            !waking("DOWN+CLOUD+POWERED_DOWN"),
            "a failed node ends the wait"
        );
        assert!(waking("ALLOCATED+CLOUD+NOT_RESPONDING+POWERING_UP"));
    }
}
