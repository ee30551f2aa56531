#!/bin/bash
# The many-core table of BENCHMARKS.md ("Many cores"): `labelqc report` over 1M and 4M generated
# events at 1, 2, 4, 8 and 16 workers, each 4M run with its stage log (debug), a check that every
# worker count gives the same bytes, one 16-worker run with every thread's CPU sampled, and the
# pandas peer in the same run when PEER names its script. Results go to $OUT (default
# target/many-cores).
#
#   cargo build --release && bash benches/many_cores/run.sh
#   PEER=../shared/peers/py_report.py [PEER_PYTHON=venv/bin/python] RUNS=2 bash benches/many_cores/run.sh
#
# LABELQC names another binary (a stripped copy carried to the machine, say).
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
BIN=${LABELQC:-$HERE/../../target/release/labelqc}
OUT=${OUT:-$HERE/../../target/many-cores}
WORKERS=${WORKERS:-1 2 4 8 16}
RUNS=${RUNS:-2}
SIZES=${SIZES:-1000000 4000000}   # events per data set; the last one is sampled per thread
DATA=$(mktemp -d)
trap 'rm -rf "$DATA"' EXIT
mkdir -p "$OUT"
log() { echo "$*" | tee -a "$OUT/log.txt"; }
{ echo "cores: $(nproc)"; grep -m1 "model name" /proc/cpuinfo; "$BIN" --version; } > "$OUT/machine.txt"
for size in $SIZES; do
  "$BIN" gen --events "$size" --annotators 1000 --seed 2026 --out "$DATA/l$size.jsonl" --gold-out "$DATA/g$size.jsonl"
done
big=${SIZES##* }
# wall, user+system CPU and peak RSS of one run, as a TSV row
measure() {
  local tag=$1 out=$2; shift 2
  python3 - "$tag" "$out" "$DATA" "$@" <<'PY'
import resource, subprocess, sys, time
tag, out, data, cmd = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
t = time.perf_counter()
r = subprocess.run(cmd, stdout=open(out, "w") if out != "-" else subprocess.DEVNULL,
                   stderr=open(f"{data}/{tag}.err", "w"))
wall = time.perf_counter() - t
u = resource.getrusage(resource.RUSAGE_CHILDREN)
print(f"{tag}\t{r.returncode}\t{wall:.3f}\t{u.ru_utime + u.ru_stime:.2f}\t{u.ru_maxrss / 1024:.0f}", flush=True)
PY
}
echo -e "run\trc\twall_s\tcpu_s\tpeak_mib" > "$OUT/report.tsv"
export LABELQC_LOG=labelqc=debug,labelqc_dataflows::scope_truth=debug
first=${WORKERS%% *}
for size in $SIZES; do
  for r in $(seq "$RUNS"); do
    for w in $WORKERS; do
      measure "r${size}_w${w}_$r" - "$BIN" report --labels "$DATA/l$size.jsonl" --gold "$DATA/g$size.jsonl" \
        --workers "$w" --output "$DATA/o${size}_$w.json" | tee -a "$OUT/report.tsv"
      [ "$size" = "$big" ] && { echo "== $size events, $w workers, run $r"; grep -v "^\s*$" "$DATA/r${size}_w${w}_$r.err" \
        | grep -v "warning: " | cut -c1-300; } >> "$OUT/stages.txt"
    done
  done
  for w in $WORKERS; do
    cmp -s "$DATA/o${size}_$first.json" "$DATA/o${size}_$w.json" && log "$size events: $w workers, the same bytes as $first" \
      || log "$size events: $w workers DIFFER from $first"
  done
done
unset LABELQC_LOG
python3 "$HERE/threads.py" "$BIN" report --labels "$DATA/l$big.jsonl" --gold "$DATA/g$big.jsonl" --workers 16 \
  --output "$DATA/t.json" > "$OUT/threads16.txt" 2>&1
if [ -n "${PEER:-}" ]; then
  for size in $SIZES; do
    measure "peer$size" "$DATA/p$size.json" "${PEER_PYTHON:-python3}" "$PEER" --labels "$DATA/l$size.jsonl" \
      --gold "$DATA/g$size.jsonl" | tee -a "$OUT/report.tsv"
    python3 "$(dirname "$PEER")/check.py" --quiet "$DATA/p$size.json" "$DATA/o${size}_$first.json" >> "$OUT/log.txt" 2>&1
  done
fi
log "results in $OUT"
