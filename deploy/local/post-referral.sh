#!/usr/bin/env bash
# Posts a FHIR referral to the gateway as a partner would: signed with
# Standard Webhooks (openssl) and sent with curl. docs/partners.md.
#
#   deploy/local/post-referral.sh [file.json]
#
# Defaults: the demo hospital's secret (deploy/local/demo/directory.toml),
# a fresh webhook-id, the gateway of up.sh. Override with
#   NWD_GATEWAY_URL, NWD_REFERRAL_SECRET, NWD_REFERRAL_WEBHOOK_ID.
# Posting the same file with the same NWD_REFERRAL_WEBHOOK_ID again is a
# replay: the same 202, nothing new.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
file="${1:-$here/../../crates/fhir/tests/fixtures/valid-sr-ed-overdose-stat.json}"
url="${NWD_GATEWAY_URL:-http://${NWD_GATEWAY_ADDR:-127.0.0.1:8080}}"
secret="${NWD_REFERRAL_SECRET:-whsec_QVu2X5/F2Ii4S/QbOdrANPS6KcbXPmuVFyeqraD/QAo=}"
id="${NWD_REFERRAL_WEBHOOK_ID:-msg_$(date +%s%N)}"
ts="$(date +%s)"

# The HMAC key is the base64-decoded secret (without its whsec_ prefix).
key_hex="$(printf '%s' "${secret#whsec_}" | base64 -d | od -An -v -tx1 | tr -d ' \n')"
# Signed content: id.timestamp.body, the body byte for byte as sent.
signature="$({ printf '%s.%s.' "$id" "$ts"; cat "$file"; } |
  openssl dgst -sha256 -mac HMAC -macopt "hexkey:$key_hex" -binary | base64 | tr -d '\n')"

curl -sS -i -X POST "$url/v1/referrals" \
  -H 'content-type: application/fhir+json' \
  -H "webhook-id: $id" \
  -H "webhook-timestamp: $ts" \
  -H "webhook-signature: v1,$signature" \
  --data-binary "@$file"
echo
