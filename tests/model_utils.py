"""Helpers for the model tests, shared by test_model.py and test_extract.py."""

from __future__ import annotations

import torch


def perturb_weights(model: torch.nn.Module) -> None:
    """Move every weight away from its initialisation (zeros/ones init would make any wiring agree)."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p) * (p.std() if p.numel() > 1 and p.std() > 0 else 1.0))
