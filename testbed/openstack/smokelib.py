"""What boot_smoke.py and stock_smoke.py share: the run's set-up and teardown, logging, checks,
SSH into a guest, polling, and the objects a booting server needs (network, router, security
group, keypair, floating IP). Each object made is recorded as (connection, kind, id) in the
script's list `made`, which cleanup() deletes in reverse order.
"""
import os, subprocess, sys, tempfile, time
import openstack

HOST_IP = "203.0.113.1"                      # the host on the external bridge osbed-ext
T0 = time.time()                             # log's clock; start() resets it


def start(bed, run, tmp_prefix):
    """Starts the clock, points the SDK at bed/clouds.yaml (bed: the DIR the bed is up in), makes a
    scratch folder (prefix tmp_prefix) and an SSH key (comment run) in it; returns (folder, key path)."""
    global T0
    T0 = time.time()
    os.environ["OS_CLIENT_CONFIG_FILE"] = os.path.join(bed, "clouds.yaml")
    work = tempfile.mkdtemp(prefix=tmp_prefix)
    key = os.path.join(work, "id")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", run, "-f", key], check=True)
    return work, key


def log(msg):
    print("[%6.1fs] %s" % (time.time() - T0, msg), flush=True)


class Fail(Exception):
    pass


def check(cond, what):
    if not cond:
        raise Fail(what)
    log("ok: " + what)


def ssh(key, fip, cmd, timeout, attempts=3, alive_max=4):
    """Runs cmd on the guest as debian, with the key at path key; a session that hangs (a TCG
    guest on a loaded host) is retried. alive_max: ServerAliveCountMax (every 5 s)."""
    for attempt in range(1, attempts + 1):
        try:
            return subprocess.run(
                ["ssh", "-i", key, "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                 "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=10", "-o", "BatchMode=yes",
                 "-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=%d" % alive_max, "debian@" + fip, cmd],
                capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            log("ssh %s: no answer within %ds (attempt %d of %d): %s" % (fip, timeout, attempt, attempts, cmd[:60]))
    raise Fail("ssh to %s hung %d times: %s" % (fip, attempts, cmd[:60]))


def wait(what, fn, timeout, every):
    """fn() every `every` seconds until it returns something true (returned), for timeout seconds."""
    end = time.time() + timeout
    while time.time() < end:
        v = fn()
        if v:
            return v
        time.sleep(every)
    raise Fail("timed out after %ds: %s" % (timeout, what))


def network(c, name, cidr, made):
    """Network NAME-net with subnet NAME-sub (cidr; DHCP on, no dns_nameservers); returns both."""
    net = c.network.create_network(name=name + "-net"); made.append((c, "network", net.id))
    sub = c.network.create_subnet(network_id=net.id, name=name + "-sub", ip_version=4, cidr=cidr)
    return net, sub


def access(c, name, sub, key, made):
    """Router NAME-r from sub to `public`, security group NAME-sg admitting SSH and ping from the
    host, keypair NAME-key (the public half of the key at path key); returns (public network,
    router, security group, keypair)."""
    pub = c.network.find_network("public")
    r = c.network.create_router(name=name + "-r", external_gateway_info={"network_id": pub.id})
    made.append((c, "router", r.id))
    c.network.add_interface_to_router(r, subnet_id=sub.id); made.append((c, "router-if", (r.id, sub.id)))
    sg = c.network.create_security_group(name=name + "-sg"); made.append((c, "sg", sg.id))
    for proto, port in (("tcp", 22), ("icmp", None)):
        c.network.create_security_group_rule(security_group_id=sg.id, direction="ingress", ethertype="IPv4",
                                             protocol=proto, port_range_min=port, port_range_max=port,
                                             remote_ip_prefix=HOST_IP + "/32")
    kp = c.compute.create_keypair(name=name + "-key", public_key=open(key + ".pub").read())
    made.append((c, "keypair", kp.name))
    return pub, r, sg, kp


def boot(c, made, **server):
    """Creates a server (create_server's arguments), waits until it is ACTIVE; returns it."""
    s = c.compute.create_server(**server)
    made.append((c, "server", s.id))
    return c.compute.wait_for_server(s, wait=300, interval=2)


def floating_ip(c, server, net, pub, made):
    """A floating IP on pub for the server's port on net; returns (port, floating address)."""
    port = next(c.network.ports(device_id=server.id, network_id=net.id))
    fip = c.network.create_ip(floating_network_id=pub.id, port_id=port.id)
    made.append((c, "fip", fip.id))
    return port, fip.floating_ip_address


def cleanup(made):
    """Deletes what made records, last first; an error is logged and the rest still deleted."""
    for c, kind, ident in reversed(made):
        try:
            if kind == "server":
                c.compute.delete_server(ident)
                c.compute.wait_for_delete(c.compute.get_server(ident), wait=120)
            elif kind == "fip":
                c.network.delete_ip(ident)
            elif kind == "router-if":
                c.network.remove_interface_from_router(ident[0], subnet_id=ident[1])
            elif kind == "router":
                c.network.delete_router(ident)
            elif kind == "network":
                c.network.delete_network(ident)
            elif kind == "sg":
                c.network.delete_security_group(ident)
            elif kind == "keypair":
                c.compute.delete_keypair(ident)
        except openstack.exceptions.NotFoundException:
            pass
        except Exception as e:  # keep deleting the rest; reported below
            log("cleanup of %s %s: %s" % (kind, ident, e))


def leftovers(c, run):
    """Names of the servers, networks and routers of connection c whose name starts with run."""
    left = [s.name for s in c.compute.servers() if s.name.startswith(run)]
    left += [n.name for n in c.network.networks() if n.name.startswith(run)]
    left += [r.name for r in c.network.routers() if r.name.startswith(run)]
    return left


def run(name, body, teardown, work):
    """Runs body(); then, also on failure, teardown() (deletes what the run made, returns the
    names left over: a failure too) and removes the folder work. Exits 0 if everything passed."""
    rc = 0
    try:
        body()
    except Fail as e:
        log("FAIL: %s" % e)
        rc = 1
    except Exception as e:
        log("FAIL (error): %r" % e)
        rc = 1
    finally:
        left = teardown()
        if left:
            log("FAIL: left over after teardown: %s" % left)
            rc = 1
        subprocess.run(["rm", "-rf", work])
    log("%s: %s" % (name, "all OK" if rc == 0 else "FAILED"))
    sys.exit(rc)
