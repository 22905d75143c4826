"""Generation: temperature, top-k, top-p (nucleus), a prime text, a seed; text streams out as it is made.

Without a prime, generation starts from a zero state fed a newline (or the first vocabulary character if the
corpus has no newline), which is not printed. The same checkpoint, options and seed give the same text.
"""

from __future__ import annotations

from typing import Callable, Iterator, Optional

from .errors import DataError, UsageError


def check_sampling_options(length: int, temperature: float, top_k: Optional[int], top_p: Optional[float],
                           num_samples: int) -> None:
    if length < 0:
        raise UsageError(f"--length must be >= 0, not {length}")
    if not temperature > 0:
        raise UsageError(f"--temperature must be > 0, not {temperature}")
    if top_k is not None and top_k <= 0:
        raise UsageError(f"--top-k must be >= 1, not {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise UsageError(f"--top-p must be in (0, 1], not {top_p}")
    if num_samples < 1:
        raise UsageError(f"--num-samples must be >= 1, not {num_samples}")


def check_prime(vocab, prime: str) -> None:
    unknown = vocab.unknown(prime)
    if unknown:
        from .data import describe_chars

        raise DataError(f"the prime text has characters not in the model's vocabulary: {describe_chars(unknown)}")


def filter_logits(logits, temperature: float, top_k: Optional[int], top_p: Optional[float]):
    """Scale by temperature and mask everything outside the top-k / nucleus with -inf. logits: (N, V)."""
    import torch

    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
        drop = cumulative - torch.softmax(sorted_logits, dim=-1) >= top_p  # keep the smallest set reaching top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return logits


def generate(model, vocab, length: int, temperature: float = 1.0, top_k: Optional[int] = None,
             top_p: Optional[float] = None, prime: str = "", seed: Optional[int] = None,
             num_samples: int = 1) -> Iterator[list[str]]:
    """Yield, for each generated position, one new character per sample (a list of num_samples strings)."""
    import torch

    check_prime(vocab, prime)
    generator = torch.Generator()
    generator.manual_seed(seed if seed is not None else torch.seed())
    model.eval()
    state = model.init_state(num_samples)
    start = "\n" if "\n" in vocab.index else vocab.chars[0]
    context = [vocab.index[c] for c in (prime or start)]
    with torch.inference_mode():
        logits = None
        for i in context:
            ids = torch.full((num_samples,), i, dtype=torch.long)
            logits, state = model.step(ids, state)
        for _ in range(length):
            filtered = filter_logits(logits, temperature, top_k, top_p)
            probs = torch.softmax(filtered, dim=-1)
            ids = torch.multinomial(probs, 1, generator=generator).squeeze(1)
            yield [vocab.chars[i] for i in ids.tolist()]
            logits, state = model.step(ids, state)


def sample(checkpoint: Optional[str] = None, length: int = 1000, temperature: float = 1.0,
           top_k: Optional[int] = None, top_p: Optional[float] = None, prime: str = "",
           seed: Optional[int] = None, num_samples: int = 1,
           write: Optional[Callable[[str], None]] = None) -> list[str]:
    """Generate text from a checkpoint (file, run directory, or None for the newest run under checkpoints/).

    Returns the samples (each the prime followed by the generated text). If `write` is given, the first sample is
    streamed to it as it is generated and each further sample is written when complete, separated by a blank line.
    """
    from .checkpoint import load_checkpoint, resolve_checkpoint
    from .runtime import build_model

    check_sampling_options(length, temperature, top_k, top_p, num_samples)
    ckpt = load_checkpoint(resolve_checkpoint(checkpoint))
    model, vocab = build_model(ckpt)
    check_prime(vocab, prime)
    samples = [[prime] for _ in range(num_samples)]
    if write is not None:
        write(prime)
    pending = []
    for chars in generate(model, vocab, length, temperature, top_k, top_p, prime, seed, num_samples):
        for s, c in zip(samples, chars):
            s.append(c)
        if write is not None:
            pending.append(chars[0])
            if len(pending) >= 64 or chars[0] == "\n":
                write("".join(pending))
                pending.clear()
    texts = ["".join(s) for s in samples]
    if write is not None:
        if pending:
            write("".join(pending))
        for text in texts[1:]:
            write("\n\n" + text)
    return texts
