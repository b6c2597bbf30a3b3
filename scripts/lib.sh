# Shared by the benchmark scripts in scripts/: sourced, not run. The sourcing script owns
# `$work` (a scratch directory) and the array `pids` (killed by its cleanup trap).

# A free TCP port on loopback.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# start_seam BIN NAME LOGDIR ENV [NODE FLAGS...]
# Starts a 3-node Seam cluster from BIN, node N in region-N, on free loopback ports, with
# data in $work/NAME-N and logs in LOGDIR/NAME-N.log; ENV (may be empty) is extra
# environment for the nodes, e.g. "TOKIO_WORKER_THREADS=1". Appends the nodes' pids to
# `pids` and sets `started_pids` (those pids), `started_eps` (client endpoints, comma-
# separated) and `started_metrics` (their metrics addresses).
start_seam() {
  local bin=$1 name=$2 logdir=$3 env=$4 eps=() initial=() id port
  shift 4
  started_pids=() started_metrics=()
  for id in 1 2 3; do
    port=$(free_port); eps+=("127.0.0.1:$port"); initial+=("$id=127.0.0.1:$port@region-$id")
    started_metrics+=("127.0.0.1:$(free_port)")
  done
  for id in 1 2 3; do
    # shellcheck disable=SC2086 # ENV is a list of NAME=value words
    env RUST_LOG=warn $env "$bin" node --id "$id" --region "region-$id" --listen "${eps[$((id-1))]}" \
      --metrics-listen "${started_metrics[$((id-1))]}" --data-dir "$work/$name-$id" \
      --initial-cluster "$(IFS=,; echo "${initial[*]}")" "$@" >"$logdir/$name-$id.log" 2>&1 &
    pids+=($!) started_pids+=($!)
  done
  started_eps=$(IFS=,; echo "${eps[*]}")
}

# wait_ready BIN ENDPOINTS: returns once the cluster accepts a write; exits after 20 s.
wait_ready() {
  local _
  for _ in $(seq 1 100); do
    if "$1" --endpoints "$2" put bench/ready 1 >/dev/null 2>&1; then return 0; fi
    sleep 0.2
  done
  echo "the Seam cluster at $2 did not accept a write within 20 s" >&2
  exit 1
}
