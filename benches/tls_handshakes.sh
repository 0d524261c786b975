#!/usr/bin/env bash
# TLS handshakes per second: lb terminating TLS vs nginx `listen ... ssl`, same certificate.
#
#   apt-get install -y nginx openssl curl     # this script installs nothing itself
#   cargo build --release
#   benches/tls_handshakes.sh [seconds-per-run] [rounds] [clients]   # defaults: 10 3 4
#
# A self-signed ECDSA P-256 certificate is made with openssl in the temp dir. One backend
# nginx (worker_processes 1) answers a tiny 200 "ok" on two ports, one per proxy, each with its
# own access log. lb (--workers 2, tls = [...] on the listener) and nginx (worker_processes 2,
# `ssl` listener, keep-alive upstream) proxy to it, so both do the same work per connection.
# Clients are `openssl s_time -new -www /`: every connection is a full handshake (TLS 1.3 with
# X25519, no session resumption) followed by one HTTP/1.0 GET (with a Host header) and close.
# `clients` s_time processes run in parallel per run; handshakes/s is the sum over them of
# connections / wall seconds (measured here: s_time's "real seconds" are whole seconds).
# After every run the backend's access log must show a 200 for (nearly) every connection and
# no other status, so a proxy failing requests cannot look fast. lb and nginx alternate.
# Prints handshakes/s (median of rounds), the proxy's CPU milliseconds per handshake (median;
# user+system of its processes) and the ratio lb/nginx. On 2 cores the clients need about as
# much CPU as the server, so handshakes/s is bounded by the machine; cpu-ms/hs is the fairer
# comparison of the proxies themselves.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=benches/common.sh
. benches/common.sh
SECS=${1:-10}
ROUNDS=${2:-3}
CLIENTS=${3:-4}
[[ $SECS =~ ^[1-9][0-9]*$ && $ROUNDS =~ ^[1-9][0-9]*$ && $CLIENTS =~ ^[1-9][0-9]*$ ]] \
  || { echo "usage: $0 [seconds-per-run] [rounds] [clients]  (positive integers)" >&2; exit 2; }

need_tools "nginx openssl curl" nginx openssl curl
need_lb

workdir tls-hs

B_LB=18110 B_NGINX=18111 P_LB=18112 P_NGINX=18113

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -keyout "$W/key.pem" -out "$W/cert.pem" -subj /CN=localhost \
  -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" 2>/dev/null

mkdir -p "$W/backends" "$W/nginx"
cat > "$W/backends/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $W/backends/nginx.pid;
error_log $W/backends/error.log warn;
events { worker_connections 4096; }
http {
  log_format st '\$status';
  keepalive_requests 1000000;
  client_body_temp_path $W/backends; proxy_temp_path $W/backends; fastcgi_temp_path $W/backends;
  uwsgi_temp_path $W/backends; scgi_temp_path $W/backends;
  server { listen 127.0.0.1:$B_LB; access_log $W/backends/lb.log st; location / { return 200 "ok\n"; } }
  server { listen 127.0.0.1:$B_NGINX; access_log $W/backends/nginx.log st; location / { return 200 "ok\n"; } }
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
  client_body_temp_path $W/nginx; proxy_temp_path $W/nginx; fastcgi_temp_path $W/nginx;
  uwsgi_temp_path $W/nginx; scgi_temp_path $W/nginx;
  upstream app { server 127.0.0.1:$B_NGINX; keepalive 64; }
  server {
    listen 127.0.0.1:$P_NGINX ssl;
    ssl_certificate $W/cert.pem;
    ssl_certificate_key $W/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3;   # 1.22 leaves TLS 1.3 out by default
    location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
CONF
cat > "$W/lb.toml" <<CONF
[[listeners]]
name = "tls"
bind = "127.0.0.1:$P_LB"
pool = "app"
tls = [{ cert = "$W/cert.pem", key = "$W/key.pem" }]
[pools.app]
strategy = "round_robin"
backends = [{ addr = "127.0.0.1:$B_LB" }]
CONF

nginx -c "$W/backends/nginx.conf" -p "$W/backends" & PIDS+=($!)
nginx -c "$W/nginx/nginx.conf" -p "$W/nginx" & PIDS+=($!); NGINX_PID=$!
LB_LOG=warn "$LB" --config "$W/lb.toml" --workers 2 2> "$W/lb.log" & PIDS+=($!); LB_PID=$!
sleep 1

declare -A PORT=([lb]=$P_LB [nginx]=$P_NGINX)
declare -A PIDOF=([lb]=$LB_PID [nginx]=$NGINX_PID)
declare -A BLOG=([lb]=$W/backends/lb.log [nginx]=$W/backends/nginx.log)
ORDER=(lb nginx)

# Every proxy must answer over TLS 1.3 with the ECDSA certificate before anything is measured.
for px in "${ORDER[@]}"; do
  body=$(curl -fsS --cacert "$W/cert.pem" --tlsv1.3 "https://localhost:${PORT[$px]}/" \
         --resolve "localhost:${PORT[$px]}:127.0.0.1") \
    || { echo "$px: no TLS answer on ${PORT[$px]}" >&2; cat "$W/lb.log" >&2; exit 1; }
  [ "$body" = ok ] || { echo "$px: unexpected body '$body'" >&2; exit 1; }
  hs=$(openssl s_client -connect "127.0.0.1:${PORT[$px]}" -servername localhost -brief < /dev/null 2>&1) || true
  printf '# %-6s %s\n' "$px" "$(awk -F': ' '/^Protocol version|^Ciphersuite|^Signature type|^Server Temp Key/ {printf "%s; ", $2}' <<< "$hs")"
done

ticks() {
  local t=0 p
  for p in $(ps -o pid= --ppid "$1" --pid "$1"); do
    t=$(( t + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0) ))
  done
  echo "$t"
}
HZ=$(getconf CLK_TCK)
# s_time sends "GET <page> HTTP/1.0\r\n\r\n", without Host. lb (at the time of writing) forwards
# that as HTTP/1.1 without Host, which the nginx backend answers 400, so smuggle a Host header
# in through the page: the request becomes GET / HTTP/1.0, Host: localhost, X-Pad: "x HTTP/1.0".
WWW=$'/ HTTP/1.0\r\nHost: localhost\r\nX-Pad: x'
count() { grep -c "^$2\$" "$1" || true; }   # lines of status $2 in log $1
others() { grep -vc '^200$' "$1" || true; }  # lines of any other status

# One run: prints "handshakes/s cpu-ms-per-handshake connections".
run() {
  local px=$1 t0 t1 ok0 ok1 bad i n=0 rate
  ok0=$(count "${BLOG[$px]}" 200)
  t0=$(ticks "${PIDOF[$px]}")
  local cpids=()
  for ((i = 0; i < CLIENTS; i++)); do
    (
      s=$(date +%s.%N)
      openssl s_time -new -connect "127.0.0.1:${PORT[$px]}" -www "$WWW" -time "$SECS" > "$W/st.$i" 2>&1
      e=$(date +%s.%N)
      echo "WALL $s $e" >> "$W/st.$i"
    ) &
    cpids+=($!)
  done
  for p in "${cpids[@]}"; do wait "$p"; done
  t1=$(ticks "${PIDOF[$px]}")
  sleep 0.2   # let the last access log lines land
  ok1=$(count "${BLOG[$px]}" 200)
  bad=$(others "${BLOG[$px]}")
  rate=$(cat "$W"/st.* | awk '
    /connections in .* real seconds/ { n = $1 }
    /^WALL/ { if (n == "") exit 1; tot += n; r += n / ($3 - $2); n = "" }
    END { printf "%.1f %d\n", r, tot }') || { echo "$px: s_time failed:" >&2; cat "$W"/st.* >&2; return 1; }
  read -r rate n <<< "$rate"
  rm -f "$W"/st.*
  (( n > 0 )) || { echo "$px: no connection completed" >&2; return 1; }
  (( bad == 0 )) || { echo "$px: backend logged $bad non-200 answers" >&2; return 1; }
  # s_time counts a connection once its response is read to the end; each must be a 200.
  (( (ok1 - ok0) * 100 >= n * 99 )) \
    || { echo "$px: $n handshakes but only $(( ok1 - ok0 )) requests answered 200 by the backend" >&2; return 1; }
  awk -v r="$rate" -v c=$(( t1 - t0 )) -v hz="$HZ" -v n="$n" 'BEGIN {printf "%s %.3f %d\n", r, c / hz * 1000 / n, n}'
}

machine_line
echo "# $CLIENTS x openssl s_time -new -www / -time $SECS, ECDSA P-256, $ROUNDS rounds, alternating order; medians"
declare -A HS=() CPU=()
for ((r = 0; r < ROUNDS; r++)); do
  for ((i = 0; i < ${#ORDER[@]}; i++)); do
    px=${ORDER[$(( (i + r) % ${#ORDER[@]} ))]}
    res=$(run "$px") || exit 1
    read -r hs cpu _ <<< "$res"
    HS[$px]+="$hs "; CPU[$px]+="$cpu "
  done
done
printf "%-8s %14s %14s   %s\n" proxy "handshakes/s" "cpu-ms/hs" "rounds (handshakes/s)"
for px in "${ORDER[@]}"; do
  m=$(tr ' ' '\n' <<< "${HS[$px]}" | grep . | median)
  c=$(tr ' ' '\n' <<< "${CPU[$px]}" | grep . | median)
  printf "%-8s %14.1f %14.3f   %s\n" "$px" "$m" "$c" "${HS[$px]}"
  declare "MED_$px=$m" "CPUMED_$px=$c"
done
awk -v a="$MED_lb" -v b="$MED_nginx" 'BEGIN {printf "ratio lb/nginx handshakes/s: %.2f\n", a / b}'
awk -v a="$CPUMED_lb" -v b="$CPUMED_nginx" 'BEGIN {printf "ratio lb/nginx cpu per handshake: %.2f (lower is better)\n", a / b}'
if [ -s "$W/lb.log" ]; then echo "# lb log:"; sed 's/^/#   /' "$W/lb.log" | head -20; fi
