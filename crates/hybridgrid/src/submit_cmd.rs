//! `submit` and `jobs`: jobs placed where their data lives.
//!
//! `submit` places the job with [`hybridgrid_core::submit::place`], wraps the user's script in a
//! batch script that exports the placement's environment, runs the script and uploads its output
//! to the master's results store, and runs `sbatch` on the master. Submitted jobs are recorded in
//! `<cluster state>/jobs.json` (a versioned document, `hybridgrid_engine::state`); `jobs`
//! combines that record with `squeue`, `scontrol show job` and the results store (there is no
//! accounting daemon; the answers are parsed by [`hybridgrid_core::jobs`]), and copies finished
//! jobs' output to `<cluster state>/results/`. Everything on the master goes through the
//! provider's `Nodes::run`, the same for every provider.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use base64::Engine as _;
use clap::Subcommand;
use hybridgrid_core::jobs::{self as slurm_jobs, MasterAnswer};
use hybridgrid_core::plan::{Plan, Role};
use hybridgrid_core::submit::{Placement, place, with_partition};
use hybridgrid_engine::state;
use hybridgrid_engine::{Command as Cmd, Probe, Provider};
use serde::{Deserialize, Serialize};

use crate::settings::Settings;

#[derive(Debug, Subcommand)]
pub enum SubmitCommand {
    /// Submit a job next to its datasets: `submit -f FILE [--dataset NAME]... -- SCRIPT [ARGS]`.
    Submit(SubmitArgs),
    /// The jobs submitted with `submit`: site, state, node, exit code, output.
    Jobs {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

// `submit`'s arguments (its help is the variant's).
#[derive(Debug, clap::Args)]
pub struct SubmitArgs {
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
}

const JOBS_FILE: &str = "jobs.json";
const JOBS_FORMAT_VERSION: u32 = 1;

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
    /// Bytes each site's store had sent when the job was submitted and once it was seen
    /// finished (see [`store_bytes`]), by site.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    store_bytes_at_submit: Option<BTreeMap<String, u64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    store_bytes_at_end: Option<BTreeMap<String, u64>>,
}

impl JobEntry {
    /// Counters were read at submit and not yet at the end.
    fn end_uncounted(&self) -> bool {
        (self.wan_bytes_at_submit.is_some() || self.store_bytes_at_submit.is_some())
            && self.wan_bytes_at_end.is_none()
            && self.store_bytes_at_end.is_none()
    }
}

/// The cluster's byte counters at one moment: what the relays sent into the tunnels, and what
/// each site's store sent.
#[derive(Debug, Clone, Default)]
struct Counters {
    wan: Option<u64>,
    stores: Option<BTreeMap<String, u64>>,
}

fn counters(jobs: &Jobs) -> Counters {
    Counters {
        wan: wan_bytes(jobs),
        stores: store_bytes(jobs),
    }
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
    /// Bytes read from each site's object store while the job ran (site → bytes), as the
    /// provider counts them (`Stores::served_bytes`): like `cross_site_bytes`, the whole
    /// cluster's in that window.
    #[serde(skip_serializing_if = "Option::is_none")]
    store_bytes: Option<BTreeMap<String, u64>>,
}

/// The record of submitted jobs; an empty one when there is none yet.
fn load_jobs(path: &Path) -> anyhow::Result<JobsRecord> {
    Ok(
        state::load(path, JOBS_FORMAT_VERSION)?.unwrap_or_else(|| JobsRecord {
            format_version: JOBS_FORMAT_VERSION,
            jobs: Vec::new(),
        }),
    )
}

fn save_jobs(path: &Path, record: &JobsRecord) -> anyhow::Result<()> {
    Ok(state::save(path, record, 0o644)?)
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
    // The results store's token and the site's object-store keys are on the nodes only, never
    // in this script (slurmctld keeps batch scripts on the master, at another site).
    let load = slurm_jobs::load_job_env();
    let _ = writeln!(s, "{load}");
    let b64 = base64::engine::general_purpose::STANDARD.encode(script);
    let interpreter = if script.starts_with(b"#!") {
        ""
    } else {
        "bash "
    };
    let _ = write!(
        s,
        r#"{JOB_WORK_DIR}export HYBRIDGRID_WORK="$work"
base64 -d > "$work/script" <<'HYBRIDGRID_SCRIPT_END'
{b64}
HYBRIDGRID_SCRIPT_END
chmod +x "$work/script"
(cd "$work" && {interpreter}"$work/script" "$@") > "$work/out" 2>&1
rc=$?
printf '{{"job": %s, "node": "%s", "exit": %s}}\n' "$SLURM_JOB_ID" "$(hostname)" "$rc" > "$work/status.json"
{load}
{put_out}
{put_status}
exit $rc
"#,
        put_out = slurm_jobs::results_curl(UPLOAD_OUT),
        put_status = slurm_jobs::results_curl(UPLOAD_STATUS),
    );
    s
}

/// The job's own folder, removed however the job ends: a job cancelled (slurmstepd's TERM to
/// every process of the job, or `down` stopping its node's processes) leaves none behind (the
/// local provider's nodes share the host's `/tmp`).
const JOB_WORK_DIR: &str = r#"work=$(mktemp -d "/tmp/hybridgrid-job-$SLURM_JOB_ID.XXXXXX")
trap 'rm -rf "$work"' EXIT
trap 'exit 143' TERM INT
"#;

/// curl's arguments uploading the job's output and its status file; the environment is loaded
/// again before them, so a token rotated while the job ran is the one they carry. Every error is
/// tried again (`--retry-all-errors`): during a rotation this worker may have its new key a
/// moment before the master's store (a 401 for that moment).
const UPLOAD_OUT: &str = r#"-fsS --retry 5 --retry-all-errors -T "$work/out" "$HYBRIDGRID_RESULTS_URL$SLURM_JOB_ID.out""#;
const UPLOAD_STATUS: &str = r#"-fsS --retry 5 --retry-all-errors -T "$work/status.json" "$HYBRIDGRID_RESULTS_URL$SLURM_JOB_ID.json""#;

/// The command that runs `sbatch` on the master with the batch script on its standard input;
/// sbatch keeps its own copy of the script, so the file on the master is removed at once.
fn sbatch_command(partition: &str, args: &[String]) -> String {
    let mut submit = format!(
        "f=$(mktemp /tmp/hybridgrid-batch.XXXXXX) && cat > \"$f\" && \
         sbatch --parsable --partition={} \"$f\"",
        sh_quote(partition)
    );
    for a in args {
        submit.push(' ');
        submit.push_str(&sh_quote(a));
    }
    submit.push_str("; rc=$?; rm -f \"$f\"; exit $rc");
    submit
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
    fn open(file: &Path, command: Cmd, settings: &Settings) -> anyhow::Result<Option<Jobs>> {
        let Some(cluster) = crate::load(file)? else {
            return Ok(None);
        };
        let provider =
            crate::providers::open(&cluster, settings, crate::providers::Knobs::default())?;
        crate::require(provider.as_ref(), command, "")?;
        let plan = hybridgrid_engine::plan(provider.as_ref(), &cluster)?;
        Ok(Some(Jobs {
            master: master_of(&plan)?,
            dir: settings.cluster_dir(&cluster.name),
            provider,
            plan,
        }))
    }

    /// Runs `script` on the master; its exit code and standard output.
    fn run(
        &self,
        what: &'static str,
        script: &str,
        input: &[u8],
    ) -> anyhow::Result<(i32, Vec<u8>)> {
        let nodes = hybridgrid_engine::nodes(self.provider.as_ref(), what)?;
        Ok(nodes.run(&self.master, script, input)?)
    }

    /// Runs `script` on the master; its standard output, or an error when it failed.
    fn on_master(&self, what: &str, script: &str, input: &[u8]) -> anyhow::Result<String> {
        let (code, out) = self.run("submit", script, input)?;
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

pub fn run(cmd: SubmitCommand, settings: &Settings) -> anyhow::Result<ExitCode> {
    match cmd {
        SubmitCommand::Submit(args) => submit(args, settings),
        SubmitCommand::Jobs { file, json } => list_jobs(&file, json, settings),
    }
}

/// `submit`: places the job, sends it to the master's Slurm, records it; with `--wait`, waits
/// for it and exits with its exit code.
fn submit(args: SubmitArgs, settings: &Settings) -> anyhow::Result<ExitCode> {
    let Some(jobs) = Jobs::open(&args.file, Cmd::Submit, settings)? else {
        return Ok(ExitCode::FAILURE);
    };
    let plan = &jobs.plan;
    let mut placement = place(plan, &args.datasets, args.allow_cross_site)?;
    if let Some(p) = args.partition {
        placement = with_partition(plan, placement, p)?;
    }
    let path = PathBuf::from(&args.script[0]);
    let body = std::fs::read(&path)
        .with_context(|| format!("reading the job script {}", path.display()))?;
    let name = slurm_jobs::job_name(&args.name.unwrap_or_else(|| {
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "job".into())
    }));
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let batch = wrapper(plan, &name, &placement.env, &body);
    let at_submit = counters(&jobs);
    let sbatch = sbatch_command(&placement.partition, &args.script[1..]);
    let out = jobs.on_master("sbatch", &sbatch, batch.as_bytes())?;
    let id = slurm_jobs::sbatch_id(&out).with_context(|| format!("sbatch answered {out:?}"))?;
    let jobs_path = jobs.jobs_path();
    let mut record = load_jobs(&jobs_path)?;
    record.jobs.push(JobEntry {
        id,
        name: name.clone(),
        partition: placement.partition.clone(),
        site: placement.site.clone(),
        datasets: args.datasets.clone(),
        submitted_unix: (now / 1_000_000_000) as u64,
        wan_bytes_at_submit: at_submit.wan,
        wan_bytes_at_end: None,
        end_late: false,
        store_bytes_at_submit: at_submit.stores,
        store_bytes_at_end: None,
    });
    save_jobs(&jobs_path, &record)?;
    if args.parsable {
        println!("{id}");
    } else {
        print_submitted(&jobs, id, &placement, &args.datasets);
    }
    if !args.wait {
        return Ok(ExitCode::SUCCESS);
    }
    wait_and_report(&jobs, id, args.parsable)
}

/// `submitted job ID to partition P (site S, where D lives); output: PATH`.
fn print_submitted(jobs: &Jobs, id: u64, placement: &Placement, datasets: &[String]) {
    let output = jobs.results_dir().join(format!("{id}.out"));
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

/// `submit --wait`: waits for the job, records its end, says how it ended; its exit code.
fn wait_and_report(jobs: &Jobs, id: u64, parsable: bool) -> anyhow::Result<ExitCode> {
    let view = wait_for(jobs, id)?;
    // Read again: a `jobs` meanwhile may have recorded other jobs' ends.
    let jobs_path = jobs.jobs_path();
    let mut record = load_jobs(&jobs_path)?;
    record_ends(
        &jobs_path,
        &mut record,
        std::slice::from_ref(&view),
        false,
        &|| counters(jobs),
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

/// `jobs`: every recorded job as the master knows it now, as a table or a versioned document.
fn list_jobs(file: &Path, json: bool, settings: &Settings) -> anyhow::Result<ExitCode> {
    let Some(jobs) = Jobs::open(file, Cmd::Submit, settings)? else {
        return Ok(ExitCode::FAILURE);
    };
    let path = jobs.jobs_path();
    let mut record = load_jobs(&path)?;
    let mut views = job_views(&jobs, &record)?;
    // The counters, read at most once for all jobs.
    let read = std::cell::OnceCell::new();
    let now = || read.get_or_init(|| counters(&jobs)).clone();
    record_ends(&path, &mut record, &views, true, &now)?;
    cross_site(&mut views, &record, &now);
    if json {
        let doc = serde_json::json!({
            "format_version": 1,
            "cluster": jobs.plan.cluster,
            "jobs": views,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        print!("{}", jobs_table(&views));
    }
    Ok(ExitCode::SUCCESS)
}

/// `jobs`' table: a header, then one line per job.
fn jobs_table(views: &[JobView]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:>6}  {:<16} {:<10} {:<10} {:<10} {:<20} {:>4}  {:>10}  {:<24} output",
        "job", "name", "partition", "site", "state", "node", "exit", "cross-site", "store reads"
    );
    for v in views {
        let wan = v.cross_site_bytes.map_or_else(
            || "-".to_owned(),
            |b| {
                let bound = if v.cross_site_bytes_upper_bound {
                    "≤"
                } else {
                    ""
                };
                format!("{bound}{}", crate::status_text::bytes(b))
            },
        );
        let reads = store_reads(v.store_bytes.as_ref());
        let _ = writeln!(
            s,
            "{:>6}  {:<16} {:<10} {:<10} {:<10} {:<20} {:>4}  {wan:>10}  {reads:<24} {}",
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
    s
}

/// `site bytes` for each store that sent something, or `-`.
fn store_reads(bytes: Option<&BTreeMap<String, u64>>) -> String {
    let parts: Vec<String> = bytes
        .into_iter()
        .flatten()
        .filter(|(_, b)| **b > 0)
        .map(|(site, b)| format!("{site} {}", crate::status_text::bytes(*b)))
        .collect();
    if parts.is_empty() {
        "-".to_owned()
    } else {
        parts.join(", ")
    }
}

/// Bytes all relays have sent into the tunnels (every byte that crosses sites is sent by exactly
/// one relay); `None` when the tunnels cannot be read.
fn wan_bytes(jobs: &Jobs) -> Option<u64> {
    let s = jobs.provider.status(&jobs.plan, Probe::None).ok()?;
    (!s.tunnels.is_empty()).then(|| s.tunnels.iter().map(|t| t.tx_bytes).sum())
}

/// Bytes each site's store has sent, by counter; `None` where the provider reads none.
fn store_bytes(jobs: &Jobs) -> Option<BTreeMap<String, u64>> {
    let read = jobs.provider.stores()?.served_bytes(&jobs.plan);
    (!read.is_empty()).then_some(read)
}

/// Records the counters' end for jobs seen finished the first time, and saves the record then.
fn record_ends(
    path: &Path,
    record: &mut JobsRecord,
    views: &[JobView],
    late: bool,
    now: &dyn Fn() -> Counters,
) -> anyhow::Result<()> {
    // A job in no state Slurm knows gets no end: when it ended cannot be told.
    let done: Vec<u64> = views
        .iter()
        .filter(|v| slurm_jobs::finished(&v.state) && v.state != "UNKNOWN")
        .map(|v| v.id)
        .collect();
    let todo: Vec<&mut JobEntry> = record
        .jobs
        .iter_mut()
        .filter(|j| done.contains(&j.id) && j.end_uncounted())
        .collect();
    if todo.is_empty() {
        return Ok(());
    }
    let now = now();
    for j in todo {
        j.wan_bytes_at_end = now.wan;
        j.store_bytes_at_end = now.stores.clone();
        j.end_late = late;
    }
    save_jobs(path, record)
}

/// Fills each view's cross-site and store bytes from the record (`now`: the counters, for
/// running jobs).
fn cross_site(views: &mut [JobView], record: &JobsRecord, now: &dyn Fn() -> Counters) {
    for v in views.iter_mut() {
        let Some(j) = record.jobs.iter().find(|j| j.id == v.id) else {
            continue;
        };
        let end = if !j.end_uncounted() {
            v.cross_site_bytes_upper_bound = j.end_late;
            Counters {
                wan: j.wan_bytes_at_end,
                stores: j.store_bytes_at_end.clone(),
            }
        } else if v.state == "RUNNING" {
            now()
        } else {
            Counters::default()
        };
        if let (Some(start), Some(end)) = (j.wan_bytes_at_submit, end.wan) {
            v.cross_site_bytes = Some(end.saturating_sub(start));
        }
        if let (Some(start), Some(end)) = (&j.store_bytes_at_submit, &end.stores) {
            v.store_bytes = Some(store_deltas(start, end));
        }
    }
}

/// Per site, what its store sent between two readings, counter by counter (`Stores::served_bytes`:
/// `site`, or `site@node` where nodes count): a counter that started meanwhile counts all it
/// has, one gone by the end (a removed node) counts nothing — never less than the others.
fn store_deltas(
    start: &BTreeMap<String, u64>,
    end: &BTreeMap<String, u64>,
) -> BTreeMap<String, u64> {
    let mut by_site = BTreeMap::new();
    for (counter, e) in end {
        let site = counter.split_once('@').map_or(counter.as_str(), |(s, _)| s);
        let read = e.saturating_sub(start.get(counter).copied().unwrap_or(0));
        *by_site.entry(site.to_owned()).or_insert(0) += read;
    }
    by_site
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
        let finished = slurm_jobs::finished(&view.state);
        // Finished and its output is on the master (or it failed without any).
        if finished && (view.output.is_some() || view.state != "COMPLETED") {
            return Ok(view);
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}

/// What the master knows of the recorded jobs, asked in one go: the queue, `scontrol show job`
/// of each job, and each job's status file in the results store.
fn job_views(jobs: &Jobs, record: &JobsRecord) -> anyhow::Result<Vec<JobView>> {
    let plan = &jobs.plan;
    let ids: Vec<u64> = record.jobs.iter().map(|j| j.id).collect();
    let answer = if ids.is_empty() {
        String::new()
    } else {
        let script = slurm_jobs::query_script(&ids, &plan.results_url());
        jobs.on_master("reading the jobs", &script, b"")?
    };
    let answer = MasterAnswer::parse(&answer);
    let mut views = Vec::new();
    for j in &record.jobs {
        let (state, node) = answer.slurm(j.id);
        let result = answer.result(j.id);
        let output = fetch_output(jobs, j.id, result.is_some())?;
        // The node the status file names is where the script ran.
        let node = result.as_ref().map(|r| r.node.clone()).or(node);
        let ran_at = node
            .as_ref()
            .and_then(|n| plan.node(n))
            .map(|n| n.site.clone());
        views.push(JobView {
            id: j.id,
            name: j.name.clone(),
            partition: j.partition.clone(),
            site: j.site.clone(),
            state: slurm_jobs::state(state, result.as_ref()),
            node,
            ran_at,
            exit: result.map(|r| r.exit),
            output,
            cross_site_bytes: None,
            cross_site_bytes_upper_bound: false,
            store_bytes: None,
        });
    }
    Ok(views)
}

/// The job's output on this machine: copied from the results store once the job finished and
/// put it there (`finished`: its status file is there); `None` until then.
fn fetch_output(jobs: &Jobs, id: u64, finished: bool) -> anyhow::Result<Option<PathBuf>> {
    let results = jobs.results_dir();
    let out = results.join(format!("{id}.out"));
    if finished && !out.exists() {
        let url = jobs.plan.results_url();
        let get = format!(
            "{}\n{}",
            slurm_jobs::load_job_env(),
            slurm_jobs::results_curl(&format!("-sf {url}{id}.out"))
        );
        let (code, bytes) = jobs.run("jobs", &get, b"")?;
        if code == 0 {
            std::fs::create_dir_all(&results)
                .with_context(|| format!("creating {}", results.display()))?;
            state::write_atomic(&out, &bytes, 0o644)?;
        }
    }
    Ok(out.exists().then_some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regression_a_cancelled_job_leaves_no_folder_in_tmp() {
        use std::os::unix::process::CommandExt as _;
        let script = format!("{JOB_WORK_DIR}echo \"$work\"\nsleep 30\n");
        let mut child = std::process::Command::new("bash")
            .args(["-c", &script])
            .env("SLURM_JOB_ID", "test")
            .stdout(std::process::Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        let work = PathBuf::from(line.trim());
        assert!(work.is_dir(), "{work:?}");
        // As slurmstepd cancels a job: TERM to every process of it.
        let group = nix::unistd::Pid::from_raw(-(child.id() as i32));
        nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGTERM).unwrap();
        child.wait().unwrap();
        assert!(!work.exists(), "{work:?} was left behind");
    }

    #[test]
    fn regression_a_node_gone_by_the_end_does_not_wipe_out_its_sites_store_reads() {
        let start = BTreeMap::from([
            ("b@b-worker-1".to_owned(), 100),
            ("b@b-od-1".to_owned(), 500),
        ]);
        // b-od-1 was removed meanwhile; b-od-2 was made and read 70.
        let end = BTreeMap::from([
            ("b@b-worker-1".to_owned(), 400),
            ("b@b-od-2".to_owned(), 70),
        ]);
        assert_eq!(
            store_deltas(&start, &end),
            BTreeMap::from([("b".to_owned(), 370)])
        );
        // Counted at the store (local): keyed by site.
        let local = store_deltas(
            &BTreeMap::from([("giessen".to_owned(), 10)]),
            &BTreeMap::from([("giessen".to_owned(), 30), ("bielefeld".to_owned(), 5)]),
        );
        assert_eq!(local["giessen"], 20);
        assert_eq!(local["bielefeld"], 5);
    }
}
