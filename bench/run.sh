#!/usr/bin/env bash
# Builds the services and the bench in release mode and runs nwd-bench.
#   bench/run.sh            full run (100 and 500 contacts/s, 20 s each)
#   bench/run.sh --smoke    bounded run for CI
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
"$ROOT/deploy/local/install-tools.sh" >/dev/null
export NWD_NATS_SERVER="$ROOT/.tools/bin/nats-server"
cargo build --release --quiet -p nwd-bench -p nwd-gateway -p nwd-intake -p nwd-triage \
  -p nwd-router -p nwd-dashboard -p nwd-notifier -p nwd-phone-sim
exec "${CARGO_TARGET_DIR:-$ROOT/target}/release/nwd-bench" "$@"
