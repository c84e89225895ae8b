"""Foundations every layer uses: seeds, progress and checks (basics), files (io), run folders (folders), test
helpers (testing)."""

from .basics import *   # medsynth 0.0.1's medsynth.core, kept importable for one release
