#!/bin/bash
# speechprune on a CUDA GPU, every command a user runs, one step each with its exit code and wall time, plus the
# extraction benchmark and the CUDA test module. Runs on an offline GPU machine from the project root, with the
# bundle .devwork/ built by ../shared/tools/gpu/make-bundle.sh (wheels the image lacks, a real Whisper tiny.en
# classifier folder, 600 FSDD clips); see benchmarks/gpu/README.md.
#     OUT=/tmp/gpu-out bash benchmarks/gpu/gpu-check.sh [STEP ...]     # no STEP: all of them
# Output: $OUT/log.txt (one "### step rc=… wall=…" line per step), $OUT/results.tgz, $OUT/gpu_extract_*.json.
# Budget: about 6-9 minutes on an H100/H200 when all is well (the benchmark and pytest take half of it).
set -u
OUT=${OUT:-/tmp/gpu-out}; mkdir -p "$OUT"
B=$PWD/.devwork
exec > >(tee -a "$OUT/log.txt") 2>&1
if [ -d "$B/whl" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$B"/whl/*.whl || echo PIPFAIL
fi
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 SPEECHPRUNE_CACHE=/tmp/sp-cache
python3 -c "import soundfile,torch,transformers,speechprune; transformers.Wav2Vec2Model; transformers.WhisperForAudioClassification; print('versions', torch.__version__, transformers.__version__, torch.version.cuda, torch.cuda.get_device_name())" || exit 3
M=$B/whisper-tiny-enc; DATA=$B/fsdd; SP="python3 -m speechprune.cli.app"; W=/tmp/w; mkdir -p $W
WANT=" ${*:-all} "
step() { local name=$1 t=$2; shift 2
  case "$WANT" in *" all "*|*" $name "*) ;; *) return 0;; esac
  echo "=== $name"; local s=$(date +%s)
  timeout "$t" "$@" > $W/step.log 2>&1; local rc=$?
  grep -v "it/s\]\|Loading weights\|Writing model" $W/step.log | tail -15; echo "### $name rc=$rc wall=$(( $(date +%s)-s ))s"; }
# --- issue 18: the full analysis on 100 000 cached rows x 13 states x 768 dims (target < 5 min on a GPU); kNN graph,
# CKA, mutual kNN and ridge probes on CUDA, shortest paths on the CPU cores
step analysis-100k     300 python3 benchmarks/analysis_scale.py --device cuda --processes $(nproc) --results-dir $OUT --name analysis_scale_gpu
# --- profile: TF32 fp32, bf16 weights (the issue: autocast bf16 at batch 8 reached 57 TFLOP/s, TF32 was off)
step profile-fp32       60 $SP profile default:wav2vec2 --seconds 1 --batch-size 8 --device cuda --no-flop-check --json $W/p1.json
step profile-bf16-10s   60 $SP profile default:wav2vec2 --seconds 10 --batch-size 8 --device cuda --dtype bf16 --no-flop-check --json $W/p2.json
step profile-bf16-10sx32 60 $SP profile default:wav2vec2 --seconds 10 --batch-size 32 --device cuda --dtype bf16 --no-flop-check --repeats 10 --json $W/p3.json
step profile-cuda-n     60 $SP profile default:wav2vec2 --seconds 1 --batch-size 8 --device cuda:0 --no-flop-check --repeats 3
# --- extraction and analysis (issue row 1: pooling mask on the CPU)
step extract            90 $SP extract $M $DATA -l word -l speaker --device cuda --window 2 --cache-dir $W/cache --out $W/ex --no-progress
step extract-bf16       90 $SP extract $M $DATA -l word --device cuda --dtype bf16 --window 2 --cache-dir $W/cache --no-progress
step extract-frames     90 $SP extract $M $DATA -l word --device cuda --pooling frames --window 1 --cache-dir $W/cache --no-progress
step extract-auto       90 $SP extract $M $DATA -l word --device auto --window 1 --cache-dir $W/cache --no-progress
step analyze           150 $SP analyze $M $DATA -l word -l speaker --split-column split --device cuda --window 2 --cache-dir $W/cache --out $W/an --no-progress
# --- training and evaluation
step finetune          120 $SP finetune $M $DATA -l word --split-column split --window 1 --epochs 2 --device cuda --mixed-precision bf16 -o $W/ft --no-progress
step evaluate           60 $SP evaluate $W/ft $DATA -l word --device cuda
step prune-layers       90 $SP prune layers $W/ft --no-retrain --data $DATA -l word --split-column split --window 1 --device cuda -o $W/rm --no-progress
# --- issue row 2: structured pruning, Whisper and wav2vec2
step prune-structured  150 $SP prune structured $W/ft $DATA -l word --split-column split --budget macs=0.5 --epochs 2 --device cuda -o $W/ps --no-progress
step finetune-w2v2     120 $SP finetune default:wav2vec2 $DATA -l word --split-column split --epochs 1 --device cuda --mixed-precision bf16 -o $W/ftw --no-progress
step structured-w2v2   150 $SP prune structured $W/ftw $DATA -l word --split-column split --budget macs=0.5 --epochs 1 --device cuda --mixed-precision bf16 -o $W/psw --no-progress
# --- issue rows 3 and 5: distillation on CUDA, with the split column
step distill           120 $SP distill $W/ft $DATA -l word --split-column split --stage1-epochs 5 --stage2-epochs 3 --device cuda -o $W/ds --no-progress
step distill-w2v2      120 $SP distill $W/ftw $DATA -l word --split-column split --stage1-epochs 5 --stage2-epochs 3 --device cuda -o $W/dsw --no-progress
# --- issue row 4: run with device: cuda (and the distill stage inside it)
cat > $W/run.yaml <<Y
model: $M
data: $DATA
label: word
labels: [speaker]
window: 1.0
device: cuda
split: {split_column: split}
train: {epochs: 2, mixed_precision: bf16}
compress:
  distill: {enabled: true, stage1_epochs: 5, stage2_epochs: 3}
  structured: {enabled: true, epochs: 2}
out: $W/run
Y
step run               300 $SP run $W/run.yaml --no-progress
# --- the extraction benchmark (targets: >= 0.9x bare and >= 130 TFLOP/s at 10 s x 32 bf16 on H100/H200)
step bench-bf16-10sx32 180 python3 benchmarks/gpu_extract.py --device cuda --dtype bf16 --seconds 10 --batch 32 --out $OUT/gpu_extract_bf16_10sx32.json
step bench-tf32-10sx8  180 python3 benchmarks/gpu_extract.py --device cuda --dtype fp32 --seconds 10 --batch 8 --out $OUT/gpu_extract_tf32_10sx8.json
# --- the CUDA test module (tiny models, every CLI flow)
if python3 -c "import pytest" 2>/dev/null; then
  step pytest-cuda     420 python3 -m pytest -q -p no:cacheprovider -m cuda tests/test_cuda.py
else
  echo "### pytest-cuda rc=skipped wall=0s (no pytest on this machine: benchmarks/gpu/make-bundle.sh adds its wheels)"
fi
(cd $W && tar czf "$OUT/results.tgz" p1.json p2.json p3.json an/metrics.json ft/metrics.json ps/training.json ds/distill.json run/report.md run/results.json 2>/dev/null)
grep "^###" "$OUT/log.txt"
