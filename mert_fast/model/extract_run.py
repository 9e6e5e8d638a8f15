"""Former name of :mod:`mert_fast.model.extract_files` (the files-on-disk extraction run), for importers not yet
moved to it."""

from mert_fast.model.extract_files import (
    AUDIO_EXTENSIONS,
    ExtractionResult,
    iter_audio_files,
    load_model,
    run_extraction,
    weights_sha256,
)

__all__ = ["AUDIO_EXTENSIONS", "ExtractionResult", "iter_audio_files", "load_model", "run_extraction", "weights_sha256"]
