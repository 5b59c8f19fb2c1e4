"""The recipe comparisons: each experiment's code beside its committed results (not part of the plugin)."""
