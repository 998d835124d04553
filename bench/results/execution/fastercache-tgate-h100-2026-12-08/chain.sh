#!/bin/bash
# Stop 45, one chain (issue 35): 1 FasterCache's GPU test; 2 FasterCache's published settings on
# PixArt-Sigma, eager and cuda-graphs, diffusers' hook beside; 3 the T-GATE cuda-graphs contract
# tests on SD1.5, their own 450 s (cut at 200 s three times; faulthandler dumps the stacks at
# 420 s if one is stuck); 4 cache-dit's DBCache beside ours under compile; 5 a generated T-GATE
# script on PixArt-Sigma under cuda-graphs.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target .site .whlg/*.whl && export PYTHONPATH=$PWD/.site:$PWD || exit 1
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.used,utilization.gpu --format=csv,noheader
python3 -c "import torch, diffusers, optuna, pytest, cache_dit; print(torch.__version__, diffusers.__version__, optuna.__version__, pytest.__version__)"
mkdir -p /tmp/r && cp -r .gpu /tmp/r/gpu && echo "repo $PWD $(git rev-parse --short HEAD 2>/dev/null)" > /tmp/r/chain.txt
cat > /tmp/r/steps.sh <<'EOS'
REPO=$1; cd $REPO
unset TORCHINDUCTOR_CACHE_DIR
mark() { echo "$1 $(date -u +%FT%TZ) t=$(( $(date +%s) - T0 )) s" >> /tmp/r/chain.txt; }
T0=$(date +%s)
export XDG_CACHE_HOME=/tmp/xdg-tests
timeout 150 python3 -m pytest -v -p no:cacheprovider -rs tests/features/test_gpu.py -k "static_schedules and fastercache" > /tmp/r/test_fastercache.log 2>&1; mark "test-fastercache rc=$?"
export XDG_CACHE_HOME=/tmp/xdg-bench
timeout 330 python3 -m bench.execution --pipe PixArt-Sigma --batch 1 --repeats 3 --modes eager cuda-graphs --plans "fastercache 5/2" "fastercache 5/2 781 w0.3" --upstream "diffusers fastercache 5/2" --out /tmp/r/fastercache > /tmp/r/fastercache.log 2>&1; mark "fastercache rc=$?"
export XDG_CACHE_HOME=/tmp/xdg-tests
timeout 450 python3 -m pytest -v -p no:cacheprovider -rs --durations=0 -o faulthandler_timeout=420 tests/features/test_gpu.py -k "keep_the_contract and tgate and SD1" > /tmp/r/test_tgate.log 2>&1; mark "test-tgate rc=$?"
export XDG_CACHE_HOME=/tmp/xdg-bench
timeout 240 python3 -m bench.execution --pipe PixArt-Sigma --batch 1 --repeats 3 --modes compile --plans "dbcache F8B0 0.08" --upstream "cache-dit dbcache F8B0 0.08" --out /tmp/r/cachedit > /tmp/r/cachedit.log 2>&1; mark "cachedit-compile rc=$?"
timeout 240 python3 -m bench.script --pipe PixArt-Sigma --plan "tgate 10" --execution cuda-graphs --repeats 5 --out /tmp/r/script > /tmp/r/script.log 2>&1; mark "script-tgate rc=$?"
echo done >> /tmp/r/chain.txt
EOS
setsid nohup bash /tmp/r/steps.sh $PWD > /tmp/r/steps.out 2>&1 < /dev/null &
sleep 2; bash /tmp/r/gpu/poll.sh ${1:-55}
