//! `submit` and `jobs`: jobs placed where their data lives.
//!
//! `submit` places the job with [`hybridgrid_core::submit::place`], wraps the user's script in a
//! batch script that exports the placement's environment, runs the script and uploads its output
//! to the master's results store, and runs `sbatch` on the master. Submitted jobs are recorded in
//! `<cluster state>/jobs.json`; `jobs` combines that record with `squeue`, `scontrol show job` and
//! the results store (there is no accounting daemon), and copies finished jobs' output to
//! `<cluster state>/results/`. Everything on the master goes through the provider's
//! [`Provider::run`], the same for every provider.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use base64::Engine as _;
use clap::Subcommand;
use hybridgrid_core::plan::{Plan, Role};
use hybridgrid_core::submit::place;
use hybridgrid_engine::{Command as Cmd, Probe, Provider};
use serde::{Deserialize, Serialize};

#[derive(Debug, Subcommand)]
pub enum SubmitCommand {
    /// Submit a job next to its datasets: `submit -f FILE [--dataset NAME]... -- SCRIPT [ARGS]`.
    Submit {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// A dataset the job reads (repeatable); the job runs at the datasets' site.
        #[arg(long = "dataset")]
        datasets: Vec<String>,
        /// Datasets at several sites: run where most of them are and read the rest over the tunnel.
        #[arg(long)]
        allow_cross_site: bool,
        /// Send the job to this partition instead (a site or `all`), ignoring data locality.
        #[arg(long)]
        partition: Option<String>,
        /// Job name (default: the script's file name).
        #[arg(long)]
        name: Option<String>,
        /// Wait until the job finished and its output is on the master; exit with its exit code.
        #[arg(long)]
        wait: bool,
        /// Print only the job id.
        #[arg(long)]
        parsable: bool,
        /// The script (a file on this machine) and its arguments.
        #[arg(last = true, required = true)]
        script: Vec<String>,
    },
    /// The jobs submitted with `submit`: site, state, node, exit code, output.
    Jobs {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

const JOBS_FILE: &str = "jobs.json";
const JOBS_FORMAT_VERSION: u32 = 1;
/// Separates the parts of the master's answer in `job_views`.
const SEP: &str = "--hybridgrid--";

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct JobsRecord {
    format_version: u32,
    jobs: Vec<JobEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct JobEntry {
    id: u64,
    name: String,
    partition: String,
    /// The site the placement chose (`None`: any site of the partition).
    site: Option<String>,
    datasets: Vec<String>,
    submitted_unix: u64,
    /// Bytes all relays had sent into the tunnels when the job was submitted, and once it was
    /// seen finished (see [`wan_bytes`]); `end_late`: that was a later `jobs`, not `submit --wait`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    wan_bytes_at_submit: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    wan_bytes_at_end: Option<u64>,
    #[serde(default)]
    end_late: bool,
}

/// One line of `jobs`.
#[derive(Debug, Clone, Serialize)]
struct JobView {
    id: u64,
    name: String,
    partition: String,
    site: Option<String>,
    state: String,
    node: Option<String>,
    /// The site of the node it ran on.
    ran_at: Option<String>,
    exit: Option<i64>,
    output: Option<PathBuf>,
    /// Bytes that crossed sites (through any tunnel) while the job ran: the whole cluster's in
    /// that window, so jobs running at the same time share it; so far, for a running job.
    cross_site_bytes: Option<u64>,
    /// The end was taken at a later `jobs`, after the job had finished: an upper bound.
    cross_site_bytes_upper_bound: bool,
}

fn load_jobs(path: &Path) -> anyhow::Result<JobsRecord> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let r: JobsRecord = serde_json::from_str(&text)
                .with_context(|| format!("{} is not a jobs record", path.display()))?;
            if r.format_version != JOBS_FORMAT_VERSION {
                bail!(
                    "{}: format_version {}; this hybridgrid reads {JOBS_FORMAT_VERSION}",
                    path.display(),
                    r.format_version
                );
            }
            Ok(r)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(JobsRecord {
            format_version: JOBS_FORMAT_VERSION,
            jobs: Vec::new(),
        }),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn save_jobs(path: &Path, record: &JobsRecord) -> anyhow::Result<()> {
    hybridgrid_local::ledger::write_atomic(
        path,
        serde_json::to_string_pretty(record)?.as_bytes(),
        0o644,
    )?;
    Ok(())
}

fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// The batch script: exports the placement, runs the user's script, uploads its output.
fn wrapper(plan: &Plan, name: &str, env: &[(String, String)], script: &[u8]) -> String {
    let mut s = String::from("#!/bin/bash\n# hybridgrid: generated by `hybridgrid submit`.\n");
    let _ = writeln!(s, "#SBATCH --job-name={name}");
    s.push_str("#SBATCH --output=/dev/null\n#SBATCH --error=/dev/null\n#SBATCH --chdir=/tmp\n");
    for (k, v) in env {
        let _ = writeln!(s, "export {k}={}", sh_quote(v));
    }
    let _ = writeln!(
        s,
        "export HYBRIDGRID_RESULTS_URL={}",
        sh_quote(&plan.results_url())
    );
    let b64 = base64::engine::general_purpose::STANDARD.encode(script);
    let interpreter = if script.starts_with(b"#!") {
        ""
    } else {
        "bash "
    };
    let _ = write!(
        s,
        r#"work=$(mktemp -d "/tmp/hybridgrid-job-$SLURM_JOB_ID.XXXXXX")
export HYBRIDGRID_WORK="$work"
base64 -d > "$work/script" <<'HYBRIDGRID_SCRIPT_END'
{b64}
HYBRIDGRID_SCRIPT_END
chmod +x "$work/script"
(cd "$work" && {interpreter}"$work/script" "$@") > "$work/out" 2>&1
rc=$?
printf '{{"job": %s, "node": "%s", "exit": %s}}\n' "$SLURM_JOB_ID" "$(hostname)" "$rc" > "$work/status.json"
curl -sS --retry 5 --retry-connrefused -T "$work/out" "$HYBRIDGRID_RESULTS_URL$SLURM_JOB_ID.out"
curl -sS --retry 5 --retry-connrefused -T "$work/status.json" "$HYBRIDGRID_RESULTS_URL$SLURM_JOB_ID.json"
rm -rf "$work"
exit $rc
"#
    );
    s
}

fn master_of(plan: &Plan) -> anyhow::Result<String> {
    plan.nodes
        .iter()
        .find(|n| n.role == Role::Master)
        .map(|n| n.name.clone())
        .context("the plan has no master")
}

/// A running cluster as `submit` and `jobs` see it: its provider, its plan, its master, and its
/// state folder on this machine.
struct Jobs {
    provider: Box<dyn Provider>,
    plan: Plan,
    master: String,
    dir: PathBuf,
}

impl Jobs {
    fn open(file: &Path, command: Cmd) -> anyhow::Result<Option<Jobs>> {
        let Some(cluster) = crate::load(file)? else {
            return Ok(None);
        };
        let provider = crate::providers::open(&cluster, crate::providers::Knobs::default())?;
        if !provider.supports(command) {
            return Err(hybridgrid_engine::EngineError::unsupported(
                provider.name(),
                command.as_str(),
                "",
            )
            .into());
        }
        let plan = hybridgrid_engine::plan(provider.as_ref(), &cluster)?;
        Ok(Some(Jobs {
            master: master_of(&plan)?,
            dir: hybridgrid_local::state_root().join(&cluster.name),
            provider,
            plan,
        }))
    }

    /// Runs `script` on the master; its standard output, or an error when it failed.
    fn on_master(&self, what: &str, script: &str, input: &[u8]) -> anyhow::Result<String> {
        let (code, out) = self.provider.run(&self.master, script, input)?;
        let out = String::from_utf8_lossy(&out).into_owned();
        if code != 0 {
            bail!(
                "{what} on {} failed (exit {code}): {}",
                self.master,
                out.trim()
            );
        }
        Ok(out)
    }

    fn jobs_path(&self) -> PathBuf {
        self.dir.join(JOBS_FILE)
    }

    /// Where `jobs` keeps the copies of the jobs' output.
    fn results_dir(&self) -> PathBuf {
        self.dir.join("results")
    }
}

pub fn run(cmd: SubmitCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        SubmitCommand::Submit {
            file,
            datasets,
            allow_cross_site,
            partition,
            name,
            wait,
            parsable,
            script,
        } => {
            let Some(jobs) = Jobs::open(&file, Cmd::Submit)? else {
                return Ok(ExitCode::FAILURE);
            };
            let plan = &jobs.plan;
            let mut placement = place(plan, &datasets, allow_cross_site)?;
            if let Some(p) = partition {
                if !plan.slurm.partitions.iter().any(|x| x.name == p) {
                    let known: Vec<&str> = plan
                        .slurm
                        .partitions
                        .iter()
                        .map(|x| x.name.as_str())
                        .collect();
                    bail!(
                        "unknown partition `{p}`; the cluster has: {}",
                        known.join(", ")
                    );
                }
                placement.site = plan
                    .sites
                    .iter()
                    .find(|s| s.name == p)
                    .map(|s| s.name.clone());
                placement.env.retain(|(k, _)| k != "HYBRIDGRID_SITE");
                if let Some(site) = &placement.site {
                    placement
                        .env
                        .insert(0, ("HYBRIDGRID_SITE".to_owned(), site.clone()));
                }
                placement.partition = p;
            }
            let path = PathBuf::from(&script[0]);
            let body = std::fs::read(&path)
                .with_context(|| format!("reading the job script {}", path.display()))?;
            let name = name.unwrap_or_else(|| {
                path.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "job".into())
            });
            let name: String = name
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                        c
                    } else {
                        '_'
                    }
                })
                .collect();
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            let batch = wrapper(plan, &name, &placement.env, &body);
            // sbatch keeps its own copy of the script: the file on the master is removed at once.
            let mut submit = format!(
                "f=$(mktemp /tmp/hybridgrid-batch.XXXXXX) && cat > \"$f\" && \
                 sbatch --parsable --partition={} \"$f\"",
                sh_quote(&placement.partition)
            );
            for a in &script[1..] {
                submit.push(' ');
                submit.push_str(&sh_quote(a));
            }
            submit.push_str("; rc=$?; rm -f \"$f\"; exit $rc");
            let wan_at_submit = wan_bytes(&jobs);
            let out = jobs.on_master("sbatch", &submit, batch.as_bytes())?;
            let id: u64 = out
                .trim()
                .split(';')
                .next()
                .and_then(|s| s.parse().ok())
                .with_context(|| format!("sbatch answered {out:?}"))?;
            let jobs_path = jobs.jobs_path();
            let mut record = load_jobs(&jobs_path)?;
            record.jobs.push(JobEntry {
                id,
                name: name.clone(),
                partition: placement.partition.clone(),
                site: placement.site.clone(),
                datasets: datasets.clone(),
                submitted_unix: (now / 1_000_000_000) as u64,
                wan_bytes_at_submit: wan_at_submit,
                wan_bytes_at_end: None,
                end_late: false,
            });
            save_jobs(&jobs_path, &record)?;
            let output = jobs.results_dir().join(format!("{id}.out"));
            if parsable {
                println!("{id}");
            } else {
                let at = match (&placement.site, datasets.is_empty()) {
                    (Some(s), false) => format!("site {s}, where {} lives", datasets.join(", ")),
                    (Some(s), true) => format!("site {s}"),
                    (None, _) => "any site".to_owned(),
                };
                println!(
                    "submitted job {id} to partition {} ({at}); output: {}",
                    placement.partition,
                    output.display()
                );
            }
            if !wait {
                return Ok(ExitCode::SUCCESS);
            }
            let view = wait_for(&jobs, id)?;
            // Read again: a `jobs` meanwhile may have recorded other jobs' ends.
            let mut record = load_jobs(&jobs_path)?;
            record_ends(
                &jobs_path,
                &mut record,
                std::slice::from_ref(&view),
                false,
                &|| wan_bytes(&jobs),
            )?;
            if !parsable {
                println!(
                    "job {id} {} on {} (site {}), exit {}",
                    view.state,
                    view.node.as_deref().unwrap_or("?"),
                    view.ran_at.as_deref().unwrap_or("?"),
                    view.exit.map_or_else(|| "?".to_owned(), |e| e.to_string())
                );
            }
            Ok(match view.exit {
                Some(0) => ExitCode::SUCCESS,
                _ => ExitCode::FAILURE,
            })
        }
        SubmitCommand::Jobs { file, json } => {
            let Some(jobs) = Jobs::open(&file, Cmd::Submit)? else {
                return Ok(ExitCode::FAILURE);
            };
            let plan = &jobs.plan;
            let path = jobs.jobs_path();
            let mut record = load_jobs(&path)?;
            let mut views = job_views(&jobs, &record)?;
            // The relays' counters, read at most once for all jobs.
            let counters = std::cell::OnceCell::new();
            let now = || *counters.get_or_init(|| wan_bytes(&jobs));
            record_ends(&path, &mut record, &views, true, &now)?;
            cross_site(&mut views, &record, &now);
            if json {
                let doc = serde_json::json!({
                    "format_version": 1,
                    "cluster": plan.cluster,
                    "jobs": views,
                });
                println!("{}", serde_json::to_string_pretty(&doc)?);
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "{:>6}  {:<16} {:<10} {:<10} {:<10} {:<20} {:>4}  {:>10}  output",
                "job", "name", "partition", "site", "state", "node", "exit", "cross-site"
            );
            for v in &views {
                let wan = v.cross_site_bytes.map_or_else(
                    || "-".to_owned(),
                    |b| {
                        format!(
                            "{}{}",
                            if v.cross_site_bytes_upper_bound {
                                "≤"
                            } else {
                                ""
                            },
                            crate::status_text::bytes(b)
                        )
                    },
                );
                println!(
                    "{:>6}  {:<16} {:<10} {:<10} {:<10} {:<20} {:>4}  {wan:>10}  {}",
                    v.id,
                    v.name,
                    v.partition,
                    v.ran_at.as_deref().or(v.site.as_deref()).unwrap_or("-"),
                    v.state,
                    v.node.as_deref().unwrap_or("-"),
                    v.exit.map_or_else(|| "-".to_owned(), |e| e.to_string()),
                    v.output
                        .as_ref()
                        .map_or_else(|| "-".to_owned(), |p| p.display().to_string())
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Bytes all relays have sent into the tunnels (every byte that crosses sites is sent by exactly
/// one relay); `None` when the tunnels cannot be read.
fn wan_bytes(jobs: &Jobs) -> Option<u64> {
    let s = jobs.provider.status(&jobs.plan, Probe::None).ok()?;
    (!s.tunnels.is_empty()).then(|| s.tunnels.iter().map(|t| t.tx_bytes).sum())
}

/// Slurm is done with the job (UNKNOWN too: neither squeue nor scontrol knows it any more).
fn finished(state: &str) -> bool {
    !matches!(
        state,
        "PENDING" | "RUNNING" | "CONFIGURING" | "COMPLETING" | "SUSPENDED"
    )
}

/// Records the counters' end for jobs seen finished the first time, and saves the record then.
fn record_ends(
    path: &Path,
    record: &mut JobsRecord,
    views: &[JobView],
    late: bool,
    now: &dyn Fn() -> Option<u64>,
) -> anyhow::Result<()> {
    // A job in no state Slurm knows gets no end: when it ended cannot be told.
    let done: Vec<u64> = views
        .iter()
        .filter(|v| finished(&v.state) && v.state != "UNKNOWN")
        .map(|v| v.id)
        .collect();
    let todo: Vec<&mut JobEntry> = record
        .jobs
        .iter_mut()
        .filter(|j| {
            done.contains(&j.id) && j.wan_bytes_at_submit.is_some() && j.wan_bytes_at_end.is_none()
        })
        .collect();
    if todo.is_empty() {
        return Ok(());
    }
    let now = now();
    for j in todo {
        j.wan_bytes_at_end = now;
        j.end_late = late;
    }
    save_jobs(path, record)
}

/// Fills each view's cross-site bytes from the record (`now`: the counters, for running jobs).
fn cross_site(views: &mut [JobView], record: &JobsRecord, now: &dyn Fn() -> Option<u64>) {
    for v in views.iter_mut() {
        let Some(j) = record.jobs.iter().find(|j| j.id == v.id) else {
            continue;
        };
        let Some(start) = j.wan_bytes_at_submit else {
            continue;
        };
        let end = if let Some(e) = j.wan_bytes_at_end {
            v.cross_site_bytes_upper_bound = j.end_late;
            Some(e)
        } else if v.state == "RUNNING" {
            now()
        } else {
            None
        };
        v.cross_site_bytes = end.map(|e| e.saturating_sub(start));
    }
}

/// Waits as long as the job takes, like `sbatch --wait` (waking an on-demand worker on a slow
/// cloud takes minutes): asks every half second at first, then every 5 s.
fn wait_for(jobs: &Jobs, id: u64) -> anyhow::Result<JobView> {
    let mut pause = Duration::from_millis(500);
    loop {
        let record = load_jobs(&jobs.jobs_path())?;
        let view = job_views(jobs, &record)?
            .into_iter()
            .find(|v| v.id == id)
            .context("the job left the record")?;
        let finished = finished(&view.state);
        // Finished and its output is on the master (or it failed without any).
        if finished && (view.output.is_some() || view.state != "COMPLETED") {
            return Ok(view);
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}

#[derive(Debug, Deserialize)]
struct ResultStatus {
    node: String,
    exit: i64,
}

/// What the master knows of the recorded jobs, asked in one go: the queue, `scontrol show job`
/// of each job, and each job's status file in the results store.
fn job_views(jobs: &Jobs, record: &JobsRecord) -> anyhow::Result<Vec<JobView>> {
    let plan = &jobs.plan;
    let ids: Vec<String> = record.jobs.iter().map(|j| j.id.to_string()).collect();
    let url = plan.results_url();
    let script = format!(
        "squeue -h -o '%i|%T|%N'; echo {SEP}\n\
         for id in {ids}; do scontrol show job -o $id 2>/dev/null | head -n 1; done; echo {SEP}\n\
         for id in {ids}; do printf '%s ' $id; curl -sf {url}$id.json | tr -d '\\n'; echo; done",
        ids = ids.join(" "),
    );
    let answer = if ids.is_empty() {
        String::new()
    } else {
        jobs.on_master("reading the jobs", &script, b"")?
    };
    let sep = format!("{SEP}\n");
    let mut parts = answer.split(sep.as_str());
    let queue = parts.next().unwrap_or_default();
    let shown = parts.next().unwrap_or_default();
    let statuses: std::collections::BTreeMap<&str, &str> = parts
        .next()
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once(' '))
        .collect();
    let results = jobs.results_dir();
    let mut views = Vec::new();
    for j in &record.jobs {
        let mut state = None;
        let mut node = None;
        if let Some(line) = queue
            .lines()
            .find(|l| l.split('|').next() == Some(j.id.to_string().as_str()))
        {
            let parts: Vec<&str> = line.split('|').collect();
            state = parts.get(1).map(|s| (*s).to_owned());
            node = parts
                .get(2)
                .filter(|s| !s.is_empty())
                .map(|s| (*s).to_owned());
        } else if let Some(show) = shown
            .lines()
            .find(|l| l.starts_with(&format!("JobId={} ", j.id)))
        {
            for w in show.split_whitespace() {
                if let Some(s) = w.strip_prefix("JobState=") {
                    state = Some(s.to_owned());
                }
                if let Some(n) = w.strip_prefix("NodeList=")
                    && n != "(null)"
                {
                    node = Some(n.to_owned());
                }
            }
        }
        let status: Option<ResultStatus> = statuses
            .get(j.id.to_string().as_str())
            .and_then(|t| serde_json::from_str(t).ok());
        // The output is copied here once the job finished and put it into the store.
        let out = results.join(format!("{}.out", j.id));
        if status.is_some() && !out.exists() {
            let (code, bytes) =
                jobs.provider
                    .run(&jobs.master, &format!("curl -sf {url}{}.out", j.id), b"")?;
            if code == 0 {
                std::fs::create_dir_all(&results)
                    .with_context(|| format!("creating {}", results.display()))?;
                hybridgrid_local::ledger::write_atomic(&out, &bytes, 0o644)?;
            }
        }
        if let Some(st) = &status {
            node = Some(st.node.clone());
            if state.is_none() {
                state = Some(if st.exit == 0 { "COMPLETED" } else { "FAILED" }.to_owned());
            }
        }
        let ran_at = node
            .as_ref()
            .and_then(|n| plan.node(n))
            .map(|n| n.site.clone());
        views.push(JobView {
            id: j.id,
            name: j.name.clone(),
            partition: j.partition.clone(),
            site: j.site.clone(),
            state: state.unwrap_or_else(|| "UNKNOWN".to_owned()),
            node,
            ran_at,
            exit: status.map(|s| s.exit),
            output: out.exists().then_some(out),
            cross_site_bytes: None,
            cross_site_bytes_upper_bound: false,
        });
    }
    Ok(views)
}
