# shellcheck shell=bash
# Java and Maven for the test suite's JVM peers (scripts/lib/kafka.sh, scripts/lib/hdfs.sh).
# Sourced by scripts/test.sh after scripts/lib/apt.sh; defines functions only.
#
#   kiln_java_need [javac]    java 17+ on PATH (and javac with the argument), installing Debian's
#                             default-jdk-headless with apt-get if it is missing. Returns 2 when it
#                             is missing and cannot be installed (or is older than 17), 1 when the
#                             install fails.
#   kiln_maven_jars POM DIR   DIR holds the jars of POM's dependencies (runtime scope), resolved
#                             by `mvn dependency:copy-dependencies` with the Maven repository at
#                             $KILN_CACHE/maven/repo. Resolved again only when POM's sha256
#                             differs from the one recorded in DIR, so a warm cache needs neither
#                             Maven nor the network. Installs Debian's maven if mvn is missing
#                             (returns 2 when it cannot, 1 on any other failure).
#   kiln_free_ports N         N distinct free TCP ports on 127.0.0.1, one a line.
#
# Callers may run under `set -e`, which bash disables inside `f || ...`: every step below
# checks its own status.

# The scripts/lib/java directory (the poms and MiniHdfs.java), whatever the caller's directory.
kiln_java_lib=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/java

# Options for every JVM the tests start: small and quick to start on a 2-core machine.
# shellcheck disable=SC2034 # used by scripts/lib/kafka.sh and scripts/lib/hdfs.sh
kiln_jvm_opts=(-XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Djava.net.preferIPv4Stack=true)

kiln_java_major() {
  java -XshowSettings:properties -version 2>&1 | awk -F' = ' '/java.specification.version/ { print $2 }'
}

kiln_java_need() {
  local rc major
  if ! command -v java >/dev/null || { [ "${1:-}" = javac ] && ! command -v javac >/dev/null; }; then
    echo "Java is not installed: installing Debian's default-jdk-headless"
    kiln_apt_install default-jdk-headless || { rc=$?; return "$rc"; }
  fi
  major=$(kiln_java_major)
  case $major in
    '' | *[!0-9]*)
      echo "cannot tell java's version (java.specification.version: '$major')" >&2
      return 1
      ;;
  esac
  if [ "$major" -lt 17 ]; then
    echo "java on PATH is Java $major; Kafka 4 and Hadoop 3.5 need Java 17 or later" >&2
    return 2
  fi
}

kiln_maven_jars() {
  local pom=$1 dir=$2 want have new rc
  want=$(sha256sum "$pom" | cut -d' ' -f1) || return 1
  have=$(cat "$dir/.kiln-pom.sha256" 2>/dev/null || true)
  if [ "$have" = "$want" ]; then
    echo "scripts/lib/java/${pom#"$kiln_java_lib"/} unchanged (sha256 ${want:0:12}): jars in $dir"
    return 0
  fi
  if ! command -v mvn >/dev/null; then
    echo "Maven is not installed: installing Debian's maven"
    kiln_apt_install maven || { rc=$?; return "$rc"; }
  fi
  mkdir -p "$(dirname "$dir")" || return 1
  # Resolved next to DIR and moved into place: an interrupted run leaves no half-filled DIR.
  new=$(mktemp -d "$dir.new.XXXXXX") || return 1
  echo "resolving scripts/lib/java/${pom#"$kiln_java_lib"/} into $dir (Maven repository: $KILN_CACHE/maven/repo)"
  # The output only on failure (Debian's Maven 3.8 writes colour codes even under -q -B).
  if ! mvn -q -B -Dmaven.repo.local="$KILN_CACHE/maven/repo" -f "$pom" \
    org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$new" >"$new/.mvn.log" 2>&1; then
    sed 's/\x1b\[[0-9;]*m//g' "$new/.mvn.log" >&2
    rm -rf "$new"
    return 1
  fi
  rm -f "$new/.mvn.log"
  echo "$want" >"$new/.kiln-pom.sha256" || { rm -rf "$new"; return 1; }
  rm -rf "$dir" && mv "$new" "$dir" || return 1
  echo "$(find "$dir" -name '*.jar' | wc -l) jars, $(du -sh "$dir" | cut -f1)"
}

kiln_free_ports() {
  # All sockets held open until every port is chosen, so the ports are distinct.
  python3 -c '
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
for s in socks:
    print(s.getsockname()[1])' "$1"
}

# kiln_wait_pid_exit PID SECONDS: 0 once PID is gone, 1 if it still runs after SECONDS.
kiln_wait_pid_exit() {
  local pid=$1 i
  for ((i = 0; i < $2 * 5; i++)); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.2
  done
  ! kill -0 "$pid" 2>/dev/null
}

# kiln_stop_pid PID: SIGTERM, up to 10 s for a clean exit, then SIGKILL.
kiln_stop_pid() {
  local pid=$1
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  kiln_wait_pid_exit "$pid" 10 && return 0
  echo "pid $pid still runs 10 s after SIGTERM: SIGKILL" >&2
  kill -KILL "$pid" 2>/dev/null || true
  kiln_wait_pid_exit "$pid" 5 || true
}
