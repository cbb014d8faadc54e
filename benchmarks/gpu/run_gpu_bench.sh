#!/usr/bin/env bash
# GPU agent benchmark: run from the repo root on a machine with one NVIDIA GPU.
#
#   benchmarks/gpu/run_gpu_bench.sh OUT_DIR
#
# Needs python3 with tuner_service's dependencies (PYTHONPATH may hold carried wheels) and a
# Keras backend with GPU support (KERAS_BACKEND, default jax). Phases (BENCH_PHASES, default
# "probe none k torch"), each guarded by a timeout and skipped when the overall deadline
# (BENCH_DEADLINE_S, default 560 s) is near:
#   probe  - probe_gpu_env.py: the env Agent._slot_env builds, checked on the GPU (JAX and torch)
#   none   - agent --gpus none --slots 1: a CUDA_VISIBLE_DEVICES="" runner must not touch the GPU
#   k1/k2/k4 - agent --gpus all --trials-per-gpu K --once on digits_gpu.yaml (BENCH_KS, default
#            "1 2 4"; each study stops starting trials BENCH_WINDOW_S, default 75, seconds after
#            its submit), nvidia-smi sampled every 0.5 s by monitor.py; analyze.py summarises
#   torch-k2 - the same on KERAS_BACKEND=torch, K=2, short (only if time is left)
# Writes to OUT_DIR: run.log is written by the caller (tee); smi_samples.csv, summary.jsonl,
# trials.jsonl, probe.log, logs.tar.gz (agent/submit logs, nvidia-smi, versions).
set -u
OUT_DIR=${1:?usage: run_gpu_bench.sh OUT_DIR}
W=/tmp/gpubench
rm -rf "$W"; mkdir -p "$W" "$OUT_DIR"
export KERAS_BACKEND=${KERAS_BACKEND:-jax} PYTHONUNBUFFERED=1 TUNER_SERVICE_AGENT_POLL=0.5
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD
PY=${PY:-python3}
DEADLINE=${BENCH_DEADLINE_S:-560}
WINDOW=${BENCH_WINDOW_S:-75}     # each K: the study stops starting trials WINDOW s after submit
SMI=$OUT_DIR/smi_samples.csv SUM=$OUT_DIR/summary.jsonl TR=$OUT_DIR/trials.jsonl
GPU_STUDY=${BENCH_STUDY:-benchmarks/gpu/digits_gpu.yaml}
say() { echo "[$(date -u +%H:%M:%S) +${SECONDS}s] $*"; }
left() { echo $((DEADLINE - SECONDS)); }

say "date $(date -u +%Y-%m-%dT%H:%M:%SZ) host $(hostname)"
nvidia-smi | tee "$W/nvidia-smi.txt"
nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv | tee -a "$W/nvidia-smi.txt"
$PY - <<'PYEOF' 2>&1 | tee "$W/versions.txt"
import importlib.metadata as m, platform, os
print("python", platform.python_version(), "KERAS_BACKEND", os.environ.get("KERAS_BACKEND"))
for p in ("keras", "keras-tuner", "optuna", "jax", "jaxlib", "jax-cuda13-plugin", "torch", "numpy", "scikit-learn", "sqlalchemy", "pydantic"):
    try: print(p, m.version(p))
    except m.PackageNotFoundError: print(p, "-")
PYEOF

# Run one agent phase: PHASE K STUDY_FILE SUBMIT_ARGS(string) AGENT_ARGS...
phase() {
  local name=$1 k=$2 file=$3 submit_args=$4; shift 4
  local db="sqlite:///$W/$name.db"
  say "phase $name: submit"
  # shellcheck disable=SC2086
  timeout 120 $PY -m tuner_service submit "$file" --name "$name" --storage "$db" --no-wait $submit_args \
    > "$W/$name.submit.log" 2>&1 || { say "submit failed"; tail -20 "$W/$name.submit.log"; return 1; }
  $PY benchmarks/gpu/monitor.py --out "$SMI" --phase "$name" --interval 0.5 & local mon=$!
  sleep 0.5
  say "phase $name: agent $*"
  local t0 t1 rc
  t0=$(date +%s.%N)
  timeout "$AGENT_TIMEOUT" $PY -m tuner_service agent --storage "$db" --once "$@" > "$W/$name.agent.log" 2>&1
  rc=$?
  t1=$(date +%s.%N)
  kill "$mon"; wait "$mon" 2>/dev/null
  local wall; wall=$(awk "BEGIN{printf \"%.2f\", $t1 - $t0}")
  say "phase $name: agent exit $rc after ${wall}s"
  cat "$W/$name.agent.log"
  $PY benchmarks/gpu/analyze.py --storage "$db" --study "$name" --phase "$name" --k "$k" --smi "$SMI" \
    --wall "$wall" --summary "$SUM" --trials-out "$TR"
}

PHASES=" ${BENCH_PHASES:-probe none k torch} "
if [[ $PHASES == *" probe "* ]] && [ "$(left)" -gt 200 ]; then
  say "phase probe"
  timeout 200 $PY benchmarks/gpu/probe_gpu_env.py --backends "${PROBE_BACKENDS:-jax,torch}" --timeout 60 \
    2>&1 | tee "$OUT_DIR/probe.log"
fi

if [[ $PHASES == *" none "* ]] && [ "$(left)" -gt 120 ]; then
  AGENT_TIMEOUT=90 phase none 0 studies/digits.yaml "--max-trials 2 --max-epochs 2" --gpus none --slots 1
fi

[[ $PHASES == *" k "* ]] || BENCH_KS=" "
for k in ${BENCH_KS:-1 2 4}; do
  need=$((WINDOW + 45))
  if [ "$(left)" -lt "$need" ]; then say "skipping k$k: $(left)s left"; continue; fi
  AGENT_TIMEOUT=$((WINDOW + 60)) phase "k$k" "$k" "$GPU_STUDY" "--max-trials 200 --timeout $WINDOW" \
    --gpus all --trials-per-gpu "$k"
done

if [[ $PHASES == *" torch "* ]] && [ "$(left)" -gt 85 ]; then
  KERAS_BACKEND=torch AGENT_TIMEOUT=75 phase torch-k2 2 "$GPU_STUDY" "--max-trials 4 --max-epochs 3 --timeout 45" \
    --gpus all --trials-per-gpu 2
fi

say "done"
tar -czf "$OUT_DIR/logs.tar.gz" -C "$W" $(cd "$W" && ls *.log *.txt 2>/dev/null)
