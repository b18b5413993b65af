#!/usr/bin/env bash
# Runs the Redis examples as a user would: two consumer processes in one
# group and a publisher, against the server on 127.0.0.1:PORT; checks that
# every order was billed exactly once between them.
#   redis_two_processes.sh CONSUMER PUBLISHER SERVER_DIR   (the test fixture's: SERVER_DIR/port)
set -euo pipefail
consumer=$1 publisher=$2 port=$(cat "$3/port")
topic="orders-example-$$"
count=200
out=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$out"' EXIT

"$consumer" "$port" "$topic" one > "$out/one" &
one=$!
"$consumer" "$port" "$topic" two > "$out/two" &
two=$!
# The group exists once a consumer made it (from the stream's start, so no order is missed either way).
for _ in $(seq 1 200); do
  redis-cli -h 127.0.0.1 -p "$port" XINFO GROUPS "$topic" 2>/dev/null | grep -q billing && break
  sleep 0.05
done
"$publisher" "$port" "$topic" "$count"
# Wait (up to 20 s) until the group has read everything and acknowledged it.
for _ in $(seq 1 400); do
  info=$(redis-cli -h 127.0.0.1 -p "$port" XINFO GROUPS "$topic")
  pending=$(echo "$info" | awk '/^pending$/ {getline; print}')
  lag=$(echo "$info" | awk '/^lag$/ {getline; print}')
  [[ "$pending" == 0 && "$lag" == 0 ]] && break
  sleep 0.05
done
kill -TERM "$one" "$two"
wait "$one" "$two"
billed_one=$(sed -n 's/^consumer .* billed \([0-9]*\) orders$/\1/p' "$out/one")
billed_two=$(sed -n 's/^consumer .* billed \([0-9]*\) orders$/\1/p' "$out/two")
echo "consumer one billed $billed_one, consumer two billed $billed_two, of $count"
[[ $(( billed_one + billed_two )) == "$count" ]]
