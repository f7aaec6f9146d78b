#!/usr/bin/env bash
# Installs what Ferry needs on a fresh Debian machine: the NBD clients and tools the
# test suite and benchmarks drive (qemu-utils, libnbd tools and python bindings, fio,
# nbdkit, nbdfuse, e2fsprogs, openssl, iproute2, nftables; chromium for the console's
# browser tests, driven by playwright-core), then the npm packages
# (which builds better-sqlite3 and Ferry's native I/O addon from source). `npm start` and
# `npm test` run it through scripts/ensure-deps.js when something is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# `install-deps.sh server`: only what ferryd itself needs (openssl makes the site identity).
if [ "${1:-all}" = server ]; then
  pkgs=(openssl)
else
  pkgs=(qemu-utils nbdkit libnbd-bin python3-libnbd fio nbdfuse fuse3 e2fsprogs util-linux openssl iproute2 nftables procps chromium)
fi
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if [ -f package-lock.json ]; then npm ci --no-audit --no-fund; else npm install --no-audit --no-fund; fi
# Fail loudly if a native build was skipped (npm 11 skips unapproved install scripts).
node -e "require('better-sqlite3')(':memory:').close()"
node -e "require('./build/Release/ferry_io.node')"
node -e "const z = require('zstd-napi'); if (z.decompress(z.compress(Buffer.from('ferry'))).toString() !== 'ferry') process.exit(1)"
