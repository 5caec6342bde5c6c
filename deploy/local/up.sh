#!/usr/bin/env bash
# Runs the whole line locally: builds, installs a pinned nats-server into
# .tools/, starts it (JetStream, file storage, sync_interval: always, store
# under .data/) and every service with the demo directory, prints the URLs
# and demo logins, and runs until Ctrl-C, which stops everything cleanly.
# Every NWD_* variable already set in the environment overrides its default.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"

"$ROOT/deploy/local/install-tools.sh"

PROFILE="${NWD_PROFILE:-release}"
echo "==> building the services ($PROFILE)"
cargo build --quiet --profile "$PROFILE" \
  -p nwd-gateway -p nwd-intake -p nwd-triage -p nwd-router -p nwd-escalator -p nwd-runtime \
  -p nwd-dashboard -p nwd-notifier -p nwd-referrals -p nwd-phone-sim -p nwd-chat
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
BIN="$TARGET_DIR/$([[ $PROFILE == dev ]] && echo debug || echo "$PROFILE")"

# ---- configuration (each overridable from the environment) ----
export NWD_DATA_DIR="${NWD_DATA_DIR:-$ROOT/.data}"
export NWD_NATS_PORT="${NWD_NATS_PORT:-4222}"
export NWD_NATS_MONITOR_PORT="${NWD_NATS_MONITOR_PORT:-8222}"
export NWD_NATS_URL="${NWD_NATS_URL:-nats://127.0.0.1:$NWD_NATS_PORT}"
export NWD_NATS_STORE_DIR="${NWD_NATS_STORE_DIR:-$NWD_DATA_DIR/jetstream}"
export NWD_NATS_PORTS_DIR="${NWD_NATS_PORTS_DIR:-$NWD_DATA_DIR/nats}"
export NWD_GATEWAY_ADDR="${NWD_GATEWAY_ADDR:-127.0.0.1:8080}"
export NWD_GATEWAY_PUBLIC_URL="${NWD_GATEWAY_PUBLIC_URL:-http://$NWD_GATEWAY_ADDR}"
export NWD_GATEWAY_SPOOL_DIR="${NWD_GATEWAY_SPOOL_DIR:-$NWD_DATA_DIR/gateway-spool}"
export NWD_DASHBOARD_ADDR="${NWD_DASHBOARD_ADDR:-127.0.0.1:8090}"
export NWD_CHAT_ADDR="${NWD_CHAT_ADDR:-127.0.0.1:8081}"
export NWD_PHONE_SIM_ADDR="${NWD_PHONE_SIM_ADDR:-127.0.0.1:8070}"
export NWD_PHONE_SIM_GATEWAY_URL="${NWD_PHONE_SIM_GATEWAY_URL:-$NWD_GATEWAY_PUBLIC_URL}"
export NWD_INTAKE_METRICS_ADDR="${NWD_INTAKE_METRICS_ADDR:-127.0.0.1:9101}"
export NWD_TRIAGE_METRICS_ADDR="${NWD_TRIAGE_METRICS_ADDR:-127.0.0.1:9102}"
export NWD_ROUTER_METRICS_ADDR="${NWD_ROUTER_METRICS_ADDR:-127.0.0.1:9103}"
export NWD_ESCALATOR_METRICS_ADDR="${NWD_ESCALATOR_METRICS_ADDR:-127.0.0.1:9107}"
export NWD_NOTIFIER_METRICS_ADDR="${NWD_NOTIFIER_METRICS_ADDR:-127.0.0.1:9104}"
export NWD_REFERRALS_METRICS_ADDR="${NWD_REFERRALS_METRICS_ADDR:-127.0.0.1:9108}"
export NWD_DIRECTORY="${NWD_DIRECTORY:-$ROOT/deploy/local/demo/directory.toml}"
# Local run: the notifier talks to the phone simulator instead of Twilio.
export NWD_TWILIO_API_BASE="${NWD_TWILIO_API_BASE:-http://$NWD_PHONE_SIM_ADDR}"
export NWD_TWILIO_ACCOUNT_SID="${NWD_TWILIO_ACCOUNT_SID:-AC00000000000000000000000000000000}"
# Demo secrets only: production must set its own (the services have no default).
export NWD_TWILIO_AUTH_TOKEN="${NWD_TWILIO_AUTH_TOKEN:-demo0000000000000000000000000000}"
mkdir -p "$NWD_DATA_DIR/logs"
if [[ -z "${NWD_SESSION_KEY:-}" ]]; then
  [[ -s "$NWD_DATA_DIR/session.key" ]] || head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$NWD_DATA_DIR/session.key"
  NWD_SESSION_KEY="$(cat "$NWD_DATA_DIR/session.key")"
  export NWD_SESSION_KEY
fi
# Dev pseudonym key (keys senders' threads; intake has no default): made
# once per data dir and kept, so that open threads survive a restart.
if [[ -z "${NWD_PSEUDONYM_KEY:-}" ]]; then
  [[ -s "$NWD_DATA_DIR/pseudonym.key" ]] || { printf 'dev-only-'; head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n'; } > "$NWD_DATA_DIR/pseudonym.key"
  NWD_PSEUDONYM_KEY="$(cat "$NWD_DATA_DIR/pseudonym.key")"
  export NWD_PSEUDONYM_KEY
fi

# Dev chat token key (keys the stored hashes of patients' chat tokens; the
# chat has no default): made once per data dir, so open chats survive a restart.
if [[ -z "${NWD_CHAT_TOKEN_KEY:-}" ]]; then
  [[ -s "$NWD_DATA_DIR/chat-token.key" ]] || { printf 'dev-only-'; head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n'; } > "$NWD_DATA_DIR/chat-token.key"
  NWD_CHAT_TOKEN_KEY="$(cat "$NWD_DATA_DIR/chat-token.key")"
  export NWD_CHAT_TOKEN_KEY
fi

# NATS credentials: one random password per user, generated once into
# .data/nats/ (mode 600; delete a file and re-run to rotate it). nats-server
# reads them from NWD_NATS_PASSWORD_<USER>; each service gets only its own,
# as a file (NWD_NATS_PASSWORD_FILE). Letters and digits only: the server
# parses the variable's value as config.
NATS_USERS=(gateway chat intake triage router escalator notifier referrals dashboard operator system)
mkdir -p "$NWD_DATA_DIR/nats"
chmod 700 "$NWD_DATA_DIR/nats"
for user in "${NATS_USERS[@]}"; do
  pwfile="$NWD_DATA_DIR/nats/$user.password"
  if [[ ! -s "$pwfile" ]]; then
    (umask 077; printf 'p%s' "$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')" > "$pwfile")
  fi
  chmod 600 "$pwfile"
done
nats_password() { cat "$NWD_DATA_DIR/nats/$1.password"; }
# Becomes "$@" run as NATS user $1 (its password file, nothing else); it
# execs, so call it in the background (start) or in a subshell.
as_nats_user() { # user command...
  local user="$1"; shift
  exec env NWD_NATS_USER="$user" NWD_NATS_PASSWORD_FILE="$NWD_DATA_DIR/nats/$user.password" "$@"
}

PIDS=()
stop_all() {
  trap - INT TERM EXIT
  echo
  echo "==> stopping"
  # Services first (they drain in-flight work), then NATS.
  for ((i=${#PIDS[@]}-1; i>=0; i--)); do kill -TERM "${PIDS[i]}" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -f "$NWD_DATA_DIR/pids"
  echo "==> stopped"
}

# A previous run killed without cleanup may have left processes behind.
if [[ -f "$NWD_DATA_DIR/pids" ]]; then
  while read -r pid; do kill -TERM "$pid" 2>/dev/null || true; done < "$NWD_DATA_DIR/pids"
  sleep 1
  rm -f "$NWD_DATA_DIR/pids"
fi
trap stop_all INT TERM EXIT

wait_http() { # url name
  for _ in $(seq 1 200); do
    if curl -fsS -o /dev/null "$1" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "!! $2 did not become ready at $1; see $NWD_DATA_DIR/logs/$2.log" >&2
  return 1
}

start() { # name binary
  local name="$1"; shift
  "$@" >>"$NWD_DATA_DIR/logs/$name.log" 2>&1 &
  PIDS+=($!)
  echo $! >> "$NWD_DATA_DIR/pids"
}

echo "==> starting nats-server (accounts, JetStream, file storage, sync_interval: always)"
mkdir -p "$NWD_NATS_STORE_DIR"
# The shipped file as it is: ports, store and passwords come from the
# environment (deploy/nats/nats.conf says which variables).
(
  for user in "${NATS_USERS[@]}"; do
    export "NWD_NATS_PASSWORD_${user^^}=$(nats_password "$user")"
  done
  exec "$ROOT/.tools/bin/nats-server" -c "$ROOT/deploy/nats/nats.conf"
) >>"$NWD_DATA_DIR/logs/nats.log" 2>&1 &
PIDS+=($!)
echo $! >> "$NWD_DATA_DIR/pids"
wait_http "http://127.0.0.1:$NWD_NATS_MONITOR_PORT/healthz?js-enabled-only=true" nats

echo "==> setting up streams and buckets (as the NATS operator)"
(as_nats_user operator "$BIN/nwd-bus" setup)

echo "==> loading the directory ($NWD_DIRECTORY) into the live directory bucket"
# Services follow the bucket; change it at run time (as the operator) with
#   NWD_NATS_USER=operator NWD_NATS_PASSWORD_FILE=.data/nats/operator.password \
#     $BIN/nwd-directory put FILE
(as_nats_user operator "$BIN/nwd-directory" put "$NWD_DIRECTORY")

echo "==> starting services (each as its own NATS user)"
start gateway   as_nats_user gateway   "$BIN/nwd-gateway"
start intake    as_nats_user intake    "$BIN/nwd-intake"
start triage    as_nats_user triage    "$BIN/nwd-triage"
start router    as_nats_user router    "$BIN/nwd-router"
start escalator as_nats_user escalator "$BIN/nwd-escalator"
start notifier  as_nats_user notifier  "$BIN/nwd-notifier"
start referrals as_nats_user referrals "$BIN/nwd-referrals"
start dashboard as_nats_user dashboard "$BIN/nwd-dashboard"
start chat      as_nats_user chat      "$BIN/nwd-chat"
start phone-sim "$BIN/nwd-phone-sim"
wait_http "http://$NWD_GATEWAY_ADDR/readyz" gateway
wait_http "http://$NWD_INTAKE_METRICS_ADDR/readyz" intake
wait_http "http://$NWD_TRIAGE_METRICS_ADDR/readyz" triage
wait_http "http://$NWD_ROUTER_METRICS_ADDR/readyz" router
wait_http "http://$NWD_ESCALATOR_METRICS_ADDR/readyz" escalator
wait_http "http://$NWD_NOTIFIER_METRICS_ADDR/readyz" notifier
wait_http "http://$NWD_REFERRALS_METRICS_ADDR/readyz" referrals
wait_http "http://$NWD_DASHBOARD_ADDR/readyz" dashboard
wait_http "http://$NWD_CHAT_ADDR/readyz" chat
wait_http "http://$NWD_PHONE_SIM_ADDR/readyz" phone-sim

cat <<INFO

  No Wrong Door is running.

  Dashboard        http://$NWD_DASHBOARD_ADDR/
    logins         ana / ana-demo      (counsellor, English + Spanish)
                   ben / ben-demo      (counsellor)
                   chloe / chloe-demo  (counsellor)
                   diego / diego-demo  (counsellor, Spanish + English)
                   sam / sam-demo      (supervisor)
  Patient chat     http://$NWD_CHAT_ADDR/   (the line's own chat page; ?lang=es in Spanish)
    partner demo   http://$NWD_CHAT_ADDR/demo   (a partner page embedding the chat with two lines of HTML)
  Phone simulator  http://$NWD_PHONE_SIM_ADDR/   (play a patient; development only)
  Gateway          http://$NWD_GATEWAY_ADDR/v1/sms/twilio
  Twilio auth token (demo)  $NWD_TWILIO_AUTH_TOKEN
  Partner referrals http://$NWD_GATEWAY_ADDR/v1/referrals   (docs/partners.md)
    post a demo referral, signed as County General Hospital ED:
                   deploy/local/post-referral.sh [crates/fhir/tests/fixtures/valid-*.json]
  NATS             $NWD_NATS_URL   (monitoring http://127.0.0.1:$NWD_NATS_MONITOR_PORT/, loopback, no auth)
    credentials    $NWD_DATA_DIR/nats/<user>.password   (operator: nwd-bus, nwd-directory)
  Logs             $NWD_DATA_DIR/logs/

  Ctrl-C stops everything.
INFO

if [[ -z "${NWD_NO_BROWSER:-}" ]]; then
  for opener in xdg-open open; do
    if command -v "$opener" >/dev/null 2>&1; then "$opener" "http://$NWD_DASHBOARD_ADDR/" >/dev/null 2>&1 || true; break; fi
  done
fi

# Run until Ctrl-C or until any process dies (then stop the rest).
wait -n "${PIDS[@]}" || true
echo "!! a process exited; see $NWD_DATA_DIR/logs/" >&2
