"""π(w) as servable artifacts (rules/export.smk)."""
