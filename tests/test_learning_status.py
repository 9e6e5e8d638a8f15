"""The learning status the trainer logs: masked CE against the code prior, accuracy against the copy baseline."""

from __future__ import annotations

from mert_fast.train.metrics import AT_PRIOR, learning_status


def test_learning_status():
    assert learning_status({"loss": 1.0}) is None  # data2vec rows have no prior
    at, text = learning_status({"ce": 37.1, "prior": 37.4, "acc": 0.05, "copy_acc": 0.5})
    assert at and "37.100" in text and "copy baseline 0.500" in text
    at, _ = learning_status({"ce": 37.4 * (1 - 2 * AT_PRIOR), "prior": 37.4})
    assert not at
    at, _ = learning_status({"ce": 40.0, "prior": 37.4})  # above the prior: nothing learnt either
    assert at
