"""The memory plan: every job's peak memory per device, before anything runs (rule ``plan``)."""
