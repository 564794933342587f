"""The defence and its verdicts: the clamp hook, hooked generation, the refusal judge, prompt sources, valid flips
and clamp presets."""
