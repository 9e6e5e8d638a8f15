"""The numpy music synthesizer and what is made with it: instrument sounds (:mod:`~mert_fast.synth.sounds`) and
families (:mod:`~mert_fast.synth.families`), MIDI files and the optional fluidsynth renderer
(:mod:`~mert_fast.synth.midi`), the synthetic pre-training corpus (:mod:`~mert_fast.synth.corpus`) and the demo
clip (:mod:`~mert_fast.synth.demo`). The probe set (:mod:`mert_fast.probe.dataset`) is built from the same parts.

Below ``train`` and ``probe``: it imports nothing of ``mert_fast`` but the argument checks.
"""

from mert_fast.synth.corpus import make_corpus, synth_clip
from mert_fast.synth.demo import synth_demo
from mert_fast.synth.midi import find_soundfont, fluidsynth_available, render_midi, write_midi

__all__ = [
    "find_soundfont",
    "fluidsynth_available",
    "make_corpus",
    "render_midi",
    "synth_clip",
    "synth_demo",
    "write_midi",
]
