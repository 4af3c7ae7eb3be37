#!/usr/bin/env bash
# scripts/cipher-qemu.sh: the fleet channel's cipher against SHA-256 on a router-class core,
# emulated: builds benches/cipher.rs for aarch64-musl and runs it under qemu-aarch64-static.
# The absolute speeds under emulation mean little; the ratio (seal time / hash time, same run,
# same emulated CPU) is the figure. Installs what it lacks (rustup target, qemu-user-static).
set -euo pipefail
cd "$(dirname "$0")/.."
target=aarch64-unknown-linux-musl
rustup target list --installed | grep -qx "$target" || rustup target add "$target" </dev/null
command -v qemu-aarch64-static >/dev/null || {
    apt-get install -y qemu-user-static </dev/null >/dev/null 2>&1 ||
        { apt-get update </dev/null >/dev/null && apt-get install -y qemu-user-static </dev/null >/dev/null; }
}
cargo bench --no-run --bench cipher --target "$target" </dev/null 2>/dev/null
bin=$(ls -t target/$target/release/deps/cipher-* | grep -v '\.d$' | head -n 1)
echo "== benches/cipher.rs under qemu-aarch64-static ($target)"
FLOTILLA_CIPHER_MIB=${FLOTILLA_CIPHER_MIB:-32} qemu-aarch64-static "$bin"
