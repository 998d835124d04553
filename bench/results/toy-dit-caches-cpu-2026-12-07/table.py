import json, re, sys, glob, optuna
optuna.logging.set_verbosity(optuna.logging.WARNING)
db = "sqlite:////tmp/toy/toy.db"
for summary in optuna.get_all_study_summaries(db):
    name = summary.study_name
    s = optuna.load_study(study_name=name, storage=db)
    rows = []
    for t in s.get_trials(deepcopy=False):
        a = t.user_attrs
        if t.state.name != "COMPLETE" or "speedup" not in a: continue
        acc = a.get("accelerators", {})
        cfg = {k: v for c in acc.values() for k, v in c.items() if k != "ratios"}
        rows.append((a["speedup"], a.get("score_loss"), a.get("psnr"), cfg, t.number))
    rows.sort(key=lambda r: -r[0])
    feas = [r for r in rows if r[1] is not None and r[1] <= 0.02]
    print(f"== {name}: {len(rows)} measured, {len(feas)} within 2%")
    for r in rows:
        print(f"   t{r[4]:2d} {r[0]:.2f}x loss {r[1]*100:+.2f}% psnr {r[2]:.1f}  {r[3]}")
    log = open(f"/tmp/toy/{name}.log").read()
    for m in re.findall(r"(trial \d+ on 16 held-out prompts: .*?) -> (\S+)", log):
        print("   held-out:", m[0][:150], "->", m[1])
