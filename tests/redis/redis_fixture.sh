#!/usr/bin/env bash
# The CTest fixture of the Redis bridge tests: a real redis-server on
# 127.0.0.1 (never another address), on a free port, with its files in a
# directory of its own.
#   redis_fixture.sh start DIR [durable|memory]
#                                starts it; writes DIR/port and DIR/redis.conf.
#                                durable (the default): append-only file,
#                                fsync on every write; memory (benchmarks):
#                                no persistence
#   redis_fixture.sh stop DIR    stops it and removes DIR
# The tests read DIR/port; the restart test stops the server itself and
# starts it again from DIR/redis.conf (append-only file on, so the streams
# survive).
set -euo pipefail
action=$1
dir=$2
mode=${3:-durable}

wait_for() {  # wait_for "what" command...: up to 10 s
  local what=$1; shift
  for _ in $(seq 1 200); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.05
  done
  echo "redis_fixture: $what did not happen within 10 s" >&2
  return 1
}

case "$action" in
  start)
    command -v redis-server >/dev/null || { echo "redis_fixture: redis-server is not installed (apt-get install redis-server)" >&2; exit 1; }
    rm -rf "$dir"
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)  # absolute: the server changes to `dir` before it opens its log file
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    cat > "$dir/redis.conf" <<CONF
bind 127.0.0.1
port $port
dir $dir
daemonize yes
pidfile $dir/redis.pid
logfile $dir/redis.log
save ""
protected-mode yes
CONF
    if [[ "$mode" == durable ]]; then
      printf 'appendonly yes\nappendfsync always\n' >> "$dir/redis.conf"
    else
      printf 'appendonly no\n' >> "$dir/redis.conf"
    fi
    redis-server "$dir/redis.conf"
    wait_for "redis-server answering on 127.0.0.1:$port" redis-cli -h 127.0.0.1 -p "$port" ping
    echo "$port" > "$dir/port"
    ;;
  stop)
    if [[ -f "$dir/port" ]]; then
      port=$(cat "$dir/port")
      redis-cli -h 127.0.0.1 -p "$port" shutdown nosave >/dev/null 2>&1 || true
    fi
    if [[ -f "$dir/redis.pid" ]]; then
      pid=$(cat "$dir/redis.pid")
      wait_for "redis-server $pid exiting" bash -c "! kill -0 $pid"  || kill -9 "$pid" 2>/dev/null || true
    fi
    rm -rf "$dir"
    ;;
  *) echo "usage: $0 start|stop DIR" >&2; exit 2 ;;
esac
