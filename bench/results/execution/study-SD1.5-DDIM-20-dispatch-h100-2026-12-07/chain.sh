#!/bin/bash
# This session's GPU runs as one background chain that outlives a call (setsid), then polls.
# 1 train the toy DiT (issue 35) and evaluate it; 2 the GPU tests of the new caches and T-GATE
# under cuda-graphs; 3 cold SD1.5-DDIM-20 (all accelerators, 60 trials) on an empty inductor
# cache, T-GATE's modes now chosen outside the compiled blocks; 4 the PixArt-Sigma table.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target .site .whl/*.whl .gpu/pyt/*.whl && export PYTHONPATH=$PWD/.site:$PWD || exit 1
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.used,utilization.gpu --format=csv,noheader
python3 -c "import torch, diffusers, optuna, pytest; print(torch.__version__, diffusers.__version__, optuna.__version__, pytest.__version__)"
mkdir -p /tmp/r && cp -r .gpu /tmp/r/gpu && echo "repo $PWD" > /tmp/r/chain.txt
cat > /tmp/r/steps.sh <<'EOS'
REPO=$1; cd $REPO
unset TORCHINDUCTOR_CACHE_DIR
mark() { echo "$1 $(date -u +%FT%TZ) t=$(( $(date +%s) - T0 )) s" >> /tmp/r/chain.txt; }
T0=$(date +%s)
export XDG_CACHE_HOME=/tmp/xdg-dit
mark dit-start
python3 -m accelopt.toy.train dit --out /tmp/r/dit --device cuda --max-seconds 480 > /tmp/r/dit-train.log 2>&1; mark "dit-train rc=$?"
python3 -m accelopt.toy.evaluate --pipeline /tmp/r/dit/ToyPixArt --out /tmp/r/figures-dit.json --samples /tmp/r/samples-dit.png > /tmp/r/dit-eval.log 2>&1; mark "dit-eval rc=$?"
tar czf /tmp/r/ToyPixArt.tgz -C /tmp/r/dit . ; mark dit-tar
export XDG_CACHE_HOME=/tmp/xdg-tests
timeout 360 python3 -m pytest -q -p no:cacheprovider -rs tests/features/test_gpu.py -k "magcache or taylorseer or generated or (SD1.5 and tgate)" > /tmp/r/test_gpu.log 2>&1; mark "test-gpu rc=$?"
export XDG_CACHE_HOME=/tmp/xdg-sd
s=$(date +%s); mark sd-start
python3 -m accelopt run --study SD1.5-DDIM-20 --random-weights --export --store /tmp/r/cold-store.json --storage sqlite:////tmp/r/cold.db > /tmp/r/cold.log 2>&1; mark "sd rc=$? wall=$(( $(date +%s) - s ))"
python3 -m accelopt best --study SD1.5-DDIM-20 --storage sqlite:////tmp/r/cold.db --json > /tmp/r/cold-best.json 2>&1
echo "sd cache: $(du -sh /tmp/xdg-sd/accelopt/inductor | cut -f1) ($(du -sh --apparent-size /tmp/xdg-sd/accelopt/inductor | cut -f1) apparent), $(find /tmp/xdg-sd/accelopt/inductor -type f | wc -l) files" >> /tmp/r/chain.txt
export XDG_CACHE_HOME=/tmp/xdg-pixart
timeout 500 python3 -m bench.execution --pipe PixArt-Sigma --batch 1 --repeats 5 --modes cuda-graphs eager --plans "tgate 10" "magcache 0.06/3/0.2" "magcache 0.24/5/0.1" "taylorseer 5/1/3" "taylorseer 6/1/3" --out /tmp/r/pixart > /tmp/r/pixart.log 2>&1; mark "pixart rc=$?"
echo done >> /tmp/r/chain.txt
EOS
setsid nohup bash /tmp/r/steps.sh $PWD > /tmp/r/steps.out 2>&1 < /dev/null &
sleep 2; bash /tmp/r/gpu/poll.sh ${1:-55}
