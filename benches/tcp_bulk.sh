#!/usr/bin/env bash
# TCP mode (L4) bulk throughput: lb (listener mode = "tcp") vs HAProxy (mode tcp) vs nginx
# (stream module, only when this nginx has it), with a direct connection as the ceiling.
#
#   apt-get install -y nginx haproxy python3   # this script installs nothing itself
#   apt-get install -y libnginx-mod-stream     # optional: adds nginx (Debian ships stream as a module)
#   cargo build --release
#   benches/tcp_bulk.sh [rounds] [MiB] [streams]        # defaults: 3 1024 1
#
# One backend, a small python3 source: on every connection it writes MiB/streams of zeros in
# 1 MiB writes and closes. A python3 client opens `streams` connections at once (one thread
# each), reads everything with 1 MiB recv_into, and checks that each connection delivered
# exactly its share, so a proxy that drops or cuts data fails the run instead of looking fast.
# Each proxy runs 2 workers (lb --workers 2, HAProxy nbthread 2, nginx worker_processes 2) with
# its default copy buffers and no splicing. Targets are measured in a rotating order per round
# (drift on a shared machine hits all alike). Prints MiB/s (median of rounds, wall time from
# connect to the last byte), the proxy's CPU seconds per GiB moved (median; user+system of the
# proxy's processes, 10 ms resolution) and the ratio lb/HAProxy.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=benches/common.sh
. benches/common.sh
ROUNDS=${1:-3}
MIB=${2:-1024}
STREAMS=${3:-1}
[[ $ROUNDS =~ ^[1-9][0-9]*$ && $MIB =~ ^[1-9][0-9]*$ && $STREAMS =~ ^[1-9][0-9]*$ ]] \
  || { echo "usage: $0 [rounds] [MiB] [streams]  (positive integers)" >&2; exit 2; }
(( MIB % STREAMS == 0 )) || { echo "MiB ($MIB) must be a multiple of streams ($STREAMS)" >&2; exit 2; }

need_tools "nginx haproxy python3" haproxy python3
need_lb

workdir tcp-bulk

P_SRC=18100 P_LB=18101 P_HAPROXY=18102 P_NGINX=18103
BYTES=$(( MIB * 1024 * 1024 ))
PER_CONN=$(( BYTES / STREAMS ))

cat > "$W/source.py" <<'PY'
# Bulk source: every connection gets exactly N bytes of zeros in 1 MiB writes, then FIN.
import socket, sys, threading
port, n = int(sys.argv[1]), int(sys.argv[2])
chunk = memoryview(bytes(1 << 20))
def serve(c):
    try:
        left = n
        while left:
            k = min(left, len(chunk))
            c.sendall(chunk[:k])
            left -= k
        c.shutdown(socket.SHUT_WR)
        while c.recv(65536):   # wait for the peer to close (nothing is expected from it)
            pass
    except OSError:
        pass
    finally:
        c.close()
srv = socket.create_server(("127.0.0.1", port), backlog=128)
while True:
    c, _ = srv.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
PY
cat > "$W/sink.py" <<'PY'
# Bulk sink: S parallel connections, each must deliver exactly N bytes. Prints "bytes seconds".
import socket, sys, threading, time
port, n, streams = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
got, errs = [0] * streams, []
def pull(i, s):
    buf = bytearray(1 << 20)
    total = 0
    try:
        while True:
            k = s.recv_into(buf)
            if not k:
                break
            total += k
    except OSError as e:
        errs.append(f"stream {i}: {e}")
    finally:
        s.close()
    got[i] = total
t0 = time.perf_counter()
socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(streams)]
ths = [threading.Thread(target=pull, args=(i, s)) for i, s in enumerate(socks)]
for t in ths: t.start()
for t in ths: t.join()
dt = time.perf_counter() - t0
bad = [f"stream {i}: {g} bytes, expected {n}" for i, g in enumerate(got) if g != n]
if errs or bad:
    print("; ".join(errs + bad), file=sys.stderr)
    sys.exit(1)
print(sum(got), f"{dt:.6f}")
PY

cat > "$W/haproxy.cfg" <<CONF
global
  nbthread 2
  maxconn 1000
defaults
  mode tcp
  timeout connect 2s
  timeout client 60s
  timeout server 60s
listen bulk
  bind 127.0.0.1:$P_HAPROXY
  server src 127.0.0.1:$P_SRC
CONF
cat > "$W/lb.toml" <<CONF
[[listeners]]
name = "bulk"
bind = "127.0.0.1:$P_LB"
mode = "tcp"
pool = "src"
[pools.src]
strategy = "round_robin"
backends = [{ addr = "127.0.0.1:$P_SRC" }]
CONF
# nginx only when it can load a stream {} block (Debian: libnginx-mod-stream).
mkdir -p "$W/nginx"
LOAD=""
for so in /usr/lib/nginx/modules/ngx_stream_module.so /usr/share/nginx/modules/ngx_stream_module.so; do
  [ -f "$so" ] && { LOAD="load_module $so;"; break; }
done
cat > "$W/nginx/nginx.conf" <<CONF
$LOAD
worker_processes 2;
daemon off;
pid $W/nginx/nginx.pid;
error_log $W/nginx/error.log warn;
events { worker_connections 1024; }
stream {
  upstream src { server 127.0.0.1:$P_SRC; }
  server { listen 127.0.0.1:$P_NGINX; proxy_pass src; }
}
CONF
HAVE_NGINX=0
if command -v nginx >/dev/null && nginx -t -q -c "$W/nginx/nginx.conf" -p "$W/nginx" 2>/dev/null; then
  HAVE_NGINX=1
else
  echo "# nginx skipped: no stream module (apt-get install -y libnginx-mod-stream)"
fi

python3 "$W/source.py" "$P_SRC" "$PER_CONN" & PIDS+=($!)
haproxy -f "$W/haproxy.cfg" -db 2> "$W/haproxy.log" & PIDS+=($!); HAPROXY_PID=$!
LB_LOG=warn "$LB" --config "$W/lb.toml" --workers 2 2> "$W/lb.log" & PIDS+=($!); LB_PID=$!
declare -A PORT=([direct]=$P_SRC [lb]=$P_LB [haproxy]=$P_HAPROXY)
declare -A PIDOF=([direct]="" [lb]=$LB_PID [haproxy]=$HAPROXY_PID)
ORDER=(direct lb haproxy)
if (( HAVE_NGINX )); then
  nginx -c "$W/nginx/nginx.conf" -p "$W/nginx" & PIDS+=($!); NGINX_PID=$!
  PORT[nginx]=$P_NGINX; PIDOF[nginx]=$NGINX_PID; ORDER+=(nginx)
fi
sleep 1
for px in "${ORDER[@]}"; do
  [ -z "${PIDOF[$px]}" ] || kill -0 "${PIDOF[$px]}" 2>/dev/null || { echo "$px exited at start" >&2; cat "$W/$px.log" >&2 2>/dev/null; exit 1; }
done

# Sum of user+system CPU (clock ticks) of a process and its children (nginx workers).
ticks() {
  local t=0 p
  for p in $(ps -o pid= --ppid "$1" --pid "$1"); do
    t=$(( t + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0) ))
  done
  echo "$t"
}
HZ=$(getconf CLK_TCK)

# One transfer; prints "MiB/s cpu-s-per-GiB", fails on a short or long byte count.
run() {
  local px=$1 t0=0 t1=0 out bytes secs
  [ -z "${PIDOF[$px]}" ] || t0=$(ticks "${PIDOF[$px]}")
  out=$(python3 "$W/sink.py" "${PORT[$px]}" "$PER_CONN" "$STREAMS") \
    || { echo "$px: transfer failed (see above)" >&2; return 1; }
  [ -z "${PIDOF[$px]}" ] || t1=$(ticks "${PIDOF[$px]}")
  read -r bytes secs <<< "$out"
  [ "$bytes" -eq "$BYTES" ] || { echo "$px: got $bytes bytes, expected $BYTES" >&2; return 1; }
  awk -v b="$bytes" -v s="$secs" -v c=$(( t1 - t0 )) -v hz="$HZ" \
    'BEGIN {printf "%.1f %.3f\n", b / 1048576 / s, c / hz / (b / 1073741824)}'
}

# A first small pass through every target (warms up; also proves they all answer).
for px in "${ORDER[@]}"; do
  python3 "$W/sink.py" "${PORT[$px]}" "$PER_CONN" "$STREAMS" >/dev/null \
    || { echo "$px: warm-up transfer failed" >&2; exit 1; }
done

machine_line
echo "# $MIB MiB per transfer over $STREAMS connection(s), $ROUNDS rounds, rotating order; medians"
declare -A MBS=() CPU=()
for ((r = 0; r < ROUNDS; r++)); do
  for ((i = 0; i < ${#ORDER[@]}; i++)); do
    px=${ORDER[$(( (i + r) % ${#ORDER[@]} ))]}
    res=$(run "$px") || exit 1
    read -r mbs cpu <<< "$res"
    MBS[$px]+="$mbs "; CPU[$px]+="$cpu "
  done
done
printf "%-8s %10s %12s   %s\n" target "MiB/s" "cpu-s/GiB" "rounds (MiB/s)"
for px in "${ORDER[@]}"; do
  m=$(tr ' ' '\n' <<< "${MBS[$px]}" | grep . | median)
  c=$(tr ' ' '\n' <<< "${CPU[$px]}" | grep . | median)
  if [ -n "${PIDOF[$px]}" ]; then c=$(printf "%.2f" "$c"); else c="-"; fi
  printf "%-8s %10.1f %12s   %s\n" "$px" "$m" "$c" "${MBS[$px]}"
  declare "MED_$px=$m"
done
awk -v a="$MED_lb" -v b="$MED_haproxy" 'BEGIN {printf "ratio lb/HAProxy: %.2f\n", a / b}'
if (( HAVE_NGINX )); then
  awk -v a="$MED_lb" -v b="$MED_nginx" 'BEGIN {printf "ratio lb/nginx:   %.2f\n", a / b}'
fi
if [ -s "$W/lb.log" ]; then echo "# lb log:"; sed 's/^/#   /' "$W/lb.log" | head -20; fi
