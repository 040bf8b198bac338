"""Smoke test of the stock image `debian-12-generic` and the bed's Debian mirror.

usage: /usr/bin/python3 stock_smoke.py DIR         (the bed up in DIR; exit 0 = every check passed)

One server from `debian-12-generic` (project site-a) on its own network behind a router to `public`,
as hybridgrid makes them (DHCP on, no dns_nameservers). Checks, in order:
  1. the image's Glance properties (os_distro, os_admin_user, hypervisor_type);
  2. SSH as `debian` to its floating IP; none of the node packages is installed, apt's sources are
     Debian's own (signed, no trusted=yes), its lists empty;
  3. DNS: /etc/resolv.conf names the subnet's DHCP server (Neutron's dnsmasq), and
     `getent hosts deb.debian.org` answers 203.0.113.1 (the bed's mirror);
  4. `apt-get update` succeeds with Debian's signatures checked;
  5. with DIR/mirror-hide/wireguard-tools present the mirror lacks that package: installing it
     fails (how a test makes the mirror lack a package);
  6. `apt-get install -y --no-install-recommends munge slurmd slurmctld slurm-client wireguard-tools
     nftables awscli` succeeds (timed) and the programs are there.
Everything made is deleted again, also on failure; the run fails if anything is left.
"""
import base64, os, re, shlex, sys, time
import openstack
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import smokelib
from smokelib import HOST_IP, check, log, wait

DIR = sys.argv[1]
RUN = "ss%d" % (os.getpid() % 100000)
CLOUD, PREFIX = "site-a", "10.63.0"
IMAGE = "debian-12-generic"
NODE_PKGS = "munge slurmd slurmctld slurm-client wireguard-tools nftables awscli"
W, KEY = smokelib.start(DIR, RUN, "osbed-stock.")
HIDE = os.path.join(DIR, "mirror-hide", "wireguard-tools")
c = openstack.connect(cloud=CLOUD)
made = []                                    # (connection, kind, id), deleted in reverse order


def ssh(fip, cmd, timeout=60, attempts=3):
    """Runs cmd on the guest; a session that hangs (a TCG guest on a loaded host) is retried."""
    return smokelib.ssh(KEY, fip, cmd, timeout, attempts, alive_max=6)


def detached(fip, name, cmd, timeout):
    """Runs cmd (as root, non-interactively) in the guest detached from the SSH session, polls for
    its end; returns (exit code, seconds it took in the guest, its output)."""
    script = ("s=$(date +%%s%%N); (DEBIAN_FRONTEND=noninteractive %s) >/tmp/%s.log 2>&1; r=$?; "
              "echo $r $(( ($(date +%%s%%N) - s) / 1000000 )) >/tmp/%s.rc" % (cmd, name, name))
    ssh(fip, "sudo rm -f /tmp/%s.rc; sudo setsid sh -c %s </dev/null >/dev/null 2>&1 &" % (name, shlex.quote(script)))
    rc = wait(name + " in the guest", lambda: (lambda r: r.stdout.strip() if r.returncode == 0 else None)(
        ssh(fip, "cat /tmp/%s.rc 2>/dev/null" % name)), timeout, 5)
    code, ms = rc.split()
    return int(code), "%.1f" % (int(ms) / 1000), ssh(fip, "cat /tmp/%s.log" % name).stdout


def main():
    # 1. the image
    img = c.image.find_image(IMAGE)
    check(img is not None, "image %s exists" % IMAGE)
    props = dict(img.properties or {})
    for k in ("os_distro", "os_admin_user", "hypervisor_type"):
        props.setdefault(k, getattr(img, k, None))
    check(props.get("os_distro") == "debian" and props.get("os_admin_user") == "debian"
          and props.get("hypervisor_type") == "qemu",
          "%s: os_distro=%s os_admin_user=%s hypervisor_type=%s" % (
              IMAGE, props.get("os_distro"), props.get("os_admin_user"), props.get("hypervisor_type")))
    # a network as hybridgrid makes one: DHCP on, no dns_nameservers; a router to `public`
    net, sub = smokelib.network(c, RUN, PREFIX + ".0/24", made)
    check(sub.is_dhcp_enabled and not sub.dns_nameservers, "subnet: DHCP on, no dns_nameservers")
    pub, r, sg, kp = smokelib.access(c, RUN, sub, KEY, made)
    created = time.time()
    server = smokelib.boot(
        c, made, name=RUN + "-vm", image_id=img.id, flavor_id=c.compute.find_flavor("g1.node").id,
        networks=[{"uuid": net.id}], security_groups=[{"name": sg.name}], key_name=kp.name,
        user_data=base64.b64encode(b"#cloud-config\n{}\n").decode())
    log("server %s ACTIVE after %.1fs" % (server.id, time.time() - created))
    port, fip = smokelib.floating_ip(c, server, net, pub, made)
    dhcp = [ip["ip_address"] for p in c.network.ports(network_id=net.id, device_owner="network:dhcp")
            for ip in p.fixed_ips]
    # 2. SSH; what the image holds
    out = wait("SSH to %s" % fip, lambda: (lambda r: r.stdout if r.returncode == 0 else None)(
        ssh(fip, "cloud-init status --wait >/dev/null 2>&1; hostname")), 480, 5)
    check(out.strip().endswith("-vm"), "SSH to %s as debian, cloud-init done %.0fs after create (hostname %s)"
          % (fip, time.time() - created, out.strip()))
    inst = ssh(fip, "for p in %s; do dpkg-query -W -f='${Package} ${Status}\\n' $p 2>/dev/null; done | "
                    "grep ' install ok installed' || true" % (NODE_PKGS + " slurm-wlm-basic-plugins")).stdout.strip()
    check(inst == "", "none of the node packages is installed in the stock image (%s)" % (inst or "none"))
    src = ssh(fip, "cat /etc/apt/sources.list.d/debian.sources; ls /etc/apt/sources.list.d; "
                   "test -e /etc/apt/sources.list && echo HAS-SOURCES-LIST").stdout
    check("URIs: http://deb.debian.org/debian\n" in src and "Suites: bookworm bookworm-updates\n" in src
          and "URIs: http://deb.debian.org/debian-security\n" in src and "trusted" not in src
          and src.count("Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg") == 2
          and src.strip().endswith("debian.sources"),
          "apt sources: Debian's own, signed by Debian's keyring (debian.sources only)")
    weak = ssh(fip, "apt-config dump | grep -iE '(AllowInsecure|AllowWeak|AllowDowngrade|AllowUnauthenticated|"
                    "Check-Valid-Until|Check-Date)[^ ]* \"(1|true|yes)\"'; grep -rsi 'trusted=' /etc/apt; "
                    "ls /var/lib/apt/lists | grep -v -x -e partial -e lock || true").stdout.strip()
    check(weak == "", "no apt setting weakens signature checks; apt lists empty (%s)" % (weak or "nothing"))
    # 3. DNS from DHCP
    rc = ssh(fip, "readlink -f /etc/resolv.conf; grep '^nameserver' /etc/resolv.conf").stdout
    ns = re.findall(r"^nameserver\s+(\S+)", rc, re.M)
    check(ns and set(ns) <= set(dhcp), "/etc/resolv.conf (%s) names the DHCP server %s (Neutron's dnsmasq: %s)"
          % (rc.splitlines()[0], ns, dhcp))
    t = time.time()
    out = ssh(fip, "getent hosts deb.debian.org").stdout.split()
    check(out[:1] == [HOST_IP], "getent hosts deb.debian.org -> %s (%.1fs)" % (out[:1], time.time() - t))
    # 4. apt-get update, signatures checked
    code, secs, out = detached(fip, "update", "apt-get update", 600)
    bad = [l for l in out.splitlines() if re.match(r"^(W|E|Err):", l)]
    check(code == 0 and not bad and "InRelease" in out, "apt-get update in %ss, no warning or error%s" %
          (secs, (": " + "; ".join(bad)) if bad else ""))
    pol = ssh(fip, "apt-cache policy munge awscli").stdout
    check("http://deb.debian.org/debian bookworm/main amd64 Packages" in pol and "Candidate: (none)" not in pol,
          "munge and awscli are candidates from http://deb.debian.org (the mirror's signed indexes)")
    # 5. a package the mirror lacks
    open(HIDE, "w").close()
    try:
        code, secs, out = detached(fip, "hidden", "apt-get install -y --no-install-recommends wireguard-tools", 300)
    finally:
        os.unlink(HIDE)
    check(code != 0 and "404" in out, "with %s present, installing wireguard-tools fails (404)" % HIDE)
    # 6. what a node installs
    code, secs, out = detached(fip, "install", "apt-get install -y --no-install-recommends " + NODE_PKGS, 1800)
    if code != 0:
        log(out[-3000:])
    check(code == 0, "apt-get install -y --no-install-recommends %s: %ss in the guest (TCG)" % (NODE_PKGS, secs))
    bad = [l for l in out.splitlines() if re.match(r"^(W|E|Err):", l)]
    log("install: %d packages; %s" % (out.count("\nSetting up "), "; ".join(bad) or "no W:/E: lines"))
    have = ssh(fip, "sudo sh -c 'for c in munged slurmd slurmctld scontrol wg nft aws; do "
                    "command -v $c || echo MISSING $c; done'").stdout
    check("MISSING" not in have and have.count("/") >= 7, "installed: " + " ".join(have.split()))
    log("nginx access log: %s" % ", ".join("%s %s" % kv for kv in sorted(access_log_summary().items())))


def access_log_summary():
    counts = {}
    try:
        for line in open(os.path.join(DIR, "log", "nginx-access.log")):
            m = re.search(r'"GET (\S+) [^"]*" (\d+)', line)
            if m:
                kind = "by-hash" if "/by-hash/" in m.group(1) else ("deb" if m.group(1).endswith(".deb") else
                                                                   os.path.basename(m.group(1)))
                counts[kind + " " + m.group(2)] = counts.get(kind + " " + m.group(2), 0) + 1
    except OSError:
        pass
    return counts


def teardown():
    if os.path.exists(HIDE):
        os.unlink(HIDE)
    smokelib.cleanup(made)
    return smokelib.leftovers(c, RUN)


smokelib.run("stock_smoke", main, teardown, W)
