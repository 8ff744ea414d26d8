"""Scratch: run_unit with UpdateExact's layered search allowed where the rounding is wide (lr 1e-4)."""
import sys, logging, json
sys.path.insert(0, "recipes")
import torch
torch.set_num_threads(1)
import fl_defences
from textleak.data import read_sentences
from textleak.text.models import load_text_model
from textleak.attacks import update as upd
logging.basicConfig(level=logging.WARNING, format="%(relativeCreated)d %(name)s %(message)s")
logging.getLogger("textleak.attacks.exact").setLevel(logging.DEBUG)
mode = sys.argv[6] if len(sys.argv) > 6 else "layered"
if "layered" in mode:
    def _layered(self, observation):
        fits = self._fits_for(observation.gradients)
        return self.layered and fits is not None and 1 in fits.fits and observation.task == "classify"
    upd.UpdateExact._layered = _layered
data, spec, budget = sys.argv[1], sys.argv[2], float(sys.argv[3]); index = int(sys.argv[4]); bs = int(sys.argv[5])
target = load_text_model(None, task="classify")
rows = [(t, y or 0) for t, y in read_sentences(data)]
rec = fl_defences.run_unit(target, spec, rows[index*bs:(index+1)*bs], index, "auto", budget)
print(json.dumps(rec, default=str))
