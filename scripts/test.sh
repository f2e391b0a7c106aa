#!/usr/bin/env bash
# The test command (README): installs what the suite needs when it can, then runs it.
#
#   scripts/test.sh            # the whole suite
#   scripts/test.sh schema     # extra arguments go to `cargo test`
#
# Needs PostgreSQL server binaries (initdb, pg_ctl, postgres), promtool, systemd-analyze, strace,
# pgbouncer (the pooled probe targets of `bench burst`, run small by tests/bench_smoke.rs) and
# libfaketime (skewed replica clocks, tests/faults.rs). As root with apt-get they are installed
# from Debian's `postgresql`, `prometheus`, `systemd`, `strace`, `pgbouncer` and `faketime`
# packages; otherwise the script stops and names the package to install.
#
# The deploy/ validators (tests/deploy.rs) are pinned in deploy/tools/ and installed under
# target/deploy-tools (or $TOYGRES_DEPLOY_TOOLS): a Python venv from PyPI and npm packages,
# reinstalled only when deploy/tools/ changes.
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
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
command -v strace >/dev/null 2>&1 || missing+=(strace)
{ command -v pgbouncer >/dev/null 2>&1 || [ -x /usr/sbin/pgbouncer ]; } || missing+=(pgbouncer)
# libfaketime: a replica's skewed wall clock (tests/faults.rs).
compgen -G "/usr/lib/*/faketime/libfaketimeMT.so.1" >/dev/null 2>&1 || missing+=(faketime)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
command -v npm >/dev/null 2>&1 || missing+=(npm)
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

# The previous release's binary, for the rolling-upgrade test (tests/upgrade.rs): built
# once from git history into target/, sharing the dependency builds, under its own binary
# name so it never replaces this release's `toygres-actors`.
PREV_RELEASE=e663728
prev_bin="target/debug/toygres-actors-prev-$PREV_RELEASE"
if [ ! -x "$prev_bin" ]; then
  echo "building the previous release ($PREV_RELEASE) for the upgrade test" >&2
  prev_src="$(mktemp -d)"
  git archive "$PREV_RELEASE" | tar -x -C "$prev_src"
  sed -i -e "s/^default-run = \"toygres-actors\"$/default-run = \"toygres-actors-prev-$PREV_RELEASE\"/" \
         -e "0,/^name = \"toygres-actors\"$/! s/^name = \"toygres-actors\"$/name = \"toygres-actors-prev-$PREV_RELEASE\"/" \
         "$prev_src/Cargo.toml"
  (root="$PWD" && cd "$prev_src" && CARGO_TARGET_DIR="$root/target" cargo build --locked --bin "toygres-actors-prev-$PREV_RELEASE")
  rm -rf "$prev_src"
fi
export TOYGRES_ACTORS_PREV_BIN="$PWD/$prev_bin"

# deploy/ validators: pinned, installed once per version of deploy/tools/.
deploy_tools="${TOYGRES_DEPLOY_TOOLS:-$PWD/target/deploy-tools}"
export TOYGRES_DEPLOY_TOOLS="$deploy_tools"
deploy_pins="$(cat deploy/tools/requirements.txt deploy/tools/package.json deploy/tools/package-lock.json | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$deploy_tools/installed" 2>/dev/null)" != "$deploy_pins" ]; then
  echo "installing the deploy validators (deploy/tools/) under $deploy_tools" >&2
  rm -rf "$deploy_tools/venv" "$deploy_tools/node"
  mkdir -p "$deploy_tools/node"
  python3 -m venv "$deploy_tools/venv"
  "$deploy_tools/venv/bin/pip" install --disable-pip-version-check -q -r deploy/tools/requirements.txt
  cp deploy/tools/package.json deploy/tools/package-lock.json "$deploy_tools/node/"
  (cd "$deploy_tools/node" && npm ci --no-audit --no-fund --loglevel=error)
  echo "$deploy_pins" > "$deploy_tools/installed"
fi

cargo test --all-targets --features failpoints "$@"
