#!/bin/bash
# usage: pair.sh NAME DATA K,LR  -> runs WIDE_RETRY=0 and 0.5 at the same time
cd /work/wt17-lr4
. /work/main/.venv/bin/activate
export PYTHONPATH=$PWD HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 OMP_NUM_THREADS=1
S=/work/wt17-lr4-scratch; N=$1; D=$2; F=$3
for R in 0 0.5; do
  WIDE_RETRY=$R /usr/bin/time -v python $S/fl_wrap.py --data $D --batch-size 4 --n 1 --no-baseline --noise --dpeps --budget 600 --fedavg $F --out $S/runs/${N}_r$R > $S/runs/${N}_r$R.log 2>&1 &
done
wait
