#!/usr/bin/env bash
# Starts the whole line with up.sh on spare ports and a throwaway data dir,
# runs the browser walkthroughs (dashboard + phone, patient chat, a shift with transfer and supervisor) against it in headless Chromium, stops the line.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
"$ROOT/deploy/local/install-tools.sh" --browser
DATA="$(mktemp -d)"
export NWD_PROFILE="${NWD_PROFILE:-dev}" NWD_NO_BROWSER=1 NWD_DATA_DIR="$DATA"
export NWD_NATS_PORT=14222 NWD_NATS_MONITOR_PORT=18222
export NWD_GATEWAY_ADDR=127.0.0.1:18080 NWD_DASHBOARD_ADDR=127.0.0.1:18090 NWD_PHONE_SIM_ADDR=127.0.0.1:18070
export NWD_CHAT_ADDR=127.0.0.1:18081
# Quick exit goes to a page of the line itself here (no outside network).
export NWD_CHAT_QUICK_EXIT_URL="http://$NWD_CHAT_ADDR/healthz"
export NWD_INTAKE_METRICS_ADDR=127.0.0.1:19101 NWD_TRIAGE_METRICS_ADDR=127.0.0.1:19102
export NWD_ROUTER_METRICS_ADDR=127.0.0.1:19103 NWD_ESCALATOR_METRICS_ADDR=127.0.0.1:19107 NWD_NOTIFIER_METRICS_ADDR=127.0.0.1:19104
"$ROOT/deploy/local/up.sh" > "$DATA/up.log" 2>&1 &
UP=$!
cleanup() { kill -TERM "$UP" 2>/dev/null || true; wait "$UP" 2>/dev/null || true; rm -rf "$DATA"; }
trap cleanup EXIT
for _ in $(seq 1 600); do
  grep -q "No Wrong Door is running" "$DATA/up.log" 2>/dev/null && break
  if ! kill -0 "$UP" 2>/dev/null; then cat "$DATA/up.log"; echo "up.sh failed" >&2; exit 1; fi
  sleep 0.5
done
grep -q "No Wrong Door is running" "$DATA/up.log" || { cat "$DATA/up.log"; exit 1; }
DASHBOARD="http://$NWD_DASHBOARD_ADDR" PHONE="http://$NWD_PHONE_SIM_ADDR" \
  NATS_URL="nats://127.0.0.1:$NWD_NATS_PORT" NATS_PASSWORD_FILE="$DATA/nats/operator.password" \
  SCREENSHOT_DIR="${SCREENSHOT_DIR:-$ROOT/target/browser}" DOCS_SCREENSHOT_DIR="${DOCS_SCREENSHOT_DIR:-}" \
  WALKTHROUGH_ROUTER_QUEUE="${WALKTHROUGH_ROUTER_QUEUE:-1}" node "$ROOT/tests/browser/walkthrough.mjs" || {
    echo "--- service logs ---"; tail -n 20 "$DATA"/logs/*.log; exit 1; }
DASHBOARD="http://$NWD_DASHBOARD_ADDR" CHAT="http://$NWD_CHAT_ADDR" \
  SCREENSHOT_DIR="${SCREENSHOT_DIR:-$ROOT/target/browser}" CHAT_SCREENSHOT="${CHAT_SCREENSHOT:-}" \
  node "$ROOT/tests/browser/chat.mjs" || {
    echo "--- service logs ---"; tail -n 20 "$DATA"/logs/*.log; exit 1; }
# A shift with a transfer, a supervisor, a network drop and the switchboard
# (SHIFT_SERVER_SIDE=0 skips the steps that need handovers on the server).
DASHBOARD="http://$NWD_DASHBOARD_ADDR" PHONE="http://$NWD_PHONE_SIM_ADDR" CHAT="http://$NWD_CHAT_ADDR" \
  SCREENSHOT_DIR="${SCREENSHOT_DIR:-$ROOT/target/browser}" DOCS_SCREENSHOT_DIR="${DOCS_SCREENSHOT_DIR:-}" \
  SHIFT_SERVER_SIDE="${SHIFT_SERVER_SIDE:-1}" node "$ROOT/tests/browser/shift.mjs" || {
    echo "--- service logs ---"; tail -n 20 "$DATA"/logs/*.log; exit 1; }
