#!/usr/bin/env bash
# The test command: installs what the tests need, starts the project's own OpenStack control plane
# (testbed/openstack) for the openstack provider's tests, runs every test of the workspace, and
# stops the control plane again, also on failure.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
testbed/openstack/install.sh
osbed=$(mktemp -d /tmp/hybridgrid-osbed.XXXXXX)
cleanup() { testbed/openstack/down.sh "$osbed" >/dev/null 2>&1 || true; rm -rf "$osbed"; }
trap cleanup EXIT
# The control plane starts (about a minute) while the tests compile.
testbed/openstack/up.sh "$osbed" >"$osbed/test-up.log" 2>&1 &
up_pid=$!
cargo test --workspace --locked --no-run
if ! wait "$up_pid"; then
  tail -40 "$osbed/test-up.log" >&2
  echo "test: the OpenStack test bed did not start" >&2
  exit 1
fi
rm -f "$osbed/test-up.log"
export HYBRIDGRID_TESTBED_CLOUDS="$osbed/clouds.yaml"
cargo test --workspace --locked "$@"
