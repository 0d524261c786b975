#!/usr/bin/env bash
# Resident memory of idle proxies: lb vs nginx vs HAProxy, right after start and holding
# 10,000 idle keep-alive client connections that have each completed one request.
#
#   apt-get install -y nginx haproxy python3 curl   # this script installs nothing itself
#   cargo build --release
#   benches/idle_memory.sh [connections] [concurrency]    # defaults: 10000 100
#
# Two backends (one nginx, worker_processes 1, two ports answering a tiny 200) stand behind
# each proxy; each proxy runs 2 workers (lb --workers 2, nginx worker_processes 2 with
# worker_connections 20000, HAProxy nbthread 2 with maxconn 20000), round robin, keep-alive
# timeouts raised to 10 minutes so nothing closes the idle connections while they are counted.
# The script raises `ulimit -n` (to 65536, else to the hard limit) before it starts the proxies
# and the client, and needs at least connections + 1000 descriptors.
# All proxies start first and their RSS is read at once ("idle"). Then, one proxy at a time, a
# python3 asyncio client opens `connections` connections, at most `concurrency` of them busy at
# a time, sends `GET / HTTP/1.1` on each, requires a 200 with its body, and keeps every socket
# open; after 1 s RSS is read again, with the proxy's descriptor count. The client then checks
# that every connection is still open (none closed by the proxy) before it exits.
# RSS is VmRSS from /proc/PID/status, summed over the master and workers for nginx (one
# process each for lb and HAProxy; threads share it). KB/conn = (RSS at N - RSS idle) / N.
# The targets lb should meet: idle <= 20 MB, <= 30 KB per idle connection at 10,000.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=benches/common.sh
. benches/common.sh
CONNS=${1:-10000}
CONC=${2:-100}
[[ $CONNS =~ ^[1-9][0-9]*$ && $CONC =~ ^[1-9][0-9]*$ ]] \
  || { echo "usage: $0 [connections] [concurrency]  (positive integers)" >&2; exit 2; }

need_tools "nginx haproxy python3 curl" nginx haproxy python3 curl
need_lb

ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
NOFILE=$(ulimit -n)
(( NOFILE >= CONNS + 1000 )) \
  || { echo "ulimit -n is $NOFILE (hard $(ulimit -Hn)); $CONNS connections need $(( CONNS + 1000 ))" >&2; exit 1; }
MAXCONN=$(( CONNS * 2 > 20000 ? CONNS * 2 : 20000 ))

workdir idle-mem

B1=18120 B2=18121 P_LB=18122 P_NGINX=18123 P_HAPROXY=18124

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
  keepalive_timeout 600s;
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
events { worker_connections $MAXCONN; }
http {
  access_log off;
  keepalive_requests 1000000;
  keepalive_timeout 600s;
  client_body_temp_path $W/nginx; proxy_temp_path $W/nginx; fastcgi_temp_path $W/nginx;
  uwsgi_temp_path $W/nginx; scgi_temp_path $W/nginx;
  upstream app { server 127.0.0.1:$B1; server 127.0.0.1:$B2; keepalive 256; }
  server {
    listen 127.0.0.1:$P_NGINX;
    location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
CONF
# `no strict-limits`: HAProxy wants 2 x maxconn descriptors and refuses to start when it cannot
# raise the limit that far; the client connections here need only one each.
cat > "$W/haproxy.cfg" <<CONF
global
  nbthread 2
  maxconn $MAXCONN
  no strict-limits
defaults
  mode http
  timeout connect 2s
  timeout client 600s
  timeout server 30s
  timeout http-keep-alive 600s
  option http-keep-alive
  http-reuse always
frontend fe
  bind 127.0.0.1:$P_HAPROXY
  default_backend be
backend be
  balance roundrobin
  server b1 127.0.0.1:$B1
  server b2 127.0.0.1:$B2
CONF
cat > "$W/lb.toml" <<CONF
[[listeners]]
name = "idle"
bind = "127.0.0.1:$P_LB"
pool = "app"
max_connections = $MAXCONN
header_timeout = "600s"
idle_timeout = "600s"
[pools.app]
strategy = "round_robin"
backends = [{ addr = "127.0.0.1:$B1" }, { addr = "127.0.0.1:$B2" }]
CONF
cat > "$W/client.py" <<'PY'
# Opens N keep-alive connections (at most C busy at once), one GET each, keeps them all open.
# Prints "ready N" once all are answered; on SIGUSR1 prints "open M" (connections the server
# has not closed) and exits.
import asyncio, signal, sys
port, n, conc = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
REQ = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
async def one(sem):
    async with sem:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(REQ)
        head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 30)
        lines = head.decode("latin-1").split("\r\n")
        if lines[0].split(" ")[1] != "200":
            raise RuntimeError("status line " + lines[0])
        cl = [l.split(":", 1)[1] for l in lines[1:] if l.lower().startswith("content-length:")]
        if not cl:
            raise RuntimeError("no content-length in " + repr(head))
        await asyncio.wait_for(r.readexactly(int(cl[0])), 30)
        return r, w
async def main():
    sem = asyncio.Semaphore(conc)
    res = await asyncio.gather(*(one(sem) for _ in range(n)), return_exceptions=True)
    errs = [e for e in res if isinstance(e, BaseException)]
    if errs:
        print(f"{len(errs)} of {n} connections failed, e.g. {errs[0]!r}", file=sys.stderr)
        sys.exit(1)
    done = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, done.set)
    print("ready", n, flush=True)
    await done.wait()
    await asyncio.sleep(0.1)
    print("open", sum(1 for r, _ in res if not r.at_eof()), flush=True)
    for _, w in res:
        w.close()
asyncio.run(main())
PY

nginx -c "$W/backends/nginx.conf" -p "$W/backends" & PIDS+=($!)
LB_LOG=warn "$LB" --config "$W/lb.toml" --workers 2 2> "$W/lb.log" & PIDS+=($!); LB_PID=$!
nginx -c "$W/nginx/nginx.conf" -p "$W/nginx" & PIDS+=($!); NGINX_PID=$!
haproxy -f "$W/haproxy.cfg" -db 2> "$W/haproxy.log" & PIDS+=($!); HAPROXY_PID=$!
sleep 1.5

declare -A PORT=([lb]=$P_LB [nginx]=$P_NGINX [haproxy]=$P_HAPROXY)
declare -A PIDOF=([lb]=$LB_PID [nginx]=$NGINX_PID [haproxy]=$HAPROXY_PID)
ORDER=(lb nginx haproxy)

# KiB of VmRSS of a process and its children (nginx workers).
rss() {
  local t=0 p
  for p in $(ps -o pid= --ppid "$1" --pid "$1"); do
    t=$(( t + $(awk '/^VmRSS:/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0) ))
  done
  echo "$t"
}
# Open descriptors of a process and its children.
fds() {
  local t=0 p
  for p in $(ps -o pid= --ppid "$1" --pid "$1"); do
    t=$(( t + $(find "/proc/$p/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l) ))
  done
  echo "$t"
}

declare -A IDLE=() FULL=() NFD=() OPEN=()
for px in "${ORDER[@]}"; do
  kill -0 "${PIDOF[$px]}" 2>/dev/null || { echo "$px exited at start" >&2; cat "$W/$px.log" >&2 2>/dev/null; exit 1; }
  IDLE[$px]=$(rss "${PIDOF[$px]}")
done
for p in $B1 $B2 "${PORT[@]}"; do
  curl -fsS "http://127.0.0.1:$p/" >/dev/null || { echo "port $p not answering" >&2; exit 1; }
done

for px in "${ORDER[@]}"; do
  python3 "$W/client.py" "${PORT[$px]}" "$CONNS" "$CONC" > "$W/client.out" 2> "$W/client.err" & CPID=$!
  PIDS+=("$CPID")
  for ((t = 0; t < 1200; t++)); do
    grep -q '^ready' "$W/client.out" && break
    kill -0 "$CPID" 2>/dev/null || { echo "$px: client failed: $(cat "$W/client.err")" >&2; exit 1; }
    sleep 0.1
  done
  grep -q '^ready' "$W/client.out" || { echo "$px: client not ready after 120 s" >&2; exit 1; }
  sleep 1
  FULL[$px]=$(rss "${PIDOF[$px]}")
  NFD[$px]=$(fds "${PIDOF[$px]}")
  kill -USR1 "$CPID"
  wait "$CPID" || { echo "$px: client failed: $(cat "$W/client.err")" >&2; exit 1; }
  OPEN[$px]=$(awk '/^open/ {print $2}' "$W/client.out")
  sleep 1   # let the proxy close its side before the next one is measured
done

machine_line
echo "# $CONNS idle keep-alive connections after one GET each (<= $CONC busy at once), ulimit -n $NOFILE"
printf "%-8s %10s %12s %9s %8s %12s\n" proxy "idle(MB)" "at-N(MB)" "KB/conn" "fds@N" "still-open"
for px in "${ORDER[@]}"; do
  awk -v px="$px" -v i="${IDLE[$px]}" -v f="${FULL[$px]}" -v n="$CONNS" -v d="${NFD[$px]}" -v o="${OPEN[$px]}" \
    'BEGIN {printf "%-8s %10.1f %12.1f %9.1f %8d %12s\n", px, i / 1024, f / 1024, (f - i) / n, d, o}'
done
bad=0
for px in "${ORDER[@]}"; do
  if [ "${OPEN[$px]}" != "$CONNS" ]; then
    echo "WARNING: $px closed $(( CONNS - ${OPEN[$px]:-0} )) of the $CONNS connections while they were held" >&2; bad=1
  fi
done
awk -v i="${IDLE[lb]}" -v f="${FULL[lb]}" -v n="$CONNS" 'BEGIN {
  mb = i / 1024; kb = (f - i) / n
  printf "lb targets: idle %.1f MB (<= 20: %s), %.1f KB/conn (<= 30: %s)\n", mb, (mb <= 20 ? "met" : "MISSED"), kb, (kb <= 30 ? "met" : "MISSED")
}'
if [ -s "$W/lb.log" ]; then echo "# lb log:"; sed 's/^/#   /' "$W/lb.log" | head -20; fi
exit "$bad"
