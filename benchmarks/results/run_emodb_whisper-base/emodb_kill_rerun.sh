#!/usr/bin/env bash
# Real-data acceptance of `speechprune run` (issue 7): start, kill -9 in the middle of the truncation fine-tuning
# (after its first epoch checkpoint), re-run to the end, then run a third time (everything reused).
cd /work/exp2 && source /work/main/.venv/bin/activate
export PYTHONPATH=/work/exp2/src OMP_NUM_THREADS=1
OUT=/work/runs/emodb-whisper-base
CFG=benchmarks/configs/run_emodb_whisper-base.yaml
ARGS="model=$HOME/.cache/speechprune/models/whisper-base out=$OUT data=/work/shared/data/emodb latency_repeats=10"
T=/work/runs/emodb_timeline.txt
start=$(date +%s)
echo "start $(date -Is) load $(cut -d' ' -f1 /proc/loadavg)" > $T
speechprune run $CFG $ARGS --no-progress > /work/runs/emodb_first.log 2>&1 &
pid=$!
while [ ! -f $OUT/stages/baseline.json ] && kill -0 $pid 2>/dev/null; do sleep 5; done
echo "baseline stage written at $(( $(date +%s) - start )) s" >> $T
while ! ls -d $OUT/models/.truncate-k*.training/checkpoint >/dev/null 2>&1 && kill -0 $pid 2>/dev/null; do sleep 5; done
sleep 20
kill -9 $pid; pkill -9 -f "speechprune run $CFG"
echo "killed at $(( $(date +%s) - start )) s" >> $T
ls -a $OUT/stages $OUT/models >> $T
sha256sum $OUT/stages/*.json > /work/runs/emodb_stages_before.sha
speechprune run $CFG $ARGS --no-progress > /work/runs/emodb_second.log 2>&1
echo "second run rc=$? finished at $(( $(date +%s) - start )) s" >> $T
sha256sum $OUT/stages/*.json > /work/runs/emodb_stages_after.sha
cp $OUT/results.json /work/runs/emodb_results_second.json
speechprune run $CFG $ARGS --no-progress > /work/runs/emodb_third.log 2>&1
echo "third run rc=$? finished at $(( $(date +%s) - start )) s" >> $T
