#!/usr/bin/env bash
# The GPU checks and figures of the rollout (#13) and training (#14) issues, in one time-boxed run each
# (a GPU is lent for minutes, not hours): every stage has its own time limit and its log, so one failure
# does not take the rest; a stage whose first choice of kernel fails is run again with the portable one.
#
#   OUT=/tmp/gpu bash scripts/gpu_figures.sh checks     # the GPU-only tests, 1.5B training, 1.5B decode
#   OUT=/tmp/gpu bash scripts/gpu_figures.sh tests|train|decode   # one of those
#   OUT=/tmp/gpu bash scripts/gpu_figures.sh peers      # the small-model benches against transformers
#   MODEL="--hidden 128 --heads 4 --kv-heads 2 --layers 2 --mlp 256 --vocab 1024" LEN=64 NEW=16 \
#       bash scripts/gpu_figures.sh checks
#                                                       # a dry run of the stages on a CPU, on a tiny shape
set -u
OUT=${OUT:-/tmp/gpu_figures}
mkdir -p "$OUT"
export PYTHONPATH=$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
PY=${PY:-python3}
MODEL=${MODEL:---preset deepseek-1.5b}
T=${T_SCALE:-1}  # multiplies every stage's time limit
LEN=${LEN:-15360}  # response tokens of each training row (the dry run shortens it)
NEW=${NEW:-256}  # new tokens per row in the 1.5B decode bench

stage() {  # stage NAME SECONDS CMD...: run, keep its log, print its tail and its exit status
    local name=$1 limit=$(($2 * T))
    shift 2
    echo "=== $name ($(date +%T), limit ${limit} s): $*"
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    grep -v -i -E "warn|^\s*$" "$OUT/$name.log" | tail -n 14
    echo "=== $name rc=$rc ($(date +%T))"
    return $rc
}

tests() {
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
    $PY -c "import sys, jax, flax, optax, transformers, torch; print(sys.version.split()[0], 'jax', jax.__version__, \
'flax', flax.__version__, 'optax', optax.__version__, 'transformers', transformers.__version__, 'torch', \
torch.__version__, jax.devices())"
    JAX_PLATFORMS=cuda,cpu stage gpu_tests 150 $PY -m pytest -q -p no:cacheprovider -rs \
        tests/test_attention.py::test_cudnn_equals_xla_in_bf16 tests/test_paged_attention.py -k "gpu or cudnn"
}

train() {
    # 1.5B, bf16 over fp32 master weights, 8 rows of 1,024 prompt + 15,360 response tokens (the recipe's
    # longest), remat; justrl_jax alone (PyTorch would materialise 8 x 16k x 152k logits).
    train=(scripts/bench_train_step.py $MODEL --dtype bfloat16 --batch 8 --prompt 1024
        --lengths "$LEN,$LEN,$LEN,$LEN,$LEN,$LEN,$LEN,$LEN" --no-peer --remat --iters 2 --chunk 2048)
    XLA_PYTHON_CLIENT_MEM_FRACTION=0.92 stage train_1p5b_cudnn 200 $PY "${train[@]}" --attention auto ||
        XLA_PYTHON_CLIENT_MEM_FRACTION=0.92 stage train_1p5b_blockwise 200 $PY "${train[@]}" --attention blockwise
}

decode() {
    # 1.5B decode at batch 64 and 256 against transformers' generate (bf16) on the same GPU.
    sample=(scripts/bench_sampler.py $MODEL --dtype bfloat16 --batches 64 256 --prompt 256 --new-tokens "$NEW"
        --iters 1)
    XLA_PYTHON_CLIENT_MEM_FRACTION=0.6 stage sample_1p5b 200 $PY "${sample[@]}" ||
        XLA_PYTHON_CLIENT_MEM_FRACTION=0.6 stage sample_1p5b_jax_kernel 200 $PY "${sample[@]}" --attention-kernel jax
}

case "${1:-checks}" in
checks) tests; train; decode ;;
tests | train | decode) "$1" ;;
peers)
    # The issues' own small-model benches (fp32 both sides), now on the GPU.
    XLA_PYTHON_CLIENT_MEM_FRACTION=0.5 stage longtail 200 $PY scripts/bench_sampler.py --workload longtail --rows 512
    XLA_PYTHON_CLIENT_MEM_FRACTION=0.5 stage fixed 120 $PY scripts/bench_sampler.py --batches 8 32 128 --iters 2
    XLA_PYTHON_CLIENT_MEM_FRACTION=0.6 stage sample_1p5b_bf16_weights 150 $PY scripts/bench_sampler.py $MODEL \
        --dtype bfloat16 --batches 256 --prompt 256 --new-tokens "$NEW" --iters 1 --param-dtype bfloat16
    ;;
*)
    echo "usage: $0 checks|tests|train|decode|peers" >&2
    exit 2
    ;;
esac
