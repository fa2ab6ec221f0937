"""sgt-train test set-up: CPU accelerator, a private op cache (nothing compiles), the toy adapter."""

from __future__ import annotations

import os
import sys
from pathlib import Path

TESTS = Path(__file__).parent
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(TESTS.parents[2] / ".cache" / "torch_extensions"))
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))
