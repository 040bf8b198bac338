//! Benchmark: validate + plan + render a cluster of SITES sites × WORKERS workers.
//! `cargo run --release -p hybridgrid-core --example plan_bench -- 100 100` (see docs/benchmarks.md).
#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::fmt::Write as _;
use std::time::Instant;

use hybridgrid_core::diff::{Observed, ObservedNode};
use hybridgrid_core::keys::PrivateKey;
use hybridgrid_core::{model, render};

fn main() {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<u32>().unwrap());
    let sites = args.next().unwrap_or(100);
    let workers = args.next().unwrap_or(100);
    let mut yaml = String::from(
        "name: bench\nadmin_cidrs: [192.0.2.0/24]\ntunnel:\n  cidr: 172.16.0.0/23\nsites:\n",
    );
    for i in 0..sites {
        let _ = write!(
            yaml,
            "  - name: s{i}\n    subnet: 10.{}.{}.0/24\n{}    workers:\n      - count: {workers}\n",
            i / 256,
            i % 256,
            if i == 0 { "    master: true\n" } else { "" }
        );
    }

    let t0 = Instant::now();
    let (cluster, diags) = model::validate_text(&yaml);
    let cluster = cluster.unwrap_or_else(|| panic!("{}", diags.render("bench")));
    let t_validate = t0.elapsed();

    // Every relay has a key and a public IP, so the plan is complete (the worst case for size).
    let empty = hybridgrid_core::reconcile::plan(&cluster, &Observed::default());
    let mut observed = Observed::default();
    for (i, n) in empty.nodes.iter().filter(|n| n.is_relay()).enumerate() {
        observed.nodes.insert(
            n.name.clone(),
            ObservedNode {
                site: n.site.clone(),
                public_ip: Some(std::net::Ipv4Addr::from(0xC633_6400u32 + i as u32)),
                public_key: Some(PrivateKey::from_seed(&n.name).public_key()),
                applied: None,
                measured: None,
                instance: None,
            },
        );
    }

    let t1 = Instant::now();
    let plan = hybridgrid_core::reconcile::plan(&cluster, &observed);
    let t_plan = t1.elapsed();
    // Files are generated one at a time and counted, as `render` hands each to the writer.
    let t2 = Instant::now();
    let (mut files, mut bytes) = (0usize, 0usize);
    render::render_each(&plan, &mut |_, content| {
        files += 1;
        bytes += content.len();
    });
    let t_render = t2.elapsed();
    println!(
        "sites={sites} workers/site={workers} nodes={} changes={} files={} rendered={:.1} MB",
        plan.nodes.len(),
        plan.changes.len(),
        files,
        bytes as f64 / 1e6
    );
    println!(
        "validate {:.3}s  plan {:.3}s  render {:.3}s  total {:.3}s",
        t_validate.as_secs_f64(),
        t_plan.as_secs_f64(),
        t_render.as_secs_f64(),
        (t_validate + t_plan + t_render).as_secs_f64()
    );
}
