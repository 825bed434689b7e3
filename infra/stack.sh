#!/usr/bin/env bash
# The pipeline's services on this machine, no containers, loopback only (see infra/README.md).
#
#   infra/stack.sh up        start PostgreSQL, SeaweedFS (S3), MLflow server, Prefect server +
#                            process worker, Ray head + a second Ray node; waits for health
#   infra/stack.sh status    what runs (pid, RSS) and whether each service answers
#   infra/stack.sh env       export lines for a shell: eval "$(infra/stack.sh env)"
#   infra/stack.sh run [--preset P] [--set k=v]...   deploy prefect.yaml's deployment, run it on
#                            the stack's worker, wait, then `dvc push` to the S3 remote
#   infra/stack.sh ray-worker  start the second Ray node again (after a crash or a kill)
#   infra/stack.sh down      stop everything it started; leaves no process behind
#
# Settings (environment, defaults in brackets): STACK_DIR [<project>/.stack] holds data, logs,
# pid files and generated credentials; STACK_VENV [<project>/.venv]; ports STACK_PG_PORT [23432],
# STACK_S3_PORT [23333] (+ SeaweedFS internals 23334-23340), STACK_MLFLOW_PORT [23500],
# STACK_PREFECT_PORT [23420], STACK_RAY_PORT [23379] (+ agents 23365-23368).
# Every process started carries SIMCLR_STACK_SERVICE=<STACK_DIR> in its environment; `down` stops the
# recorded pids, then any process still carrying that exact marker (Ray and Prefect children).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PROJECT_DIR=${STACK_PROJECT_DIR:-$(cd "$HERE/.." && pwd)}
STACK_DIR=${STACK_DIR:-$PROJECT_DIR/.stack}
mkdir -p "$STACK_DIR" && STACK_DIR=$(cd "$STACK_DIR" && pwd)
VENV=${STACK_VENV:-$PROJECT_DIR/.venv}
PY=$VENV/bin/python
unset SIMCLR_STACK_SERVICE  # only the services started here carry it (never the caller's shell)
MARK="SIMCLR_STACK_SERVICE=$STACK_DIR"

PG_PORT=${STACK_PG_PORT:-23432}
S3_PORT=${STACK_S3_PORT:-23333}
WEED_BASE=$((S3_PORT + 1))  # master, master grpc, volume, volume grpc, filer, filer grpc, s3 grpc
MLFLOW_PORT=${STACK_MLFLOW_PORT:-23500}
PREFECT_PORT=${STACK_PREFECT_PORT:-23420}
RAY_PORT=${STACK_RAY_PORT:-23379}
RAY_AGENT_BASE=${STACK_RAY_AGENT_PORT:-23365}
WORK_POOL=${STACK_WORK_POOL:-simclr-process}
DEPLOYMENT=${STACK_DEPLOYMENT:-simclr-pipeline/weekly-retrain}
BUCKETS="dvc-remote mlflow-artifacts ray-checkpoints"

LOGS=$STACK_DIR/logs PIDS=$STACK_DIR/pids PGDATA=$STACK_DIR/pg
SECRETS=$STACK_DIR/secrets.env

log() { echo "[stack $(date +%T)] $*" >&2; }
die() { echo "error: $*" >&2; exit 1; }

# ---------------------------------------------------------------- credentials and environment
make_secrets() {
  [ -f "$SECRETS" ] && return
  local r
  r() { "$PY" -c 'import secrets; print(secrets.token_hex(16))'; }
  (umask 077; cat >"$SECRETS" <<EOF
PG_MLFLOW_PASSWORD=$(r)
PG_PREFECT_PASSWORD=$(r)
AWS_ACCESS_KEY_ID=stack$(r | cut -c1-12)
AWS_SECRET_ACCESS_KEY=$(r)$(r)
RAY_TOKEN=$(r)$(r)
EOF
  )
}

stack_env() {  # the standard variables every client of the stack uses
  # shellcheck disable=SC1090
  . "$SECRETS"
  cat <<EOF
export RAY_ADDRESS=127.0.0.1:$RAY_PORT
export RAY_AUTH_MODE=token
export RAY_AUTH_TOKEN_PATH=$STACK_DIR/ray_auth_token
export RAY_USAGE_STATS_ENABLED=0
export MLFLOW_TRACKING_URI=http://127.0.0.1:$MLFLOW_PORT
export PREFECT_API_URL=http://127.0.0.1:$PREFECT_PORT/api
export PREFECT_SERVER_ANALYTICS_ENABLED=false
export AWS_ENDPOINT_URL=http://127.0.0.1:$S3_PORT
export AWS_ACCESS_KEY_ID=$AWS_ACCESS_KEY_ID
export AWS_SECRET_ACCESS_KEY=$AWS_SECRET_ACCESS_KEY
export AWS_DEFAULT_REGION=us-east-1
EOF
}

load_env() { make_secrets; eval "$(stack_env)"; . "$SECRETS"; }

# ---------------------------------------------------------------- process bookkeeping
launch() {  # launch NAME CMD...: detached (own session), logged, pid recorded
  local name=$1; shift
  setsid nohup env "$MARK" "$@" >"$LOGS/$name.log" 2>&1 </dev/null &
  echo $! >"$PIDS/$name.pid"
}

marked_pids() {  # every process whose environment carries this stack's marker
  grep -lzxF "$MARK" /proc/[0-9]*/environ 2>/dev/null | cut -d/ -f3 | grep -vx "$$" || true
}

alive() { kill -0 "$1" 2>/dev/null; }

rss_mb() { awk '/VmRSS/ {printf "%d", $2/1024}' "/proc/$1/status" 2>/dev/null || echo 0; }

elapsed() { echo "$(( $(date +%s%N) / 1000000 - $1 ))"; }
now_ms() { echo "$(( $(date +%s%N) / 1000000 ))"; }

# ---------------------------------------------------------------- PostgreSQL
pg_bin() {
  local d
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
  if [ -z "$d" ]; then
    log "PostgreSQL is missing: installing the Debian package postgresql"
    local sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo -n"
    $sudo apt-get install -y -q postgresql >/dev/null 2>&1 \
      || { $sudo apt-get update -q >/dev/null && $sudo apt-get install -y -q postgresql >/dev/null; } \
      || die "could not install postgresql (run: sudo apt-get install -y postgresql)"
    d=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
  fi
  echo "$d"
}

as_pg() {  # PostgreSQL refuses to run as root: use the `postgres` account then
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

start_postgres() {
  local bin; bin=$(pg_bin)
  if [ "$(id -u)" = 0 ] && ! id postgres >/dev/null 2>&1; then
    useradd --system --no-create-home --shell /usr/sbin/nologin postgres
  fi
  chmod 755 "$STACK_DIR"
  as_pg test -x "$STACK_DIR" || die "the postgres account cannot reach $STACK_DIR (a parent folder is private): set STACK_DIR elsewhere"
  if [ ! -f "$PGDATA/PG_VERSION" ]; then
    mkdir -p "$PGDATA" && chmod 700 "$PGDATA"
    [ "$(id -u)" = 0 ] && chown postgres: "$PGDATA"
    as_pg "$bin/initdb" -D "$PGDATA" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
      -E UTF8 --locale=C.UTF-8 >"$LOGS/initdb.log" 2>&1 || { cat "$LOGS/initdb.log" >&2; die "initdb failed"; }
  fi
  touch "$LOGS/postgres.log"; [ "$(id -u)" = 0 ] && chown postgres: "$LOGS/postgres.log"
  # socket in the data dir (mode 700): only the database account uses it; TCP on loopback only
  as_pg env "$MARK" "$bin/pg_ctl" -D "$PGDATA" -l "$LOGS/postgres.log" -w -t 60 start -o \
    "-c listen_addresses=127.0.0.1 -p $PG_PORT -c unix_socket_directories=$PGDATA -c shared_buffers=16MB -c max_connections=60" \
    >/dev/null || { tail -20 "$LOGS/postgres.log" >&2; die "PostgreSQL did not start"; }
  head -1 "$PGDATA/postmaster.pid" >"$PIDS/postgres.pid"
  local psql="$bin/psql -h $PGDATA -p $PG_PORT -U postgres -v ON_ERROR_STOP=1 -qtA"
  for db in mlflow prefect; do
    local pw_var="PG_${db^^}_PASSWORD"
    as_pg $psql -c "DO \$\$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname='$db') THEN CREATE ROLE $db LOGIN; END IF; END \$\$;" \
      -c "ALTER ROLE $db PASSWORD '${!pw_var}';" >/dev/null
    if [ -z "$(as_pg $psql -c "SELECT 1 FROM pg_database WHERE datname='$db'")" ]; then
      as_pg $psql -c "CREATE DATABASE $db OWNER $db" >/dev/null
    fi
  done
}

stop_postgres() {
  [ -f "$PGDATA/postmaster.pid" ] || return 0
  local bin; bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
  [ -n "$bin" ] && as_pg "$bin/pg_ctl" -D "$PGDATA" -m fast -w -t 30 stop >/dev/null 2>&1 || true
}

# ---------------------------------------------------------------- SeaweedFS (S3)
start_s3() {
  mkdir -p "$STACK_DIR/s3"
  (umask 077; cat >"$STACK_DIR/s3.json" <<EOF
{"identities": [{"name": "stack", "credentials": [{"accessKey": "$AWS_ACCESS_KEY_ID", "secretKey": "$AWS_SECRET_ACCESS_KEY"}],
  "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
EOF
  )
  local b=$WEED_BASE
  launch s3 "$VENV/bin/weed" server -ip=127.0.0.1 -ip.bind=127.0.0.1 -dir="$STACK_DIR/s3" \
    -master.port=$b -master.port.grpc=$((b + 1)) -volume.port=$((b + 2)) -volume.port.grpc=$((b + 3)) \
    -filer.port=$((b + 4)) -filer.port.grpc=$((b + 5)) -s3 -s3.port="$S3_PORT" -s3.port.grpc=$((b + 6)) \
    -s3.config="$STACK_DIR/s3.json" -s3.port.iceberg=0 -s3.port.lance=0 -master.volumeSizeLimitMB=64 -volume.max=0 -metricsPort=0
  "$PY" "$HERE/stackctl.py" wait-http "http://127.0.0.1:$S3_PORT/healthz" 90 "$(cat "$PIDS/s3.pid")"
  local i
  for i in $(seq 30); do  # the S3 gateway answers before the filer can create buckets
    "$PY" "$HERE/stackctl.py" buckets $BUCKETS >"$LOGS/buckets.log" 2>&1 && return
    sleep 1
  done
  cat "$LOGS/buckets.log" >&2; die "could not create the S3 buckets"
}

# ---------------------------------------------------------------- MLflow, Prefect, Ray
start_mlflow() {
  launch mlflow env MLFLOW_S3_ENDPOINT_URL="$AWS_ENDPOINT_URL" MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false "$VENV/bin/mlflow" server \
    --host 127.0.0.1 --port "$MLFLOW_PORT" --workers 1 \
    --backend-store-uri "postgresql+psycopg2://mlflow:$PG_MLFLOW_PASSWORD@127.0.0.1:$PG_PORT/mlflow" \
    --serve-artifacts --artifacts-destination s3://mlflow-artifacts
}

start_prefect() {
  launch prefect env PREFECT_HOME="$STACK_DIR/prefect" PREFECT_UI_ENABLED=false \
    PREFECT_API_DATABASE_CONNECTION_URL="postgresql+asyncpg://prefect:$PG_PREFECT_PASSWORD@127.0.0.1:$PG_PORT/prefect" \
    "$VENV/bin/prefect" server start --host 127.0.0.1 --port "$PREFECT_PORT"
}

start_prefect_worker() {
  PREFECT_HOME="$STACK_DIR/prefect" "$VENV/bin/prefect" work-pool create "$WORK_POOL" --type process \
    --overwrite >"$LOGS/work-pool.log" 2>&1 || { cat "$LOGS/work-pool.log" >&2; die "work pool $WORK_POOL"; }
  (cd "$PROJECT_DIR" && PREFECT_HOME="$STACK_DIR/prefect" launch prefect-worker \
    "$VENV/bin/prefect" worker start --pool "$WORK_POOL" --type process)
}

ray_start() {  # ray_start NAME AGENT_PORT ARGS...: `ray start` daemonises; record its processes
  local name=$1 agent=$2; shift 2
  local before; before=$(marked_pids | sort)
  env "$MARK" "$VENV/bin/ray" start --node-ip-address=127.0.0.1 --num-cpus=1 --num-gpus=0 \
    --object-store-memory=100000000 --temp-dir="$STACK_DIR/ray" --disable-usage-stats \
    --dashboard-agent-listen-port="$agent" --dashboard-agent-grpc-port=$((agent + 1)) "$@" \
    >"$LOGS/$name.log" 2>&1 || { tail -20 "$LOGS/$name.log" >&2; die "$name did not start"; }
  comm -13 <(echo "$before") <(marked_pids | sort) >"$PIDS/$name.pid"
}

start_ray() {
  [ -f "$RAY_AUTH_TOKEN_PATH" ] || (umask 077; echo "$RAY_TOKEN" >"$RAY_AUTH_TOKEN_PATH")
  ray_start ray-head "$RAY_AGENT_BASE" --head --port="$RAY_PORT" --include-dashboard=false
  start_ray_worker
}

start_ray_worker() {
  ray_start ray-worker $((RAY_AGENT_BASE + 2)) --address="$RAY_ADDRESS"
}

# ---------------------------------------------------------------- commands
cmd_up() {
  load_env
  mkdir -p "$LOGS" "$PIDS"
  if [ -n "$(marked_pids)" ]; then die "the stack in $STACK_DIR is already running (infra/stack.sh down first)"; fi
  local t0 t; t0=$(now_ms)
  : >"$STACK_DIR/startup.txt"
  t=$(now_ms); start_postgres; echo "postgres $(elapsed "$t") ms" >>"$STACK_DIR/startup.txt"; log "PostgreSQL up on 127.0.0.1:$PG_PORT"
  t=$(now_ms); start_s3; echo "s3 $(elapsed "$t") ms" >>"$STACK_DIR/startup.txt"; log "S3 (SeaweedFS) up on $AWS_ENDPOINT_URL: $BUCKETS"
  # Ray first (its pid files are the processes that appeared meanwhile), then MLflow and the
  # Prefect server side by side; each is then waited for
  t=$(now_ms); start_ray
  echo "ray (2 nodes) $(elapsed "$t") ms" >>"$STACK_DIR/startup.txt"; log "Ray head + worker started"
  t=$(now_ms); start_mlflow; start_prefect
  "$PY" "$HERE/stackctl.py" wait-http "$MLFLOW_TRACKING_URI/health" 120 "$(cat "$PIDS/mlflow.pid")" \
    || { tail -20 "$LOGS/mlflow.log" >&2; exit 1; }
  echo "mlflow (ready) $(elapsed "$t") ms" >>"$STACK_DIR/startup.txt"; log "MLflow up on $MLFLOW_TRACKING_URI"
  "$PY" "$HERE/stackctl.py" wait-http "$PREFECT_API_URL/health" 120 "$(cat "$PIDS/prefect.pid")" \
    || { tail -20 "$LOGS/prefect.log" >&2; exit 1; }
  echo "prefect server (ready) $(elapsed "$t") ms" >>"$STACK_DIR/startup.txt"; log "Prefect server up on $PREFECT_API_URL"
  t=$(now_ms); start_prefect_worker
  "$PY" "$HERE/stackctl.py" prefect-worker "$WORK_POOL" 90 || { tail -20 "$LOGS/prefect-worker.log" >&2; exit 1; }
  echo "prefect worker $(elapsed "$t") ms" >>"$STACK_DIR/startup.txt"
  "$PY" "$HERE/stackctl.py" ray-nodes 2 60 >"$STACK_DIR/ray-nodes.txt" || { cat "$STACK_DIR/ray-nodes.txt" >&2; exit 1; }
  echo "total $(elapsed "$t0") ms" >>"$STACK_DIR/startup.txt"
  log "stack up in $(elapsed "$t0") ms; eval \"\$(infra/stack.sh env)\" to use it"
}

cmd_status() {
  load_env
  local f name pid rc=0 total=0 n=0
  for f in "$PIDS"/*.pid; do
    [ -e "$f" ] || { echo "stack not running ($STACK_DIR)"; return 1; }
    name=$(basename "$f" .pid)
    for pid in $(cat "$f"); do
      if alive "$pid"; then
        printf '%-15s pid %-7s RSS %5s MB  %s\n' "$name" "$pid" "$(rss_mb "$pid")" \
          "$(tr '\0' ' ' <"/proc/$pid/cmdline" | cut -c1-70)"
      else
        printf '%-15s pid %-7s DEAD\n' "$name" "$pid"; rc=1
      fi
    done
  done
  for pid in $(marked_pids); do total=$((total + $(rss_mb "$pid"))); n=$((n + 1)); done
  echo "all stack processes: $n, RSS total $total MB"
  "$PY" "$HERE/stackctl.py" wait-http "$MLFLOW_TRACKING_URI/health" 3 && echo "mlflow: healthy" || rc=1
  "$PY" "$HERE/stackctl.py" wait-http "$PREFECT_API_URL/health" 3 && echo "prefect: healthy" || rc=1
  "$PY" "$HERE/stackctl.py" wait-http "$AWS_ENDPOINT_URL/healthz" 3 && echo "s3: healthy" || rc=1
  "$PY" "$HERE/stackctl.py" ray-nodes 2 5 || rc=1
  return $rc
}

dvc_remote() {  # the S3 remote, default only in the untracked .dvc/config.local
  cd "$PROJECT_DIR"
  "$VENV/bin/dvc" remote add --local -f s3 s3://dvc-remote
  "$VENV/bin/dvc" remote modify --local s3 endpointurl "$AWS_ENDPOINT_URL"
  "$VENV/bin/dvc" remote default --local s3
}

cmd_run() {
  load_env
  local preset="" sets=() extra=()
  while [ $# -gt 0 ]; do
    case $1 in
      --preset) preset=$2; shift 2 ;;
      --set) sets+=("$2"); shift 2 ;;
      *) extra+=("$1"); shift ;;
    esac
  done
  [ ${#extra[@]} -eq 0 ] || die "unknown arguments: ${extra[*]} (use --preset NAME and --set KEY=VALUE)"
  # Ray checkpoints go to the object store unless the caller says otherwise
  printf '%s\n' "${sets[@]}" | grep -q '^ray.storage_path=' || sets+=("ray.storage_path=s3://ray-checkpoints")
  dvc_remote
  cd "$PROJECT_DIR"
  PREFECT_HOME="$STACK_DIR/prefect" "$VENV/bin/prefect" --no-prompt deploy --name "${DEPLOYMENT#*/}" \
    >"$LOGS/deploy.log" 2>&1 || { cat "$LOGS/deploy.log" >&2; die "prefect deploy failed"; }
  local params
  params=$("$PY" -c 'import json, sys; p = sys.argv[1] or None; print(json.dumps({"preset": p, "overrides": sys.argv[2:]}))' \
    "$preset" "${sets[@]}")
  log "running deployment $DEPLOYMENT with $params on pool $WORK_POOL"
  PREFECT_HOME="$STACK_DIR/prefect" "$VENV/bin/prefect" deployment run "$DEPLOYMENT" --params "$params" --watch
  log "pushing DVC-tracked data to s3://dvc-remote"
  "$VENV/bin/dvc" push
}

cmd_down() {
  STACK_DIR=$STACK_DIR
  local f pid pids
  [ -d "$PIDS" ] || mkdir -p "$PIDS"
  stop_postgres
  # Prefect worker first (no new flow runs), then the rest; TERM, then KILL after about 11 s
  for f in "$PIDS"/prefect-worker.pid "$PIDS"/*.pid; do
    [ -e "$f" ] || continue
    for pid in $(cat "$f"); do alive "$pid" && kill -TERM "$pid" 2>/dev/null || true; done
  done
  for _ in $(seq 20); do  # up to 10 s for a graceful exit
    pids=$(marked_pids)
    [ -z "$pids" ] && break
    sleep 0.5
  done
  pids=$(marked_pids)
  [ -z "$pids" ] || kill -TERM $pids 2>/dev/null || true
  sleep 1
  pids=$(marked_pids)
  if [ -n "$pids" ]; then log "killing stragglers: $(echo $pids)"; kill -KILL $pids 2>/dev/null || true; sleep 0.5; fi
  rm -f "$PIDS"/*.pid "/tmp/seaweedfs-s3-grpc-$((WEED_BASE + 6)).sock"  # weed leaves it when killed
  if [ -f "$PROJECT_DIR/.dvc/config.local" ] && grep -q '"s3"' "$PROJECT_DIR/.dvc/config.local"; then
    (cd "$PROJECT_DIR" && "$VENV/bin/dvc" remote remove --local s3 >/dev/null 2>&1) || true
  fi
  pids=$(marked_pids)
  [ -z "$pids" ] || die "processes still running: $pids"
  log "stack down (data kept in $STACK_DIR; rm -rf it to start from scratch)"
}

case ${1:-} in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  env) make_secrets; stack_env ;;
  run) shift; cmd_run "$@" ;;
  dvc-remote) load_env; dvc_remote ;;
  ray-worker) load_env; start_ray_worker ;;  # (re)join the second Ray node, e.g. after it died
  *) sed -n '2,18p' "$0"; exit 2 ;;
esac
