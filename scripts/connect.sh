#!/usr/bin/env bash
# Kafka Connect in distributed mode (one worker, internal topics on the same broker) with the
# Prometheus JMX exporter agent attached exactly as in the docker stack, and the connector that
# runs beside ngsiflow (scripts/connect/jdbc-sink.json, Debezium's JDBC sink).
#
#   scripts/connect.sh start --brokers B --dir D [--rest-port 8083] [--jmx-port 9404] [--group G]
#   scripts/connect.sh deploy --rest URL --jdbc-url J [--prefix P] [--name N] [--user U] [--password W]
#   scripts/connect.sh stop --dir D
#
# start returns once the REST API answers (pid in D/connect.pid, log in D/connect.log); the
# internal topics are named <G>-configs, <G>-offsets, <G>-status. deploy creates or updates the
# connector with PUT /connectors/N/config (default name ngsiflow-jdbc-sink) and waits until its
# task runs. KAFKA_HEAP_OPTS (default -Xmx512m) sizes the JVM.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
source "$ROOT/scripts/lib.sh"

cmd="${1:-}"; shift || true
BROKERS=""; DIR=""; REST_PORT=8083; JMX_PORT=9404; GROUP=ngsiflow-connect
REST=""; JDBC_URL=""; PREFIX=""; NAME=ngsiflow-jdbc-sink; USER_=postgres; PASSWORD=""
while [ $# -gt 0 ]; do
  case "$1" in
    --brokers) BROKERS="$2"; shift ;;
    --dir) DIR="$2"; shift ;;
    --rest-port) REST_PORT="$2"; shift ;;
    --jmx-port) JMX_PORT="$2"; shift ;;
    --group) GROUP="$2"; shift ;;
    --rest) REST="$2"; shift ;;
    --jdbc-url) JDBC_URL="$2"; shift ;;
    --prefix) PREFIX="$2"; shift ;;
    --name) NAME="$2"; shift ;;
    --user) USER_="$2"; shift ;;
    --password) PASSWORD="$2"; shift ;;
    *) echo "connect.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done

case "$cmd" in
  stop)
    [ -n "$DIR" ] || { echo "connect.sh: --dir is required" >&2; exit 2; }
    stop_pidfile "$DIR/connect.pid" 30
    ;;
  start)
    [ -n "$BROKERS" ] && [ -n "$DIR" ] || { echo "connect.sh: --brokers and --dir are required" >&2; exit 2; }
    mkdir -p "$DIR"; DIR="$(cd "$DIR" && pwd)"
    pid_running "$DIR/connect.pid" && exit 0
    [ -f "$JMX_AGENT_JAR" ] || { echo "connect.sh: no JMX agent at $JMX_AGENT_JAR (run scripts/install-deps.sh)" >&2; exit 1; }
    cat >"$DIR/connect.properties" <<PROPS
bootstrap.servers=$BROKERS
group.id=$GROUP
config.storage.topic=$GROUP-configs
offset.storage.topic=$GROUP-offsets
status.storage.topic=$GROUP-status
config.storage.replication.factor=1
offset.storage.replication.factor=1
offset.storage.partitions=1
status.storage.replication.factor=1
status.storage.partitions=1
key.converter=org.apache.kafka.connect.json.JsonConverter
value.converter=org.apache.kafka.connect.json.JsonConverter
listeners=http://127.0.0.1:$REST_PORT
rest.advertised.host.name=127.0.0.1
rest.advertised.port=$REST_PORT
plugin.path=$CONNECT_PLUGIN_DIR
plugin.discovery=hybrid_warn
offset.flush.interval.ms=2000
PROPS
    : >"$DIR/connect.log"
    # shellcheck disable=SC2086
    setsid java ${KAFKA_HEAP_OPTS:--Xmx512m -Xms128m} -XX:+UseG1GC \
      -javaagent:"$JMX_AGENT_JAR"=127.0.0.1:"$JMX_PORT":"$ROOT/monitoring/jmx/kafka-connect.yml" \
      -Dlog4j2.configurationFile="$ROOT/scripts/kafka/log4j2.properties" \
      -cp "$KAFKA_LIBS/*" org.apache.kafka.connect.cli.ConnectDistributed "$DIR/connect.properties" \
      >>"$DIR/connect.log" 2>&1 </dev/null &
    echo $! >"$DIR/connect.pid"
    for _ in $(seq 1 1200); do
      if curl -fsS "http://127.0.0.1:$REST_PORT/connectors" >/dev/null 2>&1; then exit 0; fi
      pid_running "$DIR/connect.pid" || { tail -50 "$DIR/connect.log" >&2; echo "connect.sh: worker exited" >&2; exit 1; }
      sleep 0.1
    done
    tail -50 "$DIR/connect.log" >&2; echo "connect.sh: REST API did not answer within 120 s" >&2; exit 1
    ;;
  deploy)
    [ -n "$REST" ] && [ -n "$JDBC_URL" ] || { echo "connect.sh: --rest and --jdbc-url are required" >&2; exit 2; }
    config="$(TOPIC_PREFIX="$PREFIX" JDBC_URL="$JDBC_URL" JDBC_USER="$USER_" JDBC_PASSWORD="$PASSWORD" \
      python3 -c 'import json,os,string,sys; print(json.dumps({k: string.Template(v).substitute(os.environ) for k, v in json.load(open(sys.argv[1])).items()}))' \
      "$ROOT/scripts/connect/jdbc-sink.json")"
    curl -fsS -X PUT -H 'Content-Type: application/json' --data "$config" "$REST/connectors/$NAME/config" >/dev/null
    # A status read just after the worker started may still show a task that failed in an earlier
    # run (it is kept in the status topic): restart failed tasks once before calling it a failure.
    restarted=0
    for _ in $(seq 1 600); do
      state="$(curl -fsS "$REST/connectors/$NAME/status" 2>/dev/null | python3 -c 'import json,sys; s=json.load(sys.stdin); t=s.get("tasks") or [{}]; print(s["connector"]["state"], t[0].get("state", "NONE"))' 2>/dev/null || true)"
      [ "$state" = "RUNNING RUNNING" ] && exit 0
      case "$state" in
        *FAILED*)
          if [ "$restarted" = 1 ]; then curl -sS "$REST/connectors/$NAME/status" >&2; echo >&2; exit 1; fi
          curl -fsS -X POST "$REST/connectors/$NAME/restart?includeTasks=true&onlyFailed=true" >/dev/null || true
          restarted=1; sleep 2 ;;
      esac
      sleep 0.2
    done
    echo "connect.sh: connector $NAME not running after 120 s: $state" >&2; exit 1
    ;;
  *) echo "usage: $0 start|deploy|stop ..." >&2; exit 2 ;;
esac
