"""The offline default SAEs: training corpus, recipe (``python -m engine.sae_recipe train``), serving and presets."""
