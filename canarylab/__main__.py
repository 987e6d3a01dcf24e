"""`python -m canarylab` is the `canarylab` command."""

import sys

from canarylab.cli import main

sys.exit(main())
