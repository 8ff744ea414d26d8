#!/bin/bash
# usage: ba.sh DATA K,LR NAME -> main (d76de94, scratch worktree acheck) and the branch at the same time
. /work/main/.venv/bin/activate
export TEXTLEAK_DATA=/work/shared/data HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 OMP_NUM_THREADS=1
S=/work/wt17-lr4-scratch; D=$1; F=$2; N=$3
for W in acheck:before mcheck:after; do
  dir=${W%%:*}; tag=${W##*:}; dir=$S/$dir
  ( cd $dir && PYTHONPATH=$dir /usr/bin/time -v python recipes/fl_defences.py --data $D --batch-size 4 --n 1 --no-baseline --noise --dpeps --budget 600 --fedavg $F --out $S/runs/${N}_$tag > $S/runs/${N}_$tag.log 2>&1 ) &
done
wait
