#!/usr/bin/env bash
# End-to-end comparison: lb vs nginx vs HAProxy as reverse proxies, measured side by side in
# one run on this machine.
#
#   apt-get install -y nginx haproxy wrk     # this script installs nothing itself
#   cargo build --release
#   benches/compare.sh [seconds-per-run] [rounds] [connections...]
#   RELAYS=1 benches/compare.sh ...          # also the layer-4 ceiling (see below)
#
# Two backends (one nginx, worker_processes 1, two ports answering a tiny 200) stand behind
# each proxy. Each proxy runs 2 workers with keep-alive upstream connections and round robin.
# wrk -t1 drives tiny keep-alive GETs; proxies are measured in alternating order per round so
# that drift on a shared machine hits all of them alike. Prints req/s (median of rounds),
# p50/p99 latency (median), RSS after the runs, and the ratio lb / best other.
#
# With RELAYS=1, lb (`mode = "tcp"`) and HAProxy (`mode tcp`) also run in the rotation as
# plain byte relays in front of the same backends: the same four socket operations per request
# as an HTTP proxy, and no HTTP work. No HTTP proxy can do less on this machine, so the best
# relay's req/s over the best HTTP proxy's is the headroom any HTTP proxy could have here.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=benches/common.sh
. benches/common.sh
SECS=${1:-10}
ROUNDS=${2:-3}
shift $(( $# > 2 ? 2 : $# )) || true
CONNS=("${@:-64 256}")
read -r -a CONNS <<< "${CONNS[*]}"

need_tools "nginx haproxy wrk" nginx haproxy wrk
need_lb

workdir compare

B1=18081 B2=18082 P_NGINX=18090 P_HAPROXY=18091 P_LB=18092 P_LBTCP=18094 P_HAPTCP=18095
RELAYS=${RELAYS:-0}

mkdir -p "$W/backends" "$W/nginx"
cat > "$W/backends/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $W/backends/nginx.pid;
error_log $W/backends/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path $W/backends; proxy_temp_path $W/backends; fastcgi_temp_path $W/backends;
  uwsgi_temp_path $W/backends; scgi_temp_path $W/backends;
  server { listen 127.0.0.1:$B1; location / { return 200 "ok\n"; } }
  server { listen 127.0.0.1:$B2; location / { return 200 "ok\n"; } }
}
CONF
cat > "$W/nginx/nginx.conf" <<CONF
worker_processes 2;
daemon off;
pid $W/nginx/nginx.pid;
error_log $W/nginx/error.log warn;
events { worker_connections 8192; }
http {
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path $W/nginx; proxy_temp_path $W/nginx; fastcgi_temp_path $W/nginx;
  uwsgi_temp_path $W/nginx; scgi_temp_path $W/nginx;
  upstream app { server 127.0.0.1:$B1; server 127.0.0.1:$B2; keepalive 256; }
  server {
    listen 127.0.0.1:$P_NGINX;
    location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
CONF
cat > "$W/haproxy.cfg" <<CONF
global
  nbthread 2
  maxconn 8000
defaults
  mode http
  timeout connect 2s
  timeout client 30s
  timeout server 30s
  option http-keep-alive
  http-reuse always
frontend fe
  bind 127.0.0.1:$P_HAPROXY
  default_backend be
backend be
  balance roundrobin
  server b1 127.0.0.1:$B1
  server b2 127.0.0.1:$B2
frontend fe_tcp
  mode tcp
  bind 127.0.0.1:$P_HAPTCP
  default_backend be_tcp
backend be_tcp
  mode tcp
  balance roundrobin
  server b1 127.0.0.1:$B1
  server b2 127.0.0.1:$B2
CONF
cat > "$W/lb.toml" <<CONF
[[listeners]]
name = "bench"
bind = "127.0.0.1:$P_LB"
pool = "app"
[pools.app]
strategy = "round_robin"
backends = [{ addr = "127.0.0.1:$B1" }, { addr = "127.0.0.1:$B2" }]
CONF
cat > "$W/lbtcp.toml" <<CONF
[[listeners]]
name = "relay"
bind = "127.0.0.1:$P_LBTCP"
mode = "tcp"
pool = "app"
[pools.app]
strategy = "round_robin"
backends = [{ addr = "127.0.0.1:$B1" }, { addr = "127.0.0.1:$B2" }]
CONF

nginx -c "$W/backends/nginx.conf" -p "$W/backends" & PIDS+=($!)
nginx -c "$W/nginx/nginx.conf" -p "$W/nginx" & PIDS+=($!); NGINX_PID=$!
haproxy -f "$W/haproxy.cfg" -db & PIDS+=($!); HAPROXY_PID=$!
LB_LOG=warn "$LB" --config "$W/lb.toml" & PIDS+=($!); LB_PID=$!
PORTS=($B1 $B2 $P_NGINX $P_HAPROXY $P_LB)
if [ "$RELAYS" = 1 ]; then
  LB_LOG=warn "$LB" --config "$W/lbtcp.toml" & PIDS+=($!); LBTCP_PID=$!
  PORTS+=($P_LBTCP $P_HAPTCP)
fi
sleep 1
for p in "${PORTS[@]}"; do
  curl -fsS "http://127.0.0.1:$p/" >/dev/null || { echo "port $p not answering" >&2; exit 1; }
done

# RSS in KiB of a process and its children (nginx workers).
rss() { ps -o rss= --ppid "$1" --pid "$1" | awk '{s+=$1} END {print s}'; }
# "12.34us" / "1.2ms" / "2s" -> microseconds
to_us() { awk -v v="$1" 'BEGIN { n=v+0; if (v ~ /us$/) print n; else if (v ~ /ms$/) print n*1000; else if (v ~ /s$/) print n*1000000; else print n }'; }

declare -A NAME=([nginx]=$P_NGINX [haproxy]=$P_HAPROXY [lb]=$P_LB [lb-tcp]=$P_LBTCP [hap-tcp]=$P_HAPTCP)
declare -A PIDOF=([nginx]=$NGINX_PID [haproxy]=$HAPROXY_PID [lb]=$LB_PID [lb-tcp]=${LBTCP_PID:-} [hap-tcp]=$HAPROXY_PID)
ORDER=(lb nginx haproxy)
[ "$RELAYS" = 1 ] && ORDER+=(lb-tcp hap-tcp)
N=${#ORDER[@]}

machine_line
echo "# wrk -t1 -c{${CONNS[*]}} -d${SECS}s, $ROUNDS rounds, alternating order; medians"
printf "%-8s %6s %12s %10s %10s %9s\n" proxy conns "req/s" "p50(ms)" "p99(ms)" "RSS(MB)"
for c in "${CONNS[@]}"; do
  declare -A RPS=() P50=() P99=()
  for ((r = 0; r < ROUNDS; r++)); do
    # Rotate the order each round.
    for ((i = 0; i < N; i++)); do
      px=${ORDER[$(( (i + r) % N ))]}
      out=$(wrk -t1 -c"$c" -d"${SECS}s" --latency "http://127.0.0.1:${NAME[$px]}/")
      RPS[$px]+="$(awk '/Requests\/sec/ {print $2}' <<< "$out") "
      P50[$px]+="$(to_us "$(awk '$1 == "50%" {print $2}' <<< "$out")") "
      P99[$px]+="$(to_us "$(awk '$1 == "99%" {print $2}' <<< "$out")") "
      errs=$(awk '/Non-2xx|Socket errors/' <<< "$out")
      [ -z "$errs" ] || echo "  ($px, c=$c: $errs)"
    done
  done
  best_other=0 best_relay=0
  for px in "${ORDER[@]}"; do
    rps=$(tr ' ' '\n' <<< "${RPS[$px]}" | grep . | median)
    p50=$(tr ' ' '\n' <<< "${P50[$px]}" | grep . | median)
    p99=$(tr ' ' '\n' <<< "${P99[$px]}" | grep . | median)
    mb=$(awk -v k="$(rss "${PIDOF[$px]}")" 'BEGIN {printf "%.1f", k/1024}')
    printf "%-8s %6s %12.0f %10.2f %10.2f %9s\n" "$px" "$c" "$rps" "$(awk -v u="$p50" 'BEGIN{print u/1000}')" "$(awk -v u="$p99" 'BEGIN{print u/1000}')" "$mb"
    case $px in
      lb) lb_rps=$rps ;;
      *-tcp) awk -v a="$rps" -v b="$best_relay" 'BEGIN{exit !(a>b)}' && best_relay=$rps ;;
      *) awk -v a="$rps" -v b="$best_other" 'BEGIN{exit !(a>b)}' && best_other=$rps ;;
    esac
  done
  awk -v a="$lb_rps" -v b="$best_other" -v c="$c" 'BEGIN {printf "ratio lb/best-other at c=%s: %.2f\n", c, a/b}'
  if [ "$RELAYS" = 1 ]; then
    awk -v a="$best_relay" -v b="$best_other" -v c="$c" \
      'BEGIN {printf "ceiling at c=%s: best relay/best-other %.2f (no HTTP proxy can pass this here)\n", c, a/b}'
  fi
  unset RPS P50 P99
done
