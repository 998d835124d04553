"""``accelopt`` without the footholds: the default study as it ran before them (for the
comparison in docs/BENCHMARKS.md, "Footholds for a study of groups")."""

import sys

from accelopt.cli import main
from accelopt.study import warmstart

warmstart.footholds = lambda study, space: []  # type: ignore[assignment]
sys.exit(main(sys.argv[1:]))
