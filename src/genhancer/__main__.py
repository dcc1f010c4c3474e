"""``python -m genhancer`` == ``genhancer``."""

import sys

from genhancer.cli import main

sys.exit(main())
