cd /tmp/toy
for s in ToyPixArt-DPM-Solver++-20-fbcache ToyPixArt-DPM-Solver++-20; do
  t=$(date +%s)
  /work/main/.venv/bin/python -m accelopt run --study $s --storage sqlite:////tmp/toy/toy2.db --store /tmp/toy/store2.json --export > /tmp/toy/$s-2.log 2>&1
  echo "$s rc=$? wall=$(( $(date +%s) - t ))" >> /tmp/toy/chain2.txt
done
echo done >> /tmp/toy/chain2.txt
