from __future__ import annotations

import sys

from accelopt.cli import main

sys.exit(main())
