#!/usr/bin/env bash
# Interop check against js-libp2p (see README.md). Starts the tern-relay binary given as
# $1 (default target/debug/tern-relay) on 127.0.0.1, installs the pinned js-libp2p packages
# into a temporary directory, runs js-libp2p.mjs against the relay, and stops the relay.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
relay_bin="${1:-target/debug/tern-relay}"
work="$(mktemp -d)"
relay_pid=""
cleanup() {
  if [ -n "$relay_pid" ]; then kill "$relay_pid" 2>/dev/null || true; wait "$relay_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

cp "$here/package.json" "$here/package-lock.json" "$here/js-libp2p.mjs" "$work/"
(cd "$work" && npm ci --no-audit --no-fund --loglevel=error)

"$relay_bin" --data "$work/relay-data" --listen /ip4/127.0.0.1/tcp/0 >"$work/relay.out" 2>"$work/relay.err" &
relay_pid=$!
addr=""
for _ in $(seq 1 300); do
  addr="$(grep -m1 '/tcp/' "$work/relay.out" || true)"
  [ -n "$addr" ] && break
  sleep 0.05
done
[ -n "$addr" ] || { echo "FAIL relay printed no address"; cat "$work/relay.err"; exit 1; }

(cd "$work" && node js-libp2p.mjs "$addr")
