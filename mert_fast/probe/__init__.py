"""Linear/MLP probes of frozen features (MARBLE's protocol) and the probe data builder."""

from mert_fast.probe.data import make_probe_data

__all__ = ["make_probe_data"]
