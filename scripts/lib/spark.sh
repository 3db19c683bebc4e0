# shellcheck shell=bash
# shellcheck disable=SC2154 # kiln_jvm_opts: set by scripts/lib/java.sh
# A throwaway Apache Spark Connect server (Spark 4.3, `local[2]`) for the Spark bridge tests.
# Sourced by scripts/test.sh after scripts/lib/apt.sh and scripts/lib/java.sh; defines
# functions only and installs no trap (the caller's cleanup calls kiln_spark_stop).
#
#   kiln_spark_start PYTHON
#                      starts the Spark Connect server of the pyspark wheel installed for
#                      PYTHON (the test venv's: pyspark carries Spark's jars and
#                      sbin/start-connect-server.sh) on 127.0.0.1 on a free port, with its
#                      warehouse, metastore, logs and scratch space in a temporary directory,
#                      waits until it listens and exports KILN_TEST_SPARK=sc://127.0.0.1:PORT.
#                      Returns 2 when Java 17+ or pyspark is missing and cannot be installed,
#                      1 on any other failure.
#   kiln_spark_stop    stops the server (SIGTERM, SIGKILL after 10 s) and removes its
#                      directory; safe to call more than once.
#
# The server is Spark's own SparkConnectServer started the way start-connect-server.sh
# starts it (spark-submit --class org.apache.spark.sql.connect.service.SparkConnectServer),
# in the foreground of a background job so the tests own its process. Every address it binds
# (gRPC, the driver, the block manager) is 127.0.0.1; the web UI is off. A watchdog stops it
# if the calling shell dies without calling kiln_spark_stop.
#
# Callers may run under `set -e`, which bash disables inside `f || ...`: every step below
# checks its own status.

kiln_spark_dir=""
kiln_spark_pid=""
kiln_spark_watch_pid=""

kiln_spark_log_tail() {
  echo "--- the last lines of $kiln_spark_dir/server.log:" >&2
  tail -n 40 "$kiln_spark_dir/server.log" >&2 2>/dev/null || true
}

# kiln_spark_watch SHELL_PID JVM_PID: SIGTERM to the JVM once the shell is gone.
kiln_spark_watch() {
  while kill -0 "$1" 2>/dev/null && kill -0 "$2" 2>/dev/null; do sleep 2; done
  kill -TERM "$2" 2>/dev/null || true
}

kiln_spark_start() {
  local python=$1 rc spark_home port i version
  kiln_java_need || { rc=$?; return "$rc"; }
  spark_home=$("$python" -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))' 2>/dev/null) \
    || { echo "pyspark is not installed for $python (scripts/requirements-test.txt installs it)" >&2; return 2; }
  [ -x "$spark_home/bin/spark-submit" ] || { echo "$spark_home/bin/spark-submit is missing" >&2; return 1; }
  kiln_spark_dir=$(mktemp -d "${TMPDIR:-/tmp}/kiln-spark.XXXXXX") || return 1
  port=$(kiln_free_ports 1) || return 1
  mkdir -p "$kiln_spark_dir/warehouse" "$kiln_spark_dir/local" || return 1
  # The metastore (Derby, in-process) and the warehouse in the temporary directory.
  SPARK_HOME=$spark_home SPARK_LOCAL_IP=127.0.0.1 SPARK_LOG_DIR=$kiln_spark_dir \
    SPARK_LOCAL_DIRS=$kiln_spark_dir/local PYSPARK_PYTHON=$python \
    "$spark_home/bin/spark-submit" \
    --class org.apache.spark.sql.connect.service.SparkConnectServer --name "kiln test Spark Connect" \
    --master 'local[2]' --driver-memory 1g \
    --driver-java-options "${kiln_jvm_opts[*]} -Dderby.system.home=$kiln_spark_dir" \
    --conf spark.connect.grpc.binding.address=127.0.0.1 \
    --conf spark.connect.grpc.binding.port="$port" \
    --conf spark.driver.host=127.0.0.1 --conf spark.driver.bindAddress=127.0.0.1 \
    --conf spark.ui.enabled=false \
    --conf spark.sql.warehouse.dir="$kiln_spark_dir/warehouse" \
    --conf spark.sql.catalogImplementation=hive \
    --conf spark.sql.shuffle.partitions=4 \
    --conf spark.hadoop.javax.jdo.option.ConnectionURL="jdbc:derby:;databaseName=$kiln_spark_dir/metastore;create=true" \
    </dev/null >"$kiln_spark_dir/server.log" 2>&1 &
  kiln_spark_pid=$!
  kiln_spark_watch "$$" "$kiln_spark_pid" </dev/null >/dev/null 2>&1 &
  kiln_spark_watch_pid=$!
  # Up to 120 s for "Spark Connect server started" (about 20 s on 2 cores).
  for ((i = 0; i < 600; i++)); do
    if ! kill -0 "$kiln_spark_pid" 2>/dev/null; then
      echo "the Spark Connect server exited during startup" >&2
      kiln_spark_log_tail
      return 1
    fi
    grep -q 'Spark Connect server started' "$kiln_spark_dir/server.log" 2>/dev/null && break
    sleep 0.2
  done
  if [ "$i" = 600 ]; then
    echo "the Spark Connect server did not start within 120 s" >&2
    kiln_spark_log_tail
    return 1
  fi
  export KILN_TEST_SPARK=sc://127.0.0.1:$port
  version=$("$python" -c 'import pyspark; print(pyspark.__version__)' 2>/dev/null || echo '?')
  echo "Apache Spark $version Connect server (local[2], pid $kiln_spark_pid) on 127.0.0.1:$port: KILN_TEST_SPARK=$KILN_TEST_SPARK"
}

kiln_spark_stop() {
  if [ -n "$kiln_spark_watch_pid" ]; then
    kill "$kiln_spark_watch_pid" 2>/dev/null || true
    kiln_spark_watch_pid=""
  fi
  if [ -n "$kiln_spark_pid" ]; then
    kiln_stop_pid "$kiln_spark_pid"
    kiln_spark_pid=""
  fi
  if [ -n "$kiln_spark_dir" ]; then
    rm -rf "$kiln_spark_dir"
    kiln_spark_dir=""
  fi
  unset KILN_TEST_SPARK
}
