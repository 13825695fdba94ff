"""`python -m sae_core ...` is the `sae` command."""

import sys

from sae_core.tools.cli import main

sys.exit(main())
