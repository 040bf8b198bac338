//! `hybridgrid doctor`: what is wrong with a running cluster, in plain words, with the fix.

use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;

use hybridgrid_engine::doctor::DoctorReport;

use crate::providers::Knobs;
use crate::settings::Settings;

/// Exit 0 when healthy, 1 when there are findings.
pub fn run(file: &Path, json: bool, settings: &Settings) -> anyhow::Result<ExitCode> {
    let Some((cluster, provider)) = crate::open(file, settings, Knobs::default())? else {
        return Ok(ExitCode::FAILURE);
    };
    let report = hybridgrid_engine::doctor(provider.as_ref(), &cluster)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", text(&report));
    }
    Ok(if report.healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `doctor --path SRC DST`: exit 0 when the flow works end to end, 1 otherwise.
pub fn path(
    file: &Path,
    src: &str,
    dst: &str,
    json: bool,
    settings: &Settings,
) -> anyhow::Result<ExitCode> {
    let Some((cluster, provider)) = crate::open(file, settings, Knobs::default())? else {
        return Ok(ExitCode::FAILURE);
    };
    let r = hybridgrid_engine::doctor_path(provider.as_ref(), &cluster, src, dst)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        let mut s = format!(
            "{} → {}:
",
            r.src, r.dst
        );
        for (i, h) in r.hops.iter().enumerate() {
            let mark = if h.ok { "ok  " } else { "FAIL" };
            let _ = writeln!(
                s,
                "  {mark} {:2}. {}{}",
                i + 1,
                h.hop,
                if h.detail.is_empty() {
                    String::new()
                } else {
                    format!(": {}", h.detail)
                }
            );
        }
        match r.first_broken {
            Some(i) => {
                let h = &r.hops[i];
                let _ = writeln!(
                    s,
                    "first broken hop: {}. {}
  fix: {}",
                    i + 1,
                    h.hop,
                    h.fix.as_deref().unwrap_or("-")
                );
            }
            None => s.push_str("every hop works\n"),
        }
        print!("{s}");
    }
    Ok(if r.first_broken.is_none() && r.reachable {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn text(r: &DoctorReport) -> String {
    let mut s = String::new();
    let f = &r.facts;
    let _ = writeln!(
        s,
        "cluster {}: checked {} nodes, {} tunnels (handshake, ping, don't-fragment ping), {} \
         cross-site paths, security groups, allowed-address pairs and MTUs",
        r.cluster,
        f.nodes.len(),
        f.tunnels.len(),
        f.cross_site.len()
    );
    if r.findings.is_empty() {
        s.push_str("no problems found\n");
        return s;
    }
    for (i, x) in r.findings.iter().enumerate() {
        let _ = writeln!(s, "{}. {}.\n   {}", i + 1, x.message, x.fix);
    }
    let _ = writeln!(s, "{} problem(s) found", r.findings.len());
    s
}
