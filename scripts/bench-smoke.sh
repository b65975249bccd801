#!/usr/bin/env bash
# CI smoke test of the benchmark harness: every scenario except Sockudo, a few seconds
# each at small scale. It checks that the harness works (each command exits 0, which the
# benches do only when something was delivered / converged / held and no connection was
# lost, and each wrote its JSON record); it never judges the figures, which are
# meaningless on a shared CI machine. Takes well under 2 minutes after compiling.
#
# BENCH_RESULTS=<file> keeps the JSON records (default: a temporary file).
set -euo pipefail
cd "$(dirname "$0")/.."

results=${BENCH_RESULTS:-$(mktemp)}
export BENCH_RESULTS=$results
: >"$results"

cargo bench --no-run --bench fanout --bench fanout_bare --bench idle_memory --bench presence --bench postgres_changes --bench cluster_fanout

failed=()
run() {
	local name=$1
	shift
	echo "== bench-smoke: $name"
	local before
	before=$(wc -l <"$results")
	if ! timeout 180 cargo bench -q "$@"; then
		failed+=("$name (exit)")
		echo "bench-smoke: $name FAILED (exit)"
	elif [ "$(wc -l <"$results")" -le "$before" ]; then
		failed+=("$name (no record)")
		echo "bench-smoke: $name FAILED (no record)"
	else
		echo "bench-smoke: $name ok"
	fi
}

run "fanout 1x50" --bench fanout -- --subscribers 50 --rates 200,1000 --step-secs 1
run "fanout 10x10 v1" --bench fanout -- --vsn 1.0.0 --topics 10 --subscribers 10 --publishers 2 --rates 200,1000 --step-secs 1
run "fanout_bare 1x50" --bench fanout_bare -- --subscribers 50 --rates 200,1000 --step-secs 1
run "idle_memory 500" --bench idle_memory -- --connections 500 --settle-secs 1
run "presence 50" --bench presence -- --clients 50 --timeout-secs 60
run "presence 50 v1" --bench presence -- --clients 50 --vsn 1.0.0 --timeout-secs 60
run "presence 60 over 3 nodes on nats" --bench presence -- --clients 60 --nodes 3 --engine nats --timeout-secs 60
PG_BENCH_SMOKE=1 run "postgres_changes smoke" --bench postgres_changes
run "cluster_fanout 1x50" --bench cluster_fanout -- --subscribers 50 --rates 200,1000 --step-secs 1

for scenario in fanout fanout_bare idle_memory presence postgres_changes cluster_fanout; do
	if ! grep -q "\"scenario\":\"$scenario\"" "$results"; then
		failed+=("$scenario (record missing)")
	fi
done

echo "bench-smoke: $(wc -l <"$results") records in $results"
if [ ${#failed[@]} -gt 0 ]; then
	printf 'bench-smoke: FAILED: %s\n' "${failed[@]}"
	exit 1
fi
echo "bench-smoke: harness OK"
