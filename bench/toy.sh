#!/usr/bin/env bash
# Train the toy models on a 2-GPU machine in one device call, then evaluate them (issue 9).
#   GPU 0: the generator (run a: the weights we ship), then its figures.
#   GPU 1: the scorer and, beside it, the generator again from the same seed (run b: does the
#          recipe reproduce?), then run b's figures with the same scorer.
# Writes under $1 (default $OUT): toy-sd.tar, toy-clip.tar (the folders to unpack into
# accelopt/data/toy/), figures-a.json, figures-b.json, train-b.json, samples.png, toy.log.
set -euo pipefail
out=${1:-$OUT}
work=$(mktemp -d)
export PYTHONUNBUFFERED=1
log() { tee -a "$out/toy.log"; }
nvidia-smi --query-gpu=name,memory.total --format=csv | log
date -u | log
CUDA_VISIBLE_DEVICES=1 python3 -m accelopt.toy.train scorer --out "$work/s" --device cuda \
  2>&1 | sed 's/^/[scorer] /' | log &
scorer=$!
CUDA_VISIBLE_DEVICES=1 python3 -m accelopt.toy.train generator --out "$work/b" --device cuda \
  --max-seconds 400 2>&1 | sed 's/^/[b] /' | log &
b=$!
CUDA_VISIBLE_DEVICES=0 python3 -m accelopt.toy.train generator --out "$work/a" --device cuda \
  --max-seconds 400 2>&1 | sed 's/^/[a] /' | log
wait "$scorer"
CUDA_VISIBLE_DEVICES=0 python3 -m accelopt.toy.evaluate --pipeline "$work/a/ToySD" \
  --scorer "local-dir:$work/s/toy-clip" --out "$out/figures-a.json" --samples "$out/samples.png" \
  2>&1 | { grep -v "it/s" || true; } | sed 's/^/[eval a] /' | log &
ea=$!
wait "$b"
CUDA_VISIBLE_DEVICES=1 python3 -m accelopt.toy.evaluate --pipeline "$work/b/ToySD" \
  --scorer "local-dir:$work/s/toy-clip" --out "$out/figures-b.json" \
  2>&1 | { grep -v "it/s" || true; } | sed 's/^/[eval b] /' | log
wait "$ea"
cp "$work/a/train.json" "$work/a/ToySD/train.json"
cp "$work/s/train.json" "$work/s/toy-clip/train.json"
cp "$work/b/train.json" "$out/train-b.json"
tar -C "$work/a" -cf "$out/toy-sd.tar" ToySD
tar -C "$work/s" -cf "$out/toy-clip.tar" toy-clip
ls -la "$out" | log
