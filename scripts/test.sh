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
# What a failed start names ("... failed (log/X.log)") is in the bed's folder, which cleanup
# removes: print its end.
bed_failure() {
  tail -40 "$osbed/test-up.log" >&2
  for log in $(grep -o '(log/[^ )]*' "$osbed/test-up.log" | tr -d '(' | sort -u || true); do
    if [ -f "$osbed/$log" ]; then echo "--- $log" >&2; tail -40 "$osbed/$log" >&2; fi
  done
  return 0
}
# The control plane starts (about a minute) while the tests compile.
testbed/openstack/up.sh "$osbed" >"$osbed/test-up.log" 2>&1 &
up_pid=$!
# `cargo test` builds the binaries of the package under test only: the openstack end-to-end test
# (hybridgrid's) sends hybridgrid-agent, the agent crate's binary, beside hybridgrid.
cargo build --workspace --locked --bins
cargo test --workspace --locked --no-run
if ! wait "$up_pid"; then
  bed_failure
  # up.sh stops what it started when it fails; one more try on a busy machine before giving up.
  echo "test: the OpenStack test bed did not start; trying once more" >&2
  testbed/openstack/down.sh "$osbed" >/dev/null 2>&1 || true
  rm -rf "$osbed" && mkdir -p "$osbed"
  if ! testbed/openstack/up.sh "$osbed" >"$osbed/test-up.log" 2>&1; then
    bed_failure
    echo "test: the OpenStack test bed did not start" >&2
    exit 1
  fi
fi
rm -f "$osbed/test-up.log"
export HYBRIDGRID_TESTBED_CLOUDS="$osbed/clouds.yaml"
cargo test --workspace --locked "$@"
