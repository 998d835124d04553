"""Commands that read stored studies: best, list, report, dashboard."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from accelopt.cli import _flags as flags
from accelopt.cli import _format as fmt
from accelopt.cli._command import Command
from accelopt.errors import AccelOptError, printable

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

__all__ = ["Best", "Dashboard", "List", "Report", "best_record"]

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _trial_record(t: FrozenTrial) -> dict[str, Any]:
    """What ``best --json`` says of one trial: everything its text says, as numbers."""
    from accelopt.measure.constraints import METRICS
    from accelopt.measure.timing import one_pair_read

    a = one_pair_read(t.user_attrs)  # one pair, stored before: its count, not [x, x]
    # time_per_image is from the same timed calls as the speedup (the pairs when paired,
    # speedup_pairs of them, at timing_batch_size images a call), beside the plain pipeline's
    shown = ("speedup", "speedup_interval", "speedup_level", "speedup_pairs",
             "speedup_vs_eager", "speedup_vs_mode_baseline", "time_per_image",
             "timing_batch_size",
             "paired_baseline_time_per_image", "quality_pass_time_per_image", *METRICS,
             "device")  # fmt: skip
    return {
        "trial": t.number,
        "accelerators": a["accelerators"],
        **{k: a[k] for k in shown if k in a},
        # The speedup is against the plain pipeline timed under the same mode (stored before
        # modes existed: eagerly).
        "execution": a.get("execution", "eager"),
        "baseline_time_per_image": a.get("baseline_time_per_image"),
    }


def best_record(study: optuna.Study) -> dict[str, Any]:
    """``accelopt best --json``: the best feasible trial (None if none), the execution mode the
    study's speedups were measured under with every mode's plain baseline (seconds per image),
    the warnings of a machine under load while it measured (``under_load``, empty when none:
    ``accelopt.measure.load``), what compiling and capturing cost it (``compile``:
    ``accelopt.study.results.compile_cost``), and a pareto study's frontier, fastest first."""
    from accelopt.study.prepare import study_mode
    from accelopt.study.results import (
        best_trial,
        compile_cost,
        frontier,
        is_pareto,
        pareto_metric,
    )

    best = best_trial(study)
    stored = study.user_attrs.get("execution")
    baselines = stored.get("baselines", {}) if isinstance(stored, dict) else {}
    out: dict[str, Any] = {
        "study": study.study_name,
        "best": None if best is None else _trial_record(best),
        "execution": {"mode": study_mode(study), "baselines": baselines},
        "under_load": list(study.user_attrs.get("load_warnings") or []),
        "compile": compile_cost(study),
    }
    if is_pareto(study):
        front = frontier(study.trials, pareto_metric(study))
        out.update(objective="pareto", frontier=[_trial_record(t) for t in front])
    return out


class Best(Command):
    """``accelopt best``: a stored study's best feasible configuration (or its frontier)."""

    name = "best"
    help = "print a stored study's best feasible configuration"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        flags.study(parser)
        flags.storage(parser)
        parser.add_argument("--json", action="store_true", help="machine-readable output")

    def run(self, args: argparse.Namespace) -> int:
        import json

        from accelopt.study.prepare import open_study
        from accelopt.study.results import best_trial, frontier, is_pareto, pareto_metric

        study = open_study(args.storage, args.study)
        if args.json:
            print(json.dumps(best_record(study), indent=2))
            return 0
        best = best_trial(study)
        if best is None:
            print(f"{study.study_name}: no feasible trial yet")
        else:
            print(f"{study.study_name}: best {fmt.describe(best)}")
        if is_pareto(study):
            print(fmt.frontier_line(study, hint=False) + ", fastest first:")
            for t in frontier(study.trials, pareto_metric(study)):
                print("  " + fmt.describe(t).replace("\n  ", "\n    "))
        if fmt.under_load(study):
            print(fmt.under_load(study))
        return 0


class List(Command):
    """``accelopt list``: the study specs here and shipped, and the studies in storage."""

    name = "list"
    help = "list study specs and the studies in storage"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        flags.storage(parser)

    def run(self, args: argparse.Namespace) -> int:
        from pathlib import Path

        import optuna

        from accelopt.spec import shipped_specs
        from accelopt.storage import open_storage, sqlite_missing, storage_url

        local = sorted(Path("studies").glob("*.toml")) if Path("studies").is_dir() else []
        print("specs:")
        for path in local + [p for p in shipped_specs() if p.name not in {q.name for q in local}]:
            print(f"  {path.stem:40} {path}")
        url = storage_url(args.storage)
        if sqlite_missing(url):
            print("stored studies: none (no storage file yet)")
            return 0
        storage, _ = open_storage(url)
        print("stored studies:")
        for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
            study = optuna.load_study(study_name=summary.study_name, storage=storage)
            print(f"  {printable(summary.study_name, 120):40} {self._summary(study)}")
        return 0

    def _summary(self, study: optuna.Study) -> str:
        """``3/12 trials  best 1.52x``: how far a stored study is, and its best."""
        from accelopt.study.results import best_trial, frontier, is_pareto, pareto_metric

        counted = sum(t.state.name in ("COMPLETE", "PRUNED") for t in study.trials)
        budget = printable(study.user_attrs.get("budget", "?"), 12)
        best = best_trial(study)
        shown = f"best {best.user_attrs['speedup']:.2f}x" if best else "no feasible trial"
        if is_pareto(study):
            shown += f", Pareto frontier of {len(frontier(study.trials, pareto_metric(study)))}"
        stopped = fmt.stopped_trials(study.trials)
        return f"{counted}/{budget} trials{f' ({stopped})' if stopped else ''}  {shown}"


class Report(Command):
    """``accelopt report``: a study's plotly report, one HTML file."""

    name = "report"
    help = "write a study's plotly report as one HTML file"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        flags.study(parser)
        flags.storage(parser)
        parser.add_argument("-o", "--output",
                            help="HTML file (default: report-STUDY.html here)")  # fmt: skip
        parser.add_argument("--images", type=int, default=3, metavar="N",
                            help="prompts in the image grid (0: no images, no model loaded; "
                            "default 3)")  # fmt: skip
        flags.device(parser, "where to regenerate the images (default: cuda if present)")
        flags.random_weights(parser)
        parser.add_argument("--force", action="store_true", help="overwrite the output file")

    def run(self, args: argparse.Namespace) -> int:
        from pathlib import Path

        from accelopt.progress import Progress
        from accelopt.report import default_output, image_rows, render_html, report_data
        from accelopt.study.prepare import open_study, spec_of
        from accelopt.trial.bench import Bench

        study = open_study(args.storage, args.study)
        out = Path(args.output or default_output(study.study_name))
        if out.exists() and not args.force:
            raise AccelOptError(f"{printable(str(out))} exists; pass --force to overwrite it")
        data = report_data(study)
        rows, prompts = [], []
        if args.images and data.points:
            bench = Bench.load(spec_of(study), args.device, flags.weights(args),
                               lambda s: print(s, file=sys.stderr), Progress())  # fmt: skip
            rows = image_rows(study, data, bench, args.images)
            prompts = bench.prompts
        out.write_text(render_html(data, rows, prompts), encoding="utf-8")
        print(f"wrote {out}: {len(data.points)} trials, {len(rows)} image rows")
        return 0


class Dashboard(Command):
    """``accelopt dashboard``: optuna-dashboard over the studies' storage."""

    name = "dashboard"
    help = "serve optuna-dashboard for the studies' storage"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        flags.storage(parser)
        parser.add_argument("--host", default="127.0.0.1",
                            help="address to bind (default 127.0.0.1)")  # fmt: skip
        parser.add_argument("--port", type=int, default=8080, help="port (default 8080)")
        parser.add_argument("--allow-remote", action="store_true",
                            help="allow binding to a non-loopback address (the dashboard has "
                            "no login)")  # fmt: skip

    def run(self, args: argparse.Namespace) -> int:
        import optuna_dashboard

        from accelopt.storage import open_storage, storage_label

        if args.host not in LOOPBACK and not args.allow_remote:
            raise AccelOptError(
                f"refusing to serve on {args.host}: the dashboard has no login; bind to "
                f"127.0.0.1 (default) or pass --allow-remote if you mean it"
            )
        if args.host not in LOOPBACK:
            print(
                f"accelopt: warning: serving on {args.host} without any login: anyone who "
                f"can reach this port can read and edit the studies",
                file=sys.stderr,
            )
        storage, url = open_storage(args.storage)
        print(f"optuna-dashboard for {storage_label(url)} at "
              f"http://{args.host}:{args.port}/dashboard", file=sys.stderr)  # fmt: skip
        optuna_dashboard.run_server(storage, host=args.host, port=args.port)
        return 0
