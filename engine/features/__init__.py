"""Finding features to clamp (contrast search, features of a text) and describing them (feature cards)."""
