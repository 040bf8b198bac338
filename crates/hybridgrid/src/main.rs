//! The `hybridgrid` command line. Architecture invariant: only this crate knows about terminals,
//! standard output and exit codes; everything else returns values and typed errors. A run reads
//! its settings from the environment once (`settings.rs`); every lifecycle command loads the
//! cluster file once and opens its provider (`providers.rs`); those that plan go through the
//! engine, `down`, `exec` and `graph` to the provider directly, `gc` to the local provider's sweep.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use hybridgrid_core::model::{self, Cluster, LoadError};
use hybridgrid_core::plan::Plan;
use hybridgrid_core::render;
use hybridgrid_engine::state::operation::OperationLock;
use hybridgrid_engine::{Command as Cmd, EngineError, Event, Probe, Provider, Sink};
use settings::Settings;

mod data_cmd;
mod doctor_cmd;
mod graph;
mod node_cmd;
mod plan_text;
mod power_cmd;
mod progress;
mod providers;
mod settings;
mod status_text;
mod submit_cmd;
mod validate_cmd;

#[derive(Debug, Parser)]
#[command(
    name = "hybridgrid",
    version,
    about = "Hybrid-cloud compute clusters from one YAML file"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Progress of `up` and `down`: only failures.
    #[arg(short = 'q', long, global = true, conflicts_with = "verbose")]
    quiet: bool,
    /// Progress of `up` and `down`: every finished change stays on screen.
    #[arg(short = 'v', long, global = true)]
    verbose: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check a cluster file and report every problem at once (exit 1 if any).
    Validate {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// Also ask the clouds: do the clouds, flavors, images and networks exist, and do the
        /// quotas cover the plan (provider openstack).
        #[arg(long)]
        online: bool,
        /// Print the versioned validation document (docs/plan-json.md) instead of messages.
        #[arg(long)]
        json: bool,
    },
    /// Show what `up` would create or change, without changing anything.
    Plan {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// Print the versioned plan document (docs/plan-json.md) instead of a summary.
        #[arg(long)]
        json: bool,
    },
    /// Write the files each node and site would get into a folder, for review.
    Render {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    /// Create the cluster, or bring it to what the file says; idempotent and resumable.
    Up {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// Security groups without connection tracking (local; for tests of the rules themselves).
        #[arg(long)]
        stateless_security_groups: bool,
        /// Print the versioned report (rounds and the changes of each) on standard output.
        #[arg(long)]
        json: bool,
    },
    /// Nodes up/down, tunnel handshakes and counters, and who reaches whom.
    Status {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        #[arg(long)]
        json: bool,
        /// Skip the reachability probes.
        #[arg(long, conflicts_with = "all_pairs")]
        no_ping: bool,
        /// Ping every node from every node (quadratic) instead of the sample: every node its
        /// relay, and one node of each site one of every other site (clusters of up to 16 nodes
        /// get every pair anyway).
        #[arg(long)]
        all_pairs: bool,
    },
    /// Draw the cluster: sites with their subnets and nodes, tunnels between the relays (with
    /// handshake age and bytes when the cluster runs; broken ones red).
    Graph {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        #[arg(long, value_enum, default_value = "svg")]
        format: GraphFormat,
        /// Print the versioned graph document (docs/plan-json.md) instead of a drawing.
        #[arg(long)]
        json: bool,
        /// Draw the cluster file only: do not ask the running cluster for its tunnels.
        #[arg(long)]
        offline: bool,
    },
    /// Run a command on a node: `exec -f FILE NODE -- CMD...`.
    Exec {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        node: String,
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
    /// New keys for the running cluster without a tunnel lost: every relay's WireGuard key,
    /// every pair's preshared key, the munge key (all unless some are named).
    Rotate {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// The relays' WireGuard keys.
        #[arg(long)]
        wireguard: bool,
        /// The preshared keys of the pairs of relays.
        #[arg(long)]
        preshared: bool,
        /// The cluster's munge key (Slurm's authentication).
        #[arg(long)]
        munge: bool,
        /// Only if the oldest key is `tunnel.rotate_every` old (for a timer; docs/keys.md).
        #[arg(long)]
        when_due: bool,
        /// Print the versioned report on standard output.
        #[arg(long)]
        json: bool,
    },
    /// Remove everything of the cluster; safe to run again.
    Down {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
    /// Find what is wrong with the running cluster and say how to fix it (exit 1 if anything).
    Doctor {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        #[arg(long)]
        json: bool,
        /// Follow one flow hop by hop (route, relay, port pairs, groups, tunnel, MTU, route
        /// back) and name the first broken hop with its fix.
        #[arg(long, num_args = 2, value_names = ["SRC", "DST"])]
        path: Option<Vec<String>>,
    },
    /// Remove leftovers of this host's local clusters whose ledger is gone.
    Gc,
    /// Print the shell completion script: `source <(hybridgrid completions bash)`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff): `hybridgrid man > /usr/local/share/man/man1/hybridgrid.1`.
    Man,
    #[command(flatten)]
    Submit(submit_cmd::SubmitCommand),
    /// Datasets in their site's object store: `data put|ls|get|rm -f FILE DATASET ...`.
    #[command(subcommand)]
    Data(data_cmd::DataCommand),
    #[command(flatten)]
    Node(node_cmd::NodeCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", error_text(&e));
            ExitCode::FAILURE
        }
    }
}

/// `e` and its causes joined by ": ", each cause once: a level whose text equals the one before
/// it (a transparent wrapper, `/// {0}` with `#[from]`) is skipped. No message of ours repeats
/// its own cause, so that is the only repetition left.
pub(crate) fn error_text(e: &anyhow::Error) -> String {
    let mut text = String::new();
    let mut previous: Option<String> = None;
    for level in e.chain() {
        let this = level.to_string();
        if previous.as_ref() == Some(&this) {
            continue;
        }
        if previous.is_some() {
            text.push_str(": ");
        }
        text.push_str(&this);
        previous = Some(this);
    }
    text
}

/// Loads the file and opens its provider; `None` when the file has errors (already reported).
fn open(
    file: &Path,
    settings: &Settings,
    knobs: providers::Knobs,
) -> anyhow::Result<Option<(Cluster, Box<dyn Provider>)>> {
    let Some(cluster) = load(file)? else {
        return Ok(None);
    };
    let provider = providers::open(&cluster, settings, knobs)?;
    Ok(Some((cluster, provider)))
}

/// A cluster opened for a change: its provider, and the operation lock held for it.
type OpenedAlone = (Cluster, Box<dyn Provider>, OperationLock);

/// As [`open`], for a command that changes the cluster (`up`, `rotate`): the cluster's operation
/// lock is held before the provider reads its state, so what it reads is what the last change
/// left.
fn open_alone(
    file: &Path,
    settings: &Settings,
    knobs: providers::Knobs,
    command: &str,
) -> anyhow::Result<Option<OpenedAlone>> {
    let Some(cluster) = load(file)? else {
        return Ok(None);
    };
    let alone = hold_alone(&cluster.name, settings, command)?;
    let provider = providers::open(&cluster, settings, knobs)?;
    Ok(Some((cluster, provider, alone)))
}

fn require(provider: &dyn Provider, command: Cmd, hint: &str) -> anyhow::Result<()> {
    if hybridgrid_engine::supports(provider, command) {
        Ok(())
    } else {
        Err(EngineError::unsupported(provider.name(), command.as_str(), hint).into())
    }
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum GraphFormat {
    Svg,
    Dot,
}

/// One run: the settings, the logging and progress `-q`/`-v` chose, then the subcommand.
fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let verbosity = match (cli.quiet, cli.verbose) {
        (true, _) => progress::Verbosity::Quiet,
        (false, true) => progress::Verbosity::Verbose,
        (false, false) => progress::Verbosity::Normal,
    };
    init_logging(verbosity);
    let settings = Settings::from_env()?;
    let live = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let progress = progress::Progress::new(std::io::stderr(), live, verbosity);
    let show = |e: Event| progress.event(e);
    let s = &settings;
    match cli.command {
        Command::Validate { file, online, json } if json => {
            validate_cmd::validate_json(&file, online, s)
        }
        Command::Validate { file, online, .. } => validate_cmd::validate(&file, online, s),
        Command::Plan { file, json } => plan(&file, json, s),
        Command::Render { file, out } => render_files(&file, &out, s),
        Command::Up {
            file,
            stateless_security_groups,
            json,
        } => up(&file, stateless_security_groups, json, s, &show),
        Command::Status {
            file,
            json,
            no_ping,
            all_pairs,
        } => status(&file, json, probe(no_ping, all_pairs), s),
        Command::Graph {
            file,
            format,
            json,
            offline,
        } => draw(&file, format, json, offline, s),
        Command::Exec { file, node, cmd } => exec(&file, &node, &cmd, s),
        Command::Rotate {
            file,
            wireguard,
            preshared,
            munge,
            when_due,
            json,
        } => {
            let renew = hybridgrid_engine::rotate::Renew::from_flags(wireguard, preshared, munge);
            rotate(&file, renew, when_due, json, s, &show)
        }
        Command::Down { file } => down(&file, s, &show),
        Command::Doctor {
            file,
            json,
            path: Some(p),
        } => doctor_cmd::path(&file, &p[0], &p[1], json, s),
        Command::Doctor { file, json, .. } => doctor_cmd::run(&file, json, s),
        Command::Gc => gc(s),
        Command::Completions { shell } => completions(shell),
        Command::Man => man(),
        Command::Submit(cmd) => submit_cmd::run(cmd, s),
        Command::Data(cmd) => data_cmd::run(cmd, s),
        Command::Node(cmd) => node_cmd::run(cmd, s),
    }
}

/// Plain progress lines and `-v`'s traces go through `tracing`, filtered by -q/-v: our own lines
/// at the chosen level; the libraries' (the OpenStack SDK's endpoint discovery, HTTP requests)
/// only when they warn.
fn init_logging(verbosity: progress::Verbosity) {
    let level = match verbosity {
        progress::Verbosity::Quiet => tracing::level_filters::LevelFilter::WARN,
        progress::Verbosity::Normal => tracing::level_filters::LevelFilter::INFO,
        progress::Verbosity::Verbose => tracing::level_filters::LevelFilter::DEBUG,
    };
    let only_ours = tracing_subscriber::filter::Targets::new()
        .with_target("hybridgrid", level)
        .with_default(tracing::level_filters::LevelFilter::WARN);
    let _ =
        tracing::subscriber::set_global_default(tracing_subscriber::layer::SubscriberExt::with(
            tracing_subscriber::fmt()
                .with_writer(std::io::stderr)
                .with_max_level(level)
                .without_time()
                .with_level(false)
                .with_target(false)
                .with_ansi(false)
                .finish(),
            only_ours,
        ));
}

fn probe(no_ping: bool, all_pairs: bool) -> Probe {
    match (no_ping, all_pairs) {
        (true, _) => Probe::None,
        (false, true) => Probe::AllPairs,
        (false, false) => Probe::Sample,
    }
}

/// `plan`: the summary, or the versioned document.
fn plan(file: &Path, json: bool, settings: &Settings) -> anyhow::Result<ExitCode> {
    let Some((cluster, provider)) = open(file, settings, providers::Knobs::default())? else {
        return Ok(ExitCode::FAILURE);
    };
    let plan = hybridgrid_engine::plan(provider.as_ref(), &cluster)?;
    if json {
        println!("{}", plan.to_json());
    } else {
        print!("{}", plan_text::plan_summary(&plan));
    }
    Ok(ExitCode::SUCCESS)
}

/// `render`: every file of the plan under `out`.
fn render_files(file: &Path, out: &Path, settings: &Settings) -> anyhow::Result<ExitCode> {
    let Some((cluster, provider)) = open(file, settings, providers::Knobs::default())? else {
        return Ok(ExitCode::FAILURE);
    };
    let plan = hybridgrid_engine::plan(provider.as_ref(), &cluster)?;
    let count = write_tree(out, &plan)?;
    println!("wrote {count} files to {}", out.display());
    Ok(ExitCode::SUCCESS)
}

fn up(
    file: &Path,
    stateless_security_groups: bool,
    json: bool,
    settings: &Settings,
    show: Sink<'_>,
) -> anyhow::Result<ExitCode> {
    let knobs = providers::Knobs {
        stateless_security_groups,
        ..providers::Knobs::default()
    };
    let Some((cluster, provider, _alone)) = open_alone(file, settings, knobs, "up")? else {
        return Ok(ExitCode::FAILURE);
    };
    let report = hybridgrid_engine::up(provider.as_ref(), &cluster, show)?;
    for p in &report.partial {
        eprintln!("note: not done by `up`: {p}");
    }
    for n in &report.notes {
        eprintln!("warning: {n}");
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else if report.change_count() == 0 {
        println!("no changes: the cluster is as planned");
    } else {
        println!(
            "up: {} changes in {} rounds, {:.1}s",
            report.change_count(),
            report.rounds.len(),
            report.seconds
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Holds cluster `name`'s operation lock alone for `command` (`up`, `down`, `rotate`: one change
/// of a cluster at a time; `hybridgrid_state::operation`), saying for whom it waits first.
fn hold_alone(name: &str, settings: &Settings, command: &str) -> anyhow::Result<OperationLock> {
    let dir = settings.cluster_dir(name);
    let waiting = |who: &str| eprintln!("waiting for {who} to finish with cluster {name}");
    Ok(OperationLock::exclusive(&dir, command, &waiting)?)
}

/// `status`: exit 1, with a hint, when the cluster is not healthy.
fn status(file: &Path, json: bool, probe: Probe, settings: &Settings) -> anyhow::Result<ExitCode> {
    let Some((cluster, provider)) = open(file, settings, providers::Knobs::default())? else {
        return Ok(ExitCode::FAILURE);
    };
    let report = hybridgrid_engine::status(provider.as_ref(), &cluster, probe)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", status_text::status_text(&report));
    }
    if report.healthy() {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!(
            "hint: run `hybridgrid doctor -f {}` to find out why",
            file.display()
        );
        Ok(ExitCode::FAILURE)
    }
}

/// `graph`: the topology is the cluster file's; the tunnels' state is the running cluster's,
/// when it can be read (a cluster that is not up has nothing to show there).
fn draw(
    file: &Path,
    format: GraphFormat,
    json: bool,
    offline: bool,
    settings: &Settings,
) -> anyhow::Result<ExitCode> {
    let Some((cluster, provider)) = open(file, settings, providers::Knobs::default())? else {
        return Ok(ExitCode::FAILURE);
    };
    let plan = hybridgrid_core::reconcile::plan(&cluster, &Default::default());
    let status = if offline || !hybridgrid_engine::supports(provider.as_ref(), Cmd::Status) {
        None
    } else {
        match hybridgrid_engine::status(provider.as_ref(), &cluster, Probe::None) {
            Ok(s) if s.nodes.iter().any(|n| n.up) => Some(s),
            Ok(_) => None,
            Err(e) => {
                eprintln!(
                    "warning: drawing the cluster file only: {}",
                    hybridgrid_core::error_chain(&e)
                );
                None
            }
        }
    };
    // Local reads every relay's device; openstack reads them over the node channel (none
    // without it: then the tunnels are drawn as not observed).
    let tunnels_observed = cluster.provider == model::Provider::Local
        || status.as_ref().is_some_and(|s| !s.tunnels.is_empty());
    let g = graph::build(&plan, status.as_ref(), tunnels_observed);
    if json {
        println!("{}", serde_json::to_string_pretty(&g)?);
    } else {
        match format {
            GraphFormat::Svg => print!("{}", graph::svg(&g)),
            GraphFormat::Dot => print!("{}", graph::dot(&g)),
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `exec`: the command's own exit code.
fn exec(file: &Path, node: &str, cmd: &[String], settings: &Settings) -> anyhow::Result<ExitCode> {
    let Some((_, provider)) = open(file, settings, providers::Knobs::default())? else {
        return Ok(ExitCode::FAILURE);
    };
    require(provider.as_ref(), Cmd::Exec, "")?;
    let code = hybridgrid_engine::nodes(provider.as_ref(), "exec")?.exec(node, cmd)?;
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}

/// `rotate`: the report, or one line of what was renewed (or why nothing was: not due).
fn rotate(
    file: &Path,
    renew: hybridgrid_engine::rotate::Renew,
    when_due: bool,
    json: bool,
    settings: &Settings,
    show: Sink<'_>,
) -> anyhow::Result<ExitCode> {
    let knobs = providers::Knobs::default();
    let Some((cluster, provider, _alone)) = open_alone(file, settings, knobs, "rotate")? else {
        return Ok(ExitCode::FAILURE);
    };
    require(provider.as_ref(), Cmd::Rotate, "")?;
    let report = match when_due {
        true => {
            hybridgrid_engine::rotate::rotate_when_due(provider.as_ref(), &cluster, renew, show)?
        }
        false => hybridgrid_engine::rotate::rotate(provider.as_ref(), &cluster, renew, show)?,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(ages) = &report.not_due {
        println!(
            "rotate: not due: the oldest key is {} old, tunnel.rotate_every is {}",
            ages.oldest_s.map_or("?".into(), status_text::age_text),
            ages.rotate_every_s
                .map_or("?".into(), status_text::age_text),
        );
        return Ok(ExitCode::SUCCESS);
    }
    let mut renewed = Vec::new();
    if !report.relays.is_empty() {
        renewed.push(format!("{} relays' WireGuard keys", report.relays.len()));
    }
    if report.preshared_pairs > 0 {
        renewed.push(format!("{} pairs' preshared keys", report.preshared_pairs));
    }
    if !report.munge_nodes.is_empty() {
        renewed.push(format!(
            "the munge key on {} nodes",
            report.munge_nodes.len()
        ));
    }
    println!(
        "rotate: {} in {:.1}s (every node switched within {:.1}s)",
        if renewed.is_empty() {
            "nothing to renew".to_owned()
        } else {
            renewed.join(", ")
        },
        report.seconds,
        report.switch_seconds
    );
    Ok(ExitCode::SUCCESS)
}

/// `down`: exit 1, with what is left, when something could not be deleted.
fn down(file: &Path, settings: &Settings, show: Sink<'_>) -> anyhow::Result<ExitCode> {
    let Some(cluster) = load(file)? else {
        return Ok(ExitCode::FAILURE);
    };
    // Held before the provider reads its state; a cluster with no state here has nothing to
    // wait for (and gets no folder for the lock).
    let _alone = match settings.cluster_dir(&cluster.name).is_dir() {
        true => Some(hold_alone(&cluster.name, settings, "down")?),
        false => None,
    };
    let provider = providers::open(&cluster, settings, providers::Knobs::default())?;
    require(provider.as_ref(), Cmd::Down, "")?;
    let report = provider.down(show)?;
    for n in &report.not_deleted {
        eprintln!(
            "could not delete {} {} at site {} ({}): {}",
            n.kind,
            n.name,
            n.site,
            n.id.as_deref().unwrap_or("no id"),
            n.error
        );
    }
    if !report.not_deleted.is_empty() {
        println!(
            "down: deleted {}, {} left (listed above); run `down` again",
            report.deleted.len(),
            report.not_deleted.len()
        );
        return Ok(ExitCode::FAILURE);
    }
    if report.deleted.is_empty() {
        println!("nothing to remove");
    } else {
        println!(
            "down: deleted {} resources; nothing of the cluster is left",
            report.deleted.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn gc(settings: &Settings) -> anyhow::Result<ExitCode> {
    let removed = hybridgrid_local::gc(&settings.state_root)?;
    for r in &removed {
        println!("removed {r}");
    }
    if removed.is_empty() {
        println!("nothing to collect");
    }
    Ok(ExitCode::SUCCESS)
}

/// The node-side commands are hidden from help: from completion too.
fn completions(shell: clap_complete::Shell) -> anyhow::Result<ExitCode> {
    let full = <Cli as clap::CommandFactory>::command();
    let mut cmd = full
        .get_subcommands()
        .filter(|s| !s.is_hide_set())
        .fold(clap::Command::new("hybridgrid"), |c, s| {
            c.subcommand(s.clone())
        });
    clap_complete::generate(shell, &mut cmd, "hybridgrid", &mut std::io::stdout());
    Ok(ExitCode::SUCCESS)
}

fn man() -> anyhow::Result<ExitCode> {
    let cmd = <Cli as clap::CommandFactory>::command();
    clap_mangen::Man::new(cmd)
        .render(&mut std::io::stdout())
        .context("writing the manual page")?;
    Ok(ExitCode::SUCCESS)
}

/// Loads and validates; prints diagnostics. `None` when the file has errors (already reported).
fn load(file: &Path) -> anyhow::Result<Option<Cluster>> {
    let shown = file.display().to_string();
    match model::load(file) {
        Ok(loaded) => {
            eprint!("{}", loaded.warnings.render(&shown));
            Ok(Some(loaded.cluster))
        }
        Err(LoadError::Invalid { diagnostics, .. }) => {
            eprint!("{}", diagnostics.render(&shown));
            eprintln!(
                "{shown}: {} error(s); nothing was created",
                diagnostics.error_count()
            );
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// Writes each rendered file as it is made (one file in memory at a time); the count.
fn write_tree(out: &Path, plan: &Plan) -> anyhow::Result<usize> {
    let mut count = 0;
    let mut failed: Option<anyhow::Error> = None;
    // Directories made so far: most files share theirs with the node's other files.
    let mut made: std::collections::HashSet<PathBuf> = std::collections::HashSet::new();
    render::render_each(plan, &mut |rel, content| {
        if failed.is_some() {
            return;
        }
        let path = out.join(rel);
        let mut write = || -> anyhow::Result<()> {
            if let Some(dir) = path.parent()
                && !made.contains(dir)
            {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
                made.insert(dir.to_owned());
            }
            let mut f = std::fs::File::create(&path)
                .with_context(|| format!("writing {}", path.display()))?;
            f.write_all(content.as_bytes())
                .with_context(|| format!("writing {}", path.display()))
        };
        match write() {
            Ok(()) => count += 1,
            Err(e) => failed = Some(e),
        }
    });
    match failed {
        Some(e) => Err(e),
        None => Ok(count),
    }
}
