"""Fast generation: the tanh stepper equals CharRNN.step; inverse-CDF picking keeps temperature/top-k/top-p."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from charrnn.config import ModelConfig
from charrnn.data.vocab import Vocab
from charrnn.model.network import CharRNN
from charrnn.inference.sampling import TanhStepper, generate, pick

from reference import filter_logits

VOCAB = Vocab("\nabcdefgh ")


def _model(L=2, cell="tanh", seed=0):
    torch.manual_seed(seed)
    model = CharRNN(ModelConfig(vocab_size=len(VOCAB), hidden_size=16, num_layers=L, cell=cell))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)  # biases too, so that the folding of b^1 is tested
    return model.eval()


@pytest.mark.parametrize("jit", [None, False])
@pytest.mark.parametrize("L", [1, 2, 3])
@pytest.mark.parametrize("batch", [1, 3, 6])
def test_stepper_equals_model_step(L, batch, jit):
    model = _model(L)
    stepper = TanhStepper(model, batch, jit=jit)
    assert stepper.jit == (batch > 1 and jit is None)  # several streams: the compiled step where numba is
    state = model.init_state(batch)
    for step in range(6):
        ids = torch.tensor([(step * 3 + b) % len(VOCAB) for b in range(batch)])
        want, state = model.step(ids, state)
        got = torch.from_numpy(stepper(ids.numpy()).copy())
        assert torch.allclose(got, want, atol=1e-5)
        assert torch.allclose(stepper.state, state, atol=1e-5)


def test_same_seed_same_text_and_different_seed_differs():
    model = _model()
    runs = [["".join(c) for c in generate(model, VOCAB, 200, seed=s, num_samples=2)] for s in (7, 7, 8)]
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


@pytest.mark.parametrize("num_samples", [1, 3])
def test_unseeded_generation_leaves_torchs_global_rng_alone(num_samples):
    model = _model()
    before = torch.get_rng_state()
    texts = [["".join(c) for c in generate(model, VOCAB, 100, num_samples=num_samples)] for _ in range(2)]
    assert torch.equal(torch.get_rng_state(), before)  # neither drawn from nor reseeded
    assert texts[0] != texts[1]  # each unseeded run is still a new draw


@pytest.mark.parametrize("cell", ["tanh", "gru"])
def test_top_k_1_is_greedy_argmax(cell):
    model = _model(cell=cell)
    text = "".join(c[0] for c in generate(model, VOCAB, 40, top_k=1, seed=3, temperature=1.5))
    state, ids, greedy = model.init_state(1), torch.tensor([VOCAB.index["\n"]]), []
    for _ in range(40):
        logits, state = model.step(ids, state)
        ids = logits.argmax(-1)
        greedy.append(VOCAB.chars[int(ids)])
    assert text == "".join(greedy)


@pytest.mark.parametrize("top_k,top_p", [(None, None), (3, None), (None, 0.6), (4, 0.5), (1, None), (None, 0.01)])
def test_pick_draws_only_what_filter_logits_keeps(top_k, top_p):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 12, generator=g) * 2
    kept = torch.isfinite(filter_logits(logits, 0.8, top_k, top_p)).numpy()
    probs = torch.softmax(filter_logits(logits, 0.8, top_k, top_p), -1).numpy()
    u = 1.0 - torch.rand(20000, 5, generator=g, dtype=torch.float64).numpy()
    counts = np.zeros_like(probs)
    for row in u:
        counts[np.arange(5), pick(logits.numpy(), row, 0.8, top_k, top_p)] += 1
    assert not (counts[~kept]).any()  # never a masked character
    assert np.allclose(counts / len(u), probs, atol=0.02)  # and the kept ones in proportion


def test_pick_never_draws_a_zero_probability_character_at_the_edges():
    logits = np.array([[-np.inf, 0.0, -np.inf, 1.0, -np.inf]])
    for u in (1e-300, 0.5, 1.0):
        assert int(pick(logits, np.array([u]), 1.0, None, None)[0]) in (1, 3)
