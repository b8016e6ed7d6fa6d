"""What an engine step costs, learned from the steps the engine runs: a fixed part (a pass over the weights,
thread start-up) plus a part per token computed. The scheduler asks it whether a second prompt should share
a step with the first or wait for the next one.

Prompts computed together all get their first token when the step ends. Computed one after another, the
first gets its first token sooner and the second pays one more step's fixed part: so a prompt joins a step
that already computes another one only where its tokens cost less than that fixed part. On a CPU a token
costs more than the fixed part (measured on the 2-core test machine with SmolLM2: ≈4.7 ms per token at any
batch size, ≈7 ms per step), so eight prompts arriving together are computed one per step and half of them
answer in half the time, with the same total work; on a GPU a few hundred tokens cost less than the fixed
part, and prompts are batched as before. Until the steps seen say otherwise (both parts known), prompts are
batched.
"""

from __future__ import annotations

SMOOTHING = 0.2  # weight of a step in its size class's running means: recent steps count most
MIN_SPREAD = 4  # the largest size class seen must hold steps this many times the smallest's to fit a line


class StepCost:
    def __init__(self) -> None:
        # Running means (tokens, seconds) per size class (tokens rounded down to a power of two): a long run of
        # steps of one size (decoding) refines its own class and leaves what larger steps taught in place.
        self._classes: dict[int, tuple[float, float]] = {}

    def observe(self, num_tokens: int, seconds: float) -> None:
        """One step computed ``num_tokens`` tokens in ``seconds``."""
        if num_tokens <= 0 or seconds <= 0:
            return
        size_class = num_tokens.bit_length()
        seen = self._classes.get(size_class)
        if seen is None:
            self._classes[size_class] = (float(num_tokens), seconds)
        else:
            self._classes[size_class] = (seen[0] + SMOOTHING * (num_tokens - seen[0]),
                                         seen[1] + SMOOTHING * (seconds - seen[1]))

    def fit(self) -> tuple[float, float] | None:
        """(fixed seconds per step, seconds per token): the least-squares line through the size classes' means;
        None until steps of sizes far enough apart were seen."""
        points = list(self._classes.values())
        sizes = [n for n, _ in points]
        if len(points) < 2 or max(sizes) < MIN_SPREAD * min(sizes):
            return None
        mean_n = sum(sizes) / len(points)
        mean_t = sum(t for _, t in points) / len(points)
        var_n = sum((n - mean_n) ** 2 for n in sizes)
        per_token = sum((n - mean_n) * (t - mean_t) for n, t in points) / var_n
        if per_token <= 0:  # noise: a token never costs nothing
            return None
        return max(mean_t - per_token * mean_n, 0.0), per_token

    def is_worth_sharing(self, num_tokens: int) -> bool:
        """Whether a prompt chunk of ``num_tokens`` should join a step that already computes another prompt,
        rather than wait for the next step: yes while the cost is unknown, else where its tokens cost less than
        a step's fixed part."""
        fitted = self.fit()
        if fitted is None:
            return True
        fixed, per_token = fitted
        return per_token * num_tokens <= fixed
