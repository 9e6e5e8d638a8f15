"""MLP probes of frozen features (MARBLE's protocol), their manifests and scores, and the probe data builder."""

from mert_fast.probe.dataset import make_probe_data
from mert_fast.probe.features import load_features
from mert_fast.probe.manifest import ProbeTask, read_probe_manifest
from mert_fast.probe.probe import ProbeConfig, run_probe, train_probes

__all__ = [
    "ProbeConfig",
    "ProbeTask",
    "load_features",
    "make_probe_data",
    "read_probe_manifest",
    "run_probe",
    "train_probes",
]
