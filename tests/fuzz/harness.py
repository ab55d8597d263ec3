"""What every atheris harness here shares: :func:`main`.

The harnesses are run as scripts (``python tests/fuzz/fuzz_<name>.py …``), so they import this
module by its bare name from their own folder.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable

import atheris


def main(test_one_input: Callable[[bytes], None]) -> None:
    """Fuzz ``test_one_input`` as libFuzzer's command line (``sys.argv``) says; warnings are
    silenced (Pillow warns about every corrupt tag it skips)."""
    warnings.simplefilter("ignore")
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
