"""The "copy the nearest unmasked frame's code" baseline logged beside the masked CE."""

from __future__ import annotations

import math

import pytest
import torch

from mert_fast.train.masking import compute_mask, copy_baseline_ce, copy_baseline_correct, nearest_visible


def _nearest_loop(mask: torch.Tensor) -> torch.Tensor:
    out = torch.full(mask.shape, -1, dtype=torch.long)
    for b in range(mask.shape[0]):
        visible = [j for j in range(mask.shape[1]) if not mask[b, j]]
        for t in range(mask.shape[1]):
            if visible:  # the smallest distance, the earlier frame on a tie
                out[b, t] = min(visible, key=lambda j: (abs(j - t), j))
    return out


@pytest.mark.parametrize("shape", [(3, 64), (5, 299)])
def test_nearest_visible_matches_a_loop(shape):
    gen = torch.Generator().manual_seed(shape[1])
    for prob in (0.3, 0.8, 1.0):
        mask = compute_mask(*shape, mask_prob=prob, span=5, generator=gen)
        mask[0] = torch.rand(shape[1], generator=gen) < prob  # unstructured too
        mask[-1] = True  # a row with no unmasked frame
        assert torch.equal(nearest_visible(mask), _nearest_loop(mask))


def test_copy_baseline_counts_agreement_on_masked_frames_only():
    gen = torch.Generator().manual_seed(0)
    b, t, q = 4, 97, 3
    codes = torch.randint(6, (b, t, q), generator=gen)
    codes[..., 0] = codes[:, :1, 0]  # constant per clip: copying is always right
    mask = compute_mask(b, t, mask_prob=0.6, span=5, generator=gen)
    got = copy_baseline_correct(codes, mask)
    src = _nearest_loop(mask)
    want = torch.zeros(q, dtype=torch.long)
    for i in range(b):
        for j in range(t):
            if mask[i, j] and src[i, j] >= 0:
                want += (codes[i, src[i, j]] == codes[i, j]).long()
    assert torch.equal(got, want)
    assert got[0] == mask.sum()  # the constant codebook
    assert got[1] < mask.sum()  # random codes: not all copied right


def test_copy_baseline_of_a_fully_masked_clip_is_wrong():
    codes = torch.zeros(1, 10, 2, dtype=torch.long)
    assert copy_baseline_correct(codes, torch.ones(1, 10, dtype=torch.bool)).tolist() == [0, 0]


def test_scored_frames_must_match_the_mask():
    import dataclasses

    from mert_fast.model.config import PRESETS
    from mert_fast.model.mert import MERTModel
    from mert_fast.train.objectives.mert import MERTPretrainer

    config = dataclasses.replace(PRESETS["tiny"], layerdrop=0.0)
    module = MERTPretrainer(MERTModel(config), n_codebooks=1, codebook_size=4, cqt_bins=None)
    n = config.num_frames(8000)
    codes = torch.zeros(2, n, 1, dtype=torch.long)
    mask = torch.zeros(2, n, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"scored \(2, 3\) must agree"):
        module(torch.randn(2, 8000), codes, None, mask, scored=torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="codes"):
        module(torch.randn(2, 8000), codes[:, :-1], None, mask)


@pytest.mark.parametrize("k", [2, 32, 1024])
def test_copy_baseline_ce_is_the_ce_of_its_distribution(k):
    """The formula against ``F.cross_entropy`` of the explicit distribution (the copied code gets the realised
    accuracy, the other codes share the rest) over frames where the copied code is right that often."""
    gen = torch.Generator().manual_seed(k)
    n = 4000
    targets = torch.randint(k, (n,), generator=gen)
    right = torch.rand(n, generator=gen) < 0.37
    copied = torch.where(right, targets, (targets + 1 + torch.randint(k - 1, (n,), generator=gen)) % k)
    a = float(right.double().mean())
    probs = torch.full((n, k), (1 - a) / (k - 1), dtype=torch.float64)
    probs[torch.arange(n), copied] = a
    want = float(torch.nn.functional.nll_loss(probs.log(), targets))
    assert copy_baseline_ce(a, k) == pytest.approx(want, rel=1e-12)
    # a guess as good as chance is the uniform distribution; a certain copy costs nothing
    assert copy_baseline_ce(1 / k, k) == pytest.approx(math.log(k), rel=1e-12)
    assert copy_baseline_ce(1.0, k) == 0.0
    assert copy_baseline_ce(0.0, k) == pytest.approx(math.log(k - 1) if k > 2 else 0.0, abs=1e-12)
