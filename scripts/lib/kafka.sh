# shellcheck shell=bash
# shellcheck disable=SC2154 # kiln_java_lib and kiln_jvm_opts: set by scripts/lib/java.sh
# A throwaway single-node Apache Kafka 4.4 (KRaft: one JVM that is broker and controller) for
# the Kafka source and sink tests. Sourced by scripts/test.sh after scripts/lib/apt.sh and
# scripts/lib/java.sh; defines functions only and installs no trap (the caller's cleanup calls
# kiln_kafka_stop).
#
#   kiln_kafka_start   resolves the jars of scripts/lib/java/kafka/pom.xml into
#                      $KILN_CACHE/maven/kafka-4.4.0 (once per pom change), formats a temporary
#                      log directory and starts a broker on 127.0.0.1 on a free port, waits until
#                      it answers an admin request and exports KILN_TEST_KAFKA=127.0.0.1:PORT
#                      (a bootstrap server). Returns 2 when Java or Maven is missing and cannot
#                      be installed, 1 on any other failure.
#   kiln_kafka_stop    stops the broker (SIGTERM, SIGKILL after 10 s) and removes its directory;
#                      safe to call more than once.
#   kiln_kafka_tool CLASS ARGS...
#                      runs one of the Kafka command-line tools against the running broker, e.g.
#                      org.apache.kafka.tools.TopicCommand --bootstrap-server "$KILN_TEST_KAFKA" --list
#   kiln_kafka_topic_create NAME PARTITIONS
#                      creates a topic (replication factor 1) on the running broker.
#
# The broker keeps every record whatever its timestamp: no retention by time or size, and
# CreateTime timestamps accepted however far in the past or future (the tests replay old event
# times). Topics are never auto-created; 3 partitions by default. Its log (log4j2) and data are
# in the temporary directory, printed on failure. A watchdog stops the broker if the calling
# shell dies without calling kiln_kafka_stop.
#
# Callers may run under `set -e`, which bash disables inside `f || ...`: every step below
# checks its own status.

kiln_kafka_version=4.4.0
kiln_kafka_dir=""
kiln_kafka_pid=""
kiln_kafka_watch_pid=""
kiln_kafka_jars=""

kiln_kafka_log4j() {
  # $1: the log file, $2: the root level.
  cat <<EOF
status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = $1
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = $2
rootLogger.appenderRef.file.ref = file
logger.state-change.name = state.change.logger
logger.state-change.level = WARN
EOF
}

kiln_kafka_tool() {
  local class=$1
  shift
  [ -n "$kiln_kafka_dir" ] || { echo "kiln_kafka_tool: no broker is running" >&2; return 1; }
  java -Xmx256m "${kiln_jvm_opts[@]}" -Dlog4j2.configurationFile="$kiln_kafka_dir/tools-log4j2.properties" \
    -cp "$kiln_kafka_jars/*" "$class" "$@"
}

kiln_kafka_topic_create() {
  kiln_kafka_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$KILN_TEST_KAFKA" \
    --create --topic "$1" --partitions "$2" --replication-factor 1
}

kiln_kafka_log_tail() {
  echo "--- the last lines of $kiln_kafka_dir/server.log and stdout.log:" >&2
  tail -n 40 "$kiln_kafka_dir/server.log" >&2 2>/dev/null || true
  tail -n 20 "$kiln_kafka_dir/stdout.log" >&2 2>/dev/null || true
}

# kiln_kafka_watch SHELL_PID JVM_PID: SIGTERM to the JVM once the shell is gone.
kiln_kafka_watch() {
  while kill -0 "$1" 2>/dev/null && kill -0 "$2" 2>/dev/null; do sleep 2; done
  kill -TERM "$2" 2>/dev/null || true
}

kiln_kafka_start() {
  local rc ports port cport cluster_id i version
  kiln_java_need || { rc=$?; return "$rc"; }
  kiln_kafka_jars=$KILN_CACHE/maven/kafka-$kiln_kafka_version
  kiln_maven_jars "$kiln_java_lib/kafka/pom.xml" "$kiln_kafka_jars" || { rc=$?; return "$rc"; }
  kiln_kafka_dir=$(mktemp -d "${TMPDIR:-/tmp}/kiln-kafka.XXXXXX") || return 1
  ports=$(kiln_free_ports 2) || return 1
  port=$(echo "$ports" | sed -n 1p)
  cport=$(echo "$ports" | sed -n 2p)
  cat >"$kiln_kafka_dir/server.properties" <<EOF || return 1
# KRaft, one node that is both broker and controller.
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$kiln_kafka_dir/data
# One broker: every internal topic with replication factor 1.
offsets.topic.replication.factor=1
offsets.topic.num.partitions=3
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=3
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
default.replication.factor=1
min.insync.replicas=1
group.initial.rebalance.delay.ms=0
num.partitions=3
auto.create.topics.enable=false
# Records carry old (and future) event-time timestamps: keep them all and accept any timestamp.
log.retention.ms=-1
log.retention.bytes=-1
log.message.timestamp.type=CreateTime
log.message.timestamp.before.max.ms=9223372036854775807
log.message.timestamp.after.max.ms=9223372036854775807
# A test broker: small segments and few threads.
log.segment.bytes=16777216
num.network.threads=2
num.io.threads=2
num.recovery.threads.per.data.dir=1
background.threads=2
EOF
  kiln_kafka_log4j "$kiln_kafka_dir/server.log" INFO >"$kiln_kafka_dir/log4j2.properties" || return 1
  kiln_kafka_log4j "$kiln_kafka_dir/tools.log" WARN >"$kiln_kafka_dir/tools-log4j2.properties" || return 1
  # A cluster id as Kafka's Uuid.randomUuid makes them: 16 random bytes, URL-safe base64
  # without padding, not starting with '-'.
  cluster_id=$(python3 -c '
import base64, os
while True:
    s = base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("=")
    if not s.startswith("-"):
        print(s)
        break') || return 1
  java -Xmx256m "${kiln_jvm_opts[@]}" -Dlog4j2.configurationFile="$kiln_kafka_dir/tools-log4j2.properties" \
    -cp "$kiln_kafka_jars/*" kafka.tools.StorageTool format --standalone -t "$cluster_id" \
    -c "$kiln_kafka_dir/server.properties" >"$kiln_kafka_dir/format.log" 2>&1 \
    || { cat "$kiln_kafka_dir/format.log" >&2; return 1; }
  java -Xms128m -Xmx512m "${kiln_jvm_opts[@]}" -Dlog4j2.configurationFile="$kiln_kafka_dir/log4j2.properties" \
    -cp "$kiln_kafka_jars/*" kafka.Kafka "$kiln_kafka_dir/server.properties" \
    </dev/null >"$kiln_kafka_dir/stdout.log" 2>&1 &
  kiln_kafka_pid=$!
  # A watchdog: if this shell dies without calling kiln_kafka_stop (SIGKILL), the broker goes too.
  kiln_kafka_watch "$$" "$kiln_kafka_pid" </dev/null >/dev/null 2>&1 &
  kiln_kafka_watch_pid=$!
  # Up to 90 s for "Kafka Server started", then one admin request (the broker lists topics).
  for ((i = 0; i < 450; i++)); do
    if ! kill -0 "$kiln_kafka_pid" 2>/dev/null; then
      echo "the Kafka broker exited during startup" >&2
      kiln_kafka_log_tail
      return 1
    fi
    grep -q 'Kafka Server started' "$kiln_kafka_dir/server.log" 2>/dev/null && break
    sleep 0.2
  done
  if [ "$i" = 450 ]; then
    echo "the Kafka broker did not start within 90 s" >&2
    kiln_kafka_log_tail
    return 1
  fi
  export KILN_TEST_KAFKA=127.0.0.1:$port
  if ! timeout 60 java -Xmx256m "${kiln_jvm_opts[@]}" \
    -Dlog4j2.configurationFile="$kiln_kafka_dir/tools-log4j2.properties" -cp "$kiln_kafka_jars/*" \
    org.apache.kafka.tools.TopicCommand --bootstrap-server "$KILN_TEST_KAFKA" --list \
    >"$kiln_kafka_dir/ready.log" 2>&1; then
    echo "the Kafka broker does not answer an admin request (TopicCommand --list)" >&2
    cat "$kiln_kafka_dir/ready.log" >&2
    kiln_kafka_log_tail
    unset KILN_TEST_KAFKA
    return 1
  fi
  version=$(grep -m 1 -oE 'Kafka version: [^ ]+' "$kiln_kafka_dir/server.log" | awk '{ print $3 }')
  echo "Apache Kafka ${version:-?} (KRaft broker+controller, pid $kiln_kafka_pid) on 127.0.0.1:$port (controller 127.0.0.1:$cport): KILN_TEST_KAFKA=$KILN_TEST_KAFKA"
}

kiln_kafka_stop() {
  if [ -n "$kiln_kafka_watch_pid" ]; then
    kill "$kiln_kafka_watch_pid" 2>/dev/null || true
    kiln_kafka_watch_pid=""
  fi
  if [ -n "$kiln_kafka_pid" ]; then
    kiln_stop_pid "$kiln_kafka_pid"
    kiln_kafka_pid=""
  fi
  if [ -n "$kiln_kafka_dir" ]; then
    rm -rf "$kiln_kafka_dir"
    kiln_kafka_dir=""
  fi
  unset KILN_TEST_KAFKA
}
