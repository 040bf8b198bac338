//! `validate`: the cluster file's diagnostics (and, `--online`, what the clouds lack), as
//! messages or as one JSON document.

use std::path::Path;
use std::process::ExitCode;

use hybridgrid_core::model::{self, Cluster, LoadError, Provider as Kind};

use crate::providers;
use crate::settings::Settings;

pub fn validate(file: &Path, online: bool, settings: &Settings) -> anyhow::Result<ExitCode> {
    let Some(cluster) = crate::load(file)? else {
        return Ok(ExitCode::FAILURE);
    };
    let online = online && cluster.provider == Kind::OpenStack;
    if online {
        let os = providers::openstack_of(&cluster, settings)?;
        let plan = hybridgrid_engine::plan(&os, &cluster)?;
        let (warnings, problems): (Vec<_>, Vec<_>) = os
            .validate_online_blocking(&plan)?
            .into_iter()
            .partition(|p| p.warning);
        for p in &warnings {
            eprintln!("{}: warning: {p}", file.display());
        }
        for p in &problems {
            eprintln!("{}: error: {p}", file.display());
        }
        if !problems.is_empty() {
            eprintln!(
                "{}: {} problem(s) in the clouds; nothing was created",
                file.display(),
                problems.len()
            );
            return Ok(ExitCode::FAILURE);
        }
    }
    let nodes = cluster.node_count();
    println!(
        "{}: ok — cluster {}, {} sites, {nodes} nodes{}",
        file.display(),
        cluster.name,
        cluster.sites.len(),
        if online {
            "; the clouds have room for it"
        } else {
            ""
        }
    );
    Ok(ExitCode::SUCCESS)
}

/// `validate --json`: every diagnostic (and, `--online`, every problem in the clouds) as one
/// document on standard output; exit 1 when there are errors.
pub fn validate_json(file: &Path, online: bool, settings: &Settings) -> anyhow::Result<ExitCode> {
    use hybridgrid_core::diag::{Diagnostics, Severity};
    let diag_json = |d: &Diagnostics| -> Vec<serde_json::Value> {
        d.0.iter()
            .map(|d| {
                serde_json::json!({
                    "severity": if d.severity == Severity::Error { "error" } else { "warning" },
                    "line": d.pos.line,
                    "column": d.pos.column,
                    "key": d.path,
                    "message": d.message,
                    "help": d.help,
                })
            })
            .collect()
    };
    let (cluster, diagnostics) = match model::load(file) {
        Ok(loaded) => (Some(loaded.cluster), diag_json(&loaded.warnings)),
        Err(LoadError::Invalid { diagnostics, .. }) => (None, diag_json(&diagnostics)),
        Err(e) => return Err(e.into()),
    };
    let mut cloud_problems = Vec::new();
    let mut cloud_warnings = Vec::new();
    if let Some(c) = cluster
        .as_ref()
        .filter(|c| online && c.provider == Kind::OpenStack)
    {
        let os = providers::openstack_of(c, settings)?;
        let plan = hybridgrid_engine::plan(&os, c)?;
        for p in os.validate_online_blocking(&plan)? {
            match p.warning {
                true => cloud_warnings.push(p.to_string()),
                false => cloud_problems.push(p.to_string()),
            }
        }
    }
    let ok = cluster.is_some() && cloud_problems.is_empty();
    let doc = serde_json::json!({
        "format_version": 1,
        "file": file.display().to_string(),
        "ok": ok,
        "cluster": cluster.as_ref().map(|c| c.name.clone()),
        "sites": cluster.as_ref().map(|c| c.sites.len()),
        "nodes": cluster.as_ref().map(Cluster::node_count),
        "diagnostics": diagnostics,
        "cloud_problems": cloud_problems,
        "cloud_warnings": cloud_warnings,
    });
    println!("{}", serde_json::to_string_pretty(&doc)?);
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
