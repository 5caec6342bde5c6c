#!/usr/bin/env bash
# Installs what is missing and runs every test: formatting, lints, unit and
# integration tests (each against its own real nats-server), end-to-end tests
# of the whole line, the browser walkthrough in headless Chromium, and the
# benchmarks in a bounded smoke form. `.ci/run` calls exactly this.
#   NWD_SKIP_BROWSER=1  skip the browser walkthrough
#   NWD_SKIP_BENCH=1    skip the bench smoke run
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
START=$SECONDS
step() { echo; echo "==> $* (t+$((SECONDS-START))s)"; }

step "installing tools"
if [[ -z "${NWD_SKIP_BROWSER:-}" ]]; then
  "$ROOT/deploy/local/install-tools.sh" --browser
else
  "$ROOT/deploy/local/install-tools.sh"
fi
export NWD_NATS_SERVER="$ROOT/.tools/bin/nats-server"
# One clean build, so incremental caches would only cost disk.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

step "cargo fmt --check"
cargo fmt --all --check

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "unit, integration and end-to-end tests (cargo nextest)"
cargo nextest run --workspace --locked --profile ci

if [[ -z "${NWD_SKIP_BROWSER:-}" ]]; then
  step "browser walkthrough (headless Chromium)"
  "$ROOT/tests/browser/run.sh"
fi

if [[ -z "${NWD_SKIP_BENCH:-}" ]]; then
  step "benchmarks, bounded smoke run"
  "$ROOT/bench/run.sh" --smoke
fi

step "all tests passed in $((SECONDS-START))s"
