//! `doctor --path SRC DST` names the first broken hop of one flow, for each failure the lab can
//! make on a live cluster: a missing route, a missing allowed-address pair, a missing rule, a
//! tunnel MTU above the underlay, a dead tunnel. `up` repairs each before the next.

use hybridgrid_engine::path::PathReport;
use hybridgrid_local::drift;

use super::Lab;
use super::failures::{GIESSEN_GW, GIESSEN_SUBNET};

const SRC: &str = "giessen-worker-1";
const DST: &str = "bielefeld-worker-1";

/// (exit success, the path report).
fn path(lab: &Lab) -> (bool, PathReport) {
    let out = lab.hg(&["doctor", "-f", lab.f(), "--path", SRC, DST, "--json"]);
    let v: PathReport = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "doctor --path: {e}: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.success(), v)
}

/// The first broken hop's name and its fix.
fn broken(lab: &Lab) -> (String, String) {
    let (ok, v) = path(lab);
    assert!(!ok, "doctor --path found nothing: {v:#?}");
    let i = v.first_broken.unwrap_or_else(|| panic!("{v:#?}"));
    let h = &v.hops[i];
    (h.hop.clone(), h.fix.clone().unwrap_or_default())
}

fn repaired(lab: &Lab) {
    let out = lab.up();
    assert!(!out.contains("no changes"), "{out}");
    let (ok, v) = path(lab);
    assert!(ok, "not repaired: {v:#?}");
}

#[test]
fn doctor_path_names_the_first_broken_hop_of_each_failure() {
    let Some(mut lab) = Lab::new("two-sites.yaml", "path") else {
        return;
    };
    // What is broken by hand must stay broken until doctor saw it.
    lab.env.push(("HYBRIDGRID_AGENT_PERIOD", "0".into()));
    lab.up();
    let (ok, v) = path(&lab);
    assert!(ok, "{v:#?}");
    assert!(v.hops.iter().all(|h| h.ok), "{v:#?}");
    let text = lab.hg_ok(&["doctor", "-f", lab.f(), "--path", SRC, DST]);
    assert!(text.contains("every hop works"), "{text}");

    // 1. The worker's route to the other site, deleted.
    lab.exec_ok(SRC, &["ip", "route", "del", "10.10.0.0/24"]);
    let (hop, fix) = broken(&lab);
    assert_eq!(hop, "giessen-worker-1 routes 10.10.0.6 via giessen-gw");
    assert!(fix.contains("hybridgrid up"), "{fix}");
    repaired(&lab);

    // 2. The allowed-address pair for the other site's replies, off giessen-gw's port.
    let (subnet, bielefeld) = (
        GIESSEN_SUBNET.parse().unwrap(),
        "10.10.0.0/24".parse().unwrap(),
    );
    drift::remove_address_pair(&lab.name, "giessen", subnet, GIESSEN_GW, bielefeld).unwrap();
    let (hop, _) = broken(&lab);
    assert_eq!(hop, "giessen-gw's port may send replies from 10.10.0.0/24");
    repaired(&lab);

    // 3. The destination's rule for ICMP from the other site, deleted.
    let removed = drift::remove_rule(&lab.name, DST, |l| {
        l.contains("10.20.0.0/24") && l.contains("icmp")
    })
    .unwrap();
    assert!(removed.is_some(), "no icmp rule from 10.20.0.0/24 on {DST}");
    let (hop, _) = broken(&lab);
    assert_eq!(
        hop,
        "bielefeld-worker-1's security group admits 10.20.0.0/24"
    );
    repaired(&lab);

    // 4. The tunnel's MTU above the underlay.
    lab.exec_ok("giessen-gw", &["ip", "link", "set", "wg0", "mtu", "1500"]);
    let (hop, fix) = broken(&lab);
    assert_eq!(hop, "MTU of the tunnel giessen-gw ↔ bielefeld-master");
    assert!(fix.contains("hybridgrid up"), "{fix}");
    repaired(&lab);

    // 5. A dead tunnel: giessen-gw no longer has bielefeld-master as a peer.
    let key = lab
        .exec_ok("bielefeld-master", &["wg", "show", "wg0", "public-key"])
        .trim()
        .to_owned();
    lab.exec_ok("giessen-gw", &["wg", "set", "wg0", "peer", &key, "remove"]);
    let (hop, _) = broken(&lab);
    assert_eq!(
        hop,
        "tunnel giessen-gw → bielefeld-master (handshake, ping)"
    );
    repaired(&lab);
}
