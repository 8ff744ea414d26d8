"""Scratch: recipes/fl_defences.py with UpdateExact.wide_retry from $WIDE_RETRY (auto's exact stage has no such option)."""
import os, runpy, sys
sys.path.insert(0, "recipes")
from textleak.attacks import update as upd
_orig = upd.UpdateExact.__init__
def _init(self, *a, **k):
    _orig(self, *a, **k)
    self.wide_retry = float(os.environ.get("WIDE_RETRY", "0"))
upd.UpdateExact.__init__ = _init
sys.argv = ["recipes/fl_defences.py"] + sys.argv[1:]
runpy.run_path("recipes/fl_defences.py", run_name="__main__")
