"""serve's steppers: a row's logits are the same bytes whatever the other rows (their number and their inputs),
and they compute the model's step (close to CharRNN.step)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("starlette")


def _model(cell: str, hidden: int = 48, layers: int = 2, vocab: int = 37):
    from charrnn.config import ModelConfig
    from charrnn.model.network import CharRNN

    torch.manual_seed(0)
    model = CharRNN(ModelConfig(cell=cell, hidden_size=hidden, num_layers=layers, vocab_size=vocab)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    return model


def _run(rows, inputs: np.ndarray) -> np.ndarray:
    """Step rows through inputs (T, B); the logits of row 0 at every step (T, V)."""
    out = []
    for ids in inputs:
        out.append(rows.step(np.ascontiguousarray(ids, dtype=np.int64))[0].copy())
    return np.stack(out)


@pytest.mark.parametrize("cell", ["tanh", "gru", "lstm"])
def test_a_row_is_the_same_bytes_alone_or_in_any_batch(cell):
    from charrnn.serve.rows import make_rows

    model = _model(cell)
    rng = np.random.default_rng(1)
    T, V = 20, model.config.vocab_size
    mine = rng.integers(0, V, T)
    alone = _run(make_rows(model, 16, torch.device("cpu")), mine[:, None])
    for B in (2, 3, 5, 8, 9, 16):
        batch = rng.integers(0, V, (T, B))
        batch[:, 0] = mine
        got = _run(make_rows(model, 16, torch.device("cpu")), batch)
        assert got.tobytes() == alone.tobytes(), (cell, B)


@pytest.mark.parametrize("cell", ["tanh", "gru", "lstm"])
def test_rows_compute_the_models_step(cell):
    from charrnn.serve.rows import make_rows

    model = _model(cell)
    rows = make_rows(model, 4, torch.device("cpu"))
    state = model.init_state(3)
    rng = np.random.default_rng(2)
    for _ in range(10):
        ids = rng.integers(0, model.config.vocab_size, 3)
        with torch.no_grad():
            want, state = model.step(torch.from_numpy(ids), state)
        got = rows.step(ids)
        np.testing.assert_allclose(got, want.numpy(), rtol=1e-4, atol=1e-4)


def test_moving_and_resetting_rows():
    from charrnn.serve.rows import make_rows

    model = _model("tanh")
    rows = make_rows(model, 4, torch.device("cpu"))
    rows.step(np.array([1, 2, 3], np.int64))
    a = rows.step(np.array([4, 5, 6], np.int64)).copy()
    rows2 = make_rows(model, 4, torch.device("cpu"))
    rows2.step(np.array([3, 2, 1], np.int64))
    rows2.move(0, 2)  # row 2 now holds the state row 0 had (that of input 3)
    rows2.reset(0)  # row 0 starts afresh
    b = rows2.step(np.array([1, 0, 6], np.int64))
    assert b[2].tobytes() == a[2].tobytes()
    fresh = make_rows(model, 4, torch.device("cpu")).step(np.array([1], np.int64))
    assert b[0].tobytes() == fresh[0].tobytes()


@pytest.mark.parametrize("cell", ["tanh", "lstm"])
def test_the_padded_stepper_computes_the_models_step(cell):
    """PaddedRows (the CUDA route) run on the CPU here: it steps every row of its capacity, and the active rows
    get the model's step."""
    from charrnn.serve.rows import PaddedRows

    model = _model(cell)
    reference = _model(cell)
    rows = PaddedRows(model, 8, torch.device("cpu"))
    state = reference.init_state(3)
    rng = np.random.default_rng(3)
    for _ in range(5):
        ids = rng.integers(0, model.config.vocab_size, 3)
        with torch.no_grad():
            want, state = reference.step(torch.from_numpy(ids), state)
        got = rows.step(ids)
        assert got.shape == (3, model.config.vocab_size)
        np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("hidden, layers, vocab, shared, padded", [
    (512, 2, 65, False, False), (512, 2, 65, True, False), (100, 2, 37, False, False), (100, 2, 37, False, True)])
def test_a_tanh_row_is_the_same_bytes_in_batches_of_1_to_17_at_any_position(hidden, layers, vocab, shared, padded):
    """The compiled tanh stepper at the benchmark's size (2x512; from 8 rows its kernel on one thread, and the one
    shared among numba's threads) and at an odd width (2x100: no multiple of a vector's width, and batches that end
    in a partial block of rows): row r of a batch of B gets the same bytes as the same inputs stepped alone (always
    the serial kernel), for every B from 1 to 17 and r first, middle or last: blocks of 4 rows and the rows left over
    one by one agree (as the stepper checked when it was made), and so does the padded way (every batch in whole
    blocks), taken where they would not."""
    from charrnn.serve.rows import NumbaTanhRows, make_rows

    def fresh():
        rows = make_rows(model, 17, torch.device("cpu"))
        if shared:  # the shared kernel has been the faster so far, and stays in favour (never re-timed here)
            rows.per_row, rows.explore_every = [float("inf"), 0.0], 10**9
        else:
            rows.parallel_from = 10**9
        if isinstance(rows, NumbaTanhRows):
            if rows.padded and not padded:
                pytest.skip("a block of rows and a row alone disagree on this CPU: serve pads every batch here")
            rows.padded = padded
        return rows

    model = _model("tanh", hidden, layers, vocab)
    rows = fresh()
    if not isinstance(rows, NumbaTanhRows):
        pytest.skip("numba does not load here: the per-row stepper (covered above) is used")
    rng = np.random.default_rng(4)
    T = 4
    mine = rng.integers(0, vocab, T)
    alone = _run(rows, mine[:, None])  # row 0 of a batch of one
    for B in range(1, 18):
        for r in sorted({0, B // 2, B - 1}):
            batch = rng.integers(0, vocab, (T, B))
            batch[:, r] = mine
            rows = fresh()
            got = np.stack([rows.step(np.ascontiguousarray(ids, dtype=np.int64))[r].copy() for ids in batch])
            assert got.tobytes() == alone.tobytes(), (hidden, B, r)
    if shared:
        assert rows.per_row[1] > 0 and rows.per_row[0] == float("inf"), "the shared kernel did not run"


def test_the_faster_kernel_is_chosen_and_the_other_retimed():
    """From parallel_from rows, step() runs whichever kernel has been faster per row, and the other one every
    explore_every steps (the kernels are stand-ins here that only count their calls)."""
    from charrnn.serve.rows import NumbaTanhRows

    rows = NumbaTanhRows(_model("tanh", 256, 1, 11), 8)
    calls = {"serial": 0, "shared": 0}

    class Kernels:
        @staticmethod
        def tanh_step(*args):
            calls["serial"] += 1

        @staticmethod
        def tanh_step_parallel(*args):
            calls["shared"] += 1

    rows.kernels, rows.explore_every = Kernels, 10
    rows.per_row = [1.0, 2.0]  # the serial kernel has been faster so far
    for _ in range(100):
        rows.step(np.zeros(8, np.int64))
    assert calls["shared"] >= 10 and calls["serial"] >= 10  # each ran: one is chosen, the other retimed
    assert calls["shared"] + calls["serial"] == 100
