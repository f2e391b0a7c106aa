#!/usr/bin/env bash
# The test command (README): installs what the suite needs when it can, then runs it.
#
#   scripts/test.sh            # the whole suite
#   scripts/test.sh schema     # extra arguments go to `cargo test`
#
# Needs PostgreSQL server binaries (initdb, pg_ctl, postgres) and promtool. As root with
# apt-get they are installed from Debian's `postgresql` and `prometheus` packages; otherwise
# the script stops and names the package to install.
set -euo pipefail
cd "$(dirname "$0")/.."

have_pg() {
  command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1 && return 0
  command -v pg_config >/dev/null 2>&1 && [ -x "$(pg_config --bindir)/initdb" ] && return 0
  compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null 2>&1
}
have_promtool() { command -v promtool >/dev/null 2>&1; }

missing=()
have_pg || missing+=(postgresql)
have_promtool || missing+=(prometheus)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Debian packages: ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # The packages' own services are not wanted (policy-rc.d keeps them from starting).
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    rm -f /usr/sbin/policy-rc.d
  else
    echo "missing: ${missing[*]} — install the Debian package(s): sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
fi

cargo test --all-targets "$@"
