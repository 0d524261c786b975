#!/usr/bin/env bash
# Resident memory under a slow-read attack: lb vs nginx vs HAProxy, each proxying a large file
# to `slowhttptest -X` clients that advertise a tiny TCP window and read a few bytes a second.
#
#   apt-get install -y slowhttptest nginx haproxy curl   # this script installs nothing itself
#   cargo build --release
#   benches/slow_read.sh [connections] [MiB] [seconds]   # defaults: 1000 4 30
#
# One nginx backend (worker_processes 1, sendfile) serves a file of MiB mebibytes. Each proxy
# runs 2 workers (lb --workers 2, nginx worker_processes 2, HAProxy nbthread 2), one at a time:
# slowhttptest opens `connections` connections (200 a second), each GETs the file, and reads
# 32 bytes a second through a 512-1024 byte window for `seconds`, then closes them all.
# Printed per proxy, from VmRSS in /proc (summed over nginx's master and workers): RSS at start,
# the peak (sampled every 0.5 s), the client connections the proxy held at the peak (`ss`),
# KB per held connection at the peak, and RSS 1 s and 10 s after the last one closed.
# nginx runs with `proxy_max_temp_file_size 0`: it then keeps to its in-memory proxy_buffers
# (the default would spool every body to disk, GBs here) and pushes back on the backend, as lb
# and HAProxy do.
# PROXIES="lb nginx" picks which proxies run (default all three, in that order).
# LB_BIN=path runs another lb binary (e.g. one built before a change); the environment reaches
# every proxy, so glibc tunables such as MALLOC_ARENA_MAX can be tried without a rebuild.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=benches/common.sh
. benches/common.sh
CONNS=${1:-1000}
MIB=${2:-4}
SECS=${3:-30}
[[ $CONNS =~ ^[1-9][0-9]*$ && $MIB =~ ^[1-9][0-9]*$ && $SECS =~ ^[1-9][0-9]*$ ]] \
  || { echo "usage: $0 [connections] [MiB] [seconds]  (positive integers)" >&2; exit 2; }

need_tools "slowhttptest nginx haproxy curl iproute2" slowhttptest nginx haproxy curl ss
if [ -n "${LB_BIN:-}" ]; then LB=$LB_BIN; else need_lb; fi

ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
NOFILE=$(ulimit -n)
(( NOFILE >= 2 * CONNS + 1000 )) \
  || { echo "ulimit -n is $NOFILE (hard $(ulimit -Hn)); $CONNS connections need $(( 2 * CONNS + 1000 ))" >&2; exit 1; }
MAXCONN=$(( CONNS * 2 > 20000 ? CONNS * 2 : 20000 ))

workdir slow-read

B=18130 P_LB=18131 P_NGINX=18132 P_HAPROXY=18133

mkdir -p "$W/backend/www" "$W/nginx"
chmod -R a+rX "$W"   # nginx workers run as nobody when started by root
head -c "$(( MIB << 20 ))" /dev/zero > "$W/backend/www/big"
chmod a+r "$W/backend/www/big"
cat > "$W/backend/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $W/backend/nginx.pid;
error_log $W/backend/error.log warn;
events { worker_connections $MAXCONN; }
http {
  access_log off;
  sendfile on;
  keepalive_timeout 600s;
  client_body_temp_path $W/backend; proxy_temp_path $W/backend; fastcgi_temp_path $W/backend;
  uwsgi_temp_path $W/backend; scgi_temp_path $W/backend;
  server { listen 127.0.0.1:$B; root $W/backend/www; }
}
CONF
cat > "$W/nginx/nginx.conf" <<CONF
worker_processes 2;
daemon off;
pid $W/nginx/nginx.pid;
error_log $W/nginx/error.log warn;
events { worker_connections $MAXCONN; }
http {
  access_log off;
  client_body_temp_path $W/nginx; proxy_temp_path $W/nginx; fastcgi_temp_path $W/nginx;
  uwsgi_temp_path $W/nginx; scgi_temp_path $W/nginx;
  upstream app { server 127.0.0.1:$B; keepalive 256; }
  server {
    listen 127.0.0.1:$P_NGINX;
    location / {
      proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_max_temp_file_size 0;
    }
  }
}
CONF
cat > "$W/haproxy.cfg" <<CONF
global
  nbthread 2
  maxconn $MAXCONN
  no strict-limits
defaults
  mode http
  timeout connect 2s
  timeout client 600s
  timeout server 600s
  http-reuse always
frontend fe
  bind 127.0.0.1:$P_HAPROXY
  default_backend be
backend be
  server b1 127.0.0.1:$B
CONF
cat > "$W/lb.toml" <<CONF
[[listeners]]
name = "slow"
bind = "127.0.0.1:$P_LB"
pool = "app"
max_connections = $MAXCONN
idle_timeout = "600s"
[pools.app]
strategy = "round_robin"
backends = [{ addr = "127.0.0.1:$B" }]
CONF

# KiB of VmRSS of a process and its children (nginx workers).
rss() {
  local t=0 p
  for p in $(ps -o pid= --ppid "$1" --pid "$1"); do
    t=$(( t + $(awk '/^VmRSS:/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0) ))
  done
  echo "$t"
}
# Established client connections to a port.
held() { ss -Htn state established "( sport = :$1 )" | wc -l; }
# KiB waiting in the kernel's send buffers of those connections (Send-Q).
sendq() { ss -Htn state established "( sport = :$1 )" | awk '{t += $2} END {print int(t / 1024)}'; }

nginx -c "$W/backend/nginx.conf" -p "$W/backend" & PIDS+=($!)
sleep 0.5
curl -fsS -o /dev/null "http://127.0.0.1:$B/big" || { echo "backend not answering" >&2; exit 1; }

declare -A START=() PEAK=() HELD=() SENDQ=() AFTER1=() AFTER10=()
read -r -a ORDER <<< "${PROXIES:-lb nginx haproxy}"
for px in "${ORDER[@]}"; do
  case $px in
    lb) LB_LOG=warn "$LB" --config "$W/lb.toml" --workers 2 2> "$W/lb.log" & PID=$! PORT=$P_LB ;;
    nginx) nginx -c "$W/nginx/nginx.conf" -p "$W/nginx" & PID=$! PORT=$P_NGINX ;;
    haproxy) haproxy -f "$W/haproxy.cfg" -db 2> "$W/haproxy.log" & PID=$! PORT=$P_HAPROXY ;;
  esac
  PIDS+=("$PID")
  sleep 1.5
  kill -0 "$PID" 2>/dev/null || { echo "$px exited at start" >&2; cat "$W/$px.log" >&2 2>/dev/null; exit 1; }
  curl -fsS -o /dev/null "http://127.0.0.1:$PORT/big" || { echo "$px not answering" >&2; exit 1; }
  START[$px]=$(rss "$PID")
  slowhttptest -X -c "$CONNS" -r 200 -l "$SECS" -n 1 -z 32 -w 512 -y 1024 -k 1 -p 5 \
    -u "http://127.0.0.1:$PORT/big" > "$W/slow-$px.out" 2>&1 & SPID=$!
  PIDS+=("$SPID")
  peak=0 most=0 queued=0
  while kill -0 "$SPID" 2>/dev/null; do
    r=$(rss "$PID"); (( r > peak )) && peak=$r
    h=$(held "$PORT"); (( h > most )) && most=$h
    q=$(sendq "$PORT"); (( q > queued )) && queued=$q
    sleep 0.5
  done
  wait "$SPID" || true
  for ((t = 0; t < 600; t++)); do (( $(held "$PORT") == 0 )) && break; sleep 0.1; done
  (( $(held "$PORT") == 0 )) || echo "WARNING: $px still holds $(held "$PORT") connections" >&2
  sleep 1
  AFTER1[$px]=$(rss "$PID")
  sleep 9
  AFTER10[$px]=$(rss "$PID")
  PEAK[$px]=$peak HELD[$px]=$most SENDQ[$px]=$queued
  kill "$PID"; wait "$PID" 2>/dev/null || true
done

machine_line
echo "# slowhttptest -X: $CONNS connections, $MIB MiB body, $SECS s, 32 B/s read through a 512-1024 B window"
printf "%-8s %9s %9s %7s %9s %14s %15s %13s\n" proxy "start(MB)" "peak(MB)" "held" "KB/conn" "closed+1s(MB)" "closed+10s(MB)" "kernel-sndq(MB)"
for px in "${ORDER[@]}"; do
  awk -v px="$px" -v s="${START[$px]}" -v p="${PEAK[$px]}" -v h="${HELD[$px]}" -v a="${AFTER1[$px]}" -v b="${AFTER10[$px]}" -v q="${SENDQ[$px]}" \
    'BEGIN {printf "%-8s %9.1f %9.1f %7d %9.1f %14.1f %15.1f %15.1f\n", px, s / 1024, p / 1024, h, (h ? (p - s) / h : 0), a / 1024, b / 1024, q / 1024}'
done
if [ -s "$W/lb.log" ]; then echo "# lb log:"; sed 's/^/#   /' "$W/lb.log" | head -20; fi
