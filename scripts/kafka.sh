#!/usr/bin/env bash
# A single-node Apache Kafka broker in KRaft mode (broker and controller in one JVM), from the jars
# scripts/install-deps.sh put in the cache. Used by the local stack, every integration test and
# the benchmark.
#
#   scripts/kafka.sh start --port P --dir D [--controller-port C] [--partitions N]
#                          [--tls-dir T --ssl-port S] [--tls-dir T --sasl-ssl-port Q --sasl-user U:PASSWORD]
#   scripts/kafka.sh stop --dir D
#
# start formats D/data on first use (so a restart on the same D keeps every topic and offset),
# starts the broker in the background (pid in D/broker.pid, log in D/broker.log) and returns once
# the broker serves metadata requests on 127.0.0.1:P. Idempotent: a running broker is left alone.
# Settings are for a one-node stack: internal topics with replication factor 1, few
# __consumer_offsets partitions, group.initial.rebalance.delay.ms=0 so consumer groups form at
# once. KAFKA_HEAP_OPTS (default -Xmx512m) sizes the JVM.
#
# Secured listeners (besides the PLAINTEXT one on P, which stays for local tooling): --ssl-port
# adds an SSL listener and --sasl-ssl-port a SASL_SSL listener accepting PLAIN, SCRAM-SHA-256 and
# SCRAM-SHA-512 for the user --sasl-user (SCRAM credentials are stored when the directory is
# formatted, so give it on the first start). Both are advertised as localhost:<port> and present
# T/server.pem with key T/server.key (PEM, unencrypted PKCS#8), which must name localhost.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
source "$ROOT/scripts/lib.sh"

cmd="${1:-}"; shift || true
PORT=""; DIR=""; CPORT=""; PARTITIONS=1; TLS_DIR=""; SSL_PORT=""; SASL_PORT=""; SASL_USER=""
while [ $# -gt 0 ]; do
  case "$1" in
    --port) PORT="$2"; shift ;;
    --dir) DIR="$2"; shift ;;
    --controller-port) CPORT="$2"; shift ;;
    --partitions) PARTITIONS="$2"; shift ;;
    --tls-dir) TLS_DIR="$2"; shift ;;
    --ssl-port) SSL_PORT="$2"; shift ;;
    --sasl-ssl-port) SASL_PORT="$2"; shift ;;
    --sasl-user) SASL_USER="$2"; shift ;;
    *) echo "usage: $0 start --port P --dir D [--controller-port C] [--partitions N] | stop --dir D" >&2; exit 2 ;;
  esac
  shift
done
[ -n "$DIR" ] || { echo "kafka.sh: --dir is required" >&2; exit 2; }
mkdir -p "$DIR"; DIR="$(cd "$DIR" && pwd)"
PIDFILE="$DIR/broker.pid"

case "$cmd" in
  stop)
    stop_pidfile "$PIDFILE" 30
    exit 0 ;;
  start) ;;
  *) echo "usage: $0 start|stop ..." >&2; exit 2 ;;
esac

[ -n "$PORT" ] || { echo "kafka.sh: --port is required" >&2; exit 2; }
[ -d "$KAFKA_LIBS" ] || { echo "kafka.sh: no Kafka jars at $KAFKA_LIBS (run scripts/install-deps.sh)" >&2; exit 1; }
if pid_running "$PIDFILE"; then exit 0; fi
# The controller port defaults to one derived from the broker port, so a restart on the same
# directory finds the quorum where it left it.
if [ -z "$CPORT" ]; then
  if [ -f "$DIR/controller.port" ]; then CPORT="$(cat "$DIR/controller.port")"; else CPORT="$(free_port)"; fi
fi
echo "$CPORT" >"$DIR/controller.port"

listeners="PLAINTEXT://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CPORT"
advertised="PLAINTEXT://127.0.0.1:$PORT"
protocols="PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"
secure=""
scram_args=()
if [ -n "$SSL_PORT$SASL_PORT" ]; then
  [ -f "$TLS_DIR/server.pem" ] && [ -f "$TLS_DIR/server.key" ] \
    || { echo "kafka.sh: secured listeners need --tls-dir with server.pem and server.key" >&2; exit 2; }
  # Kafka's PEM keystore: the private key followed by the certificate chain, in one file.
  cat "$TLS_DIR/server.key" "$TLS_DIR/server.pem" >"$DIR/keystore.pem"
  secure="ssl.keystore.type=PEM
ssl.keystore.location=$DIR/keystore.pem"
fi
if [ -n "$SSL_PORT" ]; then
  listeners="$listeners,SSL://127.0.0.1:$SSL_PORT"
  advertised="$advertised,SSL://localhost:$SSL_PORT"
  protocols="$protocols,SSL:SSL"
fi
if [ -n "$SASL_PORT" ]; then
  [ -n "$SASL_USER" ] || { echo "kafka.sh: --sasl-ssl-port needs --sasl-user USER:PASSWORD" >&2; exit 2; }
  user="${SASL_USER%%:*}"; pass="${SASL_USER#*:}"
  listeners="$listeners,SASL_SSL://127.0.0.1:$SASL_PORT"
  advertised="$advertised,SASL_SSL://localhost:$SASL_PORT"
  protocols="$protocols,SASL_SSL:SASL_SSL"
  secure="$secure
sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256,SCRAM-SHA-512
listener.name.sasl_ssl.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_$user=\"$pass\";
listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;"
  scram_args=(--add-scram "SCRAM-SHA-256=[name=$user,password=$pass]" --add-scram "SCRAM-SHA-512=[name=$user,password=$pass]")
fi

cat >"$DIR/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$CPORT
listeners=$listeners
advertised.listeners=$advertised
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=$protocols
log.dirs=$DIR/data
num.partitions=$PARTITIONS
auto.create.topics.enable=true
offsets.topic.replication.factor=1
offsets.topic.num.partitions=5
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
$secure
PROPS

java_cmd() {
  # shellcheck disable=SC2086
  java ${KAFKA_HEAP_OPTS:--Xmx512m -Xms128m} -XX:+UseG1GC -XX:TieredStopAtLevel=1 -Xshare:auto \
    -Dlog4j2.configurationFile="$ROOT/scripts/kafka/log4j2.properties" \
    -cp "$KAFKA_LIBS/*" "$@"
}

if [ ! -f "$DIR/data/meta.properties" ]; then
  java_cmd kafka.tools.StorageTool format --standalone --ignore-formatted \
    --cluster-id "$(java_cmd kafka.tools.StorageTool random-uuid)" \
    --config "$DIR/server.properties" ${scram_args[@]+"${scram_args[@]}"} >"$DIR/format.log" 2>&1 \
    || { cat "$DIR/format.log" >&2; exit 1; }
fi

: >"$DIR/broker.log"
setsid java ${KAFKA_HEAP_OPTS:--Xmx512m -Xms128m} -XX:+UseG1GC \
  -Dlog4j2.configurationFile="$ROOT/scripts/kafka/log4j2.properties" \
  -cp "$KAFKA_LIBS/*" kafka.Kafka "$DIR/server.properties" >>"$DIR/broker.log" 2>&1 </dev/null &
echo $! >"$PIDFILE"

# "Kafka Server started" is logged once the broker has registered with the controller and its
# listeners accept requests: from then on metadata requests are answered.
for _ in $(seq 1 600); do
  if grep -q "Kafka Server started" "$DIR/broker.log" 2>/dev/null; then exit 0; fi
  pid_running "$PIDFILE" || { tail -50 "$DIR/broker.log" >&2; echo "kafka.sh: broker exited" >&2; exit 1; }
  sleep 0.1
done
tail -50 "$DIR/broker.log" >&2
echo "kafka.sh: broker did not start within 60 s" >&2
exit 1
