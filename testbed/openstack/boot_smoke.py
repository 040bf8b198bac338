"""Smoke test of the bed's data plane: servers that really boot, and Neutron enforcing the rules.

usage: /usr/bin/python3 boot_smoke.py DIR         (the bed up in DIR; exit 0 = every check passed)

Two servers from the bed's image `hybridgrid-node` in two projects (site-a, site-b), each on its own
network behind its own router. Checks, in order:
  1. each server's user data writes a marker, read back through Nova's console-log API;
  2. each guest reaches the metadata service (it prints the uuid it read there; must be its own);
  3. each guest's floating IP answers from the host (ping, then SSH with the keypair);
  4. UDP 51820 from A's floating IP to B's passes only while B's security group has the rule;
  5. a packet from a foreign source address through A's port is dropped without an
     allowed-address pair and passes with one (counted in A's router namespace).
Everything made is deleted again, also on failure; the run fails if anything is left.
"""
import json, os, subprocess, sys, threading, time
import openstack
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import smokelib
from smokelib import Fail, check, log, wait

DIR = sys.argv[1]
RUN = "bs%d" % (os.getpid() % 100000)        # names of this run's objects
SITES = (("site-a", "10.61.0"), ("site-b", "10.62.0"))
W, KEY = smokelib.start(DIR, RUN, "osbed-smoke.")
made = []                                    # (connection, kind, id), deleted in reverse order


def ssh(fip, cmd, timeout=45, attempts=3):
    """Runs cmd on the guest. A guest under TCG on a loaded host can stall an SSH session for
    tens of seconds: a session that hangs is retried (every command here may run twice)."""
    return smokelib.ssh(KEY, fip, cmd, timeout, attempts, alive_max=4)


class Site:
    def __init__(self, cloud, prefix):
        self.cloud, self.prefix, self.c = cloud, prefix, openstack.connect(cloud=cloud)
        self.marker = "HG-SMOKE-%s-%s" % (RUN, cloud)

    def build(self):
        c, p = self.c, "%s-%s" % (RUN, self.cloud)
        net, sub = smokelib.network(c, p, self.prefix + ".0/24", made)
        pub, r, sg, kp = smokelib.access(c, p, sub, KEY, made)
        self.router, self.sg, self.net = r, sg, net
        user_data = (
            "#cloud-config\nruncmd:\n"
            " - echo %s > /dev/console\n"
            " - echo HG-META-$(curl -sf http://169.254.169.254/openstack/latest/meta_data.json"
            " | python3 -c 'import json,sys; print(json.load(sys.stdin)[\"uuid\"])') > /dev/console\n"
        ) % self.marker
        self.created = time.time()
        self.server = smokelib.boot(
            c, made, name=p + "-vm", image_id=c.image.find_image("hybridgrid-node").id,
            flavor_id=c.compute.find_flavor("g1.node").id, networks=[{"uuid": net.id}],
            security_groups=[{"name": sg.name}], key_name=kp.name,
            user_data=__import__("base64").b64encode(user_data.encode()).decode())
        self.active = time.time() - self.created
        self.port, self.fip = smokelib.floating_ip(c, self.server, net, pub, made)
        self.fixed = self.port.fixed_ips[0]["ip_address"]

    def console(self):
        return self.c.compute.get_server_console_output(self.server)["output"]


def udp_probe(a, b, sport, tag):
    """Send 3 datagrams from A (source port sport) to B's floating IP; True if B received them."""
    ssh(a.fip, "for i in 1 2 3; do python3 -c 'import socket,sys; s=socket.socket(socket.AF_INET,"
            "socket.SOCK_DGRAM); s.bind((\"\", %d)); s.sendto(b\"%s\", (\"%s\", 51820))'; sleep 0.3; done"
            % (sport, tag, b.fip))
    time.sleep(1.5)
    return tag in ssh(b.fip, "cat /tmp/udp51820.log").stdout


def router_counter(site, src):
    """Packets from src seen arriving in the site router's namespace (its own nft table)."""
    ns = "qrouter-" + site.router.id
    out = subprocess.run(["ip", "netns", "exec", ns, "nft", "-j", "list", "table", "ip", "hgsmoke"],
                         capture_output=True, text=True).stdout
    for item in json.loads(out or '{"nftables": []}')["nftables"]:
        for e in item.get("rule", {}).get("expr", []):
            if "counter" in e:
                return e["counter"]["packets"]
    return None


def main():
    sites = [Site(cloud, prefix) for cloud, prefix in SITES]
    errors = []

    def build(s):
        try:
            s.build()
        except Exception as e:
            errors.append("%s: %s" % (s.cloud, e))
    threads = [threading.Thread(target=build, args=(s,)) for s in sites]
    [t.start() for t in threads]
    [t.join() for t in threads]
    if errors:
        raise Fail("; ".join(errors))
    a, b = sites
    for s in sites:
        log("%s: server %s ACTIVE after %.1fs, fixed %s, floating %s" % (s.cloud, s.server.id, s.active, s.fixed, s.fip))
    # 1 + 2: user data ran (marker), the guest read its own uuid from the metadata service
    for s in sites:
        out = wait("marker of %s in the console log" % s.cloud,
                   lambda: (lambda o: o if ("HG-META-" in o and s.marker in o) else None)(s.console()), 420, 3)
        s.cloud_init = time.time() - s.created
        check(s.marker in out, "%s: user data's marker in the console log (%.0fs after create)" % (s.cloud, s.cloud_init))
        check("HG-META-" + s.server.id in out, "%s: the guest read its own uuid from 169.254.169.254" % s.cloud)
    # 3: floating IPs answer from the host
    for s in sites:
        ok = subprocess.run(["ping", "-c", "3", "-W", "2", s.fip], capture_output=True).returncode == 0
        check(ok, "%s: floating IP %s answers ping from the host" % (s.cloud, s.fip))
        out = wait("SSH to %s" % s.fip, lambda: (lambda r: r.stdout if r.returncode == 0 else None)(
            ssh(s.fip, "hostname")), 60, 2)
        check(out.strip().endswith("-vm"), "%s: SSH to %s as debian (hostname %s)" % (s.cloud, s.fip, out.strip()))
    # 4: UDP 51820 A -> B only while B's security group has the rule
    r = ssh(b.fip, "setsid nohup python3 -c 'import socket; s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);"
                   " s.bind((\"\", 51820))\nwhile True: d,a=s.recvfrom(100); open(\"/tmp/udp51820.log\",\"a\")"
                   ".write(d.decode()+\" \"+a[0]+\"\\n\")' >/dev/null 2>&1 </dev/null & sleep 0.5; touch /tmp/udp51820.log")
    check(r.returncode == 0, "site-b: UDP listener on 51820 started")
    check(not udp_probe(a, b, 40001, "no-rule-1"), "UDP 51820 A->B dropped without a rule")
    rule = b.c.network.create_security_group_rule(
        security_group_id=b.sg.id, direction="ingress", ethertype="IPv4", protocol="udp",
        port_range_min=51820, port_range_max=51820, remote_ip_prefix=a.fip + "/32")
    check(wait("UDP with the rule", lambda: udp_probe(a, b, 40002, "with-rule-2"), 30, 1),
          "UDP 51820 A->B passes with the rule (from %s/32)" % a.fip)
    got = ssh(b.fip, "cat /tmp/udp51820.log").stdout
    check(a.fip in got, "site-b saw the datagrams from A's floating IP %s" % a.fip)
    b.c.network.delete_security_group_rule(rule)
    time.sleep(3)   # the agent applies the removal
    check(not udp_probe(a, b, 40003, "rule-gone-3"), "UDP 51820 A->B dropped again once the rule is deleted")
    # 5: foreign source address through A's port: dropped without an allowed-address pair
    spoof = a.prefix + ".200"
    ns = "qrouter-" + a.router.id
    nft = ("table ip hgsmoke { chain pre { type filter hook prerouting priority -400; "
           "ip saddr %s udp dport 9 counter; }; }" % spoof)
    subprocess.run(["ip", "netns", "exec", ns, "nft", nft], check=True)
    ssh(a.fip, "sudo ip addr add %s/32 dev $(ip -o route get %s.1 | sed 's/.* dev \\([^ ]*\\).*/\\1/')"
               % (spoof, a.prefix))

    def spoofed():
        ssh(a.fip, "ping -c1 -W1 %s.1 >/dev/null; for i in 1 2 3; do python3 -c 'import socket; "
                   "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); s.bind((\"%s\", 0)); "
                   "s.sendto(b\"x\", (\"%s.1\", 9))'; sleep 0.2; done" % (a.prefix, spoof, a.prefix))
        time.sleep(1)
        return router_counter(a, spoof)
    check(spoofed() == 0, "from %s (not A's address) through A's port: dropped without a pair" % spoof)
    a.c.network.update_port(a.port, allowed_address_pairs=[{"ip_address": spoof + "/32"}])
    check(wait("spoofed packets with the pair", lambda: (spoofed() or 0) > 0, 30, 1),
          "from %s through A's port: passes with the allowed-address pair" % spoof)
    for s in sites:
        log("%s: create -> ACTIVE %.1fs, create -> cloud-init done (marker) %.0fs" % (s.cloud, s.active, s.cloud_init))


def teardown():
    smokelib.cleanup(made)
    return [name for cloud, _ in SITES for name in smokelib.leftovers(openstack.connect(cloud=cloud), RUN)]


smokelib.run("boot_smoke", main, teardown, W)
