# Shared by the benches/*.sh comparison scripts; sourced, not run. Each script calls:
#   need_tools "<apt-get hint>" tool...   # exits with the hint when one is missing
#   need_lb                               # sets LB, exits unless target/release/lb is built
#   workdir <name>                        # sets W (a temp dir) and PIDS; cleans both up on exit
# and uses median, machine_line.

need_tools() {
  local hint=$1 tool
  shift
  for tool in "$@"; do
    command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install -y $hint" >&2; exit 1; }
  done
}

need_lb() {
  LB=target/release/lb
  [ -x "$LB" ] || { echo "missing $LB: cargo build --release" >&2; exit 1; }
}

# Every process started goes into PIDS; on exit they get SIGTERM, then SIGKILL, and W goes.
workdir() {
  W=$(mktemp -d "/tmp/lb-$1.XXXXXX")
  PIDS=()
  trap cleanup EXIT
}

cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 0.3
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  rm -rf "$W"
}

# The median of the numbers on stdin, one per line.
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

# "# date cores, CPU model": the first line of every report.
machine_line() {
  echo "# $(date -u +%Y-%m-%d) $(nproc) cores, $(awk '/model name/ {$1=$2=$3=""; print; exit}' /proc/cpuinfo)"
}
