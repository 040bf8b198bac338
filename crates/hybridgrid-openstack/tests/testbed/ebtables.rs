//! The bed's `ebtables` wrapper (`testbed/openstack/ebtables-pad.sh`), which Neutron's
//! linuxbridge agent calls, against the real ebtables-nft in a network namespace of its own
//! (`unshare -n`: nothing of it outlives the test). No bed needed.

use std::path::Path;
use std::process::Command;

/// Regression: a port whose MAC has an octet with a leading zero (`fa:16:3e:01:c6:bd`) could not
/// lose its MAC rule when its allowed-address pairs changed. ebtables-nft lists the MAC as
/// `fa:16:3e:1:c6:bd`, deletes by match fail, and the wrapper's delete by number compared the
/// padded rule with that listing: the linuxbridge agent retried forever and wired no port after
/// it (the openstack end-to-end test's third gateway: "Failed to allocate the network(s)").
#[test]
fn regression_a_mac_rule_with_a_zero_octet_is_deleted_as_the_linuxbridge_agent_asks() {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout == b"0\n");
    let tools = Path::new("/usr/sbin/ebtables").exists();
    if !(root && tools) {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "needs root and ebtables (testbed/openstack/install.sh); under CI=true it must run"
        );
        eprintln!("skipped: needs root and ebtables (testbed/openstack/install.sh)");
        return;
    }
    let wrapper =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testbed/openstack/ebtables-pad.sh");
    // As the agent does: add with the port's MAC, delete with the MAC as ebtables listed it.
    let script = r#"
        set -e
        W=$1
        ebtables -t nat -N neutronMAC-tapt -P DROP
        for mac in fa:16:3e:01:c6:bd fa:16:3e:11:06:00; do
          "$W" -t nat --concurrent -A neutronMAC-tapt -i tapt --among-src "$mac" -j RETURN
        done
        "$W" -t nat --concurrent -D neutronMAC-tapt -i tapt --among-src fa:16:3e:1:c6:bd -j RETURN
        echo "after one delete: $(ebtables -t nat -L neutronMAC-tapt | grep -c -- --among-src)"
        "$W" -t nat --concurrent -D neutronMAC-tapt -i tapt --among-src fa:16:3e:11:06:00 -j RETURN
        echo "after both: $(ebtables -t nat -L neutronMAC-tapt | grep -c -- --among-src || true)"
    "#;
    let out = Command::new("unshare")
        .args(["-n", "bash", "-c", script, "bash"])
        .arg(&wrapper)
        .output()
        .unwrap_or_else(|e| panic!("unshare: {e}"));
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("after one delete: 1") && text.contains("after both: 0"),
        "{text}"
    );
}
