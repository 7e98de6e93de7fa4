"""Model: the network, its spec and checkpoints, and the train step.

``spec`` (what travels with the weights), ``networks`` (our heads), ``factory`` (build a network
by name), ``weights`` and ``checkpoints`` (safe tensor files), ``devices`` (cpu, cuda, mps and
precision), ``patches`` (training patches and validation layers), ``losses``, ``schedule``,
``loop`` (train step, eval step, fit), ``training`` (the train step).
"""
