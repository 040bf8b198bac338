//! The emulated WAN (`wan:`): latency, loss and a bandwidth cap between local sites, and a
//! cluster that still works under them.

use std::time::{Duration, Instant};

use super::{Lab, wait_until};

/// `ping -c N` from `node` to `ip`: (answers, average round trip in ms).
fn ping(lab: &Lab, node: &str, ip: &str, count: u32) -> (u32, f64) {
    let out = lab.exec(
        node,
        &[
            "ping",
            "-n",
            "-q",
            "-c",
            &count.to_string(),
            "-i",
            "0.2",
            "-W",
            "2",
            ip,
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let received = text
        .split(',')
        .find_map(|p| p.trim().strip_suffix(" received")?.parse().ok())
        .unwrap_or(0);
    let avg = text
        .split_once(" = ")
        .and_then(|(_, v)| v.split('/').nth(1)?.parse().ok())
        .unwrap_or(0.0);
    (received, avg)
}

/// The file with the cluster-wide `wan:` block replaced.
fn with_wan(lab: &Lab, block: &str) {
    let text = std::fs::read_to_string(&lab.file).unwrap();
    let mut out = String::new();
    let mut skipping = false;
    for l in text.lines() {
        if l.starts_with("wan:") {
            out.push_str(block);
            skipping = true;
            continue;
        }
        if skipping && l.starts_with("  ") {
            continue;
        }
        skipping = false;
        out.push_str(l);
        out.push('\n');
    }
    std::fs::write(&lab.file, out).unwrap();
}

#[test]
fn with_100ms_and_5_percent_loss_every_pair_reaches_every_pair_and_20_jobs_complete() {
    let Some(lab) = Lab::new("two-sites-wan.yaml", "wan") else {
        return;
    };
    with_wan(&lab, "wan:\n  latency: 100ms\n  loss: 5%\n");
    // Giessen's own `bandwidth: 20mbit` stays: the site's keys replace the cluster's.
    let plan = lab.hg_ok(&["plan", "-f", lab.f()]);
    assert!(
        plan.contains(
            "~ giessen: WAN conditions on what leaves giessen: 100 ms, 5 % loss, 20 Mbit/s"
        ),
        "{plan}"
    );
    let t = Instant::now();
    lab.up();
    eprintln!("up over the WAN: {:.1}s", t.elapsed().as_secs_f64());

    // Between sites: each way meets its sender's 100 ms; within a site nothing.
    let (got, rtt) = ping(&lab, "bielefeld-worker-1", "10.20.0.6", 20);
    assert!(
        got >= 12,
        "{got} of 20 answered across sites at 5 % loss each way"
    );
    assert!(
        (195.0..300.0).contains(&rtt),
        "cross-site round trip {rtt} ms"
    );
    let (got, rtt) = ping(&lab, "giessen-worker-1", "10.20.0.5", 10);
    assert_eq!(got, 10, "within giessen");
    assert!(rtt < 20.0, "within a site {rtt} ms");

    // Every pair reachable (a few pings each: single ones get lost), handshakes recent.
    let s = lab.status(false);
    let nodes: Vec<(String, String)> = s
        .nodes
        .iter()
        .map(|n| (n.name.clone(), n.lan_ip.to_string()))
        .collect();
    for (a, _) in &nodes {
        for (b, ip) in nodes.iter().filter(|(b, _)| b != a) {
            assert!(ping(&lab, a, ip, 5).0 > 0, "{a} does not reach {b}");
        }
    }
    for t in &s.tunnels {
        assert!(
            t.handshake_age_s.is_some_and(|a| a < 180),
            "no recent handshake: {t:?}"
        );
    }

    // 20 jobs across both sites complete.
    let job = lab.root.join("job.sh");
    std::fs::write(&job, "#!/bin/sh\nhostname\n").unwrap();
    let mut ids = Vec::new();
    for i in 0..20 {
        let site = if i % 2 == 0 { "bielefeld" } else { "giessen" };
        let out = lab.hg_ok(&[
            "submit",
            "-f",
            lab.f(),
            "--partition",
            site,
            "--parsable",
            "--",
            job.to_str().unwrap(),
        ]);
        ids.push(out.lines().next().unwrap().trim().to_owned());
    }
    wait_until("20 jobs completed", Duration::from_secs(240), || {
        let doc: serde_json::Value =
            serde_json::from_str(&lab.hg_ok(&["jobs", "-f", lab.f(), "--json"])).unwrap();
        let jobs = doc["jobs"].as_array().unwrap();
        ids.iter().all(|id| {
            jobs.iter().any(|j| {
                j["id"].as_u64().map(|v| v.to_string()).as_deref() == Some(id.as_str())
                    && j["state"] == "COMPLETED"
            })
        })
    });

    // Changed in the file, changed on the link without rebuilding anything else; a killed
    // link is a change `up` makes again.
    with_wan(&lab, "wan:\n  latency: 10ms\n");
    let out = lab.hg_ok(&["up", "-f", lab.f(), "--json"]);
    let changes = out.matches("\"set_wan\"").count();
    assert_eq!(changes, 2, "{out}");
    let (_, rtt) = ping(&lab, "bielefeld-worker-1", "10.20.0.6", 5);
    assert!((19.0..60.0).contains(&rtt), "after the change {rtt} ms");
    let _ = std::process::Command::new("pkill")
        .args(["-KILL", "-f", &format!("wan-link --cluster {} ", lab.name)])
        .status();
    let plan = lab.hg_ok(&["plan", "-f", lab.f()]);
    assert!(
        plan.contains("WAN conditions on what leaves bielefeld: 10 ms"),
        "{plan}"
    );
    lab.up();
    assert!(ping(&lab, "bielefeld-worker-1", "10.20.0.6", 5).0 > 0);
    lab.hg_ok(&["down", "-f", lab.f()]);
    lab.assert_gone();
}
