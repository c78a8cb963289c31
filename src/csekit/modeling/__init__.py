"""The encoder and its rooms.

:mod:`.encoder` holds what an encoder is (backbone + pooler + head; ``forward``, ``encode``).
Around it, each concern in its own sub-package: :mod:`.representation` (poolers, prompts),
:mod:`.native` (the inference-only backend), :mod:`.speed` (the training speed paths and
inference batching), :mod:`.saved` (the folder format, model card, Hub upload) and
:mod:`.loading` (from a name to the parts). Nothing in modeling/ imports the encoder back;
docs/architecture.md gives the order of the rooms, which tests/test_layers.py checks.
"""
