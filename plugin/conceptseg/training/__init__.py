"""Meta-GRPO training of the reasoning policy and the concept translator (method.md §2)."""
