"""Language models and SAEs: loading (offline default, tiny fixtures, official names, local folders, the sae_lens
registry), the hub probe, and the typed wrappers every other subpackage works with."""
