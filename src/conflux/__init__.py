"""conflux: preference alignment workflow."""
