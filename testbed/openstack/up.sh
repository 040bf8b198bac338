#!/bin/bash
# Bring up a real OpenStack (Zed, Debian bookworm packages) on this host: MariaDB, RabbitMQ,
# Keystone, Placement, Glance, Neutron (ML2 with the linuxbridge, DHCP, L3 and metadata agents),
# Nova with two compute hosts: `osbed` (libvirt, QEMU/TCG: servers really boot and run cloud-init)
# and `osbed-fake` (the fake driver: API-level tests, nothing boots). The image picks the host.
# The external network `public` is the bridge osbed-ext (203.0.113.1/24 on the host, no link to
# any real interface; an nftables table keeps guests' traffic off the host's other interfaces).
# On 203.0.113.1:80, nginx serves image.sh's Debian mirror; Neutron's dnsmasq tells guests that
# deb.debian.org is 203.0.113.1, so a stock image's apt works unchanged. The same way the bed
# serves time: chronyd (Debian's, unpacked under DIR: installing it would replace the host's own
# time daemon) answers NTP on 203.0.113.1:123 from the host's clock without ever setting it, and
# dnsmasq answers debian.pool.ntp.org there, so a guest's systemd-timesyncd syncs unchanged (TCG
# guests drift; a relay pair's handshakes need the two clocks to agree).
#
# usage: up.sh DIR
#   DIR holds everything: rendered configs (DIR/etc), databases, logs (DIR/log), PIDs (DIR/run),
#   and the result DIR/clouds.yaml (entries site-a, site-b, site-a-appcred, admin).
# Already up (every recorded PID alive, Keystone answering)? It says so and exits 0.
# Partly up, or the ports are taken by something else? It fails with a message; run down.sh DIR.
# Needs install.sh first. Ports (127.0.0.1 only): 3306 5672 25672 4369 5000 8774 8778 9292 9696,
# 6210-6212 and 6220-6222 (Swift's backends); on the bed's own bridge: 203.0.113.1:80 (the mirror),
# 203.0.113.1:8090 and :8091 (the object stores of site-a and site-b: Swift with S3, regions
# RegionA and RegionB).
set -euo pipefail
export PATH=/usr/sbin:/usr/bin:/sbin:/bin   # Debian's python3, never a pyenv/venv one
HERE=$(cd "$(dirname "$0")" && pwd)
B=$(mkdir -p "${1:?usage: up.sh DIR}" && cd "$1" && pwd)
PORTS="3306 5672 25672 5000 8774 8775 8778 9292 9696 6210 6211 6212 6220 6221 6222"
die() { echo "up.sh: $*" >&2; exit 1; }
T0=$(date +%s%N); lap() { awk -v t="$(( $(date +%s%N) - T0 ))" -v m="$*" 'BEGIN{printf "[%6.1fs] %s\n", t/1e9, m}'; }
waitfor() { for _ in $(seq 1 600); do curl -s -o /dev/null "$1" && return 0; sleep 0.2; done; die "timeout waiting for $1 (see $B/log)"; }
alive() { [ -f "$1" ] && [ -d "/proc/$(cat "$1")" ]; }

for c in keystone-manage neutron-server neutron-linuxbridge-agent libvirtd qemu-system-x86_64; do
  command -v $c >/dev/null || die "packages missing ($c): run $HERE/install.sh"
done
# The guest images and the Debian mirror (cached by their recipe's hash; built on first use, about
# 2.5 minutes): IMAGE/stock, IMAGE/node (vmlinuz, initrd.img, root.qcow2), IMAGE/mirror
IMAGE=$("$HERE/image.sh" "${OSBED_IMAGE_CACHE:-/var/cache/hybridgrid-osbed}") || die "guest image build failed"
[ -f "$IMAGE/node/root.qcow2" ] && [ -f "$IMAGE/stock/root.qcow2" ] && [ -d "$IMAGE/mirror" ] \
  || die "image.sh named no folder with node/, stock/ and mirror/: $IMAGE"

# --- already up / partly up?
if compgen -G "$B/run/*.pid" >/dev/null; then
  up=0; down=""
  for f in "$B"/run/*.pid; do if alive "$f"; then up=$((up+1)); else down="$down $(basename "$f" .pid)"; fi; done
  if [ -z "$down" ] && [ -f "$B/clouds.yaml" ] && curl -sf -o /dev/null http://127.0.0.1:5000/v3; then
    echo "up.sh: already up in $B ($up processes); clouds.yaml: $B/clouds.yaml"; exit 0
  fi
  [ "$up" -eq 0 ] || die "partly up in $B (not running:$down); run down.sh $B first"
fi
for p in $PORTS; do
  ss -ltnH "sport = :$p" | grep -q . && die "port $p is already in use (another test bed or service?)"
done
ip link show osbed-ext >/dev/null 2>&1 && die "bridge osbed-ext exists (another test bed?); run down.sh on its folder"
epmd_before=$(ss -ltnpH 'sport = :4369' | grep -o 'pid=[0-9]*' | head -1 | cut -d= -f2 || true)

# --- fresh state, configs rendered into DIR; on any failure stop whatever was started
cd "$B"
trap 'rc=$?; [ $rc -ne 0 ] && { echo "up.sh: failed, stopping what was started (logs stay in $B/log)" >&2; "$HERE/down.sh" "$B" >&2; }' EXIT
rm -rf etc pylib mysql rabbit state log run clouds.yaml clouds.yaml.new
cp -r "$HERE/etc" "$HERE/pylib" .
find etc -type f -exec sed -i "s#@OSBED@#$B#g" {} +
sed -i "s#@MIRROR@#$IMAGE/mirror#g" etc/nginx/nginx.conf
chmod 755 "$B"   # mysqld runs as user mysql and must reach its datadir
mkdir -p mysql run log rabbit/home rabbit/mnesia rabbit/log state/keystone/fernet-keys \
         state/keystone/credential-keys state/neutron/lock state/nova/lock state/nova/instances \
         state/glance/images state/glance/staging state/glance/tasks \
         state/nova-libvirt/instances state/nova-libvirt/lock state/nginx libvirt mirror-hide
chown mysql:mysql mysql run
nft list tables >run/nft-tables-before 2>/dev/null || true   # down.sh removes only tables made after

# Each cloud's object store rendered meanwhile (its rings take a few seconds of CPU).
( "$HERE/swift.sh" "$B" site-a RegionA 8090 6210 && "$HERE/swift.sh" "$B" site-b RegionB 8091 6220 ) \
  >log/swift-render.log 2>&1 & P_SWIFT=$!

# every service in its own session/process group, PID recorded (down.sh kills by these); what
# they spawn carries OSBED_DIR in its environment (privsep daemons leave DIR and the group)
export OSBED_DIR="$B"
start() { local name=$1; shift; setsid "$@" >"log/$name.out" 2>&1 </dev/null & echo $! >"run/$name.pid"; }
# NTP for the guests on 203.0.113.1:123: Debian's chronyd, unpacked (its package conflicts with
# the host's time daemon), serving the host's clock (-x: it never sets it). Fetched before the
# bridge exists: on this host the package registry itself may sit in 203.0.113.0/24.
fetch_time_server() {
  [ -x chrony/usr/sbin/chronyd ] && return 0
  rm -rf chrony chrony-deb && mkdir -p chrony-deb
  (cd chrony-deb && apt-get download -qq chrony) >log/chrony-download.log 2>&1 \
    || die "could not download Debian's chrony (log/chrony-download.log)"
  dpkg -x chrony-deb/chrony_*.deb chrony || die "could not unpack chrony"
}
start_time_server() {
  mkdir -p state/chrony
  printf '%s\n' "bindaddress 203.0.113.1" "allow 203.0.113.0/24" "local stratum 8" \
    "driftfile $B/state/chrony/drift" "pidfile $B/state/chrony/chronyd.pid" "cmdport 0" \
    "bindcmdaddress /" >etc/chrony.conf
  start chronyd chrony/usr/sbin/chronyd -d -x -u root -f "$B/etc/chrony.conf"
}

# --- MariaDB
mariadb-install-db --user=mysql --datadir="$B/mysql" --auth-root-authentication-method=socket \
  --skip-test-db >log/mariadb-install.log 2>&1 || die "mariadb-install-db failed (log/mariadb-install.log)"
start mariadb mariadbd --defaults-file="$B/etc/my.cnf"
for _ in $(seq 1 200); do mariadb --defaults-file="$B/etc/my.cnf" -uroot -e 'select 1' >/dev/null 2>&1 && break; sleep 0.1; done
mariadb --defaults-file="$B/etc/my.cnf" -uroot -e "
 CREATE DATABASE keystone; CREATE DATABASE nova_api; CREATE DATABASE nova; CREATE DATABASE nova_cell0;
 CREATE DATABASE placement; CREATE DATABASE neutron; CREATE DATABASE glance;
 CREATE USER 'os'@'127.0.0.1' IDENTIFIED BY 'ospass'; GRANT ALL PRIVILEGES ON *.* TO 'os'@'127.0.0.1';" \
 || die "MariaDB did not come up (log/mariadb.out)"
lap "mariadb up"

# --- RabbitMQ in the background; all DB schema syncs in parallel
echo "[]." >rabbit/enabled_plugins
echo "listeners.tcp.default = 127.0.0.1:5672" >rabbit/rabbitmq.conf
( . etc/rabbit.env; start rabbit /usr/lib/rabbitmq/bin/rabbitmq-server )
KM="keystone-manage --config-file $B/etc/keystone/keystone.conf"
NM="nova-manage --config-file $B/etc/nova/nova.conf"
( $KM db_sync && $KM fernet_setup --keystone-user root --keystone-group root &&
  $KM credential_setup --keystone-user root --keystone-group root &&
  $KM bootstrap --bootstrap-password adminpass --bootstrap-region-id RegionOne \
     --bootstrap-admin-url http://127.0.0.1:5000/v3/ --bootstrap-internal-url http://127.0.0.1:5000/v3/ \
     --bootstrap-public-url http://127.0.0.1:5000/v3/ ) >log/keystone-manage.log 2>&1 & P1=$!
placement-manage --config-file "$B/etc/placement/placement.conf" db sync >log/placement-dbsync.log 2>&1 & P2=$!
neutron-db-manage --config-file "$B/etc/neutron/neutron.conf" upgrade heads >log/neutron-dbsync.log 2>&1 & P3=$!
( $NM api_db sync && $NM cell_v2 map_cell0 --database_connection mysql+pymysql://os:ospass@127.0.0.1/nova_cell0 &&
  $NM cell_v2 create_cell --name cell1 && $NM db sync ) >log/nova-dbsync.log 2>&1 & P4=$!
glance-manage --config-file "$B/etc/glance/glance-api.conf" db_sync >log/glance-dbsync.log 2>&1 & P5=$!
wait $P1 || die "keystone db sync/bootstrap failed (log/keystone-manage.log)"
lap "keystone db + bootstrap"
start keystone uwsgi --ini etc/keystone/uwsgi.ini
waitfor http://127.0.0.1:5000/v3
python3 "$HERE/bootstrap.py" "$B" keystone >log/bootstrap.log 2>&1 || die "bootstrap (keystone) failed (log/bootstrap.log)"
lap "keystone up, catalog + site projects"
wait $P2 || die "placement db sync failed"; wait $P3 || die "neutron db sync failed"
wait $P4 || die "nova db sync failed (log/nova-dbsync.log)"; wait $P5 || die "glance db sync failed"
lap "all db syncs done"
( . etc/rabbit.env; /usr/lib/rabbitmq/bin/rabbitmqctl wait --timeout 90 "$B/rabbit/rabbit.pid" >log/rabbit-wait.log 2>&1 ) \
  || die "RabbitMQ did not come up (log/rabbit.out, rabbit/log)"
# epmd daemonizes out of RabbitMQ's tree: record it, unless it was running before us
epmd=$(ss -ltnpH 'sport = :4369' | grep -o 'pid=[0-9]*' | head -1 | cut -d= -f2 || true)
[ -n "$epmd" ] && [ "$epmd" != "$epmd_before" ] && echo "$epmd" >run/epmd.pid
lap "rabbitmq up"

# --- the data plane's network: the external bridge, kept off the host's real interfaces
fetch_time_server
ip link add osbed-ext type bridge && ip addr add 203.0.113.1/24 dev osbed-ext && ip link set osbed-ext up \
  || die "could not create bridge osbed-ext"
nft -f - <<'NFT' || die "nftables table inet osbed"
table inet osbed {
  chain forward {
    type filter hook forward priority -10; policy accept;
    iifname "osbed-ext" oifname != "osbed-ext" drop
    oifname "osbed-ext" iifname != "osbed-ext" drop
  }
}
NFT
start libvirt unshare -m --propagation private "$HERE/libvirt.sh" "$B"
# The bed's Debian mirror (deb.debian.org for guests: Neutron's dnsmasq, etc/neutron/dnsmasq.conf)
# on the host's address on osbed-ext, port 80 only
start nginx nginx -p "$B/state/nginx" -c "$B/etc/nginx/nginx.conf" -e "$B/log/nginx-error.log"
start_time_server
for _ in $(seq 1 100); do [ -S libvirt/run/libvirt-sock ] && break; sleep 0.1; done
[ -S libvirt/run/libvirt-sock ] || die "libvirtd did not start (log/libvirt.out)"
for i in $(seq 1 50); do
  curl -sf -o /dev/null http://203.0.113.1/debian/dists/bookworm/InRelease && break
  [ "$i" = 50 ] && die "the Debian mirror (nginx on 203.0.113.1:80) did not answer (log/nginx-error.log, log/nginx.out)"
  sleep 0.1
done
lap "osbed-ext bridge, libvirtd, Debian mirror on 203.0.113.1:80"
wait $P_SWIFT || die "rendering the object stores failed (log/swift-render.log)"
for cloud in site-a site-b; do
  for s in object container account proxy; do
    start "swift-$cloud-$s" "swift-$s-server" "$B/etc/swift-$cloud/$s-server.conf"
  done
done

# --- API services and Nova workers
start placement uwsgi --ini etc/placement/uwsgi.ini
PYTHONPATH="$B/pylib" start neutron neutron-server --config-file "$B/etc/neutron/neutron.conf"
start glance glance-api --config-file "$B/etc/glance/glance-api.conf"
for s in conductor scheduler; do start "nova-$s" "nova-$s" --config-file "$B/etc/nova/nova.conf" --log-file "$B/log/nova-$s.log"; done
# nova-compute without the nova-compute .deb (which drags in libvirt/lxc/open-iscsi): same entry point
start nova-compute python3 -c 'import sys; from nova.cmd.compute import main; sys.argv[0]="nova-compute"; sys.exit(main())' \
  --config-file "$B/etc/nova/nova.conf" --log-file "$B/log/nova-compute.log"
start nova-compute-libvirt python3 -c 'import sys; from nova.cmd.compute import main; sys.argv[0]="nova-compute"; sys.exit(main())' \
  --config-file "$B/etc/nova/nova.conf" --config-file "$B/etc/nova/nova-libvirt.conf" --log-file "$B/log/nova-compute-libvirt.log"
start nova-metadata uwsgi --ini etc/nova/uwsgi-metadata.ini
start nova-api uwsgi --ini etc/nova/uwsgi.ini
for u in http://127.0.0.1:8778 http://127.0.0.1:9696 http://127.0.0.1:9292 http://127.0.0.1:8774 http://127.0.0.1:8775 \
         http://203.0.113.1:8090/healthcheck http://203.0.113.1:8091/healthcheck; do waitfor $u; done
lap "all APIs answer"
# Neutron's agents once its RPC server consumes (an agent whose first call times out waits a minute)
for i in $(seq 1 60); do
  ( . etc/rabbit.env; /usr/lib/rabbitmq/bin/rabbitmqctl -q list_queues name consumers 2>/dev/null ) | grep -qE '^q-plugin\s+[1-9]' && break
  [ "$i" = 60 ] && die "Neutron's RPC server never consumed q-plugin (log/neutron.log)"
  sleep 1
done
NA="--config-file $B/etc/neutron/neutron.conf --config-file $B/etc/neutron/agent.conf"
# the agents (and their privsep daemons) find ebtables-pad.sh as `ebtables` first (see there)
mkdir -p bin && cp "$HERE/ebtables-pad.sh" bin/ebtables
export PATH="$B/bin:$PATH"
start neutron-linuxbridge neutron-linuxbridge-agent $NA --config-file "$B/etc/neutron/linuxbridge_agent.ini" --log-file "$B/log/neutron-linuxbridge.log"
start neutron-dhcp neutron-dhcp-agent $NA --config-file "$B/etc/neutron/dhcp_agent.ini" --log-file "$B/log/neutron-dhcp.log"
start neutron-l3 neutron-l3-agent $NA --config-file "$B/etc/neutron/l3_agent.ini" --log-file "$B/log/neutron-l3.log"
start neutron-metadata neutron-metadata-agent $NA --config-file "$B/etc/neutron/metadata_agent.ini" --log-file "$B/log/neutron-metadata.log"
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
lap "Neutron agents started"
python3 "$HERE/bootstrap.py" "$B" cloud >>log/bootstrap.log 2>&1 || die "bootstrap (cloud) failed (log/bootstrap.log)"
lap "flavors, image, public network, quotas, application credential"
# ready = both compute hosts are mapped to cell1 and have a resource provider in Placement, and
# the four Neutron agents have reported in
SQL="mariadb --defaults-file=$B/etc/my.cnf -uroot -N -e"
for i in $(seq 1 180); do
  $NM cell_v2 discover_hosts >/dev/null 2>&1 || true
  h=$($SQL 'select count(*) from nova_api.host_mappings'); r=$($SQL 'select count(*) from placement.resource_providers')
  a=$($SQL 'select count(*) from neutron.agents where heartbeat_timestamp > utc_timestamp() - interval 60 second')
  [ "$h" -ge 2 ] && [ "$r" -ge 2 ] && [ "$a" -ge 4 ] && break
  [ "$i" = 180 ] && die "not ready after 180 s: $h compute hosts mapped, $r resource providers, $a Neutron agents alive (log/nova-compute*.log, log/neutron-*.log)"
  sleep 1
done
lap "both compute hosts and four Neutron agents up"
python3 "$HERE/bootstrap.py" "$B" compute "$IMAGE" >>log/bootstrap.log 2>&1 || die "bootstrap (compute) failed (log/bootstrap.log)"
lap "flavor g1.node, images hybridgrid-node and debian-12-generic (kernel, ramdisk, root)"
for f in run/*.pid; do alive "$f" || die "$(basename "$f" .pid) died during start-up (see $B/log)"; done
mv clouds.yaml.new clouds.yaml   # its presence marks a finished start-up
lap "cloud ready: $(ls run/*.pid | wc -l) processes recorded in $B/run"
echo "export OS_CLIENT_CONFIG_FILE=$B/clouds.yaml   # then: openstack --os-cloud site-a ..."
