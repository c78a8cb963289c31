"""From a name to an encoder's parts: model folders and hub ids (:mod:`.resolve`), the
transformers and native backends (:mod:`.backends`), and what a saved folder says about its
pooling and head (:mod:`.load`)."""
