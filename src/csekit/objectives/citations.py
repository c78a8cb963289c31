"""BibTeX of the papers behind each objective: the one table that model cards and the
sentence-transformers losses (:mod:`csekit.st`) cite from."""

from __future__ import annotations

from types import MappingProxyType

SIMCSE = """@inproceedings{gao2021simcse,
    title = "{S}im{CSE}: Simple Contrastive Learning of Sentence Embeddings",
    author = "Gao, Tianyu and Yao, Xingcheng and Chen, Danqi",
    booktitle = "Proceedings of the 2021 Conference on Empirical Methods in Natural Language Processing",
    year = "2021",
    pages = "6894--6910",
    publisher = "Association for Computational Linguistics",
    url = "https://arxiv.org/abs/2104.08821",
}"""

CLUSTERNS = """@inproceedings{deng2023clusterns,
    title = "Clustering-Aware Negative Sampling for Unsupervised Sentence Representation",
    author = "Deng, Jinghao and Wan, Fanqi and Yang, Tao and Quan, Xiaojun and Wang, Rui",
    booktitle = "Findings of the Association for Computational Linguistics: ACL 2023",
    year = "2023",
    publisher = "Association for Computational Linguistics",
    url = "https://arxiv.org/abs/2305.09892",
}"""

FOCAL_INFONCE = """@inproceedings{hou2023focalinfonce,
    title = "Improving Contrastive Learning of Sentence Embeddings with Focal-{I}nfo{NCE}",
    author = "Hou, Pengyue and Li, Xingyu",
    booktitle = "Findings of the Association for Computational Linguistics: EMNLP 2023",
    year = "2023",
    pages = "4757--4762",
    publisher = "Association for Computational Linguistics",
    doi = "10.18653/v1/2023.findings-emnlp.315",
    url = "https://arxiv.org/abs/2310.06918",
}"""

# Objective name -> the papers it rests on, main paper first. SimCSE is cited by all: its
# dropout positives, in-batch negatives and train-only MLP are the common base.
CITATIONS: MappingProxyType[str, tuple[str, ...]] = MappingProxyType({
    "simcse": (SIMCSE,),
    "focal": (FOCAL_INFONCE, SIMCSE),
    "clusterns": (CLUSTERNS, SIMCSE),
    "clusterns-focal": (CLUSTERNS, FOCAL_INFONCE, SIMCSE),
})


def citations_for(objective: str) -> tuple[str, ...]:
    """The BibTeX entries for ``objective`` (a name of :data:`csekit.objectives.OBJECTIVES`)."""
    return CITATIONS.get(str(objective).lower().replace("_", "-"), (SIMCSE,))


__all__ = ["CITATIONS", "CLUSTERNS", "FOCAL_INFONCE", "SIMCSE", "citations_for"]
