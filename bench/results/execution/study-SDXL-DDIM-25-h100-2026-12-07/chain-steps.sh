REPO=$1; cd $REPO
unset TORCHINDUCTOR_CACHE_DIR
mark() { echo "$1 $(date -u +%FT%TZ) t=$(( $(date +%s) - T0 )) s" >> /tmp/r/chain.txt; }
T0=$(date +%s)
export XDG_CACHE_HOME=/tmp/xdg-sdxl
s=$(date +%s); mark sdxl-start
python3 -m accelopt run --study SDXL-DDIM-25 --random-weights --export --timeout 1300 --store /tmp/r/sdxl-store.json --storage sqlite:////tmp/r/sdxl.db > /tmp/r/sdxl.log 2>&1; mark "sdxl rc=$? wall=$(( $(date +%s) - s ))"
python3 -m accelopt best --study SDXL-DDIM-25 --storage sqlite:////tmp/r/sdxl.db --json > /tmp/r/sdxl-best.json 2>&1
echo "sdxl cache: $(du -sh /tmp/xdg-sdxl/accelopt/inductor | cut -f1) ($(du -sh --apparent-size /tmp/xdg-sdxl/accelopt/inductor | cut -f1) apparent), $(find /tmp/xdg-sdxl/accelopt/inductor -type f | wc -l) files" >> /tmp/r/chain.txt
export XDG_CACHE_HOME=/tmp/xdg-tests
timeout 240 python3 -m pytest -v -p no:cacheprovider -rs tests/features/test_gpu.py -k "keep_the_contract and tgate and SD1" > /tmp/r/test_gpu.log 2>&1; mark "test-gpu rc=$?"
echo done >> /tmp/r/chain.txt
