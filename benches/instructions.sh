#!/usr/bin/env bash
# User-space instructions per proxied keep-alive GET, counted by callgrind (deterministic on this
# noisy machine, unlike timings): lb, nginx and HAProxy, one worker each, in front of the same
# nginx backend answering a tiny 200. Each proxy runs twice under callgrind, once for LOW and
# once for HIGH requests (`h2load --h1 -c4`); (HIGH total - LOW total) / (HIGH - LOW) is the cost
# of one request, with start-up and shutdown cancelled out.
#
#   benches/instructions.sh [LOW] [HIGH] [PROXIES]     defaults: 2000 6000 "lb nginx haproxy"
#
# Needs: cargo build --release; apt-get install -y valgrind nghttp2-client nginx haproxy
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/common.sh
LOW=${1:-2000}
HIGH=${2:-6000}
PROXIES=${3:-"lb nginx haproxy"}
need_tools "valgrind nghttp2-client nginx haproxy" valgrind h2load nginx haproxy
need_lb
workdir instructions

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
  for _ in $(seq 1 600); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listening on $1" >&2
  exit 1
}

BACKEND=$(port)
mkdir -p "$W/backend"
cat >"$W/backend/nginx.conf" <<EOF
daemon off; master_process off; worker_processes 1; pid $W/backend/pid; error_log /dev/null;
events { worker_connections 1024; }
http { access_log off; server { listen 127.0.0.1:$BACKEND; location / { return 200 "ok"; } } }
EOF
nginx -c "$W/backend/nginx.conf" -p "$W/backend" &
PIDS+=($!)
wait_port "$BACKEND"

# Starts proxy $1 under callgrind on port $2 writing to $3; prints its pid. Its output goes to a
# file: the caller reads the pid through a pipe, which must not stay open in the proxy.
start_proxy() {
  local name=$1 listen=$2 out=$3 dir="$W/$1-$2"
  mkdir -p "$dir"
  case $name in
  lb)
    cat >"$dir/lb.toml" <<EOF
[[listeners]]
name = "web"
bind = "127.0.0.1:$listen"
pool = "app"
[pools.app]
strategy = "round_robin"
backends = [{ addr = "127.0.0.1:$BACKEND" }]
EOF
    LB_LOG=error valgrind -q --tool=callgrind --callgrind-out-file="$out" "$LB" --config "$dir/lb.toml" --workers 1 \
      >"$dir/log" 2>&1 &
    ;;
  nginx)
    cat >"$dir/nginx.conf" <<EOF
daemon off; master_process off; worker_processes 1; pid $dir/pid; error_log /dev/null;
events { worker_connections 1024; }
http {
  access_log off;
  upstream app { server 127.0.0.1:$BACKEND; keepalive 32; }
  server { listen 127.0.0.1:$listen;
    location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; } }
}
EOF
    valgrind -q --tool=callgrind --callgrind-out-file="$out" nginx -c "$dir/nginx.conf" -p "$dir" >"$dir/log" 2>&1 &
    ;;
  haproxy)
    cat >"$dir/haproxy.cfg" <<EOF
global
  nbthread 1
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  http-reuse always
frontend web
  bind 127.0.0.1:$listen
  default_backend app
backend app
  server s1 127.0.0.1:$BACKEND
EOF
    valgrind -q --tool=callgrind --callgrind-out-file="$out" haproxy -f "$dir/haproxy.cfg" -db >"$dir/log" 2>&1 &
    ;;
  esac
  echo $!
}

# Total instructions of one run of proxy $1 serving $2 requests.
count() {
  local name=$1 n=$2 listen pid out
  listen=$(port)
  out="$W/$name-$n.callgrind"
  pid=$(start_proxy "$name" "$listen" "$out")
  PIDS+=("$pid")
  wait_port "$listen"
  h2load --h1 -c4 -n "$n" "http://127.0.0.1:$listen/" >"$W/$name-$n.h2load" 2>&1
  grep -q "succeeded, 0 errored, 0 timeout" "$W/$name-$n.h2load" ||
    grep -q "$n succeeded" "$W/$name-$n.h2load" || { cat "$W/$name-$n.h2load" >&2; exit 1; }
  kill -TERM "$pid"
  # Not this shell's child (started in a command substitution): poll until it has exited and
  # callgrind has written its totals.
  for _ in $(seq 1 600); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  awk '/^(summary|totals):/ {print $2; exit}' "$out"
}

machine_line
echo "# instructions per proxied keep-alive GET (callgrind, one worker, h2load --h1 -c4, ($HIGH - $LOW) requests)"
declare -A PER
for p in $PROXIES; do
  lo=$(count "$p" "$LOW")
  hi=$(count "$p" "$HIGH")
  PER[$p]=$(((hi - lo) / (HIGH - LOW)))
  printf '%-8s %10d instructions/request   (%s: %d, %s: %d)\n' "$p" "${PER[$p]}" "$LOW" "$lo" "$HIGH" "$hi"
done
if [ -n "${PER[lb]:-}" ]; then
  for p in nginx haproxy; do
    [ -n "${PER[$p]:-}" ] && awk -v a="${PER[lb]}" -v b="${PER[$p]}" -v n="$p" 'BEGIN {printf "lb / %-8s %.3f\n", n, a / b}'
  done
fi
