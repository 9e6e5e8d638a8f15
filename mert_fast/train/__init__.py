"""Pre-training: data pipeline, masking, mixtures, objectives and DeepSpeed glue."""
