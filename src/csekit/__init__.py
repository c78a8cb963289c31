"""csekit: unsupervised contrastive training of sentence encoders.

SimCSE, ClusterNS (clustering-aware negative sampling) and Focal-InfoNCE, their combination,
SentEval-exact STS evaluation, and sentence-transformers-compatible saved models.
"""

__version__ = "0.1.0"
