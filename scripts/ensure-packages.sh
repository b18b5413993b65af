#!/usr/bin/env bash
# Usage: scripts/ensure-packages.sh PACKAGE...
# Installs the Debian packages that are missing. As root it runs apt-get; as
# anyone else it prints the exact command to run and exits non-zero.
set -euo pipefail

missing=()
for package in "$@"; do
  if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$package")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

command="apt-get update && apt-get install -y --no-install-recommends ${missing[*]}"
if [ "$(id -u)" -ne 0 ]; then
  echo "cbm: missing Debian packages: ${missing[*]}" >&2
  echo "cbm: run as root:  $command" >&2
  exit 1
fi
echo "cbm: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
