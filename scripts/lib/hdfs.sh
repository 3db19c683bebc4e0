# shellcheck shell=bash
# shellcheck disable=SC2154 # kiln_java_lib and kiln_jvm_opts: set by scripts/lib/java.sh
# A throwaway HDFS (Hadoop 3.5 MiniDFSCluster: one namenode and one datanode in one JVM) for the
# HDFS store tests. Sourced by scripts/test.sh after scripts/lib/apt.sh and scripts/lib/java.sh;
# defines functions only and installs no trap (the caller's cleanup calls kiln_hdfs_stop).
#
#   kiln_hdfs_start   resolves the jars of scripts/lib/java/hdfs/pom.xml into
#                     $KILN_CACHE/maven/hdfs-3.5.0 (once per pom change), compiles
#                     scripts/lib/java/hdfs/MiniHdfs.java into its classes/ (once per source
#                     change), starts the cluster on 127.0.0.1 with a temporary base directory,
#                     waits for its READY line and exports KILN_TEST_HDFS=hdfs://127.0.0.1:PORT.
#                     Returns 2 when Java (with javac) or Maven is missing and cannot be
#                     installed, 1 on any other failure.
#   kiln_hdfs_stop    stops the cluster (end of its stdin: a clean shutdown; SIGTERM after
#                     10 s, SIGKILL 10 s later) and removes its directory; safe to call more than once.
#   kiln_hdfs_dfs ARGS...
#                     Hadoop's own `hdfs dfs` (FsShell) against the running cluster, e.g.
#                     kiln_hdfs_dfs -ls -R /
#
# Every address is on 127.0.0.1: the namenode's RPC (the port in KILN_TEST_HDFS) and HTTP, and
# the datanode's data transfer, HTTP and IPC ports (ephemeral); the datanode registers with
# 127.0.0.1 as both its IP address and its hostname. Permissions are off (any user writes
# anywhere), the default replication is 1 and the block size 16 MiB. Its log (log4j) and data
# are in the temporary directory, printed on failure.
#
# The JVM reads its stdin from a FIFO that this shell holds open (kiln_hdfs_stop closes it: end
# of file is MiniHdfs's stop signal), and it watches the shell's pid: if the shell dies without
# calling kiln_hdfs_stop (SIGKILL), the JVM shuts down by itself within a second or two.
#
# Callers may run under `set -e`, which bash disables inside `f || ...`: every step below
# checks its own status.

kiln_hdfs_version=3.5.0
kiln_hdfs_dir=""
kiln_hdfs_pid=""
kiln_hdfs_fd=""
kiln_hdfs_jars=""

kiln_hdfs_log_tail() {
  echo "--- the last lines of $kiln_hdfs_dir/server.log and stderr.log:" >&2
  tail -n 40 "$kiln_hdfs_dir/server.log" >&2 2>/dev/null || true
  tail -n 20 "$kiln_hdfs_dir/stderr.log" >&2 2>/dev/null || true
}

# MiniHdfs.class, compiled into the jars' classes/ when the source's sha256 changes.
kiln_hdfs_compile() {
  local src=$kiln_java_lib/hdfs/MiniHdfs.java classes=$kiln_hdfs_jars/classes want have new
  want=$(sha256sum "$src" | cut -d' ' -f1) || return 1
  have=$(cat "$classes/.kiln-src.sha256" 2>/dev/null || true)
  [ "$have" = "$want" ] && return 0
  echo "compiling scripts/lib/java/hdfs/MiniHdfs.java into $classes"
  new=$(mktemp -d "$classes.new.XXXXXX") || return 1
  javac -nowarn -encoding UTF-8 -d "$new" -cp "$kiln_hdfs_jars/*" "$src" || { rm -rf "$new"; return 1; }
  echo "$want" >"$new/.kiln-src.sha256" || { rm -rf "$new"; return 1; }
  rm -rf "$classes" && mv "$new" "$classes"
}

kiln_hdfs_dfs() {
  [ -n "$kiln_hdfs_dir" ] || { echo "kiln_hdfs_dfs: no cluster is running" >&2; return 1; }
  java -Xmx256m "${kiln_jvm_opts[@]}" -Dlog4j.configuration="file:$kiln_hdfs_dir/conf/client-log4j.properties" \
    -cp "$kiln_hdfs_dir/conf:$kiln_hdfs_jars/*" org.apache.hadoop.fs.FsShell "$@"
}

kiln_hdfs_start() {
  local rc port line="" uri i
  kiln_java_need javac || { rc=$?; return "$rc"; }
  kiln_hdfs_jars=$KILN_CACHE/maven/hdfs-$kiln_hdfs_version
  kiln_maven_jars "$kiln_java_lib/hdfs/pom.xml" "$kiln_hdfs_jars" || { rc=$?; return "$rc"; }
  kiln_hdfs_compile || return 1
  kiln_hdfs_dir=$(mktemp -d "${TMPDIR:-/tmp}/kiln-hdfs.XXXXXX") || return 1
  mkdir -p "$kiln_hdfs_dir/conf" || return 1
  port=$(kiln_free_ports 1) || return 1
  cat >"$kiln_hdfs_dir/log4j.properties" <<EOF || return 1
log4j.rootLogger=INFO, file
log4j.appender.file=org.apache.log4j.FileAppender
log4j.appender.file.File=$kiln_hdfs_dir/server.log
log4j.appender.file.layout=org.apache.log4j.PatternLayout
log4j.appender.file.layout.ConversionPattern=%d{ISO8601} %-5p %c{2} - %m%n
log4j.logger.org.apache.hadoop.util.NativeCodeLoader=ERROR
EOF
  cat >"$kiln_hdfs_dir/conf/client-log4j.properties" <<'EOF' || return 1
log4j.rootLogger=WARN, stderr
log4j.appender.stderr=org.apache.log4j.ConsoleAppender
log4j.appender.stderr.Target=System.err
log4j.appender.stderr.layout=org.apache.log4j.PatternLayout
log4j.appender.stderr.layout.ConversionPattern=%p %c{2} - %m%n
log4j.logger.org.apache.hadoop.util.NativeCodeLoader=ERROR
EOF
  mkfifo "$kiln_hdfs_dir/stdin" || return 1
  java -Xms128m -Xmx512m "${kiln_jvm_opts[@]}" -Dlog4j.configuration="file:$kiln_hdfs_dir/log4j.properties" \
    -cp "$kiln_hdfs_jars/classes:$kiln_hdfs_jars/*" MiniHdfs "$kiln_hdfs_dir/data" "$port" "$$" \
    <"$kiln_hdfs_dir/stdin" >"$kiln_hdfs_dir/stdout.log" 2>"$kiln_hdfs_dir/stderr.log" &
  kiln_hdfs_pid=$!
  # Read-write: opening never blocks; the JVM sees end of file once this fd is closed.
  exec {kiln_hdfs_fd}<>"$kiln_hdfs_dir/stdin" || return 1
  for ((i = 0; i < 600; i++)); do
    line=$(grep -m 1 '^READY ' "$kiln_hdfs_dir/stdout.log" 2>/dev/null || true)
    [ -n "$line" ] && break
    if ! kill -0 "$kiln_hdfs_pid" 2>/dev/null; then
      echo "the HDFS MiniDFSCluster exited during startup" >&2
      kiln_hdfs_log_tail
      return 1
    fi
    sleep 0.2
  done
  if [ -z "$line" ]; then
    echo "the HDFS MiniDFSCluster did not start within 120 s" >&2
    kiln_hdfs_log_tail
    return 1
  fi
  uri=${line#READY }
  # The client configuration for kiln_hdfs_dfs (Hadoop's FsShell).
  cat >"$kiln_hdfs_dir/conf/core-site.xml" <<EOF || return 1
<?xml version="1.0"?>
<configuration>
  <property><name>fs.defaultFS</name><value>$uri</value></property>
</configuration>
EOF
  # dfs.replication here, not in core-site.xml: hdfs-default.xml is read after core-site.xml.
  cat >"$kiln_hdfs_dir/conf/hdfs-site.xml" <<'EOF' || return 1
<?xml version="1.0"?>
<configuration>
  <property><name>dfs.replication</name><value>1</value></property>
</configuration>
EOF
  export KILN_TEST_HDFS=$uri
  echo "Hadoop HDFS $kiln_hdfs_version MiniDFSCluster (1 namenode, 1 datanode, pid $kiln_hdfs_pid) on 127.0.0.1: KILN_TEST_HDFS=$KILN_TEST_HDFS"
}

kiln_hdfs_stop() {
  if [ -n "$kiln_hdfs_fd" ]; then
    exec {kiln_hdfs_fd}>&-
    kiln_hdfs_fd=""
  fi
  if [ -n "$kiln_hdfs_pid" ]; then
    # End of stdin is MiniHdfs's stop signal; SIGTERM (then SIGKILL) if that is not enough.
    kiln_wait_pid_exit "$kiln_hdfs_pid" 10 || kiln_stop_pid "$kiln_hdfs_pid"
    kiln_hdfs_pid=""
  fi
  if [ -n "$kiln_hdfs_dir" ]; then
    rm -rf "$kiln_hdfs_dir"
    kiln_hdfs_dir=""
  fi
  unset KILN_TEST_HDFS
}
