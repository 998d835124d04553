cd /tmp/toyt
rm -f toy.db store.json
t=$(date +%s)
/work/main/.venv/bin/python -m accelopt.toy.evaluate --pipeline ToyPixArt --device cpu --count 100 --rows "DBCache F2B0 0.12 W2 MC1" "DBCache F2B0 0.12 W2 MC1 T1" "DBCache F1B0 0.24 W1" "DBCache F1B0 0.24 W1 T1" "DBCache F8B0 0.08 W8" "DBCache F8B0 0.08 W8 T1" --out /tmp/toyt/figures.json --force > /tmp/toyt/evaluate.log 2>&1
echo "evaluate rc=$? wall=$(( $(date +%s) - t ))" >> /tmp/toyt/chain.txt
for s in ToyPixArt-DPM-Solver++-20-dbcache ToyPixArt-DPM-Solver++-50-dbcache; do
  t=$(date +%s)
  /work/main/.venv/bin/python -m accelopt run --study $s --storage sqlite:////tmp/toyt/toy.db --store /tmp/toyt/store.json --export > /tmp/toyt/$s.log 2>&1
  echo "$s rc=$? wall=$(( $(date +%s) - t ))" >> /tmp/toyt/chain.txt
  /work/main/.venv/bin/python -m accelopt best --study $s --storage sqlite:////tmp/toyt/toy.db --json > /tmp/toyt/$s-best.json 2>&1
done
echo done >> /tmp/toyt/chain.txt
