"""csekit's inference-only backend: a plain-torch BERT / RoBERTa forward (:mod:`.bert`), the
WordPiece tokenizer without ``transformers`` (:mod:`.tokenizer`), and the oneDNN fused linear
layers of the CPU (:mod:`.cpu_fastpath`)."""
