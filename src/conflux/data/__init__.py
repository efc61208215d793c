"""Preference and persona data: loaders of the real formats, synthetic sets, canonical pair files, splits."""
