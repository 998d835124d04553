#!/bin/bash
# Issue 33's end-to-end runs as one background chain that outlives a call (setsid), then polls.
# 1 cold SD1.5-DDIM-20 (all accelerators, 60 trials) on an empty inductor cache;
# 2 SD1.5-DDIM-20 again in a new process on the cache the first filled (warm); 3 the
# DeepCache-only study on the same card. Each: wall time, log, best --json, store; the cache's size.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target .site .whl/*.whl && export PYTHONPATH=$PWD/.site:$PWD || exit 1
export PYTHONUNBUFFERED=1
echo "TORCHINDUCTOR_CACHE_DIR was ${TORCHINDUCTOR_CACHE_DIR-unset}; HOME=$HOME"
nvidia-smi --query-gpu=name,memory.used,utilization.gpu --format=csv,noheader
python3 -c "import torch, diffusers, optuna; print(torch.__version__, diffusers.__version__, optuna.__version__)"
mkdir -p /tmp/r && cd /tmp/r && cp -r $OLDPWD/.gpu /tmp/r/gpu
cat > /tmp/r/steps.sh <<'EOS'
unset TORCHINDUCTOR_CACHE_DIR; export XDG_CACHE_HOME=/tmp/xdg
one() {  # name study storage-file extra...
  local name=$1 study=$2 db=$3; shift 3; local s=$(date +%s)
  echo "$name start $(date -u +%FT%TZ)" >> /tmp/r/chain.txt
  python3 -m accelopt run --study $study --random-weights --export --store /tmp/r/$name-store.json --storage sqlite:////tmp/r/$db "$@" > /tmp/r/$name.log 2>&1
  echo "$name rc=$? wall=$(( $(date +%s) - s )) s end $(date -u +%FT%TZ)" >> /tmp/r/chain.txt
  python3 -m accelopt best --study $study --storage sqlite:////tmp/r/$db --json > /tmp/r/$name-best.json 2>&1
  echo "$name cache: $(du -sh /tmp/xdg/accelopt/inductor | cut -f1) ($(du -sh --apparent-size /tmp/xdg/accelopt/inductor | cut -f1) apparent), $(find /tmp/xdg/accelopt/inductor -type f | wc -l) files" >> /tmp/r/chain.txt
}
one cold SD1.5-DDIM-20 cold.db
one warm SD1.5-DDIM-20 warm.db
one deepcache SD1.5-DDIM-20-deepcache deepcache.db
echo done >> /tmp/r/chain.txt
EOS
setsid nohup bash /tmp/r/steps.sh > /tmp/r/steps.out 2>&1 < /dev/null &
sleep 2; bash /tmp/r/gpu/poll.sh ${1:-55}
