"""A policy whose completions are scripted: tests where what the policy writes matters."""

from __future__ import annotations

import contextlib




class ScriptedPolicy:
    """A real policy whose ``generate`` writes a fixed completion: tests that need a given
    text (a parsable box, an unparsable answer) cannot rely on what a random policy writes,
    which differs between CPUs.

    ``completion`` is one text for every request, a list cycled over the rows, or a function
    of the request (e.g. a full answer to a full prompt, a short one to a rule-reuse prompt). Sequences,
    completion mask and hidden states are the real model's over prompt + that text, exactly
    as after a generation that wrote it; every other attribute is the wrapped policy's.
    """

    def __init__(self, policy, completion, truncated: bool = False):
        self.policy = policy
        self.write = completion if callable(completion) else None
        self.texts = [] if self.write else [completion] if isinstance(completion, str) else list(completion)
        self.truncated = truncated  # report the text as cut at max_new_tokens

    def __getattr__(self, name):
        return getattr(self.policy, name)

    def generate(self, requests, sample: bool = False, num_return_sequences: int = 1, hidden: bool = True,
                 prefix=None):
        from conceptseg.model.policy import PolicyOutput

        rows = [r for r in requests for _ in range(num_return_sequences)]
        texts = [self.write(r) if self.write else self.texts[i % len(self.texts)] for i, r in enumerate(rows)]
        inputs, sequences, mask = self.policy.encode_with_response(rows, texts)
        shared = prefix.lookup(self.policy, inputs) if prefix is not None else None
        states = self.policy.completion_hidden_states(inputs, sequences, mask, shared=shared) if hidden else None
        return PolicyOutput(texts, states, mask, sequences, inputs["input_ids"].shape[1], inputs, [self.truncated] * len(texts))


@contextlib.contextmanager
def scripted_bundle(path: str, completion, device: str | None = None):
    """Within the block, the bundle every job loads from ``path`` writes ``completion``.

    Jobs, the CLI, the zoo model and the benchmark load bundles once per process through
    ``load_bundle_cached``; this swaps that cached bundle's policy for a ScriptedPolicy and
    puts the real one back afterwards.
    """
    from conceptseg.model.checkpoint import load_bundle_cached

    bundle = load_bundle_cached(path, device)
    real = bundle.policy
    bundle.policy = ScriptedPolicy(real, completion)
    try:
        yield bundle
    finally:
        bundle.policy = real
