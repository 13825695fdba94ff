"""`python -m sae_core.tools.cli ...` is `sae ...`."""

import sys

from . import main

sys.exit(main())
