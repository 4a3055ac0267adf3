#!/usr/bin/env bash
# Downloads the .debs of scripts/gpu-deps.txt into DIR (default .gpu-deps,
# git-ignored), for a GPU host that has no package registry (the device
# machine): carry DIR, and there run
#   mkdir -p /tmp/deps; for f in DIR/*.deb; do dpkg -x "$f" /tmp/deps; done
#   SAE_DEPS_PREFIX=/tmp/deps scripts/gpu-check.sh
# Needs apt-get and a Debian 12 registry here (not root: apt-get download
# writes only into DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-.gpu-deps}
mkdir -p "$dir"
mapfile -t pkgs < <(grep -v '^\s*#' scripts/gpu-deps.txt | sed '/^\s*$/d')
(cd "$dir" && apt-get download "${pkgs[@]}" >/dev/null)
n=$(ls "$dir"/*.deb | wc -l)
echo "gpu-deps: $n .debs in $dir ($(du -sh "$dir" | cut -f1)); carry it to the GPU host (device run carry: [\"$dir\"])"
