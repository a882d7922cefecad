#!/usr/bin/env bash
# The test command (README): on a fresh Debian machine, as root, installs what the suite needs —
# Debian packages, a virtual environment with the project, a private Mosquitto running the
# configuration hazardwatch ships, real TimescaleDB in a chroot — then runs pytest with any
# arguments given. Idempotent, and quick when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '== %s\n' "$*"; }
die() { printf 'tests/run.sh: %s\n' "$*" >&2; exit 1; }

MQTT_PORT=${HAZARDWATCH_TEST_MQTT_PORT:-18830}
BROKER_DIR=${TMPDIR:-/tmp}/hazardwatch-test-broker
PY=${PYTHON:-python3}

# --- Debian packages -------------------------------------------------------------------------
pkgs=()
command -v mosquitto >/dev/null || pkgs+=(mosquitto)
command -v psql >/dev/null || pkgs+=(postgresql-client)
[ -n "$(ls /etc/postgresql 2>/dev/null)" ] || pkgs+=(postgresql)
command -v debootstrap >/dev/null || pkgs+=(debootstrap)
command -v chromium >/dev/null || pkgs+=(chromium)
# promtool checks the Prometheus alert rules shipped in deploy/ (the server itself is not started)
command -v promtool >/dev/null || pkgs+=(prometheus)
# a CJK font, so the board's screenshots (test-artifacts/) show Chinese text rather than boxes
dpkg -s fonts-wqy-microhei >/dev/null 2>&1 || pkgs+=(fonts-wqy-microhei)
$PY -c 'import venv, ensurepip' 2>/dev/null || pkgs+=(python3-venv)
if [ ${#pkgs[@]} -gt 0 ]; then
    [ "$(id -u)" = 0 ] || die "missing Debian packages (${pkgs[*]}); run as root or install them"
    say "installing Debian packages: ${pkgs[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
fi

# --- Python ----------------------------------------------------------------------------------
if [ ! -x .venv/bin/python ]; then
    say "creating .venv with $($PY --version)"
    $PY -m venv .venv
fi
say "installing hazardwatch and its test dependencies into .venv"
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[dev]' >.venv/pip.log 2>&1 \
    || { cat .venv/pip.log >&2; die "pip install failed"; }

# schemathesis in an environment of its own: grafana-client's niquests brings urllib3-future, which
# breaks the requests library schemathesis uses
if [ ! -x .venv-st/bin/schemathesis ]; then
    say "installing schemathesis into .venv-st"
    $PY -m venv .venv-st
    .venv-st/bin/python -m pip install -q --disable-pip-version-check 'schemathesis>=4,<5' >.venv-st/pip.log 2>&1 \
        || { cat .venv-st/pip.log >&2; die "pip install schemathesis failed"; }
fi

# --- PostgreSQL ------------------------------------------------------------------------------
if ! pg_isready -q -h 127.0.0.1 -p 5432; then
    say "starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -n 1)" main start
    for _ in $(seq 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 0.5; done
fi
pg_isready -q -h 127.0.0.1 -p 5432 || die "PostgreSQL does not answer on 127.0.0.1:5432"
say "PostgreSQL ready on 127.0.0.1:5432"

# --- the private broker, with the configuration hazardwatch ships ------------------------------
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
mkdir -p "$BROKER_DIR/data"
sed -e "s/^listener 1883 127.0.0.1$/listener $MQTT_PORT 127.0.0.1/" \
    -e "s#^persistence_location .*#persistence_location $BROKER_DIR/data/#" \
    deploy/mosquitto/hazardwatch.conf >"$BROKER_DIR/mosquitto.conf.new"
echo "pid_file $BROKER_DIR/data/mosquitto.pid" >>"$BROKER_DIR/mosquitto.conf.new"
if listening "$MQTT_PORT" && ! cmp -s "$BROKER_DIR/mosquitto.conf.new" "$BROKER_DIR/mosquitto.conf"; then
    say "shipped broker configuration changed: restarting the test broker"
    kill "$(cat "$BROKER_DIR/data/mosquitto.pid" 2>/dev/null)" 2>/dev/null || true
    for _ in $(seq 20); do listening "$MQTT_PORT" || break; sleep 0.25; done
fi
mv "$BROKER_DIR/mosquitto.conf.new" "$BROKER_DIR/mosquitto.conf"
if ! listening "$MQTT_PORT"; then
    # a fresh start forgets the last runs' queues: sessions that tests and benchmarks left behind hold
    # messages nobody reads, and a broker with gigabytes of them slows every test after
    rm -f "$BROKER_DIR"/data/mosquitto.db*
    # mosquitto started as root drops to its own user, which must own the persistence folder
    id mosquitto >/dev/null 2>&1 && chown -R mosquitto "$BROKER_DIR/data"
    mosquitto -d -c "$BROKER_DIR/mosquitto.conf" || die "mosquitto refused $BROKER_DIR/mosquitto.conf"
    for _ in $(seq 40); do listening "$MQTT_PORT" && break; sleep 0.25; done
fi
listening "$MQTT_PORT" || die "the test broker does not listen on 127.0.0.1:$MQTT_PORT"
say "Mosquitto (deploy/mosquitto/hazardwatch.conf) ready on 127.0.0.1:$MQTT_PORT"

# --- TimescaleDB -----------------------------------------------------------------------------
bash .ci/timescaledb.sh

# --- the suite -------------------------------------------------------------------------------
export HW_TEST_PG_URL=${HW_TEST_PG_URL:-postgresql://postgres@127.0.0.1:5432/postgres}
export HW_TEST_TSDB_URL=${HW_TEST_TSDB_URL:-postgresql://postgres@127.0.0.1:5433/postgres}
export HW_TEST_MQTT_URL=${HW_TEST_MQTT_URL:-mqtt://127.0.0.1:$MQTT_PORT}
export HW_TEST_CHROMIUM=${HW_TEST_CHROMIUM:-$(command -v chromium || true)}
say "running pytest $*"
set +e
.venv/bin/python -m pytest "$@"
rc=$?
set -e
if [ "$rc" = 5 ]; then
    die "pytest collected no tests: that is a failure, not a pass"
fi
exit "$rc"
