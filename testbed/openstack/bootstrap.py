"""Keystone catalog + service users, then (phase 2) flavors, image, external network, two site
projects/users with quotas, an application credential, and DIR/clouds.yaml.

usage: /usr/bin/python3 bootstrap.py DIR keystone|cloud
       /usr/bin/python3 bootstrap.py DIR compute IMAGE_DIR   (once both compute hosts run; IMAGE_DIR:
         image.sh's folder, node/ -> hybridgrid-node, stock/ -> debian-12-generic)
Uses Debian's python3-openstacksdk. All values are fixed test values for a throwaway local cloud.
"""
import os, sys, time
import openstack

DIR, PHASE = sys.argv[1], sys.argv[2]
AUTH = "http://127.0.0.1:5000/v3"
# The public endpoints: the host's address on the bed's external bridge, where nginx proxies to
# the services (etc/nginx/nginx.conf), so that guests reach the APIs as a real cloud's servers
# reach its public endpoints (the power service on a cluster's master calls Nova and Neutron).
PUBLIC = "http://203.0.113.1"
PUBLIC_AUTH = PUBLIC + ":5000/v3"
REGION = "RegionOne"
SITES = ("site-a", "site-b")
# Each cloud has its own region: the same Nova, Neutron and Glance in each, its own object store
# (Swift with S3 on 203.0.113.1, testbed/openstack/swift.sh). RegionOne stays for the services'
# own clients (nova.conf, neutron.conf) and the admin cloud.
SITE_REGION = {"site-a": "RegionA", "site-b": "RegionB"}
OBJECT_STORE_PORT = {"site-a": 8090, "site-b": 8091}
ADMIN = dict(auth_url=AUTH, username="admin", password="adminpass", project_name="admin",
             user_domain_name="Default", project_domain_name="Default")
t0 = time.time()
c = openstack.connect(region_name=REGION, **ADMIN)
idn = c.identity

if PHASE == "keystone":
    dom = idn.find_domain("default")
    svc = idn.create_project(name="service", domain_id=dom.id)
    roles = {r.name: r for r in idn.roles()}
    if "service" not in roles:
        roles["service"] = idn.create_role(name="service")
    for region in SITE_REGION.values():
        idn.create_region(id=region)
    for u in ("nova", "placement", "neutron", "glance", "swift"):
        user = idn.create_user(name=u, password=u + "pass", domain_id=dom.id)
        for rn in ("admin", "service"):
            idn.assign_project_role_to_user(svc, user, roles[rn])
    for name, typ, url in (("nova", "compute", "http://127.0.0.1:8774/v2.1"),
                           ("placement", "placement", "http://127.0.0.1:8778"),
                           ("neutron", "network", "http://127.0.0.1:9696"),
                           ("glance", "image", "http://127.0.0.1:9292")):
        s = idn.create_service(name=name, type=typ)
        for region in (REGION, *SITE_REGION.values()):
            for iface in ("public", "internal", "admin"):
                u = url.replace("http://127.0.0.1", PUBLIC) if iface == "public" else url
                idn.create_endpoint(service_id=s.id, interface=iface, url=u, region_id=region)
    # Keystone itself in every region (keystone-manage bootstrap made RegionOne's)
    keystone = next(sv for sv in idn.services() if sv.type == "identity")
    for e in [e for e in idn.endpoints(service_id=keystone.id) if e.region_id == REGION]:
        for region in SITE_REGION.values():
            u = e.url.replace("http://127.0.0.1", PUBLIC) if e.interface == "public" else e.url
            idn.create_endpoint(service_id=keystone.id, interface=e.interface, url=u, region_id=region)
    swift = idn.create_service(name="swift", type="object-store")
    for site, region in SITE_REGION.items():
        u = f"{PUBLIC}:{OBJECT_STORE_PORT[site]}/v1/AUTH_%(tenant_id)s"
        for iface in ("public", "internal", "admin"):
            idn.create_endpoint(service_id=swift.id, interface=iface, url=u, region_id=region)
    # the two "sites": one project + one member user each
    for site in SITES:
        p = idn.create_project(name=site, domain_id=dom.id, description="hybridgrid test site " + site)
        u = idn.create_user(name=site, password=site + "-pass", domain_id=dom.id, default_project_id=p.id)
        idn.assign_project_role_to_user(p, u, roles["member"])
    print("bootstrap keystone objects %.1fs" % (time.time() - t0))
    sys.exit(0)

if PHASE == "compute":
    # The image picks the compute host (ImagePropertiesFilter): hypervisor_type=qemu runs on the
    # libvirt host `osbed`, fake-image (hypervisor_type=fake) on `osbed-fake`.
    # 1 vCPU, 1 GiB (a Debian guest with Slurm under TCG), 4 GB disk (the image's file system is 2 GiB)
    c.compute.create_flavor(name="g1.node", vcpus=1, ram=1024, disk=4, is_public=True)
    img = sys.argv[3]   # image.sh's folder: node/ and stock/ (vmlinuz, initrd.img, root.qcow2)
    # /dev/console is the last console= given: the serial port, whose log is Nova's console-log
    # API (Nova's default ends with hvc0)
    boot = {"hypervisor_type": "qemu", "hw_disk_bus": "virtio", "hw_vif_model": "virtio",
            "os_command_line": "root=/dev/vda console=tty0 console=ttyS0 no_timer_check"}
    images = (("hybridgrid-node", img + "/node", {}),
              # a stock Debian cloud image: hybridgrid installs what a node needs from the bed's
              # Debian mirror; os_distro/os_admin_user are the standard Glance properties that
              # name the distribution and its login user
              ("debian-12-generic", img + "/stock", {"os_distro": "debian", "os_version": "12",
                                                     "os_admin_user": "debian"}))

    def upload(name, folder, props):
        g = openstack.connect(region_name=REGION, **ADMIN).image   # one connection per thread
        k = g.create_image(name=name + "-kernel", filename=folder + "/vmlinuz", disk_format="aki",
                           container_format="aki", visibility="public", wait=True)
        r = g.create_image(name=name + "-ramdisk", filename=folder + "/initrd.img", disk_format="ari",
                           container_format="ari", visibility="public", wait=True)
        g.create_image(name=name, filename=folder + "/root.qcow2", disk_format="qcow2",
                       container_format="bare", visibility="public", wait=True,
                       meta=dict(boot, kernel_id=k.id, ramdisk_id=r.id, **props))
    import concurrent.futures
    with concurrent.futures.ThreadPoolExecutor(len(images)) as ex:
        for f in [ex.submit(upload, *i) for i in images]:
            f.result()
    print("bootstrap aggregates/flavor/images %.1fs" % (time.time() - t0))
    # Warm-up: the L3 agent starts its privsep daemons at its first router. When two routers
    # arrive at once (hybridgrid makes its sites in parallel), both start the same daemon, one
    # call dies with "greenlet.error: cannot switch to a different thread", and the agent never
    # finishes either router: no floating IP, no metadata, for good. One router here, alone,
    # until the agent has set it up, starts every daemon first.
    import subprocess
    net = c.network.create_network(name="osbed-warmup")
    sub = c.network.create_subnet(network_id=net.id, name="osbed-warmup", ip_version=4,
                                  cidr="10.255.255.0/28", is_dhcp_enabled=False)
    pub = c.network.find_network("public")
    rt = c.network.create_router(name="osbed-warmup", external_gateway_info={"network_id": pub.id})
    c.network.add_interface_to_router(rt, subnet_id=sub.id)
    gw = c.network.get_router(rt.id).external_gateway_info["external_fixed_ips"][0]["ip_address"]
    ns = "qrouter-" + rt.id
    for _ in range(240):
        addrs = subprocess.run(["ip", "netns", "exec", ns, "ip", "-4", "-o", "addr"],
                               capture_output=True, text=True).stdout
        if gw + "/" in addrs and "10.255.255.1/" in addrs:
            break
        time.sleep(0.5)
    else:
        sys.exit("the L3 agent did not set up the warm-up router within 120 s (log/neutron-l3.log)")
    c.network.remove_interface_from_router(rt, subnet_id=sub.id)
    c.network.delete_router(rt)
    c.network.delete_network(net)
    print("bootstrap L3 agent warm-up router %.1fs" % (time.time() - t0))
    sys.exit(0)

assert PHASE == "cloud", PHASE
# Keystone's own public endpoint (its bootstrap made it on 127.0.0.1): now that nginx proxies it.
for ep in idn.endpoints(interface="public"):
    if ep.url.startswith("http://127.0.0.1:5000"):
        idn.update_endpoint(ep, url=PUBLIC_AUTH + "/")
for name, vcpus, ram, disk in (("m1.tiny", 1, 512, 1), ("m1.small", 1, 2048, 20), ("m1.medium", 2, 4096, 40)):
    c.compute.create_flavor(name=name, vcpus=vcpus, ram=ram, disk=disk, is_public=True)
c.image.create_image(name="fake-image", data=b"\0" * 1048576, disk_format="raw",
                     container_format="bare", visibility="public", meta={"hypervisor_type": "fake"})
# External network: TEST-NET-3 (RFC 5737) only; nothing is ever routed (no agents, no L3).
net = c.network.create_network(name="public", is_router_external=True, is_shared=False,
                               provider_network_type="flat", provider_physical_network="public")
c.network.create_subnet(network_id=net.id, name="public-subnet", ip_version=4, cidr="203.0.113.0/24",
                        gateway_ip="203.0.113.1", is_dhcp_enabled=False,
                        allocation_pools=[{"start": "203.0.113.10", "end": "203.0.113.250"}])
for site in SITES:
    p = idn.find_project(site, domain_id="default")
    c.set_compute_quotas(p.id, instances=50, cores=200, ram=512000, key_pairs=100,
                         server_groups=50, server_group_members=50, metadata_items=128)
    c.network.update_quota(p.id, networks=50, subnets=50, ports=500, routers=20, floating_ips=50,
                           security_groups=50, security_group_rules=500)

# application credential for site-a, created by the site-a user itself (fixed secret)
ua = openstack.connect(region_name=REGION, auth_url=AUTH, username="site-a", password="site-a-pass",
                       project_name="site-a", user_domain_name="Default", project_domain_name="Default")
uid = ua.current_user_id
ac = ua.identity.create_application_credential(user=uid, name="hybridgrid-test",
                                               secret="site-a-appcred-secret",
                                               description="hybridgrid test bed")

def pw(user, password, project, region=REGION):
    return f"""    auth:
      auth_url: {PUBLIC_AUTH}
      username: {user}
      password: {password}
      project_name: {project}
      user_domain_name: Default
      project_domain_name: Default
    region_name: {region}
    identity_api_version: 3
    interface: public
"""

y = "# written by testbed/openstack/up.sh -- a throwaway local test cloud, fixed test passwords\nclouds:\n"
for site in SITES:
    y += f"  {site}:\n    auth_type: password\n" + pw(site, site + "-pass", site, SITE_REGION[site])
y += f"""  site-a-appcred:
    auth_type: v3applicationcredential
    auth:
      auth_url: {PUBLIC_AUTH}
      application_credential_id: {ac.id}
      application_credential_secret: site-a-appcred-secret
    region_name: {SITE_REGION["site-a"]}
    identity_api_version: 3
    interface: public
"""
y += "  admin:\n    auth_type: password\n" + pw("admin", "adminpass", "admin")
with open(os.path.join(DIR, "clouds.yaml.new"), "w") as f:   # up.sh renames it once all is ready
    f.write(y)
print("bootstrap flavors/image/ext-net/quotas/appcred %.1fs" % (time.time() - t0))
