"""The precision policy (charrnn.precision.plan_precision) as a unit test over the whole matrix of (device type,
bf16 capability, cell, hidden size, --precision, --kernel): what runs in which dtype, what is refused, and the
invariant that matters on CUDA (cuDNN under bf16 autocast would silently be fp16). Pure Python: runs in well under
a second, no device needed."""

from __future__ import annotations

import itertools

import pytest
import torch

from charrnn.errors import UsageError
from charrnn.precision import (CPU_BF16_MIN_HIDDEN, PRECISIONS, Plan, cpu_supports_bf16, plan_for, plan_precision,
                               resolve_kernel, torch_dtype)

from conftest import ROOT

DEVICES = ("cpu", "cuda", "mps")
CELLS = ("tanh", "gru", "lstm")
HIDDENS = (128, 512)
REQUESTS = ("auto", "fp32", "bf16", "fp16")
KERNELS = ("auto", "fused", "nn")
MATRIX = list(itertools.product(DEVICES, (True, False), CELLS, HIDDENS, REQUESTS, KERNELS, (True, False)))


def plan_or_error(device, bf16, cell, hidden, request, kernel, tf32):
    try:
        return plan_precision(device, cell, hidden, request, kernel, bf16_supported=bf16, tf32=tf32)
    except UsageError as exc:
        return exc


def case_id(case):
    device, bf16, cell, hidden, request, kernel, tf32 = case
    return f"{device}-{'bf16' if bf16 else 'nobf16'}-{cell}-{hidden}-{request}-{kernel}-{'tf32' if tf32 else 'notf32'}"


def expected(device, bf16, cell, hidden, request, kernel, tf32):
    """The rules, written out independently of the implementation: a Plan's fields as a dict, or the text the
    UsageError must contain."""
    k = "nn" if cell != "tanh" else ("fused" if device == "cpu" else "nn") if kernel == "auto" else kernel
    cudnn_tf32 = tf32 and device == "cuda" and k == "nn"
    fp32 = dict(kernel=k, core="fp32", head="fp32", autocast=None, core_outside_autocast=False, fused_dtype=None,
                grad_scaler=False, tf32=cudnn_tf32)
    if request == "fp32":
        return fp32
    if device == "cpu":
        if request == "fp16":
            return "fp16"
        usable = bf16 and (cell != "tanh" or k == "fused")
        if request == "bf16" and not usable:
            return "bf16"
        if request == "auto" and not (usable and hidden >= CPU_BF16_MIN_HIDDEN):
            return fp32
        if cell == "tanh":
            return dict(fp32, core="bf16", head="bf16", fused_dtype="bf16", tf32=False)
        return dict(fp32, core="bf16", head="bf16", autocast="bf16", tf32=False)
    if device == "cuda":
        if request == "auto":
            return fp32
        if request == "fp16":
            if k == "fused":
                return dict(fp32, core="fp16", head="fp16", fused_dtype="fp16", grad_scaler=True, tf32=False)
            return dict(fp32, core="fp16", head="fp16", autocast="fp16", grad_scaler=True, tf32=False)
        if not bf16:
            return "bf16"
        if k == "fused":
            return dict(fp32, core="bf16", head="bf16", fused_dtype="bf16", tf32=False)
        return dict(fp32, core="fp32", head="bf16", autocast="bf16", core_outside_autocast=True)
    # mps
    return fp32 if request == "auto" else request


def check_case(case):
    """None if the policy follows the rules for this case, else what is wrong."""
    got = plan_or_error(*case)
    want = expected(*case)
    if isinstance(want, str):
        if not isinstance(got, UsageError):
            return f"expected a UsageError, got {got}"
        message = str(got)
        if "\n" in message or not message.startswith(f"--precision {want}"):
            return f"not one line about --precision {want}: {message!r}"
        if "use" not in message or "fp32" not in message:  # says what to use instead
            return f"does not say what to use instead: {message!r}"
        return None
    if not isinstance(got, Plan):
        return f"expected a plan, got {got!r}"
    fields = {name: getattr(got, name) for name in want}
    return None if fields == want else f"got {fields}, want {want}"


def test_plan_matrix():
    """Every combination of device type x bf16 capability x cell x hidden x request x kernel x TF32 flag."""
    assert len(MATRIX) == 3 * 2 * 3 * 2 * 4 * 3 * 2
    wrong = [f"{case_id(case)}: {problem}" for case in MATRIX if (problem := check_case(case))]
    assert not wrong, f"{len(wrong)} of {len(MATRIX)} cases break the rules:\n" + "\n".join(wrong[:40])


def test_fp32_request_is_fp32_everywhere():
    for device, bf16, cell, hidden, _, kernel, tf32 in MATRIX:
        plan = plan_precision(device, cell, hidden, "fp32", kernel, bf16_supported=bf16, tf32=tf32)
        assert (plan.core, plan.head, plan.autocast, plan.fused_dtype, plan.grad_scaler,
                plan.core_outside_autocast) == ("fp32", "fp32", None, None, False, False)


def test_invariants_over_the_matrix():
    """Whatever the inputs, a returned Plan is one that really runs in the dtypes it names."""
    plans = 0
    for case in MATRIX:
        device, bf16, cell, hidden, request, kernel, tf32 = case
        plan = plan_or_error(*case)
        if isinstance(plan, UsageError):
            continue
        plans += 1
        assert plan.kernel in ("fused", "nn")
        assert cell == "tanh" or plan.kernel == "nn"
        # never a bf16 autocast with cuDNN's core inside it (that would silently be fp16, unscaled)
        if device == "cuda" and plan.kernel == "nn" and plan.autocast is not None:
            if plan.autocast == "fp16":
                assert plan.grad_scaler and plan.core == "fp16"
            else:
                assert plan.core_outside_autocast and plan.core == "fp32", case
        # fp16 anywhere comes with a GradScaler; only CUDA runs fp16
        if "fp16" in (plan.core, plan.head, plan.autocast, plan.fused_dtype):
            assert plan.grad_scaler and device == "cuda", case
        if plan.grad_scaler:
            assert device == "cuda" and request == "fp16"
        # bf16 only where the device has it, and never on MPS
        if "bf16" in (plan.core, plan.head, plan.autocast, plan.fused_dtype):
            assert bf16 and device in ("cpu", "cuda"), case
        # the fused kernel casts its own operands: it is never also under an autocast
        if plan.fused_dtype is not None:
            assert plan.kernel == "fused" and plan.autocast is None and plan.core == plan.fused_dtype
        # the core's dtype is what runs: outside autocast (or with no autocast) an nn core is fp32
        if plan.kernel == "nn" and (plan.autocast is None or plan.core_outside_autocast):
            assert plan.core == "fp32", case
        assert not plan.tf32 or (device == "cuda" and plan.kernel == "nn" and plan.core == "fp32")
        # describe() and as_dict() name the core's and head's dtypes
        text = plan.describe()
        assert f"recurrent core {plan.core}" in text and f"head {plan.head}" in text
        assert ("TF32" in text) == plan.tf32
        assert ("loss scaling" in text) == plan.grad_scaler
        d = plan.as_dict()
        assert (d["core"], d["head"], d["kernel"], d["autocast"], d["loss_scaling"], d["summary"]) == (
            plan.core, plan.head, plan.kernel, plan.autocast, plan.grad_scaler, text)
        # torch dtypes exist for everything the plan names
        for name in (plan.autocast, plan.fused_dtype, plan.core, plan.head):
            assert name is None or isinstance(torch_dtype(name), torch.dtype)
    assert plans > 300


def test_cpu_auto_bf16_threshold_and_capability():
    for cell in CELLS:
        small = plan_precision("cpu", cell, CPU_BF16_MIN_HIDDEN - 1, bf16_supported=True)
        big = plan_precision("cpu", cell, CPU_BF16_MIN_HIDDEN, bf16_supported=True)
        none = plan_precision("cpu", cell, 4 * CPU_BF16_MIN_HIDDEN, bf16_supported=False)
        assert small.core == "fp32" and none.core == "fp32" and big.core == "bf16"
        if cell == "tanh":
            assert (big.kernel, big.fused_dtype, big.autocast) == ("fused", "bf16", None)
        else:
            assert (big.kernel, big.fused_dtype, big.autocast) == ("nn", None, "bf16")
    # tanh with --kernel nn on CPU: auto quietly stays fp32; an explicit bf16 is refused
    assert plan_precision("cpu", "tanh", 1024, "auto", "nn", bf16_supported=True).core == "fp32"


@pytest.mark.parametrize("args, needles", [
    (("cpu", "tanh", 512, "bf16", "auto", False), ("bf16", "no", "fp32")),
    (("cpu", "gru", 512, "bf16", "auto", False), ("bf16", "fp32")),
    (("cpu", "tanh", 512, "bf16", "nn", True), ("bf16", "--kernel fused", "nn")),
    (("cpu", "lstm", 512, "fp16", "auto", True), ("fp16", "CUDA")),
    (("cuda", "tanh", 512, "bf16", "auto", False), ("bf16", "fp16", "fp32")),
    (("mps", "tanh", 512, "bf16", "auto", True), ("bf16", "mps", "fp32")),
    (("mps", "gru", 512, "fp16", "auto", True), ("fp16", "mps", "fp32")),
    (("cuda", "tanh", 512, "fp8", "auto", True), ("--precision", "fp8")),
])
def test_refusals_are_one_clear_line(args, needles):
    device, cell, hidden, request, kernel, bf16 = args
    with pytest.raises(UsageError) as info:
        plan_precision(device, cell, hidden, request, kernel, bf16_supported=bf16)
    message = str(info.value)
    assert "\n" not in message and len(message) < 200, message
    for needle in needles:
        assert needle in message, (needle, message)


def test_cuda_rules():
    for cell, kernel in itertools.product(CELLS, KERNELS):
        for tf32 in (True, False):
            auto = plan_precision("cuda", cell, 512, "auto", kernel, bf16_supported=True, tf32=tf32)
            assert (auto.core, auto.head, auto.autocast, auto.grad_scaler) == ("fp32", "fp32", None, False)
            cudnn = auto.kernel == "nn"
            assert auto.tf32 == (tf32 and cudnn)
            assert ("TF32" in auto.describe()) == (tf32 and cudnn)
        fp16 = plan_precision("cuda", cell, 512, "fp16", kernel, bf16_supported=False)
        assert fp16.grad_scaler and fp16.core == "fp16"
        bf16 = plan_precision("cuda", cell, 512, "bf16", kernel, bf16_supported=True, tf32=True)
        if bf16.kernel == "fused":
            assert (bf16.fused_dtype, bf16.core, bf16.head, bf16.autocast) == ("bf16", "bf16", "bf16", None)
        else:  # cuDNN core (tanh nn, gru, lstm): fp32 outside autocast, head in bf16
            assert (bf16.core, bf16.head, bf16.autocast, bf16.core_outside_autocast) == ("fp32", "bf16", "bf16", True)
            assert bf16.tf32 and "cuDNN" in bf16.describe() and "TF32" in bf16.describe()
            assert not bf16.grad_scaler


def test_mps_only_fp32():
    for cell, kernel, bf16 in itertools.product(CELLS, KERNELS, (True, False)):
        for request in ("auto", "fp32"):
            plan = plan_precision("mps", cell, 512, request, kernel, bf16_supported=bf16, tf32=True)
            assert (plan.core, plan.head, plan.autocast, plan.fused_dtype, plan.tf32) == (
                "fp32", "fp32", None, None, False)


def test_resolve_kernel_defaults():
    assert resolve_kernel("cpu", "tanh", "auto") == "fused"
    assert resolve_kernel("cuda", "tanh", "auto") == "nn"
    assert resolve_kernel("mps", "tanh", "auto") == "nn"
    for device in DEVICES:
        for kernel in ("fused", "nn"):
            assert resolve_kernel(device, "tanh", kernel) == kernel
        for cell, kernel in itertools.product(("gru", "lstm"), KERNELS):
            assert resolve_kernel(device, cell, kernel) == "nn"
    assert set(REQUESTS) == set(PRECISIONS)


def test_describe_names_core_and_head():
    plan = plan_precision("cuda", "gru", 512, "bf16", bf16_supported=True, tf32=True)
    assert plan.describe().startswith("recurrent core fp32 (TF32 tensor cores) (cuDNN), head bf16")
    assert plan.as_dict()["core"] == "fp32" and plan.as_dict()["head"] == "bf16"
    plan = plan_precision("cpu", "tanh", 512, "bf16", bf16_supported=True)
    assert "recurrent core bf16 (fused kernel), head bf16" in plan.describe()
    plan = plan_precision("cuda", "lstm", 512, "fp16")
    assert "recurrent core fp16 (cuDNN), head fp16, loss scaling" in plan.describe()


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("request_", ["auto", "fp32", "bf16", "fp16"])
@pytest.mark.parametrize("kernel", KERNELS)
def test_plan_for_cpu_agrees(cell, request_, kernel):
    bf16 = cpu_supports_bf16()
    for hidden in HIDDENS:
        want = plan_or_error("cpu", bf16, cell, hidden, request_, kernel, False)
        try:
            got = plan_for(torch.device("cpu"), cell, hidden, request_, kernel)
        except UsageError as exc:
            got = exc
        if isinstance(want, UsageError):
            assert isinstance(got, UsageError) and str(got) == str(want)
        else:
            assert got == want


def test_benchmarks_use_the_same_policy(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import bench_train

    import charrnn.precision as precision

    calls = []

    def spy(*args, **kwargs):
        plan = plan_for(*args, **kwargs)
        calls.append((args, kwargs, plan))
        return plan

    monkeypatch.setattr(precision, "plan_for", spy)
    for cell, hidden in (("tanh", 128), ("gru", 512)):
        model = bench_train.make_charrnn(20, hidden, 1, cell=cell)
        assert calls and calls[-1][2] is model.plan
        assert model.plan == plan_precision("cpu", cell, hidden, bf16_supported=cpu_supports_bf16())
        assert model.compute_dtype == torch_dtype(model.plan.fused_dtype)
        assert model.core_outside_autocast == model.plan.core_outside_autocast
    assert len(calls) == 2
