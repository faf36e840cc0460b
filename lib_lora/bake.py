"""Moved to lib_lora.merge.bake; this name stays an alias of that module for callers not yet updated."""

import sys

from lib_lora.merge import bake as _moved

sys.modules[__name__] = _moved
