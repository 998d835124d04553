cd /tmp/toyfc
export PYTHONPATH=/work/wt45
for s in ToyPixArt-DPM-Solver++-20-fastercache ToyPixArt-DDIM-20-fastercache ToyPixArt-DPM-Solver++-50-fastercache; do
  t=$(date +%s)
  /work/main/.venv/bin/python -m accelopt run --study $s --storage sqlite:////tmp/toyfc/toy.db --store /tmp/toyfc/store.json --export > /tmp/toyfc/$s.log 2>&1
  echo "$s rc=$? wall=$(( $(date +%s) - t ))" >> /tmp/toyfc/chain.txt
  /work/main/.venv/bin/python -m accelopt best --study $s --storage sqlite:////tmp/toyfc/toy.db --json > /tmp/toyfc/$s-best.json 2>&1
done
t=$(date +%s)
/work/main/.venv/bin/python -m accelopt.toy.evaluate --pipeline ToyPixArt --device cpu --count 100 --rows "FasterCache 5/2" "FasterCache 5/2 781 w0.3" --out /tmp/toyfc/figures.json > /tmp/toyfc/evaluate.log 2>&1
echo "evaluate rc=$? wall=$(( $(date +%s) - t ))" >> /tmp/toyfc/chain.txt
echo done >> /tmp/toyfc/chain.txt
