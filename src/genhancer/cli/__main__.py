"""``python -m genhancer.cli``."""

import sys

from genhancer.cli.main import main

sys.exit(main())
