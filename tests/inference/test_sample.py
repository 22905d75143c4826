"""Generation: determinism, options, and the CLI's stdout discipline."""

import pytest
import torch

import charrnn
from charrnn.errors import DataError, UsageError

from conftest import assert_one_line_error, run_cli
from reference import filter_logits


def test_same_seed_same_text_different_seed_different_text(tiny_run):
    a = charrnn.sample(str(tiny_run), length=200, seed=7)[0]
    b = charrnn.sample(str(tiny_run), length=200, seed=7)[0]
    c = charrnn.sample(str(tiny_run), length=200, seed=8)[0]
    assert a == b and a != c and len(a) == 200


def test_prime_comes_first_and_num_samples(tiny_run):
    texts = charrnn.sample(str(tiny_run), length=30, prime="The ", seed=1, num_samples=3)
    assert len(texts) == 3 and all(t.startswith("The ") and len(t) == 34 for t in texts)


def test_sample_without_a_seed_does_not_reseed_torchs_global_rng(tiny_run):
    """seed=None draws a fresh seed for sampling's own generator; the caller's global generator carries on with
    the same sequence it would have had after a seeded call."""
    torch.manual_seed(123)
    charrnn.sample(str(tiny_run), length=200, seed=1)
    want = torch.rand(8)
    torch.manual_seed(123)
    first = charrnn.sample(str(tiny_run), length=200, seed=None)[0]
    assert torch.equal(torch.rand(8), want)
    assert charrnn.sample(str(tiny_run), length=200, seed=None)[0] != first  # each unseeded call is a new draw


@pytest.mark.parametrize("num_samples", [1, 3])
def test_sample_leaves_torchs_thread_setting_alone(tiny_run, monkeypatch, num_samples):
    """torch.set_num_threads is process-wide (threads started meanwhile inherit it): a library call must not
    change the caller's value, not even for the duration of a step."""
    before = torch.get_num_threads()
    wanted = 3 if before != 3 else 2  # not the default
    real = torch.set_num_threads
    real(wanted)
    try:
        calls = []
        monkeypatch.setattr(torch, "set_num_threads", lambda n: (calls.append(n), real(n))[1])
        charrnn.sample(str(tiny_run), length=100, seed=1, num_samples=num_samples)
        assert torch.get_num_threads() == wanted
        assert all(n == wanted for n in calls), calls
    finally:
        real(before)


def test_top_k_1_is_greedy():
    logits = torch.tensor([[0.1, 2.0, 0.5, 1.9]])
    masked = filter_logits(logits, 1.0, top_k=1, top_p=None)
    assert torch.isinf(masked).tolist() == [[True, False, True, True]]


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    masked = filter_logits(probs.log(), 1.0, top_k=None, top_p=0.7)
    assert torch.isfinite(masked).tolist() == [[True, True, False, False]]
    masked = filter_logits(probs.log(), 1.0, top_k=None, top_p=1.0)
    assert torch.isfinite(masked).all()


def test_temperature_sharpens(tiny_run):
    cold = charrnn.sample(str(tiny_run), length=300, temperature=0.05, seed=1)[0]
    hot = charrnn.sample(str(tiny_run), length=300, temperature=5.0, seed=1)[0]
    assert len(set(cold)) < len(set(hot))


def test_library_errors(tiny_run):
    with pytest.raises(UsageError):
        charrnn.sample(str(tiny_run), temperature=-1)  # 0 is greedy (tests/test_newcomer.py)
    with pytest.raises(DataError, match="'Z'"):
        charrnn.sample(str(tiny_run), prime="Zebra")


def test_cli_stdout_is_prime_plus_generated_text_only(tiny_run):
    proc = run_cli("sample", tiny_run, "--length", "120", "--seed", "3", "--prime", "The", check=0)
    text = proc.stdout.decode("utf-8")
    want = charrnn.sample(str(tiny_run), length=120, seed=3, prime="The")[0]
    assert want.startswith("The") and len(want) == 123
    assert text == want + ("" if want.endswith("\n") else "\n")  # a newline ends the output (--no-newline: none)
    again = run_cli("sample", tiny_run, "--length", "120", "--seed", "3", "--prime", "The", check=0)
    assert again.stdout == proc.stdout


def test_cli_sample_errors(tiny_run, tmp_path):
    assert_one_line_error(run_cli("sample", tiny_run, "--temperature", "0.0001"), 2, "--temperature")
    assert_one_line_error(run_cli("sample", tiny_run, "--prime", "Q€"), 65, "'€'")
    assert_one_line_error(run_cli("sample", cwd=tmp_path), 66, "no checkpoint found")
    assert_one_line_error(run_cli("sample", tmp_path / "missing.pt"), 66, "missing.pt")
