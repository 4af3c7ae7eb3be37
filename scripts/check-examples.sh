#!/usr/bin/env bash
# Checks the packaging examples: the systemd unit with systemd-analyze (pointed at the binary
# this repo builds, since the unit names its installed path) and the OpenWrt init script's syntax.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(pwd)/target/release/flotilla
[ -x "$bin" ] || cargo build --release --bin flotilla
command -v systemd-analyze >/dev/null || { apt-get install -y -q systemd >/dev/null 2>&1 || { apt-get update -q && apt-get install -y -q systemd; }; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
sed "s#/usr/bin/flotilla#$bin#" examples/flotilla.service >"$tmp/flotilla.service"
systemd-analyze verify "$tmp/flotilla.service"
sh -n examples/openwrt-flotilla.init
echo "examples ok: flotilla.service verifies, openwrt-flotilla.init parses"
