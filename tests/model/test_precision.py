"""The precision policy (charrnn.model.precision.plan_precision) as a unit test over the whole matrix of (device type,
bf16 capability, cell, hidden size, --precision, --kernel): what runs in which dtype, what is refused, and the
invariant that matters on CUDA (cuDNN under bf16 autocast would silently be fp16). Pure Python: runs in well under
a second, no device needed."""

from __future__ import annotations

import itertools

import pytest
import torch

from charrnn.errors import UsageError
from charrnn.model.precision import (CPU_BF16_MIN_HIDDEN, PRECISIONS, Plan, cpu_supports_bf16, plan_for, plan_precision,
                               resolve_kernel, torch_dtype)

from conftest import ROOT, TINY, assert_one_line_error, cli_env, make_corpus, run_cli

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

    import charrnn.model.precision as precision

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


# ----------------------------------------------------------------------------------------------------------------
# which CPUs have native bf16: each kind of CPU faked through its feature flags (torch.cpu.get_capabilities()'s
# names) and a cap on oneDNN, and what `--precision auto` then picks at a width where bf16 would pay

BF16_NATIVE = {"architecture": "x86_64", "avx2": True, "avx512_f": True, "avx512_bf16": True, "amx_bf16": False}
AMX = dict(BF16_NATIVE, avx512_bf16=False, amx_bf16=True)  # the AMX tiles alone also multiply bf16
AVX512_NO_BF16 = dict(BF16_NATIVE, avx512_bf16=False)  # Skylake-SP, Cascade Lake, Ice Lake
AVX2_ONLY = dict(AVX512_NO_BF16, avx512_f=False)
ARM_BF16 = {"architecture": "aarch64", "bf16": True}
ARM_NO_BF16 = {"architecture": "aarch64", "bf16": False}


@pytest.mark.parametrize("caps, env, native", [
    (BF16_NATIVE, {}, True),
    (AMX, {}, True),
    (AVX512_NO_BF16, {}, False),
    (AVX2_ONLY, {}, False),
    (BF16_NATIVE, {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE"}, False),  # how the benchmarks emulate the second kind
    (BF16_NATIVE, {"ONEDNN_MAX_CPU_ISA": "avx2"}, False),
    (BF16_NATIVE, {"DNNL_MAX_CPU_ISA": "AVX512_CORE_VNNI"}, False),  # oneDNN's older name for the cap
    (BF16_NATIVE, {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"}, True),  # a cap at or above bf16 leaves it
    (BF16_NATIVE, {"ONEDNN_MAX_CPU_ISA": "ALL", "DNNL_MAX_CPU_ISA": "AVX2"}, True),  # the ONEDNN_ name wins
    (AVX512_NO_BF16, {"ONEDNN_MAX_CPU_ISA": "ALL"}, False),  # no cap gives a CPU instructions it lacks
    (ARM_BF16, {}, True),
    (ARM_NO_BF16, {}, False),
    ({"architecture": "riscv64"}, {}, False),
], ids=["avx512_bf16", "amx", "avx512-no-bf16", "avx2-only", "capped-avx512_core", "capped-avx2",
        "capped-dnnl-name", "cap-at-bf16", "onednn-name-first", "cap-cannot-add", "arm-bf16", "arm-no-bf16",
        "other-arch"])
def test_each_kind_of_cpu_and_what_auto_picks(monkeypatch, caps, env, native):
    """torch's mkldnn check says yes on every AVX-512 CPU (true here under ONEDNN_MAX_CPU_ISA=AVX512_CORE too), so
    the decision rests on the CPU's own flags and the cap; `--precision auto` follows it for the fused tanh kernel
    and torch's GRU at 2x512, and `--precision bf16` is refused where the CPU lacks bf16."""
    import charrnn.model.precision as precision

    for name in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(precision, "cpu_capabilities", lambda: dict(caps))
    monkeypatch.setattr(precision, "onednn_routes_bf16", lambda: True)  # as torch answers on any AVX-512 CPU
    got, why = precision.cpu_bf16_status()
    assert got is native, why
    assert precision.cpu_supports_bf16() is native
    cpu = torch.device("cpu")
    for cell in ("tanh", "gru"):
        plan = plan_for(cpu, cell, 512, "auto")
        assert (plan.core, plan.head) == (("bf16", "bf16") if native else ("fp32", "fp32"))
        assert plan.kernel == ("fused" if cell == "tanh" else "nn")
        if not native:
            with pytest.raises(UsageError, match="bf16 instructions"):
                plan_for(cpu, cell, 512, "bf16")
    assert plan_for(cpu, "tanh", 128, "auto").core == "fp32"  # below the width where bf16 pays, whatever the CPU


def test_no_bf16_where_torch_does_not_route_it_through_onednn():
    from charrnn.model.precision import cpu_bf16_check

    assert cpu_bf16_check(BF16_NATIVE, environ={})[0]
    assert not cpu_bf16_check(BF16_NATIVE, environ={}, onednn_bf16=False)[0]


def test_this_cpu_is_read_from_its_own_flags():
    """The real machine: the answer agrees with /proc/cpuinfo's flags (avx512_bf16 / amx_bf16 on x86) and the cap."""
    import os
    import platform

    from charrnn.model.precision import _ONEDNN_CAPS_WITHOUT_BF16, cpu_bf16_status, onednn_isa_cap

    if platform.machine() != "x86_64" or not os.path.exists("/proc/cpuinfo"):
        pytest.skip("reads x86 flags from /proc/cpuinfo")
    with open("/proc/cpuinfo") as f:
        flags = set(next(line for line in f if line.startswith("flags")).split(":", 1)[1].split())
    want = bool(flags & {"avx512_bf16", "amx_bf16"}) and onednn_isa_cap() not in _ONEDNN_CAPS_WITHOUT_BF16
    assert cpu_bf16_status()[0] is want


def test_a_cap_on_onednn_reaches_the_cli(tmp_path):
    """`ONEDNN_MAX_CPU_ISA=AVX512_CORE` (how the benchmarks emulate an AVX-512 CPU without bf16) makes `charrnn
    train --precision bf16` a one-line refusal on any x86 CPU, before anything is written."""
    import platform

    if platform.machine() != "x86_64":
        pytest.skip("the cap names x86 ISAs")
    corpus = make_corpus(tmp_path / "c.txt", 2000)
    proc = run_cli("train", corpus, *TINY, "--max-steps", "1", "--precision", "bf16", "--run-dir", tmp_path / "run",
                   env=cli_env(ONEDNN_MAX_CPU_ISA="AVX512_CORE"), cwd=tmp_path)
    assert_one_line_error(proc, 2, "bf16 instructions")
    assert not (tmp_path / "run").exists()
