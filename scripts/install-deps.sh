#!/usr/bin/env bash
# Installs what Ferry needs on a fresh Debian machine: the NBD clients and tools the
# test suite and benchmarks drive (qemu-utils, libnbd tools and python bindings, fio,
# nbdkit, nbdfuse, e2fsprogs, openssl, iproute2, nftables; chromium for the console's
# browser tests, driven by playwright-core), then the npm packages
# (which builds better-sqlite3 and Ferry's native I/O addon from source). `npm start` and
# `npm test` run it through scripts/ensure-deps.js when something is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# What is needed, as COMMAND:PACKAGE: a command to find on PATH and the Debian package that
# provides it (checked with `apt-cache policy` on Debian 12). A machine where every command is
# there runs no apt at all. nbdfuse is no package of its own since libnbd 1.4 (libnbd-bin
# provides it): asking dpkg for a package `nbdfuse` always found it missing.
# `install-deps.sh server`: only what ferryd itself needs (openssl makes the site identity).
if [ "${1:-all}" = server ]; then
  needs=(openssl:openssl)
else
  needs=(
    qemu-img:qemu-utils qemu-io:qemu-utils qemu-nbd:qemu-utils
    nbdkit:nbdkit
    nbdinfo:libnbd-bin nbdcopy:libnbd-bin nbdfuse:libnbd-bin
    nbdsh:python3-libnbd
    fio:fio
    fusermount3:fuse3
    mkfs.ext4:e2fsprogs e2fsck:e2fsprogs
    losetup:mount blockdev:util-linux
    openssl:openssl
    ip:iproute2
    nft:nftables
    ps:procps
    chromium:chromium
  )
fi
# losetup, nft, mkfs.ext4... live in sbin, which a non-root PATH may lack.
export PATH="$PATH:/usr/sbin:/sbin"
missing=()
for need in "${needs[@]}"; do
  cmd="${need%%:*}" pkg="${need#*:}"
  command -v "$cmd" >/dev/null 2>&1 && continue
  [[ " ${missing[*]} " == *" $pkg "* ]] || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "installing Debian packages (for commands not found): ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if [ -f package-lock.json ]; then npm ci --no-audit --no-fund; else npm install --no-audit --no-fund; fi
# Fail loudly if a native build was skipped (npm 11 skips unapproved install scripts).
node -e "require('better-sqlite3')(':memory:').close()"
node -e "require('./build/Release/ferry_io.node')"
node -e "const z = require('zstd-napi'); if (z.decompress(z.compress(Buffer.from('ferry'))).toString() !== 'ferry') process.exit(1)"
