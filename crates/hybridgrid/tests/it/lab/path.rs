//! `doctor --path SRC DST` names the first broken hop of one flow, for each failure the lab can
//! make on a live cluster: a missing route, a missing allowed-address pair, a missing rule, a
//! tunnel MTU above the underlay, a dead tunnel. `up` repairs each before the next.

use serde_json::Value;

use super::Lab;
use super::failures::nft;

const SRC: &str = "giessen-worker-1";
const DST: &str = "bielefeld-worker-1";

/// (exit success, the path report).
fn path(lab: &Lab) -> (bool, Value) {
    let out = lab.hg(&["doctor", "-f", lab.f(), "--path", SRC, DST, "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
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
    assert!(!ok, "doctor --path found nothing: {v:#}");
    let i = v["first_broken"]
        .as_u64()
        .unwrap_or_else(|| panic!("{v:#}")) as usize;
    let h = &v["hops"][i];
    (
        h["hop"].as_str().unwrap().to_owned(),
        h["fix"].as_str().unwrap_or_default().to_owned(),
    )
}

fn repaired(lab: &Lab) {
    let out = lab.up();
    assert!(!out.contains("no changes"), "{out}");
    let (ok, v) = path(lab);
    assert!(ok, "not repaired: {v:#}");
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
    assert!(ok, "{v:#}");
    assert!(
        v["hops"]
            .as_array()
            .unwrap()
            .iter()
            .all(|h| h["ok"] == true),
        "{v:#}"
    );
    let text = lab.hg_ok(&["doctor", "-f", lab.f(), "--path", SRC, DST]);
    assert!(text.contains("every hop works"), "{text}");

    // 1. The worker's route to the other site, deleted.
    lab.exec_ok(SRC, &["ip", "route", "del", "10.10.0.0/24"]);
    let (hop, fix) = broken(&lab);
    assert_eq!(hop, "giessen-worker-1 routes 10.10.0.6 via giessen-gw");
    assert!(fix.contains("hybridgrid up"), "{fix}");
    repaired(&lab);

    // 2. The allowed-address pair for the other site's replies, off giessen-gw's port.
    let sw = format!("{}giessen-sw", lab.prefix());
    nft(
        &sw,
        &[
            "delete",
            "element",
            "bridge",
            "hg_portsec",
            "aap_p_5",
            "{ 10.10.0.0/24 }",
        ],
    );
    let (hop, _) = broken(&lab);
    assert_eq!(hop, "giessen-gw's port may send replies from 10.10.0.0/24");
    repaired(&lab);

    // 3. The destination's rule for ICMP from the other site, deleted.
    let ns = format!("{}{DST}", lab.prefix());
    let rules = nft(&ns, &["-a", "list", "chain", "inet", "hg_sg", "rules"]);
    let handle = rules
        .lines()
        .find(|l| l.contains("10.20.0.0/24") && l.contains("icmp"))
        .and_then(|l| l.rsplit("# handle ").next())
        .unwrap_or_else(|| panic!("no icmp rule from 10.20.0.0/24 in:\n{rules}"))
        .trim()
        .to_owned();
    nft(
        &ns,
        &[
            "delete", "rule", "inet", "hg_sg", "rules", "handle", &handle,
        ],
    );
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
