"""Speed paths that keep the maths: the lean BERT / RoBERTa training forward
(:mod:`.train_forward`), length-sorted training sub-batches (:mod:`.subbatch`) and the batch
planning of inference (:mod:`.batching`)."""
