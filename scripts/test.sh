#!/usr/bin/env bash
# The test command: installs what the tests need on a clean machine (CPU torch,
# the package with its test extras, Debian's chromium for the browser tests and
# caddy for the reverse-proxy one, Mesa's software EGL for the rendering ones, which
# DLITE_REQUIRE_GL=1 makes fail rather than skip without it, a throw-away PostgreSQL for the PostgreSQL
# tests, and SkyPilot in a virtual environment of its own for `dlite launch`'s), then lints
# (ruff), checks the formatting (ruff format) and the types (mypy), and runs pytest.
# Extra arguments go to pytest (e.g. `-m slow`).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null 2>&1; then sudo -n "$@"; else return 1; fi; }
apt_install() { as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null ||
                { as_root apt-get update -qq >/dev/null && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null; }; }

bash scripts/install-torch.sh
"$PY" -m pip install -q -e '.[test,postgres]'

if [ ! -x /usr/bin/chromium ]; then
  echo "installing chromium for the browser test" >&2
  apt_install chromium || echo "could not install chromium: the browser test will fail in CI" >&2
fi
# MuJoCo renders the recorded episodes through EGL (MUJOCO_GL=egl); Mesa's software driver needs no GPU
export DLITE_REQUIRE_GL=1
if ! dpkg -s libegl1 libgl1-mesa-dri >/dev/null 2>&1; then
  echo "installing libegl1 and libgl1-mesa-dri for the rendering tests" >&2
  apt_install libegl1 libgl1-mesa-dri || echo "could not install libegl1 libgl1-mesa-dri: the rendering tests will fail" >&2
fi
for tool in caddy openssl; do  # the TLS reverse proxy in front of the server (tests/test_proxy_browser.py)
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "installing $tool for the reverse-proxy browser test" >&2
    apt_install "$tool" || echo "could not install $tool: the proxy browser test will fail in CI" >&2
  fi
done

start_postgres() {
  # A throw-away cluster on a private port, started as the postgres user; skipped
  # (and its tests with it) where we cannot be root and none is configured.
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || apt_install postgresql || return 1
  local bin dir
  bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
  dir=$(mktemp -d /tmp/dlite-pg.XXXXXX)
  as_root chown postgres "$dir" || return 1
  as_root su postgres -s /bin/sh -c "$bin/initdb -D $dir/data -A trust -U postgres >/dev/null" || return 1
  as_root su postgres -s /bin/sh -c "$bin/pg_ctl -D $dir/data -w -l $dir/log \
      -o '-p 55432 -k $dir -c listen_addresses=127.0.0.1' start >/dev/null" || return 1
  export DLITE_TEST_POSTGRES_URL="postgresql+psycopg://postgres@127.0.0.1:55432/postgres"
  trap "as_root su postgres -s /bin/sh -c '$bin/pg_ctl -D $dir/data -m fast stop' >/dev/null 2>&1; as_root rm -rf $dir" EXIT
}
if [ -z "${DLITE_TEST_POSTGRES_URL:-}" ]; then
  start_postgres || echo "no PostgreSQL: its tests are skipped" >&2
fi

# SkyPilot (the `cloud` extra) pins click and uvicorn below the lab's own, so it gets a virtual
# environment of its own that sees the lab's packages, as docs/many-gpus.md tells users to make;
# `dlite launch`'s tests run there (in the main environment they skip).
CLOUD_VENV=${DLITE_CLOUD_VENV:-$HOME/.venvs/dlite-cloud}
[ -x "$CLOUD_VENV/bin/python" ] || "$PY" -m venv --system-site-packages "$CLOUD_VENV"
"$CLOUD_VENV/bin/python" -m pip install -q -e '.[cloud]'

"$PY" -m ruff check .  # lint first: seconds, and a red lint needs no 15-minute suite to show it
"$PY" -m ruff format --check .
"$PY" -m mypy  # the type check, over the tree pyproject.toml's [tool.mypy] names
if [ $# -eq 0 ]; then
  "$CLOUD_VENV/bin/python" -m pytest -q -p no:cacheprovider tests/test_launch_skypilot.py
fi
"$PY" -m pytest "$@"
