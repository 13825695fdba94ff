import sys
from pathlib import Path

# The CUDA-only modules OpenRLHF imports at module level (see stubs/*/__init__.py and the test's
# docstring), ahead of anything installed.
sys.path.insert(0, str(Path(__file__).resolve().parent / "stubs"))
