# Helpers for bench/run: starting, readying and stopping Bunker, etcd and PostgreSQL on
# loopback, all inside one scratch directory. Sourced, not run.
#
# Every process started here is recorded (PIDS / PG_DIRS) and stopped by bench_cleanup, which
# bench/run installs as its EXIT trap. Readiness is polled against a deadline, never slept.

READY_SECS=60
PIDS=()
PG_DIRS=()

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "FAILED: $*"; exit 1; }

now_ms() { date +%s%3N; }

free_port() { "$LOADGEN" free-port; }

# Stop everything this run started: TERM, then KILL whatever is still alive after 5 s.
bench_cleanup() {
    local pid d
    for d in "${PG_DIRS[@]}"; do
        runuser -u postgres -- "$PGBIN/pg_ctl" -D "$d" stop -m immediate >/dev/null 2>&1 || true
    done
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
    done
}

# Stop one recorded process now (kill -9: the DR figures simulate a lost node).
kill9() {
    kill -KILL "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

# Poll a command until it succeeds or READY_SECS pass; $1 names what we wait for, $2 a pid
# that must stay alive meanwhile.
wait_for() {
    local what=$1 pid=$2
    shift 2
    local deadline=$((SECONDS + READY_SECS))
    until "$@" >/dev/null 2>&1; do
        kill -0 "$pid" 2>/dev/null || die "$what exited while starting (see its log in $SCRATCH)"
        ((SECONDS < deadline)) || die "$what not ready after ${READY_SECS}s"
        sleep 0.05
    done
}

# The commit the binaries were built from, and whether crates/ had uncommitted changes.
bunker_revision() {
    local rev dirty
    rev=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null) || { echo unknown; return; }
    dirty=$(git -C "$ROOT" status --porcelain -- crates Cargo.lock 2>/dev/null | wc -l)
    ((dirty == 0)) || rev="$rev + $dirty uncommitted file(s) under crates/"
    # A binary given from outside is not the tree's: say so, or the report names the wrong code.
    if [[ -n ${BENCH_BUNKER_BIN:-} ]]; then
        echo "the binary $BENCH_BUNKER_BIN (BENCH_BUNKER_BIN; \"$("$BENCH_BUNKER_BIN" version 2>/dev/null | head -1)\"), not the tree at $rev"
    else
        echo "$rev"
    fi
}

# CPU time (user + system, all threads) PID has used so far, in clock ticks: a server's CPU per
# operation is the difference over a run divided by its operations (figure 1's table).
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# cpu_us_per_op TICKS_BEFORE TICKS_AFTER OPS: microseconds of CPU per operation (null if none).
cpu_us_per_op() {
    awk -v a="$1" -v b="$2" -v n="$3" -v hz="$(getconf CLK_TCK)" \
        'BEGIN { if (n > 0) printf "%.1f\n", (b - a) / hz * 1e6 / n; else print "null" }'
}
peak_rss_kb() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status"; }
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

# ---------------------------------------------------------------------------------------------
# Bunker. A node NAME lives in $SCRATCH/NAME; its port, pid, key and token are kept in files
# there (port, cluster_port, pid, key, token) so later steps can look them up by name.
# ---------------------------------------------------------------------------------------------

node_file() { cat "$SCRATCH/$1/$2"; }
bunker_addr() { echo "127.0.0.1:$(node_file "$1" port)"; }

# log_mark NAME: how many lines NAME's server log holds now (for slow_stages).
log_mark() { wc -l <"$SCRATCH/$1/server.log"; }

# slow_stages NAME MARK: the slow-stage warnings (docs/monitoring.md) NAME logged after line MARK,
# as JSON {stage: {warnings, stalls, max_ms}}. A stage writes at most one line a second and the
# next line counts what it left out (`left_out`), so `stalls` may include some from just before
# MARK; `warnings` and `max_ms` are the window's own. Parses the text log format (the servers
# here are started without -log-format json).
slow_stages() {
    tail -n +"$(($2 + 1))" "$SCRATCH/$1/server.log" | sed 's/\x1b\[[0-9;]*m//g' |
        sed -n 's/.*slow stage: .*stage="\{0,1\}\([a-z_]*\)"\{0,1\} took_ms=\([0-9.]*\) .*left_out=\([0-9]*\).*/\1 \2 \3/p' |
        jq -Rn '[inputs | split(" ") | {stage: .[0], ms: (.[1] | tonumber), left: (.[2] | tonumber)}]
            | group_by(.stage)
            | map({key: .[0].stage, value: {warnings: length, stalls: (map(.left + 1) | add),
                                            max_ms: (map(.ms) | max)}})
            | from_entries'
}

# bunker_start NAME [extra HCL] [log level]: start (or restart) NAME, wait until it answers.
bunker_start() {
    local name=$1 extra=${2:-} level=${3:-warn}
    local dir="$SCRATCH/$name"
    mkdir -p "$dir/data"
    [[ -f "$dir/port" ]] || free_port >"$dir/port"
    [[ -f "$dir/cluster_port" ]] || free_port >"$dir/cluster_port"
    local port cport
    port=$(node_file "$name" port)
    cport=$(node_file "$name" cluster_port)
    # BUNKER_STORAGE: another storage block (the HA figures put nodes on PostgreSQL).
    local storage=${BUNKER_STORAGE:-"storage \"embedded\" { path = \"$dir/data\" }"}
    cat >"$dir/bunker.hcl" <<EOF
$storage
listener "tcp" {
  address         = "127.0.0.1:$port"
  cluster_address = "127.0.0.1:$cport"
  tls_disable     = true
  # The lag figure reads both nodes' replication timings (a DR secondary takes no token).
  telemetry { unauthenticated_metrics_access = true }
}
api_addr     = "http://127.0.0.1:$port"
cluster_addr = "https://127.0.0.1:$cport"
log_level    = "$level"
# Activation tokens are unwrapped over plain http on loopback here (benchmarks only).
replication { activation_allow_http = true }
$extra
EOF
    "$BUNKER" server -config "$dir/bunker.hcl" >>"$dir/server.log" 2>&1 &
    local pid=$!
    PIDS+=("$pid")
    echo "$pid" >"$dir/pid"
    wait_for "bunker $name" "$pid" curl -sf -o /dev/null -w '' "http://127.0.0.1:$port/v1/sys/seal-status"
}

# bunker_api NAME METHOD PATH [JSON]: call NAME's API with its token, print the body.
bunker_api() {
    local name=$1 method=$2 path=$3 body=${4:-}
    local token=""
    [[ -f "$SCRATCH/$name/token" ]] && token=$(node_file "$name" token)
    curl -sS --fail-with-body -X "$method" -H "X-Vault-Token: $token" \
        ${body:+-H 'Content-Type: application/json' --data "$body"} \
        "http://$(bunker_addr "$name")/v1/$path"
}

# Initialise with one key share, unseal, mount KV v2 at secret/.
bunker_init() {
    local name=$1 init
    init=$(bunker_api "$name" PUT sys/init '{"secret_shares":1,"secret_threshold":1}') ||
        die "init of $name: $init"
    jq -r '.keys[0]' <<<"$init" >"$SCRATCH/$name/key"
    jq -r '.root_token' <<<"$init" >"$SCRATCH/$name/token"
    bunker_unseal "$name" "$name"
}

# bunker_unseal NAME KEY_OWNER: unseal NAME with KEY_OWNER's key.
bunker_unseal() {
    bunker_api "$1" PUT sys/unseal "{\"key\":\"$(node_file "$2" key)\"}" >/dev/null ||
        die "unseal of $1"
}

bunker_mount_kv2() {
    bunker_api "$1" POST sys/mounts/secret '{"type":"kv","options":{"version":"2"}}' >/dev/null ||
        die "mounting kv v2 on $1"
}

# A single Prometheus counter from sys/metrics (0 when absent).
bunker_metric() {
    bunker_api "$1" GET 'sys/metrics?format=prometheus' |
        awk -v m="$2" '$1 == m || index($1, m "{") == 1 {s += $2} END {printf "%d\n", s}'
}

bunker_dr_status() { curl -sS "http://$(bunker_addr "$1")/v1/sys/replication/dr/status"; }

# Make PRIMARY a DR primary and SECONDARY (initialised, unsealed) its secondary; afterwards
# SECONDARY is operated with PRIMARY's key and token.
bunker_pair() {
    local primary=$1 secondary=$2 out token
    bunker_api "$primary" POST sys/replication/dr/primary/enable '{}' >/dev/null ||
        die "enabling DR primary on $primary"
    out=$(bunker_api "$primary" POST sys/replication/dr/primary/secondary-token \
        "{\"id\":\"$secondary\",\"ttl\":\"10m\"}") || die "secondary-token: $out"
    token=$(jq -r '.wrap_info.token' <<<"$out")
    bunker_api "$secondary" POST sys/replication/dr/secondary/enable "{\"token\":\"$token\"}" \
        >/dev/null || die "enabling DR secondary $secondary"
    cp "$SCRATCH/$primary/key" "$SCRATCH/$secondary/key"
    cp "$SCRATCH/$primary/token" "$SCRATCH/$secondary/token"
}

# Bytes sent and received by PRIMARY on its replication connection(s) right now
# (kernel TCP counters of the cluster port's established sockets): "sent received".
cluster_bytes() {
    local cport
    cport=$(node_file "$1" cluster_port)
    ss -tinH state established "( sport = :$cport )" |
        awk '{for (i = 1; i <= NF; i++) {
                 if ($i ~ /^bytes_sent:/) {split($i, a, ":"); s += a[2]}
                 if ($i ~ /^bytes_received:/) {split($i, b, ":"); r += b[2]}}}
             END {printf "%.0f %.0f\n", s, r}'
}

# A secondary logs one of these per completed sync: "snapshot sync complete" when it started
# empty (initial sync), "journal sync complete" when it caught up from the primary's key
# journal, "Merkle sync complete" when it reconciled existing data by Merkle diff.
SYNC_DONE='(Merkle|snapshot|journal) sync complete'

# Count of completed syncs in NAME's log.
merkle_syncs_logged() { grep -cE "$SYNC_DONE" "$SCRATCH/$1/server.log" || true; }

# Which kind the last completed sync was: "Merkle", "journal" or "snapshot".
last_sync_kind() { grep -oE "$SYNC_DONE" "$SCRATCH/$1/server.log" | tail -1 | cut -d' ' -f1; }

stream_failures_logged() { grep -c 'replication stream from primary failed' "$SCRATCH/$1/server.log" || true; }

# Wait until NAME has logged more than N Merkle syncs; prints the time (ms) it was seen.
# Returns 1 (after printing why on stderr) when the secondary's stream fails SYNC_FAILURES times
# in a row without completing a sync: the sync is retrying forever, not progressing.
SYNC_FAILURES=5
wait_merkle_sync() {
    local name=$1 n=$2 limit=${3:-3600}
    local deadline=$((SECONDS + limit)) pid failures0
    pid=$(node_file "$name" pid)
    failures0=$(stream_failures_logged "$name")
    until (($(merkle_syncs_logged "$name") > n)); do
        kill -0 "$pid" 2>/dev/null || die "bunker $name exited during Merkle sync"
        ((SECONDS < deadline)) || die "no Merkle sync on $name within ${limit}s"
        if (($(stream_failures_logged "$name") - failures0 >= SYNC_FAILURES)); then
            log "bunker $name: replication stream failed $SYNC_FAILURES times without completing a sync; last:"
            grep 'replication stream from primary failed' "$SCRATCH/$name/server.log" | tail -1 |
                sed 's/\x1b\[[0-9;]*m//g' >&2
            return 1
        fi
        sleep 0.02
    done
    now_ms
}

# A numeric field of the last completed sync's line (tracing's key=value format); 0 if absent.
last_merkle_field() {
    local v
    v=$(grep -E "$SYNC_DONE" "$SCRATCH/$1/server.log" | tail -1 |
        sed 's/\x1b\[[0-9;]*m//g' | grep -o "$2=[0-9]*" | cut -d= -f2)
    echo "${v:-0}"
}

# ---------------------------------------------------------------------------------------------
# etcd: single node, data in $SCRATCH/NAME, fsync left on (no --unsafe-no-fsync).
# ---------------------------------------------------------------------------------------------

etcd_addr() { echo "127.0.0.1:$(node_file "$1" port)"; }

etcd_start() {
    local name=$1 dir="$SCRATCH/$1"
    mkdir -p "$dir"
    free_port >"$dir/port"
    local port peer
    port=$(node_file "$name" port)
    peer=$(free_port)
    etcd --name "$name" --data-dir "$dir/data" \
        --listen-client-urls "http://127.0.0.1:$port" --advertise-client-urls "http://127.0.0.1:$port" \
        --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
        --initial-cluster "$name=http://127.0.0.1:$peer" --quota-backend-bytes 8589934592 \
        --logger zap --log-level warn >>"$dir/etcd.log" 2>&1 &
    local pid=$!
    PIDS+=("$pid")
    echo "$pid" >"$dir/pid"
    wait_for "etcd $name" "$pid" etcd_healthy "$port"
}

etcd_healthy() { curl -sf "http://127.0.0.1:$1/health" | grep -q '"health":"true"'; }

# Number of keys in etcd NAME (a count-only range over the whole keyspace, via the gateway;
# etcdctl 3.4 has no --count-only).
etcd_count() {
    curl -sS -X POST "http://$(etcd_addr "$1")/v3/kv/range" \
        -d '{"key":"AA==","range_end":"AA==","count_only":true}' | jq -r '.count // "0" | tonumber'
}

# ---------------------------------------------------------------------------------------------
# PostgreSQL: a primary and a streaming standby (pg_basebackup -R), run as user postgres.
# ---------------------------------------------------------------------------------------------

pg_bin_dir() {
    local d
    d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
    [[ -n "$d" ]] || die "PostgreSQL binaries not found under /usr/lib/postgresql"
    echo "$d"
}

pg() { runuser -u postgres -- "$@"; }

# pg_dir NAME: a directory for PostgreSQL data that user postgres can reach: under $SCRATCH, or
# under /tmp when the scratch directory is private (a checkout under a home directory).
pg_dir() {
    local dir="$SCRATCH/$1"
    if ! runuser -u postgres -- test -x "$SCRATCH"; then
        dir=$(mktemp -d "/tmp/bunker-bench-$1.XXXXXX")
        log "postgres cannot reach $SCRATCH; PostgreSQL data in $dir"
    fi
    mkdir -p "$dir"
    chmod 755 "$dir"
    chown postgres "$dir"
    echo "$dir"
}

# pg_init_start DIR NAME PORT [EXTRA_CONF]: initdb DIR/NAME, a durable configuration (fsync on,
# loopback only) plus EXTRA_CONF, started on PORT and stopped by bench_cleanup.
pg_init_start() {
    local dir=$1 name=$2 port=$3 extra=${4:-}
    pg "$PGBIN/initdb" -D "$dir/$name" -A trust -U postgres >"$dir/initdb-$name.log" 2>&1 ||
        die "initdb (see $dir/initdb-$name.log)"
    cat >>"$dir/$name/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
unix_socket_directories = '$dir'
fsync = on
synchronous_commit = on
$extra
EOF
    PG_DIRS+=("$dir/$name")
    pg "$PGBIN/pg_ctl" -D "$dir/$name" -l "$dir/$name.log" -o "-p $port" -w start \
        >/dev/null || die "starting PostgreSQL $name (see $dir/$name.log)"
}

# pg_start_single DIR: one durable PostgreSQL server on PG_SINGLE_PORT.
pg_start_single() {
    PG_SINGLE_PORT=$(free_port)
    pg_init_start "$1" single "$PG_SINGLE_PORT" "max_connections = 400"
}

# pg_start_pair DIR: primary on PG_PRIMARY_PORT, standby on PG_STANDBY_PORT.
pg_start_pair() {
    local dir=$1
    mkdir -p "$dir"
    chown postgres "$dir"
    PG_PRIMARY_PORT=$(free_port)
    PG_STANDBY_PORT=$(free_port)
    pg_init_start "$dir" primary "$PG_PRIMARY_PORT" "wal_level = replica
max_wal_senders = 4"
    pg "$PGBIN/pg_basebackup" -h 127.0.0.1 -p "$PG_PRIMARY_PORT" -U postgres -D "$dir/standby" -R \
        -X stream >"$dir/basebackup.log" 2>&1 || die "pg_basebackup (see $dir/basebackup.log)"
    PG_DIRS+=("$dir/standby")
    pg "$PGBIN/pg_ctl" -D "$dir/standby" -l "$dir/standby.log" -o "-p $PG_STANDBY_PORT" -w start \
        >/dev/null || die "starting PostgreSQL standby (see $dir/standby.log)"
    local deadline=$((SECONDS + READY_SECS))
    until [[ "$(pg_sql "$PG_PRIMARY_PORT" 'SELECT count(*) FROM pg_stat_replication')" == 1 ]]; do
        ((SECONDS < deadline)) || die "PostgreSQL standby did not connect"
        sleep 0.05
    done
}

pg_sql() { pg psql -h 127.0.0.1 -p "$1" -U postgres -XAtq -c "$2" postgres; }
