"""ModelConfig and TrainConfig: the one place where defaults live.

The CLI reads its option defaults from these dataclasses, so `--help` shows them and they cannot drift.
Nothing here imports torch (``charrnn --help`` must stay fast).
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any, Optional

from .errors import UsageError

CELLS = ("tanh", "gru", "lstm")
NONFINITE_POLICIES = ("stop", "skip")
DEFAULT_EPOCHS = 10.0  # a run given no stop at all (no --max-steps, --epochs or --time-budget) trains this many

# `charrnn eval --show / --neuron / --top-neurons`: characters traced and units listed by default
VIEW_MAX_CHARS = 2000
TOP_NEURONS = 10


@dataclass
class ModelConfig:
    """Architecture of a CharRNN. Stored in every checkpoint; `sample` and `eval` rebuild the model from it."""

    vocab_size: int = 0  # filled in from the corpus
    cell: str = "tanh"  # tanh (the seed's recurrence), gru or lstm
    hidden_size: int = 512
    num_layers: int = 2
    # between layers and before the head; 0 disables; None ("auto"): chosen by `auto_dropout` from the number of
    # passes over the training split the run is expected to make (0 for short runs, up to 0.2 for long ones)
    dropout: Optional[float] = None
    # the tanh cell's W_hh at initialisation: KIND[:GAIN] with KIND orthogonal, identity or uniform (torch's
    # nn.RNN default, U(-1/sqrt(H), 1/sqrt(H)), times GAIN)
    recurrent_init: str = "orthogonal:0.5"

    def validate(self) -> None:
        if self.cell not in CELLS:
            raise UsageError(f"--cell must be one of {', '.join(CELLS)}, not {self.cell!r}")
        check_field("hidden_size", self.hidden_size)  # its upper limit is the memory (charrnn.train checks that)
        check_field("num_layers", self.num_layers)
        if self.dropout is not None and not 0.0 <= self.dropout < 1.0:
            raise UsageError(f"--dropout must be auto or in [0, 1), not {self.dropout}")
        parse_recurrent_init(self.recurrent_init)
        if self.cell != "tanh" and self.recurrent_init != default_of(ModelConfig, "recurrent_init"):
            raise UsageError(f"--recurrent-init is for --cell tanh; {self.cell} keeps torch's initialisation")


RECURRENT_INITS = ("orthogonal", "identity", "uniform")


def parse_recurrent_init(spec: str) -> tuple[str, float]:
    """'orthogonal:0.5' -> ('orthogonal', 0.5); the gain defaults to 1."""
    kind, _, gain = str(spec).partition(":")
    kind = kind.strip().lower()
    try:
        value = float(gain) if gain.strip() else 1.0
    except ValueError:
        value = float("nan")
    if kind not in RECURRENT_INITS or not math.isfinite(value) or value < 0:
        raise UsageError(f"--recurrent-init must be KIND[:GAIN] with KIND {', '.join(RECURRENT_INITS)} and GAIN >= 0 "
                         f"(e.g. orthogonal:0.5), not {spec!r}")
    return kind, value


def resolve_optimizer(optimizer: str, cell: str) -> str:
    """--optimizer auto: Muon for the tanh cell (benchmarks/README.md, "What each step learns": it won English and C
    code at equal time on the fp32 and bf16 routes), AdamW for GRU and LSTM (not measured with Muon)."""
    if optimizer != "auto":
        return optimizer
    return "muon" if cell == "tanh" else "adamw"


def parse_dropout(text: str) -> Optional[float]:
    """The --dropout option: 'auto' -> None, else a number."""
    if str(text).strip().lower() == "auto":
        return None
    try:
        return float(text)
    except ValueError:
        raise UsageError(f"--dropout must be auto or a number in [0, 1), not {text!r}") from None


# auto dropout, from the passes over the training split a run is expected to make (tiny-shakespeare, 2x512,
# benchmarks/quality.py; see the README's Quality section): AUTO_DROPOUT_PER_PASS per pass, at most AUTO_DROPOUT_MAX
AUTO_DROPOUT_PER_PASS = 0.005
AUTO_DROPOUT_MAX = 0.2


def auto_dropout(passes: float) -> float:
    """The dropout `--dropout auto` uses for a run expected to make `passes` passes over its training split:
    0.05 at 10 passes (a 300 s run on tiny-shakespeare here), 0.2 from 40 passes on."""
    return round(min(AUTO_DROPOUT_MAX, AUTO_DROPOUT_PER_PASS * max(0.0, passes)), 3)


# --eval-every auto: every EVAL_EVERY_PASSES passes over the training split, at most every EVAL_EVERY_MAX steps and at
# least every EVAL_EVERY_MIN. On a short corpus a size can overfit within 200 steps, so that an evaluation every 200
# never sees its best (3x256 on 30,000 characters of French: 2.05 at ~130 steps, 2.36 at step 200; HISTORY.md)
EVAL_EVERY_MAX = 200
EVAL_EVERY_PASSES = 2
EVAL_EVERY_MIN = 5


def auto_eval_every(batches_per_epoch: int) -> int:
    """The steps between evaluations that `--eval-every auto` uses on a training split of `batches_per_epoch` steps
    a pass: 200 from ~400,000 training characters on (B32 T128), fewer below. With the default splits the scoring
    then costs about 1 % of the training time between two (5 % of the text, scored ~3x faster than trained); the save
    at each evaluation costs more where steps are quick (2x128 on 30,000 characters: ~7 % of its steps in 60 s)."""
    return max(EVAL_EVERY_MIN, min(EVAL_EVERY_MAX, EVAL_EVERY_PASSES * batches_per_epoch))


# --val-chars auto: a quarter of the characters trained between evaluations (an evaluation scores a character about
# 3x faster than a training step trains on one, so validating costs about a twelfth of the training time between
# evaluations), at least VAL_CHARS_FLOOR (tiny-shakespeare's 111,540-character validation split is scored whole) and
# at most VAL_CHARS_CAP (a 1 GB corpus's 50 M-character split is not scored at every evaluation)
VAL_CHARS_FLOOR = 250_000
VAL_CHARS_CAP = 2_000_000
VAL_CHARS_SHARE = 4


def auto_val_chars(eval_every: int, batch_size: int, seq_len: int) -> int:
    """The characters `--val-chars auto` scores at each evaluation: eval_every x batch_size x seq_len / 4, within
    [VAL_CHARS_FLOOR, VAL_CHARS_CAP]."""
    return min(VAL_CHARS_CAP, max(VAL_CHARS_FLOOR, eval_every * batch_size * seq_len // VAL_CHARS_SHARE))


def parse_val_chars(text) -> Optional[int]:
    """The --val-chars option: 'auto' -> None, 'all' -> 0 (the whole split), else a number of characters (its range is
    checked with the other numbers)."""
    if isinstance(text, int) and not isinstance(text, bool):
        return text
    word = str(text).strip().lower()
    if word in ("auto", "all"):
        return None if word == "auto" else 0
    try:
        return int(word.replace(",", ""))
    except ValueError:
        raise UsageError(f"--val-chars must be auto, all or a number of characters, not {text!r}") from None


@dataclass
class TrainConfig:
    """How to train. Stored in every checkpoint so that a resumed run continues with the same settings."""

    # data
    val_frac: float = 0.05
    test_frac: float = 0.05
    glob: str = "*.txt"
    follow_links: bool = False  # a directory corpus: enter symlinked directories too
    # stream layout for truncated BPTT
    batch_size: int = 32  # B parallel streams (32 beat 64 at 60 s and 300 s on tiny-shakespeare: more updates)
    seq_len: int = 128  # T steps per truncation window
    # optimisation
    lr: float = 3e-3  # 3e-3 beat 2e-3 and 5e-3 at 300 s; 8e-3 wins at 60 s but stalls at 300 s
    min_lr_frac: float = 0.1  # cosine decays to lr * min_lr_frac
    warmup_steps: int = 50
    weight_decay: float = 0.01
    # "muon": Muon for the recurrent and input matrices, AdamW for the rest; "auto": muon for tanh, adamw for gru and
    # lstm (Muon's gains were measured on tanh only), decided when the run starts (`resolve_optimizer`)
    optimizer: str = "auto"
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0  # max global gradient norm; 0 disables
    # validate, sample and save an exponential moving average of the weights with this decay per step
    # (charrnn/training/averaging.py); 0: the weights as trained
    ema: float = 0.995
    # when to stop (any that is set; with none set, `epochs` defaults to 10)
    max_steps: Optional[int] = None
    epochs: Optional[float] = None
    time_budget: Optional[float] = None  # seconds
    # evaluation, logging, checkpoints
    eval_every: Optional[int] = None  # None: auto (auto_eval_every, decided when the run starts and recorded)
    # characters of the validation split each evaluation scores (evenly spaced windows, the same every time); None:
    # auto (auto_val_chars, decided when the run starts and recorded in its checkpoints); 0: the whole split
    val_chars: Optional[int] = None
    log_every: int = 10
    sample_every: Optional[int] = None  # a short sample every N steps; None: at each evaluation; 0: never
    save_every: Optional[str] = None  # "500": every 500 steps; "10m": every 10 minutes; None: at each evaluation
    keep_last: int = 0  # also keep the N newest step-XXXXXXXX.pt checkpoints; 0 keeps only latest.pt and best.pt
    schedule_steps: Optional[int] = None  # the cosine decays over this many steps; None: over the step limit
    on_nonfinite: str = "stop"  # a NaN/Inf loss or gradient: stop (exit 1) or skip the step
    seed: int = 1337
    device: str = "auto"
    kernel: str = "auto"  # tanh cell: fused (hand-written BPTT), nn (torch.nn.RNN) or auto
    precision: str = "auto"  # auto, fp32, bf16 or fp16 (CUDA, with loss scaling): charrnn.model.precision decides what
    # runs in which dtype

    def validate(self) -> None:
        # every number first: finite and in its range (FIELD_RANGES), one line naming the option
        for f in dataclasses.fields(self):
            if f.name in FIELD_RANGES and getattr(self, f.name) is not None:
                check_field(f.name, getattr(self, f.name))
        if self.val_frac + self.test_frac >= 1.0:
            raise UsageError("--val-frac plus --test-frac must leave something to train on")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise UsageError(f"--precision must be auto, fp32, bf16 or fp16, not {self.precision!r}")
        if self.optimizer not in ("auto", "adamw", "muon"):
            raise UsageError(f"--optimizer must be auto, adamw or muon, not {self.optimizer!r}")
        if self.kernel not in ("auto", "fused", "nn"):
            raise UsageError(f"--kernel must be auto, fused or nn, not {self.kernel!r}")
        self.save_interval()  # raises on a value it cannot read
        if self.on_nonfinite not in NONFINITE_POLICIES:
            raise UsageError(f"--on-nonfinite must be {' or '.join(NONFINITE_POLICIES)}, not {self.on_nonfinite!r}")
        if self.sample_every is not None and (isinstance(self.sample_every, bool) or self.sample_every < 0):
            raise UsageError(f"--sample-every must be >= 0 (0 turns samples off), not {self.sample_every}")

    def save_interval(self) -> tuple[Optional[int], Optional[float]]:
        """`save_every` as (steps, None), (None, seconds) or (None, None): a bare number counts steps, a number
        with a unit (s, m, h, d) is wall-clock time."""
        value = self.save_every
        if value is None:
            return None, None
        text = str(value).strip()
        if text.isdigit():
            if int(text) < 1:
                raise UsageError(f"--save-every must be at least 1 step, not {text}")
            return int(text), None
        unreadable = UsageError(f"cannot read --save-every {value!r}: use steps (500) or a time (90s, 10m, 1h)")
        if text[-1:].lower() not in ("s", "m", "h", "d"):
            raise unreadable
        try:
            seconds = parse_duration(text)
        except UsageError:
            raise unreadable from None
        if not seconds or seconds <= 0 or not math.isfinite(seconds):
            raise UsageError(f"--save-every must be a positive time, not {value!r}")
        return None, seconds


def _flag(name: str) -> str:
    return name.replace("_", "-")


# The numeric fields' ranges: name -> (low, high, low_open, high_open, note); None leaves that side unbounded. Every
# float must also be finite (nan and inf are refused whatever the range). `TrainConfig.validate`,
# `ModelConfig.validate` and config files (cli/configfile.py) check through `check_field`, before anything is created.
MAX_LR = 10.0  # AdamW's step is about lr per weight: beyond this nothing trains
MAX_EPOCHS = 1_000_000
INT64 = (-(2**63), 2**63 - 1)
FIELD_RANGES: dict[str, tuple] = {
    "hidden_size": (1, None, False, False, ""),
    "num_layers": (1, None, False, False, ""),
    "val_frac": (0.0, 1.0, False, True, ""),
    "test_frac": (0.0, 1.0, False, True, ""),
    "batch_size": (1, None, False, False, ""),
    "seq_len": (1, None, False, False, ""),
    "lr": (0.0, MAX_LR, True, False, ""),
    "min_lr_frac": (0.0, 1.0, False, False, ""),
    "warmup_steps": (0, None, False, False, ""),
    "weight_decay": (0.0, None, False, False, ""),
    "beta1": (0.0, 1.0, False, True, ""),
    "beta2": (0.0, 1.0, False, True, ""),
    "grad_clip": (0.0, None, False, False, " (0 disables)"),
    "ema": (0.0, 1.0, False, True, " (0 disables)"),
    "max_steps": (1, None, False, False, ""),
    "epochs": (0.0, float(MAX_EPOCHS), True, False, ""),
    "time_budget": (0.0, None, True, False, " (seconds)"),
    "eval_every": (1, None, False, False, ""),
    "val_chars": (0, None, False, False, " (0 or all: the whole split; auto: sized to the run)"),
    "log_every": (1, None, False, False, ""),
    "keep_last": (0, None, False, False, ""),
    "schedule_steps": (1, None, False, False, ""),
    "seed": (INT64[0], INT64[1], False, False, " (a 64-bit integer)"),
}
NO_OPTION = {"beta1", "beta2"}  # config-file keys without a command-line option


def option_name(name: str) -> str:
    """How a message names a field: its option (--lr), or the config key where there is no option (beta1)."""
    return name if name in NO_OPTION else f"--{_flag(name)}"


def check_field(name: str, value: Any, label: Optional[str] = None) -> None:
    """UsageError unless `value` is a finite number in the range FIELD_RANGES gives `name`; `label` names it in the
    message (default: its option)."""
    low, high, low_open, high_open, note = FIELD_RANGES[name]
    check_number(label or option_name(name), value, low, high, low_open, high_open, note)


def check_number(label: str, value: Any, low=None, high=None, low_open: bool = False, high_open: bool = False,
                 note: str = "") -> None:
    """UsageError "LABEL must be in [low, high), not VALUE" unless value is a finite number in that range."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (
        isinstance(value, int) or math.isfinite(value))  # an int may be past float's range: finite anyway
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        raise UsageError(f"{label} must be {_range_text(low, high, low_open, high_open)}{note}, not {value}")


def _range_text(low, high, low_open: bool, high_open: bool) -> str:
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{_num(low)}, {_num(high)}{')' if high_open else ']'}"
    if low is None:
        return f"a number {'<' if high_open else '<='} {_num(high)}"
    if isinstance(low, int) and not low_open and low >= 1:
        return f"at least {low}"
    return f"{'' if isinstance(low, int) else 'a finite number '}{'>' if low_open else '>='} {_num(low)}"


def _num(x) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def to_dict(config: Any) -> dict:
    return dataclasses.asdict(config)


def from_dict(cls, values: dict):
    """Build a config from a checkpoint's dict, ignoring keys this version does not know."""
    known = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in known})


def default_of(cls, name: str):
    for f in dataclasses.fields(cls):
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return f.default
            return f.default_factory()  # type: ignore[misc]
    raise KeyError(name)


_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([smhd]?)\s*$", re.IGNORECASE)
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str | float | int | None) -> Optional[float]:
    """'90' or '90s' -> 90.0, '5m' -> 300.0, '1h' -> 3600.0, '1.5h' -> 5400.0."""
    if text is None:
        return None
    if isinstance(text, (int, float)):
        return float(text)
    match = _DURATION.match(text)
    if not match:
        raise UsageError(f"cannot read duration {text!r}: use seconds or a number with s, m, h or d (e.g. 90s, 5m, 1h)")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2).lower()]



def step_limit(max_steps: Optional[int], epochs: Optional[float], time_budget: Optional[float],
               batches_per_epoch: Optional[int]) -> Optional[int]:
    """The step a run stops at: --max-steps and/or --epochs (the smaller; DEFAULT_EPOCHS when no stop is given at
    all), at least one step; None with a time budget alone (or epochs with `batches_per_epoch` unknown: None)."""
    total = max_steps
    if max_steps is None and epochs is None and time_budget is None:
        epochs = DEFAULT_EPOCHS
    if epochs is not None and batches_per_epoch is not None:
        by_epochs = max(1, math.ceil(epochs * batches_per_epoch))
        total = by_epochs if total is None else min(total, by_epochs)
    return total

__all__ = ["ModelConfig", "TrainConfig", "CELLS", "parse_duration", "to_dict", "from_dict", "default_of", "field",
           "auto_dropout", "resolve_optimizer", "parse_dropout", "parse_recurrent_init", "check_field", "check_number",
           "FIELD_RANGES", "auto_val_chars", "parse_val_chars", "auto_eval_every", "DEFAULT_EPOCHS", "step_limit"]
