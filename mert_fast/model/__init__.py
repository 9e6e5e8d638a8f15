"""MERT student, configuration presets, checkpoint loading and teachers."""
