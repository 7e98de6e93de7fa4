"""The inference benchmark: every model variant measured side by side, each in its own process.

``runner`` (what to measure and the pipeline's benchmark step), ``worker`` (the timed runs in a
fresh process), ``report`` (results, JSON and markdown), ``machine`` (what it ran on).
"""
