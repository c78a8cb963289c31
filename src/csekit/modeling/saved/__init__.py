"""The saved-model format: the folder csekit writes (:mod:`.folder`), its sentence-transformers
modules (:mod:`.st_format`, :mod:`.st_prompt_module`), the model card (:mod:`.model_card`) and
the Hub upload (:mod:`.hub`)."""
