"""Evaluation: how good a model (or a weak-label method) is, and whether it replaces the champion.

``metrics`` (pure pixel, instance and PR-curve functions), ``scores`` (the evaluate step),
``report`` (PR curve, threshold table, overlays on disk), ``promotion`` (the gate).
"""
