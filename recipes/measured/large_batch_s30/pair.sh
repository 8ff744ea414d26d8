#!/bin/bash
# Both arms of an on/off pair side by side (one thread each, CPU-clock budget), each under /usr/bin/time -v;
# the load average is sampled every 60 s into NAME_load.txt.
#   pair.sh DATA BUDGET NAME_A "OPTS_A" NAME_B "OPTS_B"     (OPTS: --option k=v ...)
set -u
D=recipes/measured/large_batch_s30
data=$1; budget=$2; a=$3; oa=$4; b=$5; ob=$6
. /work/main/.venv/bin/activate
export PYTHONPATH=$PWD HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 OMP_NUM_THREADS=1
run() { /usr/bin/time -v python recipes/benchmark_text.py --attacks beyond_rank --data $data --batch-size 64 --n 1 \
        --budget $budget --budget-clock cpu --threads 1 $2 --out $D/$1 > $D/$1.log 2>&1; }
( while true; do echo "$(date -u +%H:%M:%S) $(cut -d' ' -f1-3 /proc/loadavg)"; sleep 60; done ) > $D/${a}_${b}_load.txt &
mon=$!
run $a "$oa" & pa=$!
run $b "$ob" & pb=$!
wait $pa $pb
kill $mon
