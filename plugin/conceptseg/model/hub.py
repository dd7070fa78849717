"""The Hugging Face token the engine's downloads use, given by the caller for one call.

Operators read the token from FiftyOne's plugin secrets (``ctx.secrets["HF_TOKEN"]``), which
need not be in this process's environment (FiftyOne Enterprise keeps them in its secrets
store). ``using_hf_token`` hands it to every download inside the block without writing it to
``os.environ``, so it reaches no other caller or thread and no child process. Outside such a
block ``hf_token()`` is None and huggingface_hub looks up ``HF_TOKEN`` or a saved login itself.
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator

_TOKEN: ContextVar[str | None] = ContextVar("conceptseg_hf_token", default=None)


def hf_token() -> str | None:
    """The token for Hugging Face downloads in this context (None: huggingface_hub's default)."""
    return _TOKEN.get()


@contextmanager
def using_hf_token(token: str | None) -> Iterator[None]:
    """Downloads inside the block use ``token`` (None or "" leaves huggingface_hub's default)."""
    reset = _TOKEN.set(token or None)
    try:
        yield
    finally:
        _TOKEN.reset(reset)
