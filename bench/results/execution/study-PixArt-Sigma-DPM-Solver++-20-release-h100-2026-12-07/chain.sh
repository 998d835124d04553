#!/bin/bash
# Session of stop 44 (issue 35; stop 43 got no machine): one background chain that outlives a call (setsid), then polls.
# 1 the default PixArt-Sigma study (now six families, PAB among them) with --export again, its
#   search cut at 240 s (stop 42's export ran out of memory; mended in 09106cf and 1e5d693), then
#   codegen for its answer; 2 PAB's GPU test; 3 PAB's published settings timed, eager and
#   cuda-graphs, diffusers' hook beside; 4 the T-GATE cuda-graphs contract tests (b108b73);
#   5 a generated MagCache script under graphs; 6 cache-dit's DBCache beside ours.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target .site .whlg/*.whl .gpu/pyt/*.whl && export PYTHONPATH=$PWD/.site:$PWD || exit 1
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.used,utilization.gpu --format=csv,noheader
python3 -c "import torch, diffusers, optuna, pytest, cache_dit; print(torch.__version__, diffusers.__version__, optuna.__version__, pytest.__version__)"
mkdir -p /tmp/r && cp -r .gpu /tmp/r/gpu && echo "repo $PWD" > /tmp/r/chain.txt
cat > /tmp/r/steps.sh <<'EOS'
REPO=$1; cd $REPO
unset TORCHINDUCTOR_CACHE_DIR
mark() { echo "$1 $(date -u +%FT%TZ) t=$(( $(date +%s) - T0 )) s" >> /tmp/r/chain.txt; }
T0=$(date +%s)
export XDG_CACHE_HOME=/tmp/xdg-study
s=$(date +%s); mark study-start
python3 -m accelopt run --study PixArt-Sigma-DPM-Solver++-20 --random-weights --export --timeout 240 --store /tmp/r/pixart-store.json --storage sqlite:////tmp/r/pixart.db > /tmp/r/study.log 2>&1; mark "study rc=$? wall=$(( $(date +%s) - s ))"
python3 -m accelopt best --study PixArt-Sigma-DPM-Solver++-20 --storage sqlite:////tmp/r/pixart.db --json > /tmp/r/pixart-best.json 2>&1
python3 -m accelopt codegen --store /tmp/r/pixart-store.json --pipe PixArt-Sigma --sched DPM-Solver++ --steps 20 -o /tmp/r/pixart_fast.py > /tmp/r/codegen.log 2>&1; mark "codegen rc=$?"
export XDG_CACHE_HOME=/tmp/xdg-tests
timeout 130 python3 -m pytest -v -p no:cacheprovider -rs tests/features/test_gpu.py -k "(static_schedules and pab) or released_methods" > /tmp/r/test_pab.log 2>&1; mark "test-pab rc=$?"
export XDG_CACHE_HOME=/tmp/xdg-bench
timeout 240 python3 -m bench.execution --pipe PixArt-Sigma --batch 1 --repeats 3 --modes eager cuda-graphs --plans "pab 2/1 100-800" "pab 2/6 100-800" --upstream "diffusers pab 2/6 100-800" --out /tmp/r/pab > /tmp/r/pab.log 2>&1; mark "pab rc=$?"
export XDG_CACHE_HOME=/tmp/xdg-tests
timeout 200 python3 -m pytest -v -p no:cacheprovider -rs tests/features/test_gpu.py -k "keep_the_contract and tgate and SD1" > /tmp/r/test_gpu.log 2>&1; mark "test-gpu rc=$?"
export XDG_CACHE_HOME=/tmp/xdg-study
timeout 240 python3 -m bench.script --pipe PixArt-Sigma --plan "magcache 0.06/3/0.2" --execution cuda-graphs --repeats 5 --out /tmp/r/script > /tmp/r/script.log 2>&1; mark "script rc=$?"
export XDG_CACHE_HOME=/tmp/xdg-bench
timeout 240 python3 -m bench.execution --pipe PixArt-Sigma --batch 1 --repeats 5 --modes eager compile --plans "dbcache F8B0 0.08" "dbcache F4B0 W4 MC4 0.12" --upstream "cache-dit dbcache F8B0 0.08" "cache-dit dbcache F4B0 W4 MC4 0.12" --out /tmp/r/cachedit > /tmp/r/bench.log 2>&1; mark "bench rc=$?"
echo done >> /tmp/r/chain.txt
EOS
setsid nohup bash /tmp/r/steps.sh $PWD > /tmp/r/steps.out 2>&1 < /dev/null &
sleep 2; bash /tmp/r/gpu/poll.sh ${1:-55}
