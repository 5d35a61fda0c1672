#!/usr/bin/env bash
# Install Debian's SoftHSM2 when it is missing: the PKCS#11 token signing keys live in during development and CI.
# (`python manage.py softhsm_setup` then initialises the token in .data/softhsm/.)
set -euo pipefail

if ! command -v softhsm2-util >/dev/null || [ ! -e /usr/lib/softhsm/libsofthsm2.so ]; then
    echo "softhsm: installing SoftHSM2 from Debian" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq softhsm2 >/dev/null
fi
