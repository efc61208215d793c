"""Evaluation rules: implicit-reward records, accuracy tables with bootstrap intervals, persona metrics."""
