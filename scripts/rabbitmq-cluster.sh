#!/usr/bin/env bash
# A three-node RabbitMQ cluster on loopback, for tests and fault harnesses that need a broker
# node to go away: nodes with their own AMQP and distribution ports and data folders under
# DIR, joined with `rabbitmqctl join_cluster`, stopped by node name. Works with Debian's
# rabbitmq-server, which drops to the `rabbitmq` user (so DIR's folders are given to it).
#
# Usage: scripts/rabbitmq-cluster.sh start DIR [BASE_PORT]   (AMQP on BASE_PORT..BASE_PORT+2,
#                                                             default 5701; prints the ports)
#        scripts/rabbitmq-cluster.sh stop DIR
# The node names are written to DIR/nodes, one per line, the AMQP ports to DIR/ports.
set -euo pipefail

command=${1:-}
dir=${2:-}
base=${3:-5701}
if [ -z "$command" ] || [ -z "$dir" ]; then
    echo "usage: $0 start DIR [BASE_PORT] | $0 stop DIR" >&2
    exit 2
fi

# ctl NODE ARGS...: rabbitmqctl against one node, bounded in time (and kept off the stdin of
# the loops that call it: it would read their remaining lines).
ctl() {
    local node=$1
    shift
    timeout 60 rabbitmqctl -n "$node" "$@" </dev/null
}

case $command in
start)
    command -v rabbitmq-server >/dev/null || { echo "error: rabbitmq-server is not installed" >&2; exit 1; }
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    suffix=$(basename "$dir" | tr -cd 'a-zA-Z0-9' | tail -c 12)
    : >"$dir/nodes"
    : >"$dir/ports"
    for i in 1 2 3; do
        node="rmq${i}${suffix}@localhost"
        port=$((base + i - 1))
        home="$dir/rmq$i"
        mkdir -p "$home/mnesia" "$home/log"
        printf 'listeners.tcp.default = 127.0.0.1:%s\nloopback_users = none\n' "$port" >"$home/rabbitmq.conf"
        echo '[].' >"$home/enabled_plugins"
        echo "$node" >>"$dir/nodes"
        echo "$port" >>"$dir/ports"
        chown -R rabbitmq:rabbitmq "$home" 2>/dev/null || true
        RABBITMQ_NODENAME=$node RABBITMQ_NODE_PORT=$port RABBITMQ_DIST_PORT=$((base + 100 + i)) \
            RABBITMQ_MNESIA_BASE=$home/mnesia RABBITMQ_LOG_BASE=$home/log \
            RABBITMQ_CONFIG_FILE=$home/rabbitmq.conf RABBITMQ_ENABLED_PLUGINS_FILE=$home/enabled_plugins \
            rabbitmq-server -detached </dev/null
    done
    first=$(head -n 1 "$dir/nodes")
    while read -r node; do
        # A detached node takes a moment to register before rabbitmqctl can reach it.
        waited=0
        until timeout 10 rabbitmqctl -n "$node" ping </dev/null >/dev/null 2>&1; do
            waited=$((waited + 1))
            if [ "$waited" -ge 60 ]; then
                echo "error: node $node did not start within 60 s; see $dir/rmq*/log" >&2
                exit 1
            fi
            sleep 1
        done
        ctl "$node" await_startup >/dev/null
    done <"$dir/nodes"
    tail -n 2 "$dir/nodes" | while read -r node; do
        # rabbitmqctl logs harmless errors while a node joins: they go to DIR/join.log.
        if ! { ctl "$node" stop_app && ctl "$node" join_cluster "$first" && ctl "$node" start_app; } \
            >>"$dir/join.log" 2>&1; then
            echo "error: $node could not join $first; see $dir/join.log" >&2
            exit 1
        fi
    done
    running=$(ctl "$first" cluster_status --formatter json 2>/dev/null | grep -o '"running_nodes":\[[^]]*\]' | grep -o '@localhost' | wc -l)
    if [ "$running" -ne 3 ]; then
        echo "error: only $running of the 3 nodes run in the cluster; see $dir/rmq*/log" >&2
        exit 1
    fi
    echo "RabbitMQ cluster of 3 nodes ($(paste -sd' ' "$dir/nodes")) on 127.0.0.1 ports $(paste -sd' ' "$dir/ports")"
    ;;
stop)
    [ -f "$dir/nodes" ] || { echo "no cluster in $dir" >&2; exit 1; }
    while read -r node; do
        ctl "$node" stop >/dev/null 2>&1 || true
    done <"$dir/nodes"
    echo "stopped the RabbitMQ cluster in $dir"
    ;;
*)
    echo "usage: $0 start DIR [BASE_PORT] | $0 stop DIR" >&2
    exit 2
    ;;
esac
