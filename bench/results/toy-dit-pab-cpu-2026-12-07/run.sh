cd /tmp/toypab
export PYTHONPATH=/work/wt43
for s in ToyPixArt-DPM-Solver++-20-pab ToyPixArt-DDIM-20-pab ToyPixArt-DPM-Solver++-50-pab; do
  t=$(date +%s)
  /work/main/.venv/bin/python -m accelopt run --study $s --storage sqlite:////tmp/toypab/toy.db --store /tmp/toypab/store.json --export > /tmp/toypab/$s.log 2>&1
  echo "$s rc=$? wall=$(( $(date +%s) - t ))" >> /tmp/toypab/chain.txt
  /work/main/.venv/bin/python -m accelopt best --study $s --storage sqlite:////tmp/toypab/toy.db --json > /tmp/toypab/$s-best.json 2>&1
done
t=$(date +%s)
/work/main/.venv/bin/python -m accelopt.toy.evaluate --pipeline ToyPixArt --device cpu --count 100 --rows "PAB 2/1 100-800" "PAB 2/6 100-800" --out /tmp/toypab/figures.json > /tmp/toypab/evaluate.log 2>&1
echo "evaluate rc=$? wall=$(( $(date +%s) - t ))" >> /tmp/toypab/chain.txt
echo done >> /tmp/toypab/chain.txt
