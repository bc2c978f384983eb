#!/bin/bash
# Installs what the build and the tests need: the Debian packages in .ci/apt-packages and
# the cargo tools in .ci/cargo-tools. Idempotent: installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=$(grep -v '^\s*#' .ci/apt-packages | awk 'NF {print $1}')
missing=()
for p in $packages; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "deps: installing Debian packages: ${missing[*]}"
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

for tool in $(grep -v '^\s*#' .ci/cargo-tools | awk 'NF {print $1}'); do
    name=${tool%@*}
    if ! command -v "$name" >/dev/null 2>&1 && ! [ -x "$HOME/.cargo/bin/$name" ]; then
        echo "deps: installing cargo tool $tool"
        if [ "$name" != "$tool" ]; then
            cargo install --locked "$name" --version "${tool#*@}"
        else
            cargo install --locked "$name"
        fi
    fi
done
