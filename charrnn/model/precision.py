"""The precision policy: which kernel runs, and in which dtype each part of the model multiplies.

One function, `plan_precision`, decides from (device type, whether the device has native bf16, cell, hidden size,
--precision, --kernel); training, `charrnn info` and the benchmarks all use it, so what the log says is what ran.

Facts it rests on:
- CPU: bf16 products are native only with avx512_bf16 or AMX-BF16 (x86) or the bf16 feature (aarch64), and only
  where oneDNN is not capped below its bf16 ISAs (ONEDNN_MAX_CPU_ISA); elsewhere (e.g. AVX-512 without
  avx512_bf16: Skylake-SP, Cascade Lake, Ice Lake) oneDNN emulates them, far slower. Below width 256 they gain
  nothing (a 64x128x128 product is dispatch-bound).
- CUDA: torch's autocast casts a cuDNN RNN/GRU/LSTM's input, state and weights to fp16 whatever dtype autocast was
  given (aten/src/ATen/autocast_mode.cpp, the cudnn_rnn rule). So "bf16 autocast" around cuDNN is fp16 without
  loss scaling. Here bf16 runs only where it really runs in bf16: the head (a plain linear) under bf16 autocast,
  and the fused tanh kernel, which casts its operands itself; the cuDNN core stays outside autocast (fp32, with
  TF32 tensor cores where torch.backends.cudnn.allow_tf32 is on, torch's default). fp16 is the one mode that puts
  cuDNN's core in half precision, and it comes with a GradScaler.
- The weights, optimizer state, carried hidden state and validation loss are fp32 in every mode.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..errors import UsageError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# below this width bf16 products gain nothing on CPU (2x128 trained at the same speed either way; 2x256 85k vs 62k
# chars/s; 2x512 1.86x and 3x1024 1.96x the fp32 kernel's speed: benchmarks/run.py on a bf16 CPU)
CPU_BF16_MIN_HIDDEN = 256


@dataclass(frozen=True)
class Plan:
    kernel: str  # the tanh cell's kernel: "fused" or "nn"; gru/lstm: "nn" (torch's cells)
    core: str  # dtype of the recurrent core's products: "fp32", "bf16" or "fp16"
    head: str  # dtype of the output head's product
    autocast: Optional[str] = None  # torch.autocast dtype around the forward pass, or None
    core_outside_autocast: bool = False  # run the recurrent core with autocast off (cuDNN would go fp16)
    fused_dtype: Optional[str] = None  # the fused tanh kernel casts its operands to this dtype itself
    grad_scaler: bool = False  # fp16: scale the loss so small gradients survive
    tf32: bool = False  # fp32 cuDNN core on tensor cores in TF32

    def describe(self) -> str:
        core = self.core + (" (TF32 tensor cores)" if self.tf32 and self.core == "fp32" else "")
        how = "fused kernel" if self.kernel == "fused" else ("cuDNN" if self.tf32 or self.grad_scaler or
                                                             self.core_outside_autocast else "torch kernel")
        text = f"recurrent core {core} ({how}), head {self.head}"
        if self.grad_scaler:
            text += ", loss scaling"
        return text + "; weights, optimizer and validation fp32"

    def as_dict(self) -> dict:
        return {"kernel": self.kernel, "core": self.core, "head": self.head, "autocast": self.autocast,
                "loss_scaling": self.grad_scaler, "summary": self.describe()}


def resolve_kernel(device_type: str, cell: str, kernel: str) -> str:
    """auto: the fused kernel on CPU (hand-written BPTT), cuDNN/torch's RNN elsewhere (per-step Python calls cost
    more than cuDNN's whole-sequence kernel on a GPU). gru/lstm always use torch's cells."""
    if cell != "tanh":
        return "nn"
    if kernel == "auto":
        return "fused" if device_type == "cpu" else "nn"
    return kernel


def plan_precision(device_type: str, cell: str, hidden: int, request: str = "auto", kernel: str = "auto", *,
                   bf16_supported: bool = False, tf32: bool = False) -> Plan:
    """What runs in which dtype. `bf16_supported`: the device multiplies bf16 natively (CPU: `cpu_supports_bf16`,
    avx512_bf16/AMX-BF16/Arm bf16 with oneDNN not capped below them; CUDA: torch.cuda.is_bf16_supported()).
    `tf32`: cuDNN may use TF32 for fp32 (CUDA only). Raises UsageError for a request the device cannot honour."""
    if request not in PRECISIONS:
        raise UsageError(f"--precision must be {', '.join(PRECISIONS[:-1])} or {PRECISIONS[-1]}, not {request!r}")
    kernel = resolve_kernel(device_type, cell, kernel)
    fp32 = Plan(kernel=kernel, core="fp32", head="fp32", tf32=tf32 and device_type == "cuda" and kernel == "nn")
    if request == "fp32":
        return fp32
    if device_type == "cpu":
        return _cpu_plan(cell, hidden, request, kernel, bf16_supported, fp32)
    if device_type == "cuda":
        return _cuda_plan(request, kernel, bf16_supported, fp32)
    if request != "auto":
        raise UsageError(f"--precision {request} is for CUDA and CPU devices, not {device_type}; use fp32 or auto")
    return fp32


def _cpu_plan(cell: str, hidden: int, request: str, kernel: str, bf16_supported: bool, fp32: Plan) -> Plan:
    if request == "fp16":
        raise UsageError("--precision fp16 is for CUDA GPUs; on CPU use fp32, bf16 or auto")
    problem = None
    if cell == "tanh" and kernel != "fused":
        problem = f"needs --kernel fused or auto for --cell tanh, not {kernel}"
    elif not bf16_supported:
        problem = "needs a CPU with bf16 instructions (avx512_bf16 or AMX-BF16, or Arm bf16); this one has none"
    if request == "bf16" and problem:
        raise UsageError(f"--precision bf16 on CPU {problem}; use --precision fp32 or auto")
    if request == "auto" and (problem or hidden < CPU_BF16_MIN_HIDDEN):
        return fp32
    if cell == "tanh":  # bf16 operands cast by the kernel, fp32 accumulation
        return Plan(kernel=kernel, core="bf16", head="bf16", fused_dtype="bf16")
    # gru/lstm: torch's CPU kernels under bf16 autocast (1.87x and 1.63x fp32's speed at 2x512 on a bf16 CPU,
    # benchmarks/gated_speed.py)
    return Plan(kernel=kernel, core="bf16", head="bf16", autocast="bf16")


def _cuda_plan(request: str, kernel: str, bf16_supported: bool, fp32: Plan) -> Plan:
    if request == "fp16":
        if kernel == "fused":  # the kernel casts its operands (and the head's) itself
            return Plan(kernel=kernel, core="fp16", head="fp16", fused_dtype="fp16", grad_scaler=True)
        return Plan(kernel=kernel, core="fp16", head="fp16", autocast="fp16", grad_scaler=True)
    if request == "auto":
        # fp32 with cuDNN's TF32 default: on an H200 (benchmarks/README.md, GPU) neither the bf16 head nor fp16
        # trained the tanh, GRU or LSTM models measurably faster (the head is a small share of the work), so
        # lower precision would buy nothing for its cost in accuracy
        return fp32
    if not bf16_supported:
        raise UsageError("--precision bf16: this GPU has no native bf16; use --precision fp16, fp32 or auto")
    if kernel == "fused":  # the kernel honours bf16: it casts its operands itself
        return Plan(kernel=kernel, core="bf16", head="bf16", fused_dtype="bf16")
    # cuDNN would run in fp16 under autocast: the core stays fp32 (TF32 where allowed), the head runs in bf16
    return Plan(kernel=kernel, core="fp32", head="bf16", autocast="bf16", core_outside_autocast=True, tf32=fp32.tf32)


# oneDNN's ISA names (ONEDNN_MAX_CPU_ISA / DNNL_MAX_CPU_ISA, x86-64) below its bf16 ISAs: capped at one of these,
# oneDNN runs bf16 products without bf16 instructions (emulated: far slower, and rounded differently)
_ONEDNN_CAPS_WITHOUT_BF16 = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI")


def onednn_isa_cap(environ=None) -> Optional[str]:
    """The ISA the user capped oneDNN at (ONEDNN_MAX_CPU_ISA, else its older name DNNL_MAX_CPU_ISA), upper-case;
    None where neither is set."""
    import os

    env = os.environ if environ is None else environ
    for name in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):  # oneDNN reads the ONEDNN_ name first
        value = env.get(name, "").strip()
        if value:
            return value.upper()
    return None


def cpu_bf16_check(caps: dict, environ=None, onednn_bf16: bool = True) -> tuple[bool, str]:
    """Whether bf16 products run natively on a CPU with these features, and why (one phrase). `caps`: the CPU's
    feature flags as torch.cpu.get_capabilities() names them ("architecture", "avx512_bf16", "amx_bf16"; on aarch64
    "bf16"); `environ`: where to read a cap on oneDNN (default os.environ); `onednn_bf16`: torch's own check that
    it routes bf16 products through oneDNN at all. Pure: the unit tests fake each kind of CPU through it."""
    arch = str(caps.get("architecture", "")).lower()
    if arch in ("x86_64", "amd64", "x86", "i686", "i386"):
        if not (caps.get("avx512_bf16") or caps.get("amx_bf16")):
            kind = "AVX-512 without avx512_bf16" if caps.get("avx512_f") else "no AVX-512"
            return False, f"no bf16 instructions ({kind}; oneDNN would emulate bf16)"
        cap = onednn_isa_cap(environ)
        if cap in _ONEDNN_CAPS_WITHOUT_BF16:
            return False, f"oneDNN capped below its bf16 ISAs (ONEDNN_MAX_CPU_ISA={cap})"
        if not onednn_bf16:
            return False, "torch does not run bf16 products through oneDNN here"
        return True, "avx512_bf16" if caps.get("avx512_bf16") else "AMX-BF16"
    if arch in ("aarch64", "arm64"):
        if not caps.get("bf16"):
            return False, "no bf16 instructions (Arm bf16 feature missing)"
        if not onednn_bf16:
            return False, "torch does not run bf16 products through oneDNN here"
        return True, "Arm bf16"
    return False, f"no known bf16 instructions on {arch or 'this architecture'}"


def cpu_capabilities() -> dict:
    """This CPU's features: torch's cpuinfo-based table where torch has it, else the flags in /proc/cpuinfo."""
    import platform

    import torch

    caps: dict = {}
    try:
        caps = dict(torch.cpu.get_capabilities())
    except (AttributeError, RuntimeError):
        pass
    if "architecture" not in caps:
        caps["architecture"] = platform.machine()
    if not any(k in caps for k in ("avx512_bf16", "amx_bf16", "bf16")):
        try:
            with open("/proc/cpuinfo") as f:
                for line in f:
                    key, _, value = line.partition(":")
                    if key.strip() in ("flags", "Features"):  # x86, aarch64
                        flags = set(value.split())
                        caps.update(avx512_f="avx512f" in flags, avx512_bf16="avx512_bf16" in flags,
                                    amx_bf16="amx_bf16" in flags, bf16="bf16" in flags)
                        break
        except OSError:
            pass
    return caps


def cpu_bf16_status() -> tuple[bool, str]:
    """(native bf16 here, why): the CPU's own features (avx512_bf16 or AMX-BF16 on x86, bf16 on aarch64), a cap on
    oneDNN, and torch's route for bf16 products (oneDNN)."""
    return cpu_bf16_check(cpu_capabilities(), onednn_bf16=onednn_routes_bf16())


def onednn_routes_bf16() -> bool:
    """torch's own check: it runs bf16 products on CPU through oneDNN (true on any AVX-512 CPU, bf16 or not)."""
    import torch

    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def cpu_supports_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (see `cpu_bf16_status`). torch's mkldnn check alone says yes on
    every AVX-512 CPU, including those without avx512_bf16 where oneDNN emulates bf16."""
    return cpu_bf16_status()[0]


def device_supports_bf16(device) -> bool:
    import torch

    if device.type == "cpu":
        return cpu_supports_bf16()
    if device.type == "cuda":
        try:
            return bool(torch.cuda.is_bf16_supported(including_emulation=False))
        except TypeError:  # older torch without the keyword
            return bool(torch.cuda.is_bf16_supported())
    return False


def plan_for(device, cell: str, hidden: int, request: str = "auto", kernel: str = "auto") -> Plan:
    """`plan_precision` with the capabilities read off the device."""
    import torch

    tf32 = device.type == "cuda" and bool(torch.backends.cudnn.allow_tf32)
    return plan_precision(device.type, cell, hidden, request, kernel, bf16_supported=device_supports_bf16(device),
                          tf32=tf32)


def torch_dtype(name: Optional[str]):
    import torch

    return {None: None, "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]
