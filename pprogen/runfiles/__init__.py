"""The parts of :mod:`pprogen.runs` (import them from there): ``files`` writes a run's files (atomic, strict JSON,
one line for a failed write, leftovers of killed processes), ``lock`` makes one process a folder's only writer,
``checks`` checks what is read back (config.json, checkpoints, shipped metadata, int8 scales), ``weights`` reads and
compacts safetensors weights, ``rng`` holds the random states, ``errors`` the one-line errors.

(A package of its own name: a folder named ``runs/`` is where run folders go, and is ignored by git.)
"""
