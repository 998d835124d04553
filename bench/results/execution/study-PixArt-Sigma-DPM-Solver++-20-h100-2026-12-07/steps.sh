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
