#!/usr/bin/env bash
# Builds the services and the benches in release mode and runs them:
# nwd-bench (the line, webhook → offer), nwd-bench-deadlines (durable
# deadlines, ADR 0006), then nwd-bench-queue (queue decisions with 1,000
# contacts waiting and 200 counsellors, issue 5), then nwd-bench-referrals
# (signed partner referral POST → 202, issue 14), then nwd-bench-shift (a
# compressed shift with counsellor bots, issue 16).
#   bench/run.sh                  full run (100 and 500 contacts/s, 20 s each; 100,000 deadlines; 1,000 waiting / 200 staff;
#                                 a 3-minute shift of 4 counsellors at 0.7× and 1.5× capacity, both click policies)
#   bench/run.sh --smoke          bounded run of each for CI
#   bench/run.sh deadlines [...]  only nwd-bench-deadlines, with its own flags
#   bench/run.sh queue [...]      only nwd-bench-queue, with its own flags (--waiting, --counsellors, --smoke, ...)
#   bench/run.sh referrals [...]  only nwd-bench-referrals (--rate 50 --seconds 20 --burst 1000, --smoke)
#   bench/run.sh chat [...]       only nwd-bench-chat: 5,000 open patient sockets on one chat, memory per
#                                 socket, chat message → offer at 100/s (--sockets, --rate, --seconds, --smoke);
#                                 needs `ulimit -n` above 2 × sockets
#   bench/run.sh dashboard [...]  only nwd-bench-dashboard: 2,000 authenticated dashboard sockets on one instance,
#                                 memory per socket, queue fan-out p50/p99, offer to screen (--users, --tabs,
#                                 --rate, --seconds, --smoke); needs `ulimit -n` above 2 × sockets
#   bench/run.sh shift [...]      only nwd-bench-shift: a compressed shift with counsellor bots, time to answer
#                                 by risk under two click policies (--counsellors, --capacity, --loads,
#                                 --conversation-secs, --reaction-secs, --seconds, --mix, --smoke); a staffing tool
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
if [[ "${1:-}" == "chat" ]]; then
  shift
  cargo build --release --quiet -p nwd-bench -p nwd-chat -p nwd-intake -p nwd-triage -p nwd-router -p nwd-dashboard
  exec "$BIN/nwd-bench-chat" "$@"
fi
if [[ "${1:-}" == "dashboard" ]]; then
  shift
  cargo build --release --quiet -p nwd-bench -p nwd-gateway -p nwd-intake -p nwd-triage -p nwd-router \
    -p nwd-dashboard
  exec "$BIN/nwd-bench-dashboard" "$@"
fi
if [[ "${1:-}" == "shift" ]]; then
  shift
  cargo build --release --quiet -p nwd-bench -p nwd-gateway -p nwd-intake -p nwd-triage -p nwd-router \
    -p nwd-escalator -p nwd-dashboard
  exec "$BIN/nwd-bench-shift" "$@"
fi
if [[ "${1:-}" == "queue" ]]; then
  shift
  # Both packages whole: `--bin` would filter out the nwd-router binary.
  cargo build --release --quiet -p nwd-bench -p nwd-router
  exec "$BIN/nwd-bench-queue" "$@"
fi
if [[ "${1:-}" == "referrals" ]]; then
  shift
  cargo build --release --quiet -p nwd-bench -p nwd-gateway -p nwd-intake -p nwd-router
  exec "$BIN/nwd-bench-referrals" "$@"
fi
cargo build --release --quiet -p nwd-bench -p nwd-gateway -p nwd-intake -p nwd-triage \
  -p nwd-router -p nwd-escalator -p nwd-dashboard -p nwd-notifier -p nwd-phone-sim
"$BIN/nwd-bench" "$@"
echo
smoke_args=()
for arg in "$@"; do
  if [[ "$arg" == "--smoke" ]]; then smoke_args+=(--smoke); fi
done
"$BIN/nwd-bench-deadlines" "${smoke_args[@]}"
echo
"$BIN/nwd-bench-queue" "${smoke_args[@]}"
echo
"$BIN/nwd-bench-referrals" "${smoke_args[@]}"
echo
"$BIN/nwd-bench-dashboard" "${smoke_args[@]}"
echo
exec "$BIN/nwd-bench-shift" "${smoke_args[@]}"
