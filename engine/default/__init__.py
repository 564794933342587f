"""The offline default SAEs: training corpus, recipe (``python -m engine.default train``), serving and presets."""
