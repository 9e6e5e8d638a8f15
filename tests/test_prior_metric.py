"""The code prior logged beside the masked CE: each codebook's entropy of the scored frames' codes."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from mert_fast.model.config import PRESETS
from mert_fast.model.mert import MERTModel
from mert_fast.train.masking import compute_mask, nearest_visible
from mert_fast.train.objectives import CodebookObjective, code_entropy
from mert_fast.train.objectives.mert import MERTPretrainer


def test_code_entropy():
    assert code_entropy([5.0, 5.0, 5.0, 5.0]) == pytest.approx(math.log(4))
    assert code_entropy([0.0, 7.0, 0.0]) == 0.0
    assert code_entropy([0.0, 0.0]) == 0.0
    assert code_entropy([1.0, 3.0]) == pytest.approx(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)))


def _tiny_objective():
    """A tiny student with 2 codebooks of 5 codes, and the objective whose sums and metrics it feeds."""
    config = dataclasses.replace(PRESETS["tiny"], hidden_dropout=0.0, attention_dropout=0.0, layerdrop=0.0)
    torch.manual_seed(0)
    module = MERTPretrainer(MERTModel(config), n_codebooks=2, codebook_size=5, cqt_bins=None)
    objective = object.__new__(CodebookObjective)  # the sums and metrics need the code layout only
    objective.n_q, objective.codebook_size = 2, 5
    return config, module, objective


def test_prior_is_the_entropy_of_the_masked_codes_summed_over_steps():
    config, module, objective = _tiny_objective()
    gen = torch.Generator().manual_seed(0)
    totals, all_codes = {}, []
    for _ in range(2):
        audio = 0.1 * torch.randn(2, 8000, generator=gen)
        n = config.num_frames(8000)
        codes = torch.randint(5, (2, n, 2), generator=gen)
        codes[..., 0] = torch.where(codes[..., 0] > 2, 4, codes[..., 0])  # a skewed codebook
        mask = compute_mask(2, n, mask_prob=0.5, span=5, generator=gen)
        with torch.no_grad():
            result = module(audio, codes, None, mask)
        for k, v in objective.sums(result).items():
            totals[k] = totals.get(k, 0.0) + v
        all_codes.append(codes[mask])  # only the scored frames count
    scored = torch.cat(all_codes)
    row = objective.metrics(totals)
    for q in range(2):
        p = torch.bincount(scored[:, q], minlength=5).double() / scored.shape[0]
        want = float(-(p[p > 0] * p[p > 0].log()).sum())
        assert row[f"prior_{q}"] == pytest.approx(want, rel=1e-9)
    assert row["prior"] == pytest.approx(row["prior_0"] + row["prior_1"])
    assert row["prior_0"] < row["prior_1"] <= math.log(5)


def test_the_objective_logs_the_copy_baseline_and_the_ce_per_codebook():
    """The copy-the-nearest-unmasked-frame baseline against a loop; the per-codebook CE adds up to the CE."""
    config, module, objective = _tiny_objective()
    gen = torch.Generator().manual_seed(1)
    totals: dict[str, float] = {}
    copied = torch.zeros(2, dtype=torch.long)
    masked = 0
    for _ in range(2):
        n = config.num_frames(8000)
        codes = torch.randint(5, (2, n, 2), generator=gen)
        codes[..., 0] = codes[:, :1, 0]  # constant per clip: the copy baseline is always right
        mask = compute_mask(2, n, mask_prob=0.5, span=5, generator=gen)
        with torch.no_grad():
            result = module(0.1 * torch.randn(2, 8000, generator=gen), codes, None, mask)
        for k, v in objective.sums(result).items():
            totals[k] = totals.get(k, 0.0) + v
        src = nearest_visible(mask)
        for i, j in mask.nonzero().tolist():
            copied += (codes[i, src[i, j]] == codes[i, j]).long()
        masked += int(mask.sum())
    row = objective.metrics(totals)
    assert row["copy_acc_0"] == 1.0
    assert row["copy_acc_1"] == pytest.approx(float(copied[1]) / masked, rel=1e-12)
    assert row["copy_acc"] == pytest.approx((row["copy_acc_0"] + row["copy_acc_1"]) / 2)
    # the baseline's CE: a certain copy costs 0 in codebook 0; codebook 1 from its accuracy over 5 codes
    a = float(copied[1]) / masked
    want = -(a * math.log(a) + (1 - a) * math.log((1 - a) / 4))
    assert row["copy_ce"] == pytest.approx(want, rel=1e-12)
    assert row["ce_0"] + row["ce_1"] == pytest.approx(row["ce"], rel=1e-5)
    assert row["acc"] == pytest.approx((row["acc_0"] + row["acc_1"]) / 2)
