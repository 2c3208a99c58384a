# shellcheck shell=bash
# Clustered engines on one machine, for tests, the chaos run and the bench:
# a three-node RabbitMQ cluster and a Redis primary with one replica under
# three Sentinels, all on loopback with private ports and data directories.
# Source scripts/lib/services.sh first (this file uses its exit hooks, free
# ports, target directory and helpers); sourcing changes nothing by itself.
#
# start_rabbitmq_cluster: three nodes (the same Erlang cookie, distinct node
#   names, one private epmd), nodes 2 and 3 `join_cluster` node 1. Exports
#   KILN_CLUSTER_AMQP_URLS (the three node URLs, comma-separated: what
#   KILN_AMQP_URL takes), KILN_CLUSTER_RABBIT_NODES (the node names) and
#   KILN_CLUSTER_EPMD_PORT. Quorum queues declared once the cluster is formed
#   get a member on each of the three nodes (RabbitMQ's default initial group
#   size is 3). KILN_CLUSTER_CONSUMER_TIMEOUT (ms), when set, becomes the
#   nodes' consumer_timeout, checked every second instead of every minute.
# start_redis_sentinel: a primary, one replica and three Sentinels
#   (`redis-server --sentinel`, master name `kiln`, quorum 2, down after 1 s,
#   failover timeout 3 s). Exports KILN_CLUSTER_SENTINELS (host:port,
#   comma-separated: what KILN_REDIS_SENTINELS takes) and
#   KILN_CLUSTER_REDIS_MASTER. With KILN_CLUSTER_REDIS_PASSWORD and/or
#   KILN_CLUSTER_SENTINEL_PASSWORD set, Redis and/or the Sentinels require it.
# Faults (each logs what it did on stderr; call them directly, not in $(...):
# they keep the pids of what they start, and a subshell would lose them):
#   rabbit_cluster_kill I / rabbit_cluster_restart I: kill -9 node I (1-3) /
#     start it again with its data (it rejoins the cluster by itself).
#   rabbit_cluster_leader QUEUE: the number (1-3) of the node that leads the
#     quorum queue QUEUE.
#   redis_sentinel_primary: the port of the current primary, as the
#     Sentinels report it.
#   redis_sentinel_kill_primary: kill -9 the primary (its port is left in
#     KILN_CLUSTER_KILLED_PORT); the Sentinels fail over to the replica.
#     redis_sentinel_restart PORT starts a killed server again (the
#     Sentinels make it a replica of the new primary).
#   redis_sentinel_lost_write KEY VALUE: the write a failover loses: stop the
#     replica (SIGSTOP), cut it off from the primary, write KEY on the
#     primary (acknowledged), kill -9 the primary, resume the replica
#     (SIGCONT), wait for the Sentinels to promote it. KEY is then missing;
#     the killed port is in KILN_CLUSTER_KILLED_PORT.
#   redis_sentinel_wait_failover OLD_PORT: waits until the Sentinels name a
#     primary other than OLD_PORT and it answers ROLE as master; sets
#     KILN_CLUSTER_PRIMARY_PORT.
#
# tests/src/cluster.rs does the same from Rust for the integration tests;
# keep the two in step (ports, settings, the order of the steps).

_kiln_cluster_bin=/usr/lib/rabbitmq/bin

# --- RabbitMQ ------------------------------------------------------------------
_kiln_rmq_node_name() { echo "kiln-c$$-$1@localhost"; }

# rabbitmqctl (or another CLI tool given as $1) against node I of the cluster.
kiln_cluster_ctl() {
  local tool=$1 i=$2
  shift 2
  ERL_EPMD_PORT=$KILN_CLUSTER_EPMD_PORT ERL_EPMD_ADDRESS=127.0.0.1 \
    RABBITMQ_CONF_ENV_FILE="$_kiln_rmq_dir/rabbitmq-env.conf" \
    "$_kiln_cluster_bin/$tool" -n "$(_kiln_rmq_node_name "$i")" "$@"
}

# Starts node I from its directory (created by start_rabbitmq_cluster).
_kiln_rmq_start_node() {
  local i=$1 dir=$_kiln_rmq_dir/node$1
  (
    export RABBITMQ_NODENAME
    RABBITMQ_NODENAME=$(_kiln_rmq_node_name "$i")
    export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 RABBITMQ_NODE_PORT=${_kiln_rmq_amqp[$i]}
    export RABBITMQ_DIST_PORT=${_kiln_rmq_dist[$i]}
    export RABBITMQ_MNESIA_BASE="$dir/mnesia" RABBITMQ_LOG_BASE="$dir/log"
    export RABBITMQ_CONFIG_FILE="$dir/rabbitmq.conf" RABBITMQ_PID_FILE="$dir/pid"
    export RABBITMQ_ADVANCED_CONFIG_FILE="$dir/advanced.config"
    export RABBITMQ_ENABLED_PLUGINS_FILE="$_kiln_rmq_dir/enabled_plugins"
    export RABBITMQ_CONF_ENV_FILE="$_kiln_rmq_dir/rabbitmq-env.conf"
    export ERL_EPMD_PORT=$KILN_CLUSTER_EPMD_PORT ERL_EPMD_ADDRESS=127.0.0.1
    # One scheduler per node: three nodes share a small machine with the
    # tests, and the tests' load needs no more.
    export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1} +S 1:1"
    exec "$_kiln_cluster_bin/rabbitmq-server" >>"$dir/log/startup.log" 2>&1
  ) &
  _kiln_rmq_pid[$i]=$!
}

_kiln_rmq_await_node() {
  local i=$1 dir=$_kiln_rmq_dir/node$1
  kiln_wait_port 127.0.0.1 "${_kiln_rmq_amqp[$i]}" "rabbitmq node $i" "${_kiln_rmq_pid[$i]}" \
    "$dir/log/startup.log"
  kiln_cluster_ctl rabbitmqctl "$i" -q await_startup --timeout 120 >/dev/null ||
    kiln_die "rabbitmq node $i did not finish starting (logs: $dir/log)"
}

start_rabbitmq_cluster() {
  [ -x "$_kiln_cluster_bin/rabbitmq-server" ] ||
    kiln_need rabbitmq-server rabbitmq-server "$_kiln_cluster_bin/rabbitmq-server"
  local i t0=$SECONDS
  _kiln_services_dir
  _kiln_rmq_dir="$_kiln_svc_dir/rabbitmq-cluster"
  mkdir -p "$_kiln_rmq_dir"
  echo '[].' >"$_kiln_rmq_dir/enabled_plugins"
  : >"$_kiln_rmq_dir/rabbitmq-env.conf"
  KILN_CLUSTER_EPMD_PORT=$(kiln_free_port "${_kiln_ports[@]}")
  _kiln_ports+=("$KILN_CLUSTER_EPMD_PORT")
  export KILN_CLUSTER_EPMD_PORT
  # One epmd of our own, in the foreground, so that it is ours to stop (a
  # node would otherwise start a daemonised one that outlives the script).
  epmd -port "$KILN_CLUSTER_EPMD_PORT" -address 127.0.0.1 >/dev/null 2>&1 &
  _kiln_rmq_epmd_pid=$!
  kiln_at_exit '_kiln_stop_rabbitmq_cluster'
  kiln_wait_port 127.0.0.1 "$KILN_CLUSTER_EPMD_PORT" epmd "$_kiln_rmq_epmd_pid" /dev/null
  local urls=() nodes=()
  for i in 1 2 3; do
    _kiln_rmq_amqp[$i]=$(kiln_free_port "${_kiln_ports[@]}")
    _kiln_ports+=("${_kiln_rmq_amqp[$i]}")
    _kiln_rmq_dist[$i]=$(kiln_free_port "${_kiln_ports[@]}")
    _kiln_ports+=("${_kiln_rmq_dist[$i]}")
    mkdir -p "$_kiln_rmq_dir/node$i/mnesia" "$_kiln_rmq_dir/node$i/log"
    {
      echo "listeners.tcp.1 = 127.0.0.1:${_kiln_rmq_amqp[$i]}"
      echo "loopback_users.guest = true"
      echo "log.file.level = info"
      if [ -n "${KILN_CLUSTER_CONSUMER_TIMEOUT:-}" ]; then
        echo "consumer_timeout = $KILN_CLUSTER_CONSUMER_TIMEOUT"
      fi
    } >"$_kiln_rmq_dir/node$i/rabbitmq.conf"
    if [ -n "${KILN_CLUSTER_CONSUMER_TIMEOUT:-}" ]; then
      # A channel checks its consumers' timeouts on its tick (1 min by
      # default): a lowered timeout needs a faster tick to be seen soon.
      echo '[{rabbit, [{channel_tick_interval, 1000}]}].'
    else
      echo '[].'
    fi >"$_kiln_rmq_dir/node$i/advanced.config"
    urls+=("amqp://guest:guest@127.0.0.1:${_kiln_rmq_amqp[$i]}/%2f")
    nodes+=("$(_kiln_rmq_node_name "$i")")
  done
  # The three boot at once; nodes 2 and 3 then join node 1 (join_cluster
  # resets a node, so it needs no data of its own first).
  for i in 1 2 3; do _kiln_rmq_start_node "$i"; done
  for i in 1 2 3; do _kiln_rmq_await_node "$i"; done
  local booted=$SECONDS
  for i in 2 3; do
    kiln_cluster_ctl rabbitmqctl "$i" -q stop_app >/dev/null
    kiln_cluster_ctl rabbitmqctl "$i" -q join_cluster "$(_kiln_rmq_node_name 1)" >/dev/null ||
      kiln_die "rabbitmq node $i could not join node 1 (logs: $_kiln_rmq_dir/node$i/log)"
    kiln_cluster_ctl rabbitmqctl "$i" -q start_app >/dev/null ||
      kiln_die "rabbitmq node $i did not start after joining (logs: $_kiln_rmq_dir/node$i/log)"
  done
  KILN_CLUSTER_AMQP_URLS=$(
    IFS=,
    echo "${urls[*]}"
  )
  KILN_CLUSTER_RABBIT_NODES=$(
    IFS=,
    echo "${nodes[*]}"
  )
  export KILN_CLUSTER_AMQP_URLS KILN_CLUSTER_RABBIT_NODES
  kiln_log "rabbitmq cluster: 3 nodes on ports ${_kiln_rmq_amqp[*]} in $((SECONDS - t0)) s" \
    "(boot $((booted - t0)) s, joins $((SECONDS - booted)) s; $_kiln_rmq_dir)"
}

_kiln_stop_rabbitmq_cluster() {
  local i
  # The nodes' data is thrown away: kill, don't stop gracefully (a graceful
  # stop of a cluster member waits for the others).
  # (Braces: bash reports a killed job on the shell's stderr, not on the
  # command's.)
  {
    for i in 1 2 3; do
      [ -f "$_kiln_rmq_dir/node$i/pid" ] && kill -KILL "$(cat "$_kiln_rmq_dir/node$i/pid")"
      [ -n "${_kiln_rmq_pid[$i]:-}" ] && kill -KILL "${_kiln_rmq_pid[$i]}"
    done
    kill -KILL "$_kiln_rmq_epmd_pid"
    wait "${_kiln_rmq_pid[@]}" "$_kiln_rmq_epmd_pid"
  } 2>/dev/null
  return 0
}

rabbit_cluster_kill() {
  local i=$1 pid
  pid=$(cat "$_kiln_rmq_dir/node$i/pid" 2>/dev/null) || kiln_die "rabbitmq node $i has no pid file"
  {
    kill -KILL "$pid"
    kill -KILL "${_kiln_rmq_pid[$i]}"
    wait "${_kiln_rmq_pid[$i]}"
  } 2>/dev/null || true
  rm -f "$_kiln_rmq_dir/node$i/pid"
  kiln_log "rabbitmq node $i killed (pid $pid)"
}

rabbit_cluster_restart() {
  local i=$1 t0=$SECONDS
  _kiln_rmq_start_node "$i"
  _kiln_rmq_await_node "$i"
  kiln_log "rabbitmq node $i back in $((SECONDS - t0)) s"
}

# The node (1-3) that leads quorum queue $1 (in vhost /), asked of any node
# that answers.
rabbit_cluster_leader() {
  local queue=$1 i leader n
  for i in 1 2 3; do
    leader=$(kiln_cluster_ctl rabbitmqctl "$i" -q list_queues --no-table-headers name leader 2>/dev/null |
      awk -v q="$queue" '$1 == q { print $2 }') || continue
    [ -n "$leader" ] || continue
    for n in 1 2 3; do
      [ "$leader" = "$(_kiln_rmq_node_name "$n")" ] && {
        echo "$n"
        return 0
      }
    done
  done
  return 1
}

# --- Redis under Sentinel ------------------------------------------------------
# redis-cli against the server (or Sentinel) on port $1 of 127.0.0.1, with
# the password when one is set (REDISCLI_AUTH, not -a: no warning, not in ps).
kiln_cluster_redis_cli() { _kiln_redis_cli_as "${KILN_CLUSTER_REDIS_PASSWORD:-}" "$@"; }
kiln_cluster_sentinel_cli() { _kiln_redis_cli_as "${KILN_CLUSTER_SENTINEL_PASSWORD:-}" "$@"; }
_kiln_redis_cli_as() {
  local password=$1 port=$2
  shift 2
  if [ -n "$password" ]; then
    REDISCLI_AUTH=$password redis-cli -h 127.0.0.1 -p "$port" "$@"
  else
    redis-cli -h 127.0.0.1 -p "$port" "$@"
  fi
}

# Starts (or restarts) the data server on port $1; $2 is the primary's port
# for a replica, empty for the primary.
_kiln_redis_start_server() {
  local port=$1 primary=${2:-} dir=$_kiln_sentinel_dir/redis-$1 args=()
  mkdir -p "$dir"
  args=(--bind 127.0.0.1 --port "$port" --save "" --appendonly no --dir "$dir"
    --logfile "$dir/redis.log" --daemonize no
    # A replica syncs at once, without the default 5 s wait for others.
    --repl-diskless-sync yes --repl-diskless-sync-delay 0)
  if [ -n "${KILN_CLUSTER_REDIS_PASSWORD:-}" ]; then
    args+=(--requirepass "$KILN_CLUSTER_REDIS_PASSWORD" --masterauth "$KILN_CLUSTER_REDIS_PASSWORD")
  fi
  [ -n "$primary" ] && args+=(--replicaof 127.0.0.1 "$primary")
  redis-server "${args[@]}" >/dev/null 2>&1 &
  _kiln_redis_pids[$port]=$!
  kiln_wait_port 127.0.0.1 "$port" "redis-server on $port" "$!" "$dir/redis.log"
}

start_redis_sentinel() {
  kiln_need redis-server redis-server
  local i port t0=$SECONDS sentinels=()
  _kiln_services_dir
  _kiln_sentinel_dir="$_kiln_svc_dir/redis-sentinel"
  mkdir -p "$_kiln_sentinel_dir"
  kiln_at_exit '_kiln_stop_redis_sentinel'
  _kiln_redis_primary=$(kiln_free_port "${_kiln_ports[@]}")
  _kiln_ports+=("$_kiln_redis_primary")
  _kiln_redis_replica=$(kiln_free_port "${_kiln_ports[@]}")
  _kiln_ports+=("$_kiln_redis_replica")
  _kiln_redis_start_server "$_kiln_redis_primary"
  _kiln_redis_start_server "$_kiln_redis_replica" "$_kiln_redis_primary"
  export KILN_CLUSTER_REDIS_MASTER=kiln
  for i in 1 2 3; do
    port=$(kiln_free_port "${_kiln_ports[@]}")
    _kiln_ports+=("$port")
    _kiln_sentinel_ports[$i]=$port
    mkdir -p "$_kiln_sentinel_dir/sentinel$i"
    # Sentinel rewrites its file (the replicas and Sentinels it learns):
    # each has its own, writable.
    {
      echo "bind 127.0.0.1"
      echo "port $port"
      echo "dir $_kiln_sentinel_dir/sentinel$i"
      echo "logfile $_kiln_sentinel_dir/sentinel$i/sentinel.log"
      echo "sentinel monitor $KILN_CLUSTER_REDIS_MASTER 127.0.0.1 $_kiln_redis_primary 2"
      # Short, for tests: a primary is down after 1 s without an answer;
      # a failover that stalls is retried after 2 x 3 s.
      echo "sentinel down-after-milliseconds $KILN_CLUSTER_REDIS_MASTER 1000"
      echo "sentinel failover-timeout $KILN_CLUSTER_REDIS_MASTER 3000"
      echo "sentinel parallel-syncs $KILN_CLUSTER_REDIS_MASTER 1"
      if [ -n "${KILN_CLUSTER_REDIS_PASSWORD:-}" ]; then
        echo "sentinel auth-pass $KILN_CLUSTER_REDIS_MASTER $KILN_CLUSTER_REDIS_PASSWORD"
      fi
      if [ -n "${KILN_CLUSTER_SENTINEL_PASSWORD:-}" ]; then
        echo "requirepass $KILN_CLUSTER_SENTINEL_PASSWORD"
        echo "sentinel sentinel-pass $KILN_CLUSTER_SENTINEL_PASSWORD"
      fi
    } >"$_kiln_sentinel_dir/sentinel$i/sentinel.conf"
    redis-server "$_kiln_sentinel_dir/sentinel$i/sentinel.conf" --sentinel >/dev/null 2>&1 &
    _kiln_sentinel_pids[$i]=$!
    sentinels+=("127.0.0.1:$port")
  done
  for i in 1 2 3; do
    kiln_wait_port 127.0.0.1 "${_kiln_sentinel_ports[$i]}" "sentinel $i" "${_kiln_sentinel_pids[$i]}" \
      "$_kiln_sentinel_dir/sentinel$i/sentinel.log"
  done
  # Ready when the replica is in sync and every Sentinel knows the replica
  # and the two other Sentinels (a failover needs a majority of them to
  # agree, and they find each other through the primary every 2 s).
  local ready=0
  for _ in $(seq 1 150); do
    ready=1
    kiln_cluster_redis_cli "$_kiln_redis_replica" info replication | grep -q 'master_link_status:up' || ready=0
    for i in 1 2 3; do
      [ "$ready" = 1 ] || break
      kiln_cluster_sentinel_cli "${_kiln_sentinel_ports[$i]}" sentinel master "$KILN_CLUSTER_REDIS_MASTER" |
        awk 'p == "num-slaves" && $1 != 1 { bad = 1 } p == "num-other-sentinels" && $1 != 2 { bad = 1 }
             { p = $1 } END { exit bad }' || ready=0
    done
    [ "$ready" = 1 ] && break
    sleep 0.2
  done
  [ "$ready" = 1 ] || kiln_die "redis sentinels did not settle (logs: $_kiln_sentinel_dir)"
  KILN_CLUSTER_SENTINELS=$(
    IFS=,
    echo "${sentinels[*]}"
  )
  export KILN_CLUSTER_SENTINELS
  kiln_log "redis: primary $_kiln_redis_primary, replica $_kiln_redis_replica, sentinels ${_kiln_sentinel_ports[*]} in $((SECONDS - t0)) s ($_kiln_sentinel_dir)"
}

_kiln_stop_redis_sentinel() {
  local pid
  {
    for pid in "${_kiln_sentinel_pids[@]}" "${_kiln_redis_pids[@]}"; do
      kill -CONT "$pid"
      kill -KILL "$pid"
    done
    wait "${_kiln_sentinel_pids[@]}" "${_kiln_redis_pids[@]}"
  } 2>/dev/null
  return 0
}

# The current primary's port, as the first Sentinel that answers says.
redis_sentinel_primary() {
  local i addr
  for i in 1 2 3; do
    addr=$(kiln_cluster_sentinel_cli "${_kiln_sentinel_ports[$i]}" sentinel get-master-addr-by-name \
      "$KILN_CLUSTER_REDIS_MASTER" 2>/dev/null | sed -n 2p) || continue
    [ -n "$addr" ] && {
      echo "$addr"
      return 0
    }
  done
  return 1
}

_kiln_redis_kill_port() {
  local port=$1
  {
    kill -KILL "${_kiln_redis_pids[$port]}"
    wait "${_kiln_redis_pids[$port]}"
  } 2>/dev/null || true
}

redis_sentinel_wait_failover() {
  local old=$1 t0=$SECONDS now
  for _ in $(seq 1 300); do
    now=$(redis_sentinel_primary || true)
    if [ -n "$now" ] && [ "$now" != "$old" ] &&
      kiln_cluster_redis_cli "$now" role 2>/dev/null | head -n 1 | grep -qx master; then
      kiln_log "redis: failover from $old to $now in $((SECONDS - t0)) s"
      KILN_CLUSTER_PRIMARY_PORT=$now
      return 0
    fi
    sleep 0.2
  done
  kiln_die "redis: no failover from $old within 60 s (logs: $_kiln_sentinel_dir)"
}

redis_sentinel_kill_primary() {
  local primary
  primary=$(redis_sentinel_primary) || kiln_die "redis: no sentinel names a primary"
  _kiln_redis_kill_port "$primary"
  kiln_log "redis: primary on $primary killed"
  KILN_CLUSTER_KILLED_PORT=$primary
}

redis_sentinel_restart() {
  local port=$1 t0=$SECONDS
  # Started as a primary of nothing: the Sentinels turn it into a replica of
  # the new primary (what a restarted old primary goes through in
  # production). Back when it is a replica in sync, so that the next fault
  # finds the set-up whole again.
  _kiln_redis_start_server "$port"
  _kiln_redis_wait_replica "$port"
  kiln_log "redis: server on $port started again, a replica in sync after $((SECONDS - t0)) s"
}

_kiln_redis_wait_replica() {
  for _ in $(seq 1 300); do
    kiln_cluster_redis_cli "$1" info replication 2>/dev/null |
      grep -q 'master_link_status:up' && return 0
    sleep 0.2
  done
  kiln_die "redis: the server on $1 did not become a replica in sync within 60 s"
}

redis_sentinel_lost_write() {
  local key=$1 value=$2 primary replica pid
  primary=$(redis_sentinel_primary) || kiln_die "redis: no sentinel names a primary"
  for replica in "${!_kiln_redis_pids[@]}"; do [ "$replica" != "$primary" ] && break; done
  _kiln_redis_wait_replica "$replica"
  pid=${_kiln_redis_pids[$replica]}
  kill -STOP "$pid"
  # A stopped process still receives into its socket buffer: cut the link
  # first, so that the write below reaches the primary alone.
  kiln_cluster_redis_cli "$primary" client kill type replica >/dev/null
  kiln_cluster_redis_cli "$primary" set "$key" "$value" >/dev/null
  _kiln_redis_kill_port "$primary"
  kill -CONT "$pid"
  kiln_log "redis: wrote $key on $primary alone, killed it, resumed the replica on $replica"
  KILN_CLUSTER_KILLED_PORT=$primary
  redis_sentinel_wait_failover "$primary"
}
