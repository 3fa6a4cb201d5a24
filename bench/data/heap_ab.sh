#!/bin/bash
# The time the bounded heap costs (fdkd.pipeline.numerics.bound_heap: glibc's mmap threshold fixed at 4 MB): one
# distillation epoch of a bench.data.scale run, A B A B, A = fdkd as shipped, B = MALLOC_MMAP_THRESHOLD_=33554432
# (a user's value wins over fdkd's; 32 MB is the ceiling of glibc's default dynamic threshold). Stop other work first.
#
#   python -m bench.data.scale --sizes 2000 --keep-sources --work /work/scale-work --records /tmp/r.jsonl
#   bash bench/data/heap_ab.sh /work/scale-work/runs/scale-audio-2000
set -euo pipefail
SRC=${1:?run folder of a bench.data.scale run}
RUNS=$(dirname "$SRC")
for t in A1 B1 A2 B2; do
  rm -rf "$RUNS/ab-$t"; mkdir -p "$RUNS/ab-$t"
  cp "$SRC"/{config.yaml,manifest.json,teacher.image.pt,teacher.image.config.yaml,teacher.image.metrics.jsonl} "$RUNS/ab-$t/"
  case $t in A*) E=();; B*) E=(MALLOC_MMAP_THRESHOLD_=33554432);; esac
  s=$(date +%s.%N)
  env "${E[@]}" fdkd distill -c "$SRC/config.yaml" --set name="ab-$t" > "$RUNS/ab-$t.log" 2>&1
  e=$(date +%s.%N)
  printf '%s  %-34s  %6.1f s\n' "$t" "${E[*]:-bounded heap (4 MB, as shipped)}" "$(echo "$e - $s" | bc)"
done
