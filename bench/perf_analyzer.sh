#!/usr/bin/env bash
# Triton's own load generator, perf_analyzer, against `netc serve` over gRPC.
#
# Exports digits (lenet5) and resnet18 (random weights) into a fresh repository,
# starts `netc serve` on free ports, runs perf_analyzer on each model over the
# concurrency range and prints its throughput table (client side) and, per level, the
# server side as it read it from ModelStatistics; then the server's histograms of
# the run (its Prometheus endpoint).
#
#   bench/perf_analyzer.sh                       # digits and resnet18, concurrency 1 to 8
#   MODELS=digits RANGE=1:8:7 bench/perf_analyzer.sh
#   DELAY0=1 MODELS=digits RANGE=1:4:1 bench/perf_analyzer.sh  # also digits0: the same
#       model with `max_queue_delay_us: 0`, measured after digits by the same server
#
# Settings (environment): MODELS (digits,resnet18), RANGE (1:8:1), INTERVAL_MS (2000,
# each measurement window), STABILITY (50, % spread allowed between the last three
# windows: the 2-core bench machine is shared), TRIALS (8 windows at most per level),
# PYTHON (.venv/bin/python).
#
# perf_analyzer comes with the tritonclient wheel (.venv/bin/perf_analyzer) and needs
# Debian's libb64-0d (apt-get install -y libb64-0d) and libcudart.so.12, which PyPI's
# nvidia-cuda-runtime-cu12 provides (.venv/bin/pip install nvidia-cuda-runtime-cu12);
# this script finds that library itself. It is not a test dependency.
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
MODELS=${MODELS:-digits,resnet18}
RANGE=${RANGE:-1:8:1}
INTERVAL_MS=${INTERVAL_MS:-2000}
STABILITY=${STABILITY:-50}
TRIALS=${TRIALS:-8}

PERF=$(command -v perf_analyzer || true)
PERF=${PERF:-$(dirname "$PYTHON")/perf_analyzer}
if [[ ! -x $PERF ]]; then
    echo "perf_analyzer not found: pip install 'tritonclient[grpc]' carries it" >&2
    exit 2
fi
CUDART=$("$PYTHON" -c 'import nvidia.cuda_runtime as m; print(list(m.__path__)[0] + "/lib")' \
    2>/dev/null || true)
export LD_LIBRARY_PATH="${CUDART:+$CUDART:}${LD_LIBRARY_PATH:-}"
if missing=$(ldd "$PERF" | grep "not found"); then
    echo "perf_analyzer cannot start, libraries missing:" >&2
    echo "$missing" >&2
    echo "install: apt-get install -y libb64-0d; $PYTHON -m pip install nvidia-cuda-runtime-cu12" >&2
    exit 2
fi

WORK=$(mktemp -d)
SERVER=""
cleanup() {
    if [[ -n $SERVER ]]; then
        kill "$SERVER" 2>/dev/null || true
        wait "$SERVER" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

declare -A ZOO=([digits]=lenet5 [resnet18]=resnet18)
IFS=, read -ra WANTED <<<"$MODELS"
for model in "${WANTED[@]}"; do
    "$PYTHON" -m netc export "${ZOO[$model]}" --repository "$WORK/repo" --name "$model" \
        --no-verify >/dev/null
done
if [[ ${DELAY0:-0} == 1 ]]; then
    for model in "${WANTED[@]}"; do
        cp -r "$WORK/repo/$model" "$WORK/repo/${model}0"
        printf 'dynamic_batching:\n  max_queue_delay_us: 0\n' >"$WORK/repo/${model}0/config.yaml"
        ZOO[${model}0]=${ZOO[$model]}
    done
    IFS=, read -ra WANTED <<<"$(for m in "${WANTED[@]}"; do printf '%s,%s0,' "$m" "$m"; done)"
fi

free_port() { "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
PORT=$(free_port)
METRICS=$(free_port)
"$PYTHON" -m netc serve --repository "$WORK/repo" --host 127.0.0.1 --port "$PORT" \
    --metrics-port "$METRICS" 2>"$WORK/serve.log" &
SERVER=$!
for _ in $(seq 600); do
    grep -q "netc serving gRPC" "$WORK/serve.log" && break
    kill -0 "$SERVER" 2>/dev/null || { cat "$WORK/serve.log" >&2; exit 1; }
    sleep 0.1
done
grep -q "netc serving gRPC" "$WORK/serve.log" || { cat "$WORK/serve.log" >&2; exit 1; }

status=0
echo "netc serve on 127.0.0.1:$PORT; perf_analyzer $("$PERF" --version 2>&1 | head -1)"
echo "windows of $INTERVAL_MS ms, stable within $STABILITY %, at most $TRIALS windows a level"
for model in "${WANTED[@]}"; do
    echo
    echo "== $model =="
    # the floor, measured now (the machine is shared): the served model's own session,
    # as the server runs it, batch 1, in this process, without gRPC
    "$PYTHON" - "$WORK/repo" "$model" <<'FLOOR'
import sys
import time
from pathlib import Path

import numpy as np

from netc.serving.config import load_config
from netc.serving.model import ServedModel

folder = Path(sys.argv[1]) / sys.argv[2]
model = ServedModel(sys.argv[2], "1", folder / "1" / "model.onnx", load_config(folder))
model.warm_up()
inputs = {s.name: np.zeros((1, *s.dims), np.float32) for s in model.info.inputs}
runs, until = [], time.perf_counter() + 3
while time.perf_counter() < until or len(runs) < 5:
    start = time.perf_counter()
    model._run(inputs)
    runs.append(time.perf_counter() - start)
p50 = sorted(runs)[len(runs) // 2]
print(f"in-process onnxruntime, batch 1: p50 {p50 * 1e6:.0f} usec = {1 / p50:.1f} infer/sec")
FLOOR
    "$PERF" -m "$model" -i grpc -u "127.0.0.1:$PORT" --concurrency-range "$RANGE" \
        --measurement-interval "$INTERVAL_MS" --stability-percentage "$STABILITY" \
        --max-trials "$TRIALS" >"$WORK/$model.txt" 2>&1 || {
        status=1  # an unstable level ends perf_analyzer's run: what it measured is below
        grep -E "^Failed" "$WORK/$model.txt" | head -1
    }
    # per level: the server's view (from ModelStatistics), then the summary table
    grep -E "^Request concurrency|Avg request latency|Inference count" "$WORK/$model.txt" |
        sed 's/^ *//'
    sed -n '/^Inferences\/Second vs. Client/,$p' "$WORK/$model.txt"
done

echo
echo "== the server's histograms after the run (http://127.0.0.1:$METRICS/metrics) =="
"$PYTHON" - "$METRICS" <<'EOF'
import sys
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

text = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics", timeout=10).read()
for family in text_string_to_metric_families(text.decode()):
    if family.type != "histogram":
        continue
    for model in sorted({s.labels["model"] for s in family.samples}):
        samples = [s for s in family.samples if s.labels["model"] == model]
        count = next(s.value for s in samples if s.name.endswith("_count"))
        total = next(s.value for s in samples if s.name.endswith("_sum"))
        buckets = [(s.labels["le"], s.value) for s in samples if s.name.endswith("_bucket")]

        def quantile(q):
            return next(le for le, n in buckets if n >= q * count) if count else "-"

        print(f"{family.name:32} {model:9} count {count:8.0f} mean {total / max(count, 1):.6g}"
              f"  p50 <= {quantile(0.5)}  p99 <= {quantile(0.99)}")
EOF
exit $status
