"""Generation: temperature, top-k, top-p (nucleus), a prime text, a seed; text streams out as it is made.

Without a prime, generation starts from a zero state fed a newline (or the first vocabulary character if the
corpus has no newline), which is not printed. The same checkpoint, options and seed give the same text.
"""

from __future__ import annotations

from typing import Callable, Iterator, Optional

from ..errors import DataError, UsageError


# the temperatures that sample something: far below MIN the draw is the most likely character and the logits
# overflow (inf - inf = nan); far above MAX every character is about equally likely (noise)
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.001, 10.0


def check_sampling_options(length: int, temperature: float, top_k: Optional[int], top_p: Optional[float],
                           num_samples: int, seed: Optional[int] = None) -> None:
    """Every number finite and in range (nan and inf refused), one UsageError line naming the option."""
    from ..config import INT64, check_number

    if length < 0:
        raise UsageError(f"--length must be >= 0, not {length}")
    check_temperature(temperature)
    if top_k is not None and top_k <= 0:
        raise UsageError(f"--top-k must be >= 1, not {top_k}")
    if top_p is not None:
        check_number("--top-p", top_p, 0.0, 1.0, low_open=True)
    if num_samples < 1:
        raise UsageError(f"--num-samples must be >= 1, not {num_samples}")
    if seed is not None:
        check_number("--seed", seed, *INT64, note=" (a 64-bit integer)")


def check_temperature(temperature: float, label: str = "--temperature") -> None:
    """0 (greedy: always the most likely character) or a number from MIN_TEMPERATURE to MAX_TEMPERATURE."""
    import math

    ok = isinstance(temperature, (int, float)) and not isinstance(temperature, bool) and math.isfinite(temperature)
    if not (ok and (temperature == 0 or MIN_TEMPERATURE <= temperature <= MAX_TEMPERATURE)):
        raise UsageError(f"{label} must be 0 (always the most likely character) or from {MIN_TEMPERATURE:g} to "
                         f"{MAX_TEMPERATURE:g}, not {temperature}")


def check_prime(vocab, prime: str) -> None:
    unknown = vocab.unknown(prime)
    if unknown:
        from ..data.vocab import describe_chars

        raise DataError(f"the prime text has characters not in the model's vocabulary: {describe_chars(unknown)}")


class TanhStepper:
    """One generation step of a tanh CharRNN, written for speed: no autograd, weights pre-transposed and
    contiguous, the layer-1 bias folded into the lookup table, every result written into a preallocated buffer.
    Per character and layer that is one lookup or input product, one recurrent product and one tanh. Same maths
    as `CharRNN.step` (a test holds them equal). ids and logits are numpy arrays.

    One stream runs on numpy: its matrix-vector products go to a single-threaded BLAS gemv and each call costs
    about a microsecond of overhead where a torch op costs several. Several streams run on torch, on however many
    intra-op threads the caller has set: torch.set_num_threads is process-wide state that a library must not
    change (a thread started meanwhile would keep the changed value). For small models on a busy machine one
    thread is much faster (`torch.set_num_threads(1)`, or OMP_NUM_THREADS=1, is the caller's choice to make).
    Where numba is there (charrnn/model/compiled.py), several streams take each recurrent product and its tanh in one
    compiled call (2.6x torch's addmm + tanh for 16 streams at H=512 here); `jit=False` keeps torch's ops."""

    def __init__(self, model, batch_size: int, jit: Optional[bool] = None):
        import torch

        from ..model import compiled

        with torch.no_grad():
            self.table = (model.embed.weight + model.bias[0]).detach().clone()  # V, H: W^1_xh + b^1
            self.w_hh_t = [w.detach().t().contiguous() for w in model.w_hh]  # H, H each
            self.w_xh_t = [w.detach().t().contiguous() for w in model.w_xh]
            self.bias = [b.detach().clone() for b in model.bias]
            self.head_t = model.head.weight.detach().t().contiguous()  # H, V
            self.head_b = model.head.bias.detach().clone()
        H, V = self.head_t.shape
        L = len(self.w_hh_t)
        self.state = torch.zeros(L, batch_size, H)
        self.pre, self.tmp = torch.empty(batch_size, H), torch.empty(batch_size, H)
        self.logits = torch.empty(batch_size, V)
        self.on_numpy = batch_size == 1
        self.jit = not self.on_numpy and (compiled.available() if jit is None else jit)
        if self.jit:  # the compiled call reads W_hh untransposed, and writes next to the state it reads
            self.w_hh = [w.detach().contiguous() for w in model.w_hh]
            self.fresh = torch.empty(1, batch_size, H)
            # checked once here, run on these buffers at every step
            self.recurrence = [compiled.prepare(self.pre[None], self.fresh, self.state[layer], self.w_hh[layer])
                               for layer in range(L)]
        # numpy views of the same memory (no copies)
        self.np = {name: [t.numpy() for t in getattr(self, name)] for name in ("w_hh_t", "w_xh_t", "bias")}
        self.np_table, self.np_head_t, self.np_head_b = self.table.numpy(), self.head_t.numpy(), self.head_b.numpy()
        self.np_state, self.np_pre, self.np_tmp = self.state.numpy(), self.pre.numpy(), self.tmp.numpy()
        self.np_logits = self.logits.numpy()

    def __call__(self, ids):
        """ids (B,) int64 numpy -> logits (B, V) numpy (a buffer, overwritten by the next call)."""
        if self.on_numpy:
            return self._step_numpy(ids)
        import torch

        self._step_torch(torch.from_numpy(ids))
        return self.np_logits

    def _step_numpy(self, ids):
        import numpy as np

        state, pre, tmp = self.np_state, self.np_pre, self.np_tmp
        w_hh_t, w_xh_t, bias = self.np["w_hh_t"], self.np["w_xh_t"], self.np["bias"]
        np.take(self.np_table, ids, axis=0, out=pre)
        for layer in range(len(w_hh_t)):
            if layer > 0:
                np.matmul(state[layer - 1], w_xh_t[layer - 1], out=pre)
                pre += bias[layer]
            np.matmul(state[layer], w_hh_t[layer], out=tmp)
            pre += tmp  # z = W_xh x + b + W_hh h
            np.tanh(pre, out=state[layer])
        np.matmul(state[-1], self.np_head_t, out=self.np_logits)
        self.np_logits += self.np_head_b
        return self.np_logits

    def _step_torch(self, ids):
        import torch

        state, pre = self.state, self.pre
        torch.index_select(self.table, 0, ids, out=pre)
        for layer in range(len(self.w_hh_t)):
            if layer > 0:
                torch.addmm(self.bias[layer], state[layer - 1], self.w_xh_t[layer - 1], out=pre)
            if self.jit:
                self.recurrence[layer]()  # fresh = tanh(pre + state[layer] W_hh^T)
                state[layer].copy_(self.fresh[0])
                continue
            pre.addmm_(state[layer], self.w_hh_t[layer])  # z = W_xh x + b + W_hh h
            torch.tanh(pre, out=state[layer])
        torch.addmm(self.head_b, state[-1], self.head_t, out=self.logits)


class _ModuleStepper:
    """GRU/LSTM (and any model): generation through `CharRNN.step`."""

    def __init__(self, model, batch_size: int):
        self.model, self.state = model, model.init_state(batch_size)

    def __call__(self, ids):
        import torch

        logits, self.state = self.model.step(torch.from_numpy(ids), self.state)
        return logits.numpy()


def pick(logits, uniforms, temperature: float, top_k: Optional[int], top_p: Optional[float]):
    """Draw one id per row of logits (N, V) by inverse CDF, with uniforms (N,) in (0, 1].

    numpy rather than torch here: for V of a few hundred, each numpy call costs a microsecond or two where a torch
    op costs several, and this runs once per generated character. The rule (the same as `filter_logits` in
    tests/reference.py, which the tests compare against): divide by the temperature, keep the logits >= the k-th
    largest, then keep the smallest set of most likely characters whose probability reaches top_p; a character
    with probability 0 is never drawn (the uniforms exclude 0). Temperature 0 is greedy: each row's most likely
    character (the first of equals), whatever the uniforms, top_k and top_p; `serve` calls this too."""
    import numpy as np

    if temperature == 0:
        return np.asarray(logits).argmax(axis=1)
    z = np.asarray(logits, dtype=np.float64) / temperature  # N, V
    if top_k is not None and top_k < z.shape[1]:
        kth = -np.partition(-z, top_k - 1, axis=1)[:, top_k - 1 : top_k]
        z = np.where(z < kth, -np.inf, z)
    p = np.exp(z - z.max(axis=1, keepdims=True))
    if top_p is not None and top_p < 1.0:
        order = np.argsort(-p, axis=1, kind="stable")
        sorted_p = np.take_along_axis(p, order, axis=1)
        sorted_p /= sorted_p.sum(axis=1, keepdims=True)
        before = np.cumsum(sorted_p, axis=1) - sorted_p  # probability of the more likely characters
        drop = np.zeros_like(p, dtype=bool)
        np.put_along_axis(drop, order, before >= top_p, axis=1)
        p[drop] = 0.0
    cdf = np.cumsum(p, axis=1)
    return (cdf < uniforms[:, None] * cdf[:, -1:]).sum(axis=1)


def generate(model, vocab, length: int, temperature: float = 1.0, top_k: Optional[int] = None,
             top_p: Optional[float] = None, prime: str = "", seed: Optional[int] = None,
             num_samples: int = 1) -> Iterator[list[str]]:
    """Yield, for each generated position, one new character per sample (a list of num_samples strings)."""
    import numpy as np
    import torch

    check_prime(vocab, prime)
    generator = torch.Generator()  # private: the caller's global RNG is neither drawn from nor reseeded
    if seed is None:
        generator.seed()  # a nondeterministic seed for this generator alone
    else:
        generator.manual_seed(seed)
    model.eval()
    fast = model.config.cell == "tanh"
    stepper = (TanhStepper if fast else _ModuleStepper)(model, num_samples)
    start = "\n" if "\n" in vocab.index else vocab.chars[0]
    context = [vocab.index[c] for c in (prime or start)]
    chars = vocab.chars
    block = 1024  # uniforms are drawn from the seeded generator this many positions at a time
    with torch.inference_mode():
        logits = None
        for i in context:
            logits = stepper(np.full(num_samples, i, dtype=np.int64))
        uniforms = None
        for n in range(length):
            if n % block == 0:
                uniforms = (1.0 - torch.rand(block, num_samples, generator=generator, dtype=torch.float64)).numpy()
            picked = pick(logits, uniforms[n % block], temperature, top_k, top_p)
            yield [chars[i] for i in picked.tolist()]
            logits = stepper(picked)


def sample(checkpoint: Optional[str] = None, length: int = 1000, temperature: float = 1.0,
           top_k: Optional[int] = None, top_p: Optional[float] = None, prime: str = "",
           seed: Optional[int] = None, num_samples: int = 1,
           write: Optional[Callable[[str], None]] = None) -> list[str]:
    """Generate text from a checkpoint (file, run directory, or None for the newest run under checkpoints/).
    `temperature` 0 always takes the most likely character (no randomness: the seed changes nothing).

    Returns the samples (each the prime followed by the generated text). If `write` is given, the first sample is
    streamed to it as it is generated and each further sample is written when complete, separated by a blank line.
    """
    from ..model.runtime import load_model

    check_sampling_options(length, temperature, top_k, top_p, num_samples, seed)
    _, model, vocab = load_model(checkpoint)
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
