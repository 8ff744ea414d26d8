#!/bin/bash
# Two arms of an on/off pair side by side, so that both see the same load (give both a CPU-clock
# budget, --budget-clock cpu): each runs under /usr/bin/time -v with its output in OUT/NAME.log,
# and the load average is sampled every 60 s into OUT/NAME_A_NAME_B_load.txt.
#   recipes/pair.sh OUT NAME_A "COMMAND_A" NAME_B "COMMAND_B"
# Run it from the checkout whose code is measured, with that checkout's environment active.
set -u
if [ $# -ne 5 ]; then echo "usage: recipes/pair.sh OUT NAME_A \"COMMAND_A\" NAME_B \"COMMAND_B\"" >&2; exit 2; fi
out=$1; a=$2; ca=$3; b=$4; cb=$5
mkdir -p "$out"
( while true; do echo "$(date -u +%H:%M:%S) $(cut -d' ' -f1-3 /proc/loadavg)"; sleep 60; done ) > "$out/${a}_${b}_load.txt" &
mon=$!
/usr/bin/time -v bash -c "$ca" > "$out/$a.log" 2>&1 & pa=$!
/usr/bin/time -v bash -c "$cb" > "$out/$b.log" 2>&1 & pb=$!
wait $pa; ra=$?; wait $pb; rb=$?
kill $mon
echo "$a: exit $ra; $b: exit $rb"
[ $ra -eq 0 ] && [ $rb -eq 0 ]
