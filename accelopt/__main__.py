from __future__ import annotations

import sys

try:
    from accelopt.cli import main
except KeyboardInterrupt:  # Ctrl-C while Python starts: no traceback, the shell's exit code
    print("accelopt: interrupted", file=sys.stderr)
    sys.exit(130)

sys.exit(main())
