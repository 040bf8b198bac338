//! The test bed's data plane: servers really boot there (libvirt, QEMU/TCG) and Neutron enforces
//! security groups and port security, as on the clouds our users run. The checks themselves are
//! `testbed/openstack/boot_smoke.py` (Debian's openstacksdk, SSH into the guests, a counter in a
//! router namespace); this test runs it against the bed of `HYBRIDGRID_TESTBED_CLOUDS` and fails
//! with its log when any check fails.

use std::path::Path;
use std::process::Command;

#[test]
fn bed_boots_servers_and_neutron_enforces_rules() {
    let clouds = super::clouds();
    let dir = clouds
        .parent()
        .unwrap_or_else(|| panic!("{} has no parent folder", clouds.display()));
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testbed/openstack/boot_smoke.py");
    let out = Command::new("/usr/bin/python3")
        .arg(&script)
        .arg(dir)
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
    let log =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "boot_smoke.py failed:\n{log}");
    for check in [
        "user data's marker in the console log",
        "read its own uuid from 169.254.169.254",
        "answers ping from the host",
        "UDP 51820 A->B dropped without a rule",
        "UDP 51820 A->B passes with the rule",
        "UDP 51820 A->B dropped again once the rule is deleted",
        "dropped without a pair",
        "passes with the allowed-address pair",
    ] {
        assert!(log.contains(check), "no `{check}` in:\n{log}");
    }
}
