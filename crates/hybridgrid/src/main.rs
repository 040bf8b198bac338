//! The `hybridgrid` command line. Architecture invariant: only this crate knows about terminals,
//! standard output and exit codes; everything else returns values and typed errors. Every
//! lifecycle command loads the cluster file once, opens its provider (`providers.rs`) and goes
//! through the engine.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use hybridgrid_core::diff::Change;
use hybridgrid_core::model::{self, Cluster, LoadError};
use hybridgrid_core::plan::{Plan, Remote, Role};
use hybridgrid_core::render;
use hybridgrid_engine::{Command as Cmd, EngineError, Event, Probe, Provider};

mod doctor_cmd;
mod graph;
mod node_cmd;
mod power_cmd;
mod progress;
mod providers;
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
    #[command(flatten)]
    Node(node_cmd::NodeCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Loads the file and opens its provider; `None` when the file has errors (already reported).
fn open(
    file: &Path,
    knobs: providers::Knobs,
) -> anyhow::Result<Option<(Cluster, Box<dyn Provider>)>> {
    let Some(cluster) = load(file)? else {
        return Ok(None);
    };
    let provider = providers::open(&cluster, knobs)?;
    Ok(Some((cluster, provider)))
}

fn require(provider: &dyn Provider, command: Cmd, hint: &str) -> anyhow::Result<()> {
    if provider.supports(command) {
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

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let knobs = providers::Knobs::default();
    let verbosity = match (cli.quiet, cli.verbose) {
        (true, _) => progress::Verbosity::Quiet,
        (false, true) => progress::Verbosity::Verbose,
        (false, false) => progress::Verbosity::Normal,
    };
    // Plain progress lines and `-v`'s traces go through `tracing`, filtered by -q/-v.
    let level = match verbosity {
        progress::Verbosity::Quiet => tracing::level_filters::LevelFilter::WARN,
        progress::Verbosity::Normal => tracing::level_filters::LevelFilter::INFO,
        progress::Verbosity::Verbose => tracing::level_filters::LevelFilter::DEBUG,
    };
    // Our own lines at the chosen level; the libraries' (the OpenStack SDK's endpoint discovery,
    // HTTP requests) only when they warn.
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
    let live = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let progress = progress::Progress::new(std::io::stderr(), live, verbosity);
    let show = |e: Event| progress.event(e);
    match cli.command {
        Command::Validate { file, online, json } if json => {
            validate_cmd::validate_json(&file, online)
        }
        Command::Validate { file, online, .. } => validate_cmd::validate(&file, online),
        Command::Plan { file, json } => {
            let Some((cluster, provider)) = open(&file, knobs)? else {
                return Ok(ExitCode::FAILURE);
            };
            let plan = hybridgrid_engine::plan(provider.as_ref(), &cluster)?;
            if json {
                println!("{}", plan.to_json());
            } else {
                print!("{}", plan_summary(&plan));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Render { file, out } => {
            let Some((cluster, provider)) = open(&file, knobs)? else {
                return Ok(ExitCode::FAILURE);
            };
            let plan = hybridgrid_engine::plan(provider.as_ref(), &cluster)?;
            let count = write_tree(&out, &plan)?;
            println!("wrote {count} files to {}", out.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Up {
            file,
            stateless_security_groups,
            json,
        } => {
            let knobs = providers::Knobs {
                stateless_security_groups,
            };
            let Some((cluster, provider)) = open(&file, knobs)? else {
                return Ok(ExitCode::FAILURE);
            };
            let report = hybridgrid_engine::up(provider.as_ref(), &cluster, &show)?;
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
        Command::Status {
            file,
            json,
            no_ping,
            all_pairs,
        } => {
            let Some((cluster, provider)) = open(&file, knobs)? else {
                return Ok(ExitCode::FAILURE);
            };
            let probe = match (no_ping, all_pairs) {
                (true, _) => Probe::None,
                (false, true) => Probe::AllPairs,
                (false, false) => Probe::Sample,
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
        Command::Graph {
            file,
            format,
            json,
            offline,
        } => {
            let Some((cluster, provider)) = open(&file, knobs)? else {
                return Ok(ExitCode::FAILURE);
            };
            // The topology is the cluster file's; the tunnels' state is the running cluster's,
            // when it can be read (a cluster that is not up has nothing to show there).
            let plan = hybridgrid_core::reconcile::plan(&cluster, &Default::default());
            let status = if offline || !provider.supports(Cmd::Status) {
                None
            } else {
                match hybridgrid_engine::status(provider.as_ref(), &cluster, Probe::None) {
                    Ok(s) if s.nodes.iter().any(|n| n.up) => Some(s),
                    Ok(_) => None,
                    Err(e) => {
                        eprintln!("warning: drawing the cluster file only: {e}");
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
        Command::Exec { file, node, cmd } => {
            let Some((_, provider)) = open(&file, knobs)? else {
                return Ok(ExitCode::FAILURE);
            };
            require(provider.as_ref(), Cmd::Exec, "")?;
            let code = provider.exec(&node, &cmd)?;
            Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
        }
        Command::Down { file } => {
            let Some((_, provider)) = open(&file, knobs)? else {
                return Ok(ExitCode::FAILURE);
            };
            require(provider.as_ref(), Cmd::Down, "")?;
            let report = provider.down(&show)?;
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
        Command::Doctor {
            file,
            json,
            path: Some(p),
        } => doctor_cmd::path(&file, &p[0], &p[1], json),
        Command::Doctor { file, json, .. } => doctor_cmd::run(&file, json),
        Command::Gc => {
            let removed = hybridgrid_local::gc(&hybridgrid_local::state_root())?;
            for r in &removed {
                println!("removed {r}");
            }
            if removed.is_empty() {
                println!("nothing to collect");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Completions { shell } => {
            // The node-side commands are hidden from help: from completion too.
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
        Command::Man => {
            let cmd = <Cli as clap::CommandFactory>::command();
            clap_mangen::Man::new(cmd)
                .render(&mut std::io::stdout())
                .context("writing the manual page")?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Submit(cmd) => submit_cmd::run(cmd),
        Command::Node(cmd) => node_cmd::run(cmd),
    }
}

/// Progress of `up` and `down` on standard error.
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

fn plan_summary(plan: &Plan) -> String {
    let mut s = String::new();
    let relays = plan.nodes.iter().filter(|n| n.role.is_relay()).count();
    let _ = writeln!(
        s,
        "cluster {} ({} provider): {} sites, {} nodes",
        plan.cluster,
        plan.provider.as_str(),
        plan.sites.len(),
        plan.nodes.len()
    );
    let _ = writeln!(
        s,
        "tunnel {} · UDP {} · MTU {} · keepalive {}s · full mesh of {} relays, {} links",
        plan.tunnel.cidr,
        plan.tunnel.port,
        plan.tunnel.mtu,
        plan.tunnel.keepalive,
        relays,
        relays * relays.saturating_sub(1) / 2
    );
    for site in &plan.sites {
        let _ = writeln!(
            s,
            "\nsite {} {}{}",
            site.name,
            site.subnet,
            if site.master { " (master site)" } else { "" }
        );
        for n in plan.nodes.iter().filter(|n| n.site == site.name) {
            let mut extra = String::new();
            if let Some(t) = n.tunnel_ip {
                let _ = write!(extra, "  tunnel {t}");
            }
            if n.role.is_relay() {
                match n.public_ip {
                    Some(ip) => {
                        let _ = write!(extra, "  public {ip}");
                    }
                    None => extra.push_str("  public (allocated by up)"),
                }
            }
            if n.role == Role::Worker {
                let _ = write!(extra, "  {} CPUs, {} MiB", n.cpus, n.memory_mib);
            }
            if n.on_demand {
                extra.push_str("  on demand (Slurm makes it when jobs need it)");
            }
            let _ = writeln!(
                s,
                "  {:<24} {:<8} {:<15}{extra}",
                n.name,
                n.role.as_str(),
                n.lan_ip.to_string()
            );
        }
    }
    if plan.changes.is_empty() {
        s.push_str("\nno changes: the cluster is as planned\n");
    } else {
        let _ = writeln!(s, "\n{} changes:", plan.changes.len());
        // A new group's rules are summed up on the group's line; `--json` lists each one.
        let new_groups: Vec<&str> = plan
            .changes
            .iter()
            .filter_map(|c| match c {
                Change::CreateSecurityGroup { group, .. } => Some(group.as_str()),
                _ => None,
            })
            .collect();
        for c in &plan.changes {
            match c {
                Change::AddRule { group, .. } if new_groups.contains(&group.as_str()) => {}
                Change::CreateSecurityGroup { group, .. } => {
                    let rules = plan
                        .changes
                        .iter()
                        .filter(|c| matches!(c, Change::AddRule { group: g, .. } if g == group))
                        .count();
                    let pending = plan
                        .sites
                        .iter()
                        .flat_map(|site| &site.security_groups)
                        .filter(|g| &g.name == group)
                        .flat_map(|g| &g.rules)
                        .filter(|r| matches!(r.remote, Remote::PendingPublicIp(_)))
                        .count();
                    let later = if pending > 0 {
                        format!(" (+{pending} once the peers' public IPs exist)")
                    } else {
                        String::new()
                    };
                    let _ = writeln!(s, "  {} with {rules} rules{later}", c.summary());
                }
                _ => {
                    let _ = writeln!(s, "  {}", c.summary());
                }
            }
        }
    }
    s
}
