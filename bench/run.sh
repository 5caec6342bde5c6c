#!/usr/bin/env bash
# Builds the services and the benches in release mode and runs them:
# nwd-bench (the line, webhook → offer) then nwd-bench-deadlines (durable
# deadlines, ADR 0006).
#   bench/run.sh                  full run (100 and 500 contacts/s, 20 s each; 100,000 deadlines)
#   bench/run.sh --smoke          bounded run of both for CI
#   bench/run.sh deadlines [...]  only nwd-bench-deadlines, with its own flags
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
"$ROOT/deploy/local/install-tools.sh" >/dev/null
export NWD_NATS_SERVER="$ROOT/.tools/bin/nats-server"
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release"
if [[ "${1:-}" == "deadlines" ]]; then
  shift
  cargo build --release --quiet -p nwd-bench --bin nwd-bench-deadlines
  exec "$BIN/nwd-bench-deadlines" "$@"
fi
cargo build --release --quiet -p nwd-bench -p nwd-gateway -p nwd-intake -p nwd-triage \
  -p nwd-router -p nwd-dashboard -p nwd-notifier -p nwd-phone-sim
"$BIN/nwd-bench" "$@"
echo
deadline_args=()
for arg in "$@"; do
  if [[ "$arg" == "--smoke" ]]; then deadline_args+=(--smoke); fi
done
exec "$BIN/nwd-bench-deadlines" "${deadline_args[@]}"
