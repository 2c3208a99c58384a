# shellcheck shell=bash
# The set-up shared by scripts/test, scripts/demo, scripts/bench, scripts/chaos
# and .ci/run (source it; it defines functions and changes nothing by itself).
#
# ensure_services: makes sure RabbitMQ and Redis answer at KILN_AMQP_URL and
#   KILN_REDIS_URL (defaults amqp://guest:guest@127.0.0.1:5672/%2f and
#   redis://127.0.0.1:6379). When nothing answers there, it starts a private,
#   throwaway instance of each on free loopback ports, exports the two URLs
#   (and the RabbitMQ CLI's environment: the tests call `rabbitmqctl`) for the
#   rest of the script, and stops them and deletes their data when the script
#   exits. Their files live in <cargo target dir>/services/run-XXXXXX (the
#   target directory cargo reports, so CARGO_TARGET_DIR and .cargo/config are
#   honoured); KILN_KEEP_SERVICES=1 keeps the directory for a post-mortem.
# ensure_nextest, ensure_chromium, ensure_iproute, ensure_client_deps: the
#   other tools; Debian packages are installed with apt-get when the user is
#   root, otherwise one line names the package to install and the script ends.
#
# Everything that needs the network (apt, cargo install, cargo fetch, the
# client examples' dependencies) lives in the ensure_* functions, so that CI
# can run them before entering a network namespace (.ci/run).

kiln_log() { printf '== %s\n' "$*" >&2; }
kiln_die() {
  printf 'kiln: %s\n' "$*" >&2
  exit 1
}

# --- exit hooks: run in reverse order of registration, also on Ctrl-C ------
_kiln_at_exit=()
kiln_at_exit() {
  if [ "${#_kiln_at_exit[@]}" -eq 0 ]; then
    trap _kiln_run_exit_hooks EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
  fi
  _kiln_at_exit+=("$1")
}
_kiln_run_exit_hooks() {
  local status=$? i
  for ((i = ${#_kiln_at_exit[@]} - 1; i >= 0; i--)); do
    eval "${_kiln_at_exit[$i]}" || true
  done
  _kiln_at_exit=()
  return "$status"
}

# --- addresses ---------------------------------------------------------------
# "host port" of a server URL (scheme://[user[:password]@]host[:port][/path]).
kiln_url_host_port() {
  local url=$1 default_port=$2 rest host port
  rest=${url#*://}
  rest=${rest##*@}
  rest=${rest%%/*}
  rest=${rest%%\?*}
  if [[ $rest == \[* ]]; then
    host=${rest%%]*}
    host=${host#[}
    port=${rest#*]}
  else
    host=${rest%%:*}
    port=${rest#"$host"}
  fi
  port=${port#:}
  printf '%s %s\n' "$host" "${port:-$default_port}"
}

# True when something accepts TCP connections at host:port (2 s at most, for
# a remote address that drops packets).
kiln_port_open() {
  timeout 2 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$1" "$2" 2>/dev/null
}

kiln_wait_port() {
  local host=$1 port=$2 name=$3 pid=$4 log=$5
  for _ in $(seq 1 300); do
    kiln_port_open "$host" "$port" && return 0
    if ! kill -0 "$pid" 2>/dev/null; then break; fi
    sleep 0.2
  done
  [ -f "$log" ] && tail -n 30 "$log" >&2
  kiln_die "$name did not start listening on $host:$port (log: $log)"
}

# A loopback port nothing listens on, different from those given. Random in
# 20000-44999: the RabbitMQ CLI takes its own ports at the distribution port
# + 10000, which must stay below 65536.
kiln_free_port() {
  local p taken=" $* "
  for _ in $(seq 1 200); do
    p=$((20000 + RANDOM % 25000))
    [[ $taken == *" $p "* ]] && continue
    kiln_port_open 127.0.0.1 "$p" || {
      echo "$p"
      return 0
    }
  done
  kiln_die "no free port found on 127.0.0.1"
}

# Sets KILN_TARGET to cargo's target directory (target/ unless
# CARGO_TARGET_DIR or a .cargo/config says otherwise): the binaries the
# scripts run and the private servers' files are there.
kiln_target_dir() {
  [ -n "${KILN_TARGET:-}" ] && return 0
  KILN_TARGET=$(cargo metadata --format-version 1 --no-deps --offline 2>/dev/null |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
  [ -n "$KILN_TARGET" ] || KILN_TARGET=${CARGO_TARGET_DIR:-$PWD/target}
}

# --- packages ----------------------------------------------------------------
_kiln_apt_updated=0
kiln_apt_install() {
  if [ "$_kiln_apt_updated" = 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    _kiln_apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
}

# kiln_need COMMAND PACKAGE [PATH]: installs PACKAGE when COMMAND is not on
# PATH (nor at PATH, if given) and the user is root; otherwise one line
# naming the package, and exit.
kiln_need() {
  local cmd=$1 pkg=$2 path=${3:-}
  command -v "$cmd" >/dev/null && return 0
  [ -n "$path" ] && [ -x "$path" ] && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    kiln_log "$cmd missing: installing the Debian package $pkg"
    kiln_apt_install "$pkg" >&2
  else
    kiln_die "$cmd not found: install the Debian package $pkg (sudo apt-get install $pkg)"
  fi
}

ensure_nextest() {
  cargo nextest --version >/dev/null 2>&1 && return 0
  kiln_log "cargo-nextest missing: installing it (cargo install --locked cargo-nextest)"
  cargo install --locked cargo-nextest
}

# The status page test loads the pages in headless Chromium; under CI it
# fails rather than skips without it.
ensure_chromium() {
  command -v chromium >/dev/null || command -v chromium-browser >/dev/null ||
    kiln_need chromium chromium
}

# `ip`, to bring up the loopback interface of a network namespace.
ensure_iproute() { kiln_need ip iproute2; }

# The client examples' own dependencies (Python, Node), installed while the
# network is there: each examples/clients/<language>/ may carry an executable
# `prepare` that installs what it needs (idempotent). CI calls this before it
# enters the network namespace.
ensure_client_deps() {
  kiln_need python3 python3
  kiln_need node nodejs
  kiln_need npm npm
  kiln_log "client dependencies: examples/clients/install.sh"
  examples/clients/install.sh
}

# The Debian packages of the two servers, installed (when root) but not
# started: for CI, which installs before it leaves the network.
ensure_service_packages() {
  kiln_need redis-server redis-server
  kiln_need rabbitmq-server rabbitmq-server /usr/lib/rabbitmq/bin/rabbitmq-server
}

# --- the private servers -------------------------------------------------------
# Sets _kiln_svc_dir, created once per script (not in a subshell: it
# registers its removal).
_kiln_services_dir() {
  [ -n "${_kiln_svc_dir:-}" ] && return 0
  kiln_target_dir
  mkdir -p "$KILN_TARGET/services"
  _kiln_svc_dir=$(mktemp -d "$KILN_TARGET/services/run-XXXXXX")
  kiln_at_exit '_kiln_remove_services_dir'
}
_kiln_remove_services_dir() {
  if [ "${KILN_KEEP_SERVICES:-0}" = 1 ]; then
    kiln_log "kept $_kiln_svc_dir (KILN_KEEP_SERVICES=1)"
  else
    rm -rf "$_kiln_svc_dir"
  fi
}

# Stops a process we started: TERM, up to 15 s, then KILL.
kiln_stop_pid() {
  local pid=$1
  kill "$pid" 2>/dev/null || return 0
  for _ in $(seq 1 75); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.2
  done
  kill -KILL "$pid" 2>/dev/null || true
}

start_private_redis() {
  kiln_need redis-server redis-server
  local dir port
  _kiln_services_dir
  dir="$_kiln_svc_dir/redis"
  mkdir -p "$dir"
  port=$(kiln_free_port "${_kiln_ports[@]}")
  _kiln_ports+=("$port")
  redis-server --bind 127.0.0.1 --port "$port" --save "" --appendonly no \
    --dir "$dir" --logfile "$dir/redis.log" --daemonize no >/dev/null 2>&1 &
  _kiln_redis_pid=$!
  kiln_at_exit 'kiln_stop_pid "$_kiln_redis_pid"'
  kiln_wait_port 127.0.0.1 "$port" redis-server "$_kiln_redis_pid" "$dir/redis.log"
  export KILN_REDIS_URL="redis://127.0.0.1:$port"
  kiln_log "redis: private instance on 127.0.0.1:$port ($dir)"
}

# A RabbitMQ node of its own: node name, AMQP, distribution and epmd ports,
# data, logs, configuration and plugin list all its own, so that neither the
# system broker's files (/etc/rabbitmq, /var/lib/rabbitmq) nor its epmd are
# touched. It runs as the calling user straight from /usr/lib/rabbitmq/bin
# (Debian's /usr/sbin wrappers switch to the rabbitmq user, who could not
# write here), and that directory goes first on PATH so that every
# `rabbitmqctl` of the script and of the tests it starts reaches this node
# with the same Erlang cookie ($HOME/.erlang.cookie).
start_private_rabbitmq() {
  local bin=/usr/lib/rabbitmq/bin
  kiln_need rabbitmq-server rabbitmq-server "$bin/rabbitmq-server"
  [ -x "$bin/rabbitmq-server" ] || bin=$(dirname "$(command -v rabbitmq-server)")
  local dir amqp_port dist_port epmd_port
  _kiln_services_dir
  dir="$_kiln_svc_dir/rabbitmq"
  mkdir -p "$dir/mnesia" "$dir/log"
  amqp_port=$(kiln_free_port "${_kiln_ports[@]}")
  _kiln_ports+=("$amqp_port")
  dist_port=$(kiln_free_port "${_kiln_ports[@]}")
  _kiln_ports+=("$dist_port")
  epmd_port=$(kiln_free_port "${_kiln_ports[@]}")
  _kiln_ports+=("$epmd_port")
  # What Kiln needs of the broker is in the defaults: quorum queues (and
  # their delivery limit), the guest user from loopback. No plugin: the
  # tests use AMQP and rabbitmqctl only.
  cat >"$dir/rabbitmq.conf" <<EOF
listeners.tcp.1 = 127.0.0.1:$amqp_port
loopback_users.guest = true
log.file.level = info
EOF
  echo '[].' >"$dir/enabled_plugins"
  # An env file of our own, so that /etc/rabbitmq/rabbitmq-env.conf (a
  # node name, an epmd address) does not apply.
  : >"$dir/rabbitmq-env.conf"
  export RABBITMQ_NODENAME="kiln-$$@localhost"
  export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 RABBITMQ_NODE_PORT=$amqp_port
  export RABBITMQ_DIST_PORT=$dist_port
  export RABBITMQ_MNESIA_BASE="$dir/mnesia" RABBITMQ_LOG_BASE="$dir/log"
  export RABBITMQ_CONFIG_FILE="$dir/rabbitmq.conf"
  export RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins"
  export RABBITMQ_CONF_ENV_FILE="$dir/rabbitmq-env.conf"
  export ERL_EPMD_PORT=$epmd_port ERL_EPMD_ADDRESS=127.0.0.1
  export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
  export PATH="$bin:$PATH"
  rabbitmq-server >"$dir/log/startup.log" 2>&1 &
  _kiln_rabbitmq_pid=$!
  kiln_at_exit '_kiln_stop_rabbitmq'
  kiln_wait_port 127.0.0.1 "$amqp_port" rabbitmq-server "$_kiln_rabbitmq_pid" "$dir/log/startup.log"
  # The port opens before the broker accepts AMQP sessions.
  rabbitmqctl -q await_startup --timeout 120 >/dev/null ||
    kiln_die "rabbitmq-server did not finish starting (logs: $dir/log)"
  export KILN_AMQP_URL="amqp://guest:guest@127.0.0.1:$amqp_port/%2f"
  kiln_log "rabbitmq: private node $RABBITMQ_NODENAME on 127.0.0.1:$amqp_port ($dir)"
}
_kiln_stop_rabbitmq() {
  rabbitmqctl -q stop >/dev/null 2>&1 || true
  kiln_stop_pid "$_kiln_rabbitmq_pid"
  # The node started its own epmd (on ERL_EPMD_PORT), which outlives it.
  epmd -port "$ERL_EPMD_PORT" -kill >/dev/null 2>&1 || true
}

_kiln_ports=()
ensure_services() {
  _kiln_ensure redis "${KILN_REDIS_URL:-redis://127.0.0.1:6379}" 6379 start_private_redis
  local amqp=${KILN_AMQP_URL:-amqp://127.0.0.1:5672}
  _kiln_ensure rabbitmq "$amqp" "$([[ $amqp == amqps:* ]] && echo 5671 || echo 5672)" \
    start_private_rabbitmq
}
# _kiln_ensure NAME URL DEFAULT_PORT START: runs START unless something
# answers at URL.
_kiln_ensure() {
  local host port
  read -r host port < <(kiln_url_host_port "$2" "$3")
  if kiln_port_open "$host" "$port"; then
    kiln_log "$1: using $host:$port"
  else
    kiln_log "$1: nothing answers at $host:$port; starting a private one"
    "$4"
  fi
}
