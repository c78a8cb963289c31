"""How token states become a sentence vector: the poolers and the train-only MLP head
(:mod:`.pooling`), PromptBERT's templates and denoising (:mod:`.prompt`)."""
