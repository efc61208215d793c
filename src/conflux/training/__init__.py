"""Training rules: losses, the preference objectives and trainer, TRL jobs, launching, the reference cache."""
