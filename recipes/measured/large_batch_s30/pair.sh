#!/bin/bash
# pair.sh DATA BUDGET NAME_A "OPTS_A" NAME_B "OPTS_B" (OPTS: --option k=v ...): the batch-64 beyond_rank arms, through recipes/pair.sh
D=recipes/measured/large_batch_s30 c="python recipes/benchmark_text.py --attacks beyond_rank --data $1 --batch-size 64 --n 1 --budget $2 --budget-clock cpu --threads 1"
. /work/main/.venv/bin/activate && export PYTHONPATH=$PWD HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 OMP_NUM_THREADS=1
exec recipes/pair.sh $D $3 "$c $4 --out $D/$3" $5 "$c $6 --out $D/$5"
