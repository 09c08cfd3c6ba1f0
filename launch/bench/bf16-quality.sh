#!/bin/bash
# Does bf16 autocast cost quality? fp32 vs bf16 on Fashion-MNIST 32x32, preset fashion-mnist-mixup, 3 seeds, at the
# README's CPU budget (30 kimg with `ae_every=1 lr=3e-4`, the overrides of its Fashion-MNIST results table).
# Each seed's fp32 and bf16 runs train side by side (one thread each), so machine load hits both alike. Then the
# online probe's best validation accuracy and the reconstruction L1 of each precision, mean ± std over seeds.
# Usage: [SEEDS="0 1 2"] [KIMG=30] [DATA=data/fashion-mnist-32] [OUT=runs/bf16-quality] [AMR=.venv/bin/amr-fast] \
#        bash launch/bench/bf16-quality.sh          (DATA is sharded first if it has no index.json)
# bf16 is only native on CPUs with avx512_bf16 / amx_bf16 (grep -o 'avx512_bf16\|amx_bf16' /proc/cpuinfo);
# elsewhere it is emulated (slow) but the quality comparison still holds.
set -euo pipefail
AMR=${AMR:-amr-fast}
SEEDS=${SEEDS:-0 1 2}
KIMG=${KIMG:-30}
DATA=${DATA:-data/fashion-mnist-32}
OUT=${OUT:-runs/bf16-quality}
S="ae_every=1 lr=3e-4 tick_kimg=2 snapshot_kimg=10 state_kimg=10 probe_kimg=10 workers=1"
mkdir -p "$OUT"
[ -f "$DATA/index.json" ] || $AMR shard fashion-mnist --src "${SRC:-/usr/share/datasets/fashion-mnist}" --out "$DATA" --size 32
for seed in $SEEDS; do
  for p in fp32 bf16; do
    OMP_NUM_THREADS=1 $AMR train --preset fashion-mnist-mixup --outdir "$OUT/$p-s$seed" data="$DATA" seed="$seed" \
      total_kimg="$KIMG" precision="$p" $S > "$OUT/$p-s$seed.log" 2>&1 &
  done
  wait
  for p in fp32 bf16; do
    $AMR eval "$OUT/$p-s$seed" --metrics recon --limit 10000 > /dev/null  # recon L1 on the test split
  done
done
for p in fp32 bf16; do
  echo "== precision=$p"
  $AMR report $(for seed in $SEEDS; do echo "$OUT/$p-s$seed"; done)
done
