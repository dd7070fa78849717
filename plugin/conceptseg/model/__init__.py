"""The reasoning policy and everything that travels with it, as transformers keeps one model's files together.

``policy`` (Qwen2.5-VL with an optional LoRA adapter), ``prompts`` (the prompt and the
completion's format), ``episode`` (the demonstration canvas the policy reads), ``translator``
(the policy's hidden state -> concept tokens for the segmenter), ``prefix`` (the canvas's
key/value cache reused across targets), ``checkpoint`` (bundles: save, load, cache),
``release`` (the released ConceptSeg-R1-7B layout), ``zoo`` (the model zoo's entries) and
``hub`` (Hugging Face tokens). Nothing here reads or writes FiftyOne.
"""
