//! `data`: datasets in their site's object store — `put` (streamed from this machine straight to
//! the dataset's site, in parts), `ls`, `get`, `rm`. The provider says how to reach the site's
//! store (`Provider::stores`); the S3 calls are `hybridgrid_store`'s, the same for every provider.

use std::io::{IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context as _, bail};
use clap::Subcommand;
use hybridgrid_core::plan::{DatasetPlan, Plan};
use hybridgrid_core::store::StoreAccess;
use hybridgrid_engine::Command as Cmd;
use hybridgrid_store::Store;

use crate::settings::Settings;
use crate::status_text::bytes;

#[derive(Debug, Subcommand)]
pub enum DataCommand {
    /// Upload files into a dataset: `data put -f FILE DATASET PATH...` (a folder recursively;
    /// each file under the dataset's prefix by its name).
    Put {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        dataset: String,
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// List a dataset's objects: name (under the dataset's prefix) and size.
    Ls {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        dataset: String,
    },
    /// Download objects of a dataset into a folder (default: the current one).
    Get {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        dataset: String,
        #[arg(required = true)]
        names: Vec<String>,
        #[arg(short = 'o', long = "output", default_value = ".")]
        output: PathBuf,
    },
    /// Delete objects of a dataset.
    Rm {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        dataset: String,
        #[arg(required = true)]
        names: Vec<String>,
    },
}

/// One dataset in its site's store: the bucket, the prefix, how to reach the store.
struct Target {
    bucket: String,
    prefix: String,
    site: String,
    access: StoreAccess,
}

impl Target {
    fn open(file: &Path, dataset: &str, settings: &Settings) -> anyhow::Result<Option<Target>> {
        let Some((cluster, provider)) =
            crate::open(file, settings, crate::providers::Knobs::default())?
        else {
            return Ok(None);
        };
        crate::require(provider.as_ref(), Cmd::Data, "")?;
        let plan = hybridgrid_engine::plan(provider.as_ref(), &cluster)?;
        let d = dataset_of(&plan, dataset)?;
        let (bucket, prefix) = match &d.source {
            hybridgrid_core::model::DataSource::Store { bucket, prefix } => (bucket, prefix),
            hybridgrid_core::model::DataSource::Location { location } => bail!(
                "dataset {dataset} is outside the stores ({location}); `data` works on datasets \
                 with a `bucket`"
            ),
        };
        let stores = provider.stores().context("the provider reaches no store")?;
        let access = stores.access(&plan, &d.site)?.with_context(|| {
            format!(
                "site {} has no object store for the cluster yet: run `hybridgrid up -f {}`",
                d.site,
                file.display()
            )
        })?;
        Ok(Some(Target {
            bucket: bucket.clone(),
            prefix: prefix.clone(),
            site: d.site.clone(),
            access,
        }))
    }

    fn key(&self, name: &str) -> String {
        format!("{}{}", self.prefix, name.trim_start_matches('/'))
    }
}

fn dataset_of<'p>(plan: &'p Plan, name: &str) -> anyhow::Result<&'p DatasetPlan> {
    plan.datasets
        .iter()
        .find(|d| d.name == name)
        .with_context(|| {
            let known: Vec<&str> = plan.datasets.iter().map(|d| d.name.as_str()).collect();
            format!(
                "unknown dataset `{name}`; the cluster file defines: {}",
                if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                }
            )
        })
}

pub fn run(cmd: DataCommand, settings: &Settings) -> anyhow::Result<ExitCode> {
    let (file, dataset) = match &cmd {
        DataCommand::Put { file, dataset, .. }
        | DataCommand::Ls { file, dataset }
        | DataCommand::Get { file, dataset, .. }
        | DataCommand::Rm { file, dataset, .. } => (file, dataset),
    };
    let Some(target) = Target::open(file, dataset, settings)? else {
        return Ok(ExitCode::FAILURE);
    };
    match cmd {
        DataCommand::Put { paths, .. } => put(&target, &paths),
        DataCommand::Ls { .. } => ls(&target),
        DataCommand::Get { names, output, .. } => get(&target, &names, &output),
        DataCommand::Rm { names, .. } => rm(&target, &names),
    }?;
    Ok(ExitCode::SUCCESS)
}

/// Each file to upload with its name under the dataset's prefix: a file by its base name, a
/// folder as its name and every file below it.
fn files_to_put(paths: &[PathBuf]) -> anyhow::Result<Vec<(PathBuf, String)>> {
    let mut out = Vec::new();
    for path in paths {
        let meta = std::fs::metadata(path).with_context(|| format!("{}", path.display()))?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .with_context(|| format!("{} names no file or folder", path.display()))?;
        if meta.is_dir() {
            walk(path, &name, &mut out)?;
        } else {
            out.push((path.clone(), name));
        }
    }
    Ok(out)
}

fn walk(dir: &Path, name: &str, out: &mut Vec<(PathBuf, String)>) -> anyhow::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("{}", dir.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("{}", dir.display()))?;
    entries.sort_by_key(std::fs::DirEntry::file_name);
    for e in entries {
        let path = e.path();
        let child = format!("{name}/{}", e.file_name().to_string_lossy());
        if path.is_dir() {
            walk(&path, &child, out)?;
        } else {
            out.push((path, child));
        }
    }
    Ok(())
}

/// A progress line on standard error when it is a terminal: `name  12.0 MiB / 64.0 MiB`.
fn progress_line(name: &str, total: u64) -> impl FnMut(u64) {
    let live = std::io::stderr().is_terminal();
    let name = name.to_owned();
    move |done| {
        if live {
            eprint!("\r{name}  {} / {}\x1b[K", bytes(done), bytes(total));
            let _ = std::io::stderr().flush();
        }
    }
}

fn end_progress_line() {
    if std::io::stderr().is_terminal() {
        eprint!("\r\x1b[K");
    }
}

fn rate(n: u64, started: Instant) -> String {
    let s = started.elapsed().as_secs_f64().max(1e-3);
    format!("{:.1} s, {:.0} MB/s", s, n as f64 / s / 1e6)
}

fn put(t: &Target, paths: &[PathBuf]) -> anyhow::Result<()> {
    let files = files_to_put(paths)?;
    hybridgrid_store::open(&t.access, |store: &Store<'_>| {
        for (path, name) in &files {
            let key = t.key(name);
            let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
            let started = Instant::now();
            let mut progress = progress_line(name, size);
            let sent = store.put_file(&t.bucket, &key, path, &mut progress)?;
            end_progress_line();
            println!(
                "put {name} ({}) into s3://{}/{key} at {} ({})",
                bytes(sent),
                t.bucket,
                t.site,
                rate(sent, started)
            );
        }
        Ok(())
    })?;
    Ok(())
}

fn ls(t: &Target) -> anyhow::Result<()> {
    let objects = hybridgrid_store::open(&t.access, |store| store.list(&t.bucket, &t.prefix))?;
    let mut total = 0;
    for o in &objects {
        total += o.size;
        let name = o.key.strip_prefix(&t.prefix).unwrap_or(&o.key);
        println!("{:>12}  {name}", o.size);
    }
    println!(
        "{} object(s), {} in s3://{}/{} at {}",
        objects.len(),
        bytes(total),
        t.bucket,
        t.prefix,
        t.site
    );
    Ok(())
}

fn get(t: &Target, names: &[String], output: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(output).with_context(|| format!("{}", output.display()))?;
    hybridgrid_store::open(&t.access, |store| {
        for name in names {
            let dest = output.join(name.trim_start_matches('/'));
            let partial = dest.with_extension("part");
            let started = Instant::now();
            let io = |e| hybridgrid_store::StoreError::Io {
                path: partial.display().to_string(),
                source: e,
            };
            if let Some(dir) = dest.parent() {
                std::fs::create_dir_all(dir).map_err(io)?;
            }
            let mut out = std::fs::File::create(&partial).map_err(io)?;
            let mut progress = progress_line(name, 0);
            let n = store.get_to(&t.bucket, &t.key(name), &mut out, &partial, &mut progress)?;
            end_progress_line();
            std::fs::rename(&partial, &dest).map_err(io)?;
            println!(
                "got {name} ({}) into {} ({})",
                bytes(n),
                dest.display(),
                rate(n, started)
            );
        }
        Ok(())
    })?;
    Ok(())
}

fn rm(t: &Target, names: &[String]) -> anyhow::Result<()> {
    hybridgrid_store::open(&t.access, |store| {
        for name in names {
            store.delete(&t.bucket, &t.key(name))?;
            println!("removed {name} from s3://{}/{}", t.bucket, t.prefix);
        }
        Ok(())
    })?;
    Ok(())
}
