"""Studies that run the whole method over several SAEs (docs/STUDY.md)."""
