# The default toy DiT study with and without the footholds, two schedulers (2-core CPU).
HERE=$(cd "$(dirname "$0")" && pwd); REPO=$(cd "$HERE/../../.." && pwd)
mkdir -p /tmp/alt && cd /tmp/alt
for st in ToyPixArt-DPM-Solver++-20 ToyPixArt-DDIM-20; do
  for v in foot nofoot; do
    rm -f /tmp/alt/$v-$st.db
    if [ $v = foot ]; then prog="-m accelopt"; else prog="$HERE/nofoot.py"; fi
    s=$(date +%s)
    PYTHONPATH=$REPO python $prog run --study $st --storage sqlite:////tmp/alt/$v-$st.db --export --store /tmp/alt/$v-$st.json > /tmp/alt/$v-$st.log 2>&1
    echo "$v $st rc=$? wall=$(( $(date +%s) - s ))" >> /tmp/alt/foot.txt
  done
done
echo done >> /tmp/alt/foot.txt
