"""Every measured trial of the toy block-cache studies, and their held-out confirmations.

python bench/results/toy-dit-caches-cpu-2026-12-07/table.py STORAGE LOG_DIR > table.txt
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import optuna


def main(storage: str, logs: Path) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for summary in optuna.get_all_study_summaries(storage):
        name = summary.study_name
        study = optuna.load_study(study_name=name, storage=storage)
        rows = []
        for trial in study.get_trials(deepcopy=False):
            attrs = trial.user_attrs
            if trial.state.name != "COMPLETE" or "speedup" not in attrs:
                continue
            knobs = {
                k: v
                for config in attrs.get("accelerators", {}).values()
                for k, v in config.items()
                if k != "ratios"
            }
            measured = (attrs["speedup"], attrs["score_loss"], attrs["psnr"])
            rows.append((*measured, knobs, trial.number))
        rows.sort(key=lambda r: -r[0])
        within = [r for r in rows if r[1] <= 0.02]
        print(f"== {name}: {len(rows)} measured, {len(within)} within 2%")
        for speedup, loss, psnr, knobs, number in rows:
            quality = f"loss {loss * 100:+.2f}% psnr {psnr:.1f}"
            print(f"   t{number:2d} {speedup:.2f}x {quality}  {knobs}")
        log = (logs / f"{name}.log").read_text()
        for held, verdict in re.findall(r"(trial \d+ on 16 held-out prompts: .*?) -> (\S+)", log):
            print("   held-out:", held[:150], "->", verdict)


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
