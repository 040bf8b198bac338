#!/bin/bash
# Bring up a real OpenStack (Zed, Debian bookworm packages) control plane on 127.0.0.1:
# MariaDB, RabbitMQ, Keystone, Placement, Nova (fake driver), Neutron (ML2, no agents), Glance.
#
# usage: up.sh DIR
#   DIR holds everything: rendered configs (DIR/etc), databases, logs (DIR/log), PIDs (DIR/run),
#   and the result DIR/clouds.yaml (entries site-a, site-b, site-a-appcred, admin).
# Already up (every recorded PID alive, Keystone answering)? It says so and exits 0.
# Partly up, or the ports are taken by something else? It fails with a message; run down.sh DIR.
# Needs install.sh first. Ports (127.0.0.1 only): 3306 5672 25672 4369 5000 8774 8778 9292 9696.
set -euo pipefail
export PATH=/usr/sbin:/usr/bin:/sbin:/bin   # Debian's python3, never a pyenv/venv one
HERE=$(cd "$(dirname "$0")" && pwd)
B=$(mkdir -p "${1:?usage: up.sh DIR}" && cd "$1" && pwd)
PORTS="3306 5672 25672 5000 8774 8778 9292 9696"
die() { echo "up.sh: $*" >&2; exit 1; }
T0=$(date +%s%N); lap() { awk -v t="$(( $(date +%s%N) - T0 ))" -v m="$*" 'BEGIN{printf "[%6.1fs] %s\n", t/1e9, m}'; }
waitfor() { for _ in $(seq 1 600); do curl -s -o /dev/null "$1" && return 0; sleep 0.2; done; die "timeout waiting for $1 (see $B/log)"; }
alive() { [ -f "$1" ] && [ -d "/proc/$(cat "$1")" ]; }

command -v keystone-manage >/dev/null && command -v neutron-server >/dev/null || die "packages missing: run $HERE/install.sh"

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
epmd_before=$(ss -ltnpH 'sport = :4369' | grep -o 'pid=[0-9]*' | head -1 | cut -d= -f2 || true)

# --- fresh state, configs rendered into DIR; on any failure stop whatever was started
cd "$B"
trap 'rc=$?; [ $rc -ne 0 ] && { echo "up.sh: failed, stopping what was started (logs stay in $B/log)" >&2; "$HERE/down.sh" "$B" >&2; }' EXIT
rm -rf etc pylib mysql rabbit state log run clouds.yaml clouds.yaml.new
cp -r "$HERE/etc" "$HERE/pylib" .
find etc -type f -exec sed -i "s#@OSBED@#$B#g" {} +
chmod 755 "$B"   # mysqld runs as user mysql and must reach its datadir
mkdir -p mysql run log rabbit/home rabbit/mnesia rabbit/log state/keystone/fernet-keys \
         state/keystone/credential-keys state/neutron/lock state/nova/lock state/nova/instances \
         state/glance/images state/glance/staging state/glance/tasks
chown mysql:mysql mysql run

# every service in its own session/process group, PID recorded (down.sh kills by these)
start() { local name=$1; shift; setsid "$@" >"log/$name.out" 2>&1 </dev/null & echo $! >"run/$name.pid"; }

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

# --- API services and Nova workers
start placement uwsgi --ini etc/placement/uwsgi.ini
PYTHONPATH="$B/pylib" start neutron neutron-server --config-file "$B/etc/neutron/neutron.conf"
start glance glance-api --config-file "$B/etc/glance/glance-api.conf"
for s in conductor scheduler; do start "nova-$s" "nova-$s" --config-file "$B/etc/nova/nova.conf" --log-file "$B/log/nova-$s.log"; done
# nova-compute without the nova-compute .deb (which drags in libvirt/lxc/open-iscsi): same entry point
start nova-compute python3 -c 'import sys; from nova.cmd.compute import main; sys.argv[0]="nova-compute"; sys.exit(main())' \
  --config-file "$B/etc/nova/nova.conf" --log-file "$B/log/nova-compute.log"
start nova-api uwsgi --ini etc/nova/uwsgi.ini
for u in http://127.0.0.1:8778 http://127.0.0.1:9696 http://127.0.0.1:9292 http://127.0.0.1:8774; do waitfor $u; done
lap "all APIs answer"
python3 "$HERE/bootstrap.py" "$B" cloud >>log/bootstrap.log 2>&1 || die "bootstrap (cloud) failed (log/bootstrap.log)"
lap "flavors, image, public network, quotas, application credential"
# ready = the fake compute host is mapped to cell1 and has a resource provider in Placement
for i in $(seq 1 120); do
  $NM cell_v2 discover_hosts >/dev/null 2>&1 || true
  n=$(mariadb --defaults-file="$B/etc/my.cnf" -uroot -N -e 'select (select count(*) from nova_api.host_mappings) * (select count(*) from placement.resource_providers)')
  [ "$n" -ge 1 ] && break
  [ "$i" = 120 ] && die "compute host never registered (log/nova-compute.log)"
  sleep 1
done
for f in run/*.pid; do alive "$f" || die "$(basename "$f" .pid) died during start-up (see $B/log)"; done
mv clouds.yaml.new clouds.yaml   # its presence marks a finished start-up
lap "cloud ready: $(ls run/*.pid | wc -l) processes recorded in $B/run"
echo "export OS_CLIENT_CONFIG_FILE=$B/clouds.yaml   # then: openstack --os-cloud site-a ..."
