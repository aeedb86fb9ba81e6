"""``python -m tether.ui``: the same as ``tether label``."""

from __future__ import annotations

import sys

from tether.ui.cli import main

sys.exit(main())
