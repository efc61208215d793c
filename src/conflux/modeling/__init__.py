"""Base models and the policy at preference weight w: loading, the tiny model, tokenizing, scoring,
generation."""
