"""Scaling out: the local executor and Ray (one actor per GPU serving shards of prompts)."""
