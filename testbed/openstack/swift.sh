#!/bin/bash
# Render one cloud's object store for the bed: OpenStack Swift (Debian's packages) with S3
# (`s3api`), authenticated by Keystone — S3 keys are Keystone EC2 credentials (`s3token`), Swift's
# own API takes Keystone tokens (`authtoken`, `keystoneauth`). The proxy listens on the bed's
# external address, as a cloud's public object-store endpoint; the account, container and object
# servers on 127.0.0.1; one device, one replica.
#
# usage: swift.sh DIR CLOUD REGION PROXY_PORT BACKEND_PORT
#   writes DIR/etc/swift-CLOUD (configurations, rings; swift_dir) and DIR/state/swift-CLOUD (the
#   device); backends on BACKEND_PORT (object), +1 (container), +2 (account). up.sh starts the
#   four servers with these configurations.
set -euo pipefail
B=$1 CLOUD=$2 REGION=$3 PROXY_PORT=$4 BASE=$5
etc=$B/etc/swift-$CLOUD srv=$B/state/swift-$CLOUD
mkdir -p "$etc" "$srv/d1" "$B/run/swift-$CLOUD"
cat >"$etc/swift.conf" <<EOF
[swift-hash]
swift_hash_path_suffix = osbed-$CLOUD
swift_hash_path_prefix = osbed
[storage-policy:0]
name = Policy-0
default = yes
EOF
common() { # name ip port
  cat <<EOF
[DEFAULT]
bind_ip = $2
bind_port = $3
workers = 0
user = root
swift_dir = $etc
devices = $srv
mount_check = false
log_name = swift-$CLOUD-$1
log_address = $B/run/swift-$CLOUD/log.sock
EOF
}
for pair in object:$BASE container:$((BASE + 1)) account:$((BASE + 2)); do
  name=${pair%:*} port=${pair#*:}
  { common "$name" 127.0.0.1 "$port"
    printf '[pipeline:main]\npipeline = %s-server\n[app:%s-server]\nuse = egg:swift#%s\nrecon_cache_path = %s\n' \
      "$name" "$name" "$name" "$B/run/swift-$CLOUD"; } >"$etc/$name-server.conf"
  b=$etc/$name.builder
  swift-ring-builder "$b" create 8 1 1 >/dev/null
  swift-ring-builder "$b" add "r1z1-127.0.0.1:$port/d1" 1 >/dev/null
  swift-ring-builder "$b" rebalance >/dev/null || true   # exit 1: one device, balanced anyway
  [ -f "$etc/$name.ring.gz" ] || { echo "swift.sh: no $name ring for $CLOUD" >&2; exit 1; }
done
{ common proxy 203.0.113.1 "$PROXY_PORT"
  cat <<EOF
[pipeline:main]
pipeline = catch_errors gatekeeper healthcheck proxy_logging memcache listing_formats authtoken s3api s3token keystoneauth copy slo dlo proxy_logging proxy-server
[app:proxy-server]
use = egg:swift#proxy
account_autocreate = true
[filter:s3api]
use = egg:swift#s3api
location = $REGION
[filter:s3token]
use = egg:swift#s3token
auth_uri = http://127.0.0.1:5000/v3
# Keystone's s3tokens takes only a service's calls (OSSA-2025-002): Swift's own service user.
auth_type = password
auth_url = http://127.0.0.1:5000/v3
project_domain_name = Default
user_domain_name = Default
project_name = service
username = swift
password = swiftpass
[filter:authtoken]
paste.filter_factory = keystonemiddleware.auth_token:filter_factory
www_authenticate_uri = http://127.0.0.1:5000
auth_url = http://127.0.0.1:5000
auth_type = password
project_domain_name = Default
user_domain_name = Default
project_name = service
username = swift
password = swiftpass
delay_auth_decision = True
[filter:keystoneauth]
use = egg:swift#keystoneauth
operator_roles = admin, member
EOF
  for f in catch_errors gatekeeper healthcheck proxy_logging memcache listing_formats copy slo dlo; do
    printf '[filter:%s]\nuse = egg:swift#%s\n' "$f" "$f"
  done; } >"$etc/proxy-server.conf"
