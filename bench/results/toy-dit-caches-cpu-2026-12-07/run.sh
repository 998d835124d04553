cd /tmp/toy
for s in ToyPixArt-DPM-Solver++-20-fbcache ToyPixArt-DPM-Solver++-20-magcache ToyPixArt-DPM-Solver++-20-taylorseer ToyPixArt-DPM-Solver++-20-dbcache ToyPixArt-DDIM-20-fbcache ToyPixArt-DDIM-20-magcache ToyPixArt-DPM-Solver++-50-fbcache ToyPixArt-DPM-Solver++-50-magcache; do
  t=$(date +%s)
  /work/main/.venv/bin/python -m accelopt run --study $s --storage sqlite:////tmp/toy/toy.db --store /tmp/toy/store.json --export > /tmp/toy/$s.log 2>&1
  echo "$s rc=$? wall=$(( $(date +%s) - t ))" >> /tmp/toy/chain.txt
  /work/main/.venv/bin/python -m accelopt best --study $s --storage sqlite:////tmp/toy/toy.db --json > /tmp/toy/$s-best.json 2>&1
done
echo done >> /tmp/toy/chain.txt
