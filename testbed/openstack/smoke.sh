#!/bin/bash
# Smoke test of a running test bed with the openstack CLI, per site: network, subnet, router with
# external gateway + interface, security group + UDP 51820 rule from a /32, keypair, server with
# user data -> ACTIVE, allowed-address pair on its port, floating IP on `public`, Neutron tags on
# network/port/security group (and a tag-filtered list), Nova server metadata, then teardown.
# Also authenticates with the application credential entry. Exits non-zero on any failure.
# usage: smoke.sh DIR [CLOUD...]      (default clouds: site-a site-b)
set -euo pipefail
export PATH=/usr/bin:/bin:/usr/sbin:/sbin
B=$(cd "${1:?usage: smoke.sh DIR [CLOUD...]}" && pwd); shift
[ -f "$B/clouds.yaml" ] || { echo "smoke.sh: $B/clouds.yaml missing: is the test bed up (up.sh $B)?" >&2; exit 1; }
export OS_CLIENT_CONFIG_FILE=$B/clouds.yaml
CLOUDS=("$@"); [ ${#CLOUDS[@]} -gt 0 ] || CLOUDS=(site-a site-b)
W=$(mktemp -d); trap 'rm -rf "$W"' EXIT
ssh-keygen -q -t ed25519 -N "" -C smoke -f "$W/id"
printf '#cloud-config\nruncmd:\n - echo hybridgrid-smoke\n' >"$W/user-data.yaml"
T_ALL=$(date +%s)
fail() { echo "smoke.sh: FAIL [$C] $*" >&2; cleanup; exit 1; }
check() { [ "$2" = "$3" ] || fail "$1: expected '$3', got '$2'"; }

cleanup() {   # best effort, in dependency order; every step may fail if the object is gone
  set +e
  [ -n "${FIP:-}" ] && $OS floating ip delete "$FIP" >/dev/null 2>&1
  $OS server delete --wait "$P-vm" >/dev/null 2>&1
  $OS router remove subnet "$P-r" "$P-sub" >/dev/null 2>&1
  $OS router delete "$P-r" >/dev/null 2>&1
  $OS subnet delete "$P-sub" >/dev/null 2>&1
  $OS network delete "$P-net" >/dev/null 2>&1
  $OS security group delete "$P-wg" >/dev/null 2>&1
  $OS keypair delete "$P-key" >/dev/null 2>&1
  set -e
}

for C in "${CLOUDS[@]}"; do
  T0=$(date +%s); OS="openstack --os-cloud $C"; P="smoke-$$"; FIP=""
  $OS token issue -f value -c id >/dev/null || fail "authentication"
  NET=$($OS network create "$P-net" --tag hybridgrid --tag "cluster=$P" -f value -c id)
  $OS subnet create --network "$P-net" --subnet-range 10.10.0.0/24 "$P-sub" -f value -c id >/dev/null
  $OS router create "$P-r" -f value -c id >/dev/null
  $OS router set --external-gateway public "$P-r"
  $OS router add subnet "$P-r" "$P-sub"
  GW=$($OS router show "$P-r" -f json -c external_gateway_info | python3 -c 'import json,sys; print(json.load(sys.stdin)["external_gateway_info"]["external_fixed_ips"][0]["ip_address"])')
  case "$GW" in 203.0.113.*) ;; *) fail "router gateway IP $GW not in 203.0.113.0/24";; esac
  SG=$($OS security group create "$P-wg" -f value -c id)
  $OS security group set --tag hybridgrid "$P-wg"
  $OS security group rule create --ingress --protocol udp --dst-port 51820 --remote-ip 198.51.100.7/32 "$P-wg" -f value -c id >/dev/null
  $OS keypair create --public-key "$W/id.pub" "$P-key" >/dev/null
  TS=$(date +%s.%N)
  ST=$($OS server create --flavor m1.tiny --image fake-image --network "$P-net" --security-group "$P-wg" \
        --key-name "$P-key" --user-data "$W/user-data.yaml" --property hybridgrid-cluster="$P" \
        --wait "$P-vm" -f value -c status | tr -d "\n ")
  T_ACTIVE=$(awk -v a="$TS" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}')
  check "server status" "$ST" ACTIVE
  SID=$($OS server show "$P-vm" -f value -c id)
  $OS server set --property role=controller "$P-vm"
  grep -q '"role": "controller"' <<<"$($OS server show "$P-vm" -f json -c properties)" || fail "server metadata"
  PORT=$($OS port list --device-id "$SID" --network "$NET" -f value -c ID)
  [ -n "$PORT" ] || fail "no port for the server"
  $OS port set --allowed-address ip-address=10.99.0.0/24 --tag hybridgrid "$PORT"
  grep -q '10.99.0.0/24' <<<"$($OS port show "$PORT" -f json -c allowed_address_pairs)" || fail "allowed-address pair"
  check "tagged networks" "$($OS network list --tags hybridgrid -f value -c ID)" "$NET"
  check "tagged ports" "$($OS port list --tags hybridgrid -f value -c ID)" "$PORT"
  check "tagged security groups" "$($OS security group list --tags hybridgrid -f value -c ID)" "$SG"
  FIP=$($OS floating ip create public --port "$PORT" -f value -c floating_ip_address)
  case "$FIP" in 203.0.113.*) ;; *) fail "floating IP $FIP not in 203.0.113.0/24";; esac
  grep -q "$FIP" <<<"$($OS server show "$P-vm" -f value -c addresses)" || fail "floating IP not on the server"
  $OS quota show -f value >/dev/null || fail "quota show"
  cleanup
  LEFT=$($OS server list -f value -c ID; $OS network list --tags hybridgrid -f value -c ID; $OS floating ip list -f value -c ID)
  [ -z "$LEFT" ] || fail "left over after teardown: $LEFT"
  echo "smoke.sh: $C OK in $(( $(date +%s) - T0 ))s (server create -> ACTIVE ${T_ACTIVE}s, fip $FIP, gw $GW)"
done
if grep -q '^  site-a-appcred:' "$B/clouds.yaml"; then
  C=site-a-appcred; grep -qx public <<<"$(openstack --os-cloud site-a-appcred network list -f value -c Name)" || fail "appcred: network list"
  echo "smoke.sh: site-a-appcred (application credential) OK"
fi
echo "smoke.sh: all OK in $(( $(date +%s) - T_ALL ))s"
