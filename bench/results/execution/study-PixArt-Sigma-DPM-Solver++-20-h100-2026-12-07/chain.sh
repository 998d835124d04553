#!/bin/bash
# Session of stop 42 (issue 35): one background chain that outlives a call (setsid), then polls.
# 1 the deciding caches' GPU test (block-by-block replay, never run on a GPU);
# 2 bench.execution on PixArt-Sigma: fbcache/dbcache plans, PSNR, diffusers' hooks beside ours;
# 3 the default PixArt-Sigma study (all five caches under cuda-graphs), bounded by --timeout;
# 4 if time is left, the T-GATE cuda-graphs contract tests fixed in b108b73.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target .site .whlg/*.whl .gpu/pyt/*.whl && export PYTHONPATH=$PWD/.site:$PWD || exit 1
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.used,utilization.gpu --format=csv,noheader
python3 -c "import torch, diffusers, optuna, pytest; print(torch.__version__, diffusers.__version__, optuna.__version__, pytest.__version__)"
mkdir -p /tmp/r && cp -r .gpu /tmp/r/gpu && echo "repo $PWD" > /tmp/r/chain.txt
cat > /tmp/r/steps.sh <<'EOS'
REPO=$1; cd $REPO
unset TORCHINDUCTOR_CACHE_DIR
mark() { echo "$1 $(date -u +%FT%TZ) t=$(( $(date +%s) - T0 )) s" >> /tmp/r/chain.txt; }
T0=$(date +%s)
export XDG_CACHE_HOME=/tmp/xdg-tests
timeout 200 python3 -m pytest -v -p no:cacheprovider -rs tests/features/test_gpu.py -k deciding_caches > /tmp/r/test_deciding.log 2>&1; mark "test-deciding rc=$?"
export XDG_CACHE_HOME=/tmp/xdg-bench
s=$(date +%s); mark bench-start
timeout 480 python3 -m bench.execution --pipe PixArt-Sigma --batch 1 --repeats 5 --modes eager cuda-graphs --plans "fbcache 0.08" "fbcache 0.12" "fbcache decides, never reuses" "dbcache F8B0 0.08" "dbcache F4B0 W4 MC4 0.12" "magcache 0.06/3/0.2" "taylorseer 5/1/3" "tgate 10" --upstream "diffusers fbcache 0.08" "diffusers magcache 0.06/3/0.2" "diffusers taylorseer 5/1/3" --out /tmp/r/pixart > /tmp/r/bench.log 2>&1; mark "bench rc=$? wall=$(( $(date +%s) - s ))"
export XDG_CACHE_HOME=/tmp/xdg-study
s=$(date +%s); mark study-start
python3 -m accelopt run --study PixArt-Sigma-DPM-Solver++-20 --random-weights --export --timeout 600 --store /tmp/r/pixart-store.json --storage sqlite:////tmp/r/pixart.db > /tmp/r/study.log 2>&1; mark "study rc=$? wall=$(( $(date +%s) - s ))"
python3 -m accelopt best --study PixArt-Sigma-DPM-Solver++-20 --storage sqlite:////tmp/r/pixart.db --json > /tmp/r/pixart-best.json 2>&1
export XDG_CACHE_HOME=/tmp/xdg-tests
timeout 240 python3 -m pytest -v -p no:cacheprovider -rs tests/features/test_gpu.py -k "keep_the_contract and tgate and SD1" > /tmp/r/test_gpu.log 2>&1; mark "test-gpu rc=$?"
echo done >> /tmp/r/chain.txt
EOS
setsid nohup bash /tmp/r/steps.sh $PWD > /tmp/r/steps.out 2>&1 < /dev/null &
sleep 2; bash /tmp/r/gpu/poll.sh ${1:-55}
