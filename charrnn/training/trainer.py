"""The training loop: stateful truncated BPTT over parallel streams, clipping, AdamW, warm-up + cosine decay.

    for each batch: detach the state (the truncation point) -> forward -> loss -> backward -> average across
    ranks -> clip -> step (or skip a non-finite one) -> schedule -> log -> evaluate and save -> stop?

`Trainer.run` is that loop; each policy lives in its own module with its own tests: the stop rule and schedule
(training/schedule.py), --dropout auto (training/decide.py), precision (model/precision.py), resume and RNG (training/resume.py), the metrics log
(store/runlog.py), the progress display (training/progress.py), samples while training (training/samplelog.py), the collectives
(training/distributed.py). SIGINT/SIGTERM set a flag; the loop finishes the current step, saves, and raises `Interrupted`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

from ..store import checkpoint as ckpt_io
from ..config import to_dict
from ..errors import EXIT_SIGINT, EXIT_SIGTERM, CharrnnError, Interrupted, NonFiniteLossError

log = logging.getLogger("charrnn")

# with on_nonfinite="skip", this many non-finite steps in a row mean the run has diverged: stop anyway
MAX_SKIPS_IN_A_ROW = 10


def clip_gradients(parameters, max_norm: float):
    """Scale gradients so their global L2 norm is at most max_norm (0 disables); returns the norm before."""
    import torch

    limit = max_norm if max_norm > 0 else float("inf")
    return torch.nn.utils.clip_grad_norm_(list(parameters), limit, foreach=True)


def make_optimizer(model, lr: float, betas: tuple, weight_decay: float):
    """AdamW with weight decay on the weight matrices only (biases and nothing else are decayed)."""
    import torch

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, foreach=True)


def to_cpu(obj):
    """A copy of a (nested) state dict with every tensor on the CPU; tuples become lists."""
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_cpu(v) for v in obj]
    return obj


class TrainHooks:
    """Fault injection for tests. Does nothing by default; tests replace `hooks` (tests/faults.py). Each method
    gets the Trainer (its step, its dist.rank, its signals)."""

    def loss(self, trainer: "Trainer", loss):
        """The loss of step trainer.step + 1, before backward."""
        return loss

    def after_step(self, trainer: "Trainer") -> None:
        """Called after each optimizer step (trainer.step is the step just taken)."""

    def validating(self, trainer: "Trainer") -> None:
        """Called as each validation starts."""

    def clock(self) -> float:
        """The seconds the trainer times itself with (the time budget, training time, wall time)."""
        return time.perf_counter()


hooks = TrainHooks()


@dataclass
class TrainResult:
    run_dir: str
    latest: str
    best: Optional[str]
    step: int
    epoch: int
    best_val_loss: Optional[float]
    last_val_loss: Optional[float]
    last_train_loss: Optional[float]
    elapsed: float
    stopped_by: str
    val_history: list = field(default_factory=list)
    wall: Optional[float] = None  # seconds from building the trainer to the end of this session
    elapsed_before: float = 0.0  # training time before this session (a resumed run's)
    step_limit: Optional[int] = None  # the max_steps the size choice set (charrnn.training.autosize), if it set one
    expected_steps: Optional[float] = None  # the steps the size choice expected this run to make


@dataclass
class Run:
    """What a training run is made of, decided before the loop starts (charrnn.train builds it)."""

    model_config: object
    cfg: object
    text: object  # the loaded corpus (source, sha256, chars)
    vocab: object
    splits: object
    batcher: object
    stop: object  # schedule.StopRule
    run_dir: str
    dist: object
    shard: slice
    device: object
    plan: object  # precision.Plan
    resumed: Optional[dict] = None
    progress: bool = True
    on_step: Optional[Callable[[dict], None]] = None
    started: Optional[float] = None  # when the command started, on the hooks' clock (a time budget counts from it)
    size_choice: Optional[str] = None  # why the model has its size, when the run chose it (charrnn.training.autosize)
    step_limit: Optional[int] = None  # the max_steps that choice set, where more steps would overfit the corpus
    expected_steps: Optional[float] = None  # the steps that choice expected this run to make


@dataclass
class Agreed:
    """One step's outcome as every rank sees it."""

    finite: bool
    loss: Optional[float]  # None: not read from the device this step
    stop_code: int = 0  # EXIT_SIGINT / EXIT_SIGTERM when a signal stops the run
    elapsed: Optional[float] = None


class SignalFlag:
    """SIGINT/SIGTERM set a flag; the loop acts on it at the next step boundary (a second signal changes nothing,
    so it cannot break a save in progress)."""

    def __init__(self):
        self.signum: Optional[int] = None
        self._old = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                if signal.getsignal(sig) is not signal.SIG_IGN:  # ignored from the start (a background job): stays so
                    self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signum is None:
            self.signum = signum

    def __exit__(self, *exc):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)

    @property
    def code(self) -> int:
        return 0 if self.signum is None else EXIT_SIGINT if self.signum == signal.SIGINT else EXIT_SIGTERM


class Trainer:
    def __init__(self, run: Run, hooks: TrainHooks = hooks):
        from .decide import DropoutProbe, dropout_for_steps
        from .progress import ProgressDisplay, RateMeter
        from ..store.runlog import MetricsLog
        from .samplelog import SampleLog

        self.run_, self.cfg, self.dist, self.device = run, run.cfg, run.dist, run.device
        self.hooks, self.stop, self.clock = hooks, run.stop, hooks.clock
        self.started = self.clock()
        self.command_started = self.started if run.started is None else run.started
        self.startup = 0.0  # this command's seconds before its first step (agreed across ranks when training starts)
        self.step = self.epoch = self.batch_index = self.skipped_in_a_row = 0
        self.elapsed_before = self.elapsed = 0.0
        self.best_val: Optional[float] = None
        self.last_val: Optional[float] = None
        self.last_val_step: Optional[int] = None
        self.finishing: Optional[str] = None  # the stop rule's reason once the step just taken is the last
        self.last_loss: Optional[float] = None
        self.val_history: list = []
        self.local_batch = run.shard.stop - run.shard.start  # this rank's streams
        self.latest_path = os.path.join(run.run_dir, ckpt_io.LATEST)
        self.best_path = os.path.join(run.run_dir, ckpt_io.BEST)
        if run.model_config.dropout is None and self.stop.budget is None:  # --dropout auto, length in steps
            run.model_config.dropout, why = dropout_for_steps(self.stop.total_steps, len(run.batcher))
            log.info(f"dropout {run.model_config.dropout:g} ({why})")
        self._build_model()
        if run.resumed is not None:
            self._restore(run.resumed)
        elif self.dist.enabled:
            import torch

            torch.manual_seed(self.cfg.seed + 1 + self.dist.rank)  # distinct dropout masks per rank
        self.metrics = MetricsLog(run.run_dir, enabled=self.dist.is_main, hold_failures=self.dist.enabled)
        self.metrics.open(keep_upto=self.step)
        self.samples = SampleLog(run.run_dir, enabled=self.dist.is_main, hold_failures=self.dist.enabled)
        self.samples.open(keep_upto=self.step)
        self.sampler = None  # built at the first sample
        self.probe = None
        if run.model_config.dropout is None:
            self.probe = DropoutProbe(self.step, self.stop.budget, self.stop.total_steps, len(run.batcher),
                                      self.cfg.batch_size * self.cfg.seq_len)
        self.rate = RateMeter(self.cfg.batch_size * self.cfg.seq_len)
        self.end_cost = self._end_cost()
        self.display = ProgressDisplay(run.progress, self.stop.total_steps, self.stop.budget, self.step,
                                       log_every=self.cfg.log_every)
        self.save_steps, self.save_seconds = self.cfg.save_interval()
        self.say_what_validation_scores()
        self.last_save_elapsed = self.elapsed_before  # training time, which all ranks agree on
        # per-step host reads only where a step's outcome must be known at once: skipping a non-finite step, the
        # ranks' agreement, or a caller's on_step. Otherwise a non-finite step is noted on the device and the run
        # stops at the next read (a log, evaluation or save point), before anything is saved.
        self.check_every_step = self.cfg.on_nonfinite == "skip" or run.on_step is not None

    def _end_cost(self):
        """What the end of the run costs (schedule.EndCost), with a first guess at a save: the checkpoint's bytes
        (weights and AdamW's two moments) at 100 MB/s, plus a tenth of a second."""
        from ..inference.evaluation import scored_chars
        from .schedule import EndCost

        val = len(self.run_.splits.val)
        chars = scored_chars(val, self.cfg.batch_size, self.cfg.val_chars) if val >= 2 else 0
        checkpoint_bytes = (12 + 4 * (self.average is not None)) * sum(p.numel() for p in self.model.parameters())
        return EndCost(chars, self.cfg.batch_size * self.cfg.seq_len, 0.1 + checkpoint_bytes / 100e6,
                       self.elapsed_before)

    def say_what_validation_scores(self) -> None:
        from ..inference.evaluation import scored_chars

        split = len(self.run_.splits.val) - 1  # every character but the first is predicted
        chars = scored_chars(split + 1, self.cfg.batch_size, self.cfg.val_chars)
        if 0 < chars < split:
            log.info(f"validation: {chars:,} of the split's {split:,} characters at each evaluation, in evenly spaced "
                     f"windows (--val-chars)")

    def _build_model(self) -> None:
        import torch

        from ..model.network import CharRNN
        from ..model.precision import torch_dtype

        torch.manual_seed(self.cfg.seed)
        self.model = CharRNN(self.run_.model_config, kernel=self.run_.plan.kernel).to(self.device)
        self.dist.broadcast_parameters(self.model)  # rank 0's weights everywhere (equal seeds need not suffice)
        self.model.use_precision(self.run_.plan)
        log.info(f"precision: {self.run_.plan.describe()}{self._loop_note()}")
        self.autocast = torch_dtype(self.run_.plan.autocast)
        self.scaler = torch.amp.GradScaler(self.device.type) if self.run_.plan.grad_scaler else None
        self.optimizer = make_optimizer(self.model, self.cfg.lr, (self.cfg.beta1, self.cfg.beta2),
                                        self.cfg.weight_decay)
        self.average = None  # --ema: the weights validated, sampled and saved for use (charrnn/training/averaging.py)
        if self.cfg.ema > 0:
            from .averaging import WeightAverage

            self.average = WeightAverage(self.model, self.cfg.ema)
        self.state = self.model.init_state(self.local_batch, self.device)
        self.first_bad = torch.full((), -1, dtype=torch.int64, device=self.device)

    def _loop_note(self) -> str:
        """Which loop steps the fused tanh kernel here: compiled (numba, charrnn/model/compiled.py) or torch's ops."""
        plan = self.run_.plan
        if plan.kernel != "fused" or self.run_.model_config.cell != "tanh":
            return ""
        if self.device.type == "cpu" and plan.fused_dtype is None:
            from ..model import compiled

            return "; tanh loops compiled (numba)" if compiled.available() else "; tanh loops in torch (no numba)"
        return ""

    def _restore(self, resumed: dict) -> None:
        from .resume import restore_rng, schedule_change_warning

        trained = resumed.get("train_weights")  # saved with --ema: "model" holds the averages
        self.model.load_state_dict(resumed["model"] if trained is None else trained)
        if self.average is not None:  # a run saved without averages starts them from its weights
            self.average.load(resumed["model"], resumed["progress"].get("ema_updates", 0))
        self.optimizer.load_state_dict(resumed["optimizer"])
        if self.scaler is not None and resumed.get("grad_scaler"):
            self.scaler.load_state_dict(resumed["grad_scaler"])
        p = resumed["progress"]
        self.step, self.epoch, self.batch_index = p["step"], p["epoch"], p["batch"]
        self.elapsed_before = self.elapsed = p["elapsed"]
        self.best_val = p["best_val_loss"]
        self.skipped_in_a_row = p.get("skipped_in_a_row", 0)
        self.state = resumed["hidden"][..., self.run_.shard, :].to(self.device)  # (..., B, H): this rank's streams
        restore_rng(resumed["rng"], self.dist, self.device)
        log.info(f"resuming {resumed['path']} at step {self.step}")
        warning = schedule_change_warning(p, self.stop.horizon, self.step)
        if warning:
            log.warning(warning)

    # -- the loop -------------------------------------------------------------------------------------------------

    def run(self) -> TrainResult:
        from .allocator import keep_freed_memory

        keep_freed_memory()  # each step reuses the last step's memory instead of faulting in fresh pages
        self.model.train()
        start = self.clock()
        self.startup = self.dist.sum_values([start - self.command_started])[0] / self.dist.world
        try:
            with SignalFlag() as signals:
                self.signals = signals
                while (stopped_by := self.finishing or self.stop.reason(self.step, self.elapsed)) is None:
                    if self.batch_index == 0:
                        self.state = self.model.init_state(self.local_batch, self.device)  # each epoch starts cold
                    x, y = self.next_batch()
                    lr = self.set_learning_rate()
                    # truncated BPTT: keep the state's value (row i of this batch continues row i of the last one)
                    # but cut the graph, so backward stops at this window's start
                    self.state = state_in = self.state.detach()
                    loss, bad = self.forward_backward(x, y)  # forward, loss, backward, average, clip
                    now = self.elapsed_before + (self.clock() - start)
                    agreed = self.agree(loss, bad, signals, now)
                    if agreed.finite:
                        self.optimizer_step()
                    else:
                        self.skip_or_stop(state_in)  # raises unless --on-nonfinite skip allows one more
                    self.advance()
                    self.hooks.after_step(self)
                    self.elapsed = agreed.elapsed if agreed.elapsed is not None else (
                        self.elapsed_before + (self.clock() - start))
                    self.observe_step()
                    rate = self.rate.tick()
                    due = self.step % self.cfg.eval_every == 0
                    self.finishing = self.stop.reason(self.step, self.elapsed, self.overhead(twice=due))
                    evaluating = due or self.finishing is not None
                    loss_value = self.read_loss(agreed, loss, evaluating or signals.code != 0)
                    if self.step % self.cfg.log_every == 0 and agreed.finite:
                        self.metrics.row({"step": self.step, "epoch": self.epoch, "loss": loss_value, "lr": lr,
                                          "grad_norm": self.grad_norm.item(), "elapsed": round(self.elapsed, 3),
                                          "chars_per_sec": round(rate, 1)})
                    saved = self.evaluate_and_save(evaluating)
                    self.sample_if_due()
                    self.display.update(self.step, self.epoch, self.elapsed + self.startup, self.last_loss, self.last_val,
                                        lr, rate)
                    if self.run_.on_step is not None:
                        self.run_.on_step({"step": self.step, "epoch": self.epoch, "loss": loss_value, "lr": lr})
                    # a single process acts on a signal at once; ranks act on the one they agreed on
                    stop_code = agreed.stop_code if self.dist.enabled else signals.code
                    if stop_code:
                        self.stop_on_signal(stop_code, saved)
        finally:
            self.display.close()
            self.metrics.close()
        return self.result(stopped_by)

    # -- the steps of the loop ------------------------------------------------------------------------------------

    def next_batch(self):
        import numpy as np
        import torch

        x_np, y_np = self.run_.batcher.batch(self.batch_index, self.run_.shard)
        x, y = torch.from_numpy(x_np.astype(np.int64)), torch.from_numpy(y_np.astype(np.int64))
        if self.device.type == "cuda":  # page-locked host memory lets the copy to the GPU run asynchronously
            x, y = x.pin_memory(), y.pin_memory()
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def set_learning_rate(self) -> float:
        from .schedule import learning_rate

        lr = learning_rate(self.cfg, self.step, self.stop.progress(self.step, self.elapsed, self.overhead()))
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def forward_backward(self, x, y):
        """The loss (a device tensor) and whether the step is non-finite (a device bool: no host sync)."""
        import torch

        with torch.autocast(self.device.type, dtype=self.autocast or torch.bfloat16,
                            enabled=self.autocast is not None):
            _, loss, state = self.model(x, self.state, y)
        self.state = state.float()  # a no-op in fp32; the carried state stays fp32 in every mode
        loss = self.hooks.loss(self, loss)
        self.optimizer.zero_grad(set_to_none=True)
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
        self.dist.average_gradients(self.model.parameters())  # a rank's NaN reaches every rank's gradients
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)  # the clip and the check see the true gradients
        self.grad_norm = clip_gradients(self.model.parameters(), self.cfg.grad_clip)
        # with loss scaling an overflowed gradient is the scaler's business (it skips the step and lowers the
        # scale); a non-finite loss is ours
        finite = torch.isfinite(loss.detach())
        if self.scaler is None:
            finite = finite & torch.isfinite(self.grad_norm)
        return loss, ~finite

    def agree(self, loss, bad, signals: SignalFlag, elapsed: float) -> Agreed:
        """What every rank must agree on after a step: finite or not, the mean loss, a signal, the elapsed time.
        Under torch.distributed one all-reduce carries it all (a signal arriving after it waits for the next
        step, or one rank would save while another trains on)."""
        import torch

        dist = self.dist
        if dist.enabled:
            flags = torch.tensor([signals.code == EXIT_SIGINT, signals.code == EXIT_SIGTERM, elapsed],
                                 dtype=torch.float64).to(dist.device)
            shared = dist.all_reduce_sum(torch.cat([torch.stack([loss.detach().double(), bad.double()]),
                                                    flags])).tolist()
            code = (EXIT_SIGINT if shared[2] > 0 else EXIT_SIGTERM) if shared[2] + shared[3] else 0
            return Agreed(shared[1] == 0, shared[0] / dist.world, code, shared[4] / dist.world)
        if self.check_every_step:
            return Agreed(not bool(bad.item()), loss.item(), signals.code)
        # noted on the device; acted on at the next host read (read_loss)
        self.first_bad = torch.where((self.first_bad < 0) & bad, self.step + 1, self.first_bad)
        return Agreed(True, None, signals.code)

    def optimizer_step(self) -> None:
        stepped = True
        if self.scaler is not None:
            # the scaler skips a step whose gradients overflowed and lowers its scale exactly then; --ema's average
            # must not move on a step the weights did not take (the step already waits for the scaler's check)
            scale = self.scaler.get_scale()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            stepped = self.scaler.get_scale() >= scale
        else:
            self.optimizer.step()
        self.skipped_in_a_row = 0
        if self.average is not None and stepped:
            self.average.update()

    def skip_or_stop(self, state_in) -> None:
        if self.cfg.on_nonfinite == "skip" and self.skipped_in_a_row < MAX_SKIPS_IN_A_ROW:
            # the weights stay as they were; the state this window produced may be non-finite, so the next window
            # starts from the last finite one
            self.skipped_in_a_row += 1
            self.optimizer.zero_grad(set_to_none=True)
            self.state = state_in
            log.warning(f"non-finite loss at step {self.step + 1}: skipped the step")
            self.metrics.row({"step": self.step + 1, "epoch": self.epoch, "skipped": "non-finite loss"})
            return
        in_a_row = f" ({self.skipped_in_a_row + 1} steps in a row)" if self.skipped_in_a_row else ""
        self.nonfinite_stop(self.step + 1, in_a_row)

    def nonfinite_stop(self, step: int, in_a_row: str = "") -> None:
        """Raised before any save, so the bad state never reaches latest.pt or best.pt."""
        where = (f"the last good checkpoint is {self.latest_path}" if os.path.exists(self.latest_path)
                 else "no checkpoint was saved")
        raise NonFiniteLossError(f"non-finite loss at step {step}{in_a_row}; {where}")

    def advance(self) -> None:
        self.step += 1
        self.batch_index += 1
        if self.batch_index == len(self.run_.batcher):
            self.batch_index, self.epoch = 0, self.epoch + 1

    def overhead(self, twice: bool = False) -> float:
        """The seconds a time budget must cover besides training time: this command's start-up and what the end of
        the run needs (twice the end when an evaluation is due now: schedule.EndCost)."""
        return self.startup + self.end_cost.seconds(twice)

    def observe_step(self) -> None:
        """What the step just taken tells: how long steps and evaluations take (EndCost), and --dropout auto's
        decision with a time budget (the probe projects the steps the budget leaves after start-up)."""
        self.end_cost.observe(self.elapsed)
        if self.probe is None:
            return
        decided = self.probe.observe(self.step, self.elapsed + self.startup)
        if decided is not None:
            self.model.set_dropout(decided[0])  # the model's own config copy, which checkpoints save
            log.info(f"dropout {decided[0]:g} ({decided[1]})")
            self.probe = None

    def read_loss(self, agreed: Agreed, loss, must: bool) -> Optional[float]:
        """The step's loss on the host: read from the device only at a log, evaluation or save point (each read
        waits for the GPU). First, whether any step since the last read was non-finite: then the run stops."""
        value = agreed.loss
        save_point = (self.save_steps is not None and self.step % self.save_steps == 0) or (
            self.save_seconds is not None and self.elapsed - self.last_save_elapsed >= self.save_seconds)
        if value is None and (must or save_point or self.step % self.cfg.log_every == 0):
            bad_step = int(self.first_bad.item())
            if bad_step >= 0:
                self.nonfinite_stop(bad_step)
            value = loss.item()
        if agreed.finite and value is not None:
            self.last_loss = value
        return value

    def evaluate_and_save(self, evaluating: bool) -> bool:
        """Evaluate (and save latest, and best if improved) at evaluation points; else save when --save-every
        says so. Returns whether a checkpoint was saved."""
        from ..inference.evaluation import LN2

        if evaluating:
            self.end_cost.busy("eval")
            val = self.validation_loss()
            improved = True  # without a validation split, best is the latest
            if val is not None:
                self.last_val, self.last_val_step = val, self.step
                self.val_history.append(val)
                self.metrics.row({"step": self.step, "val_loss": val, "val_bpc": val / LN2})
                improved = self.best_val is None or val < self.best_val
                self.best_val = val if improved else self.best_val
            self.save(best=improved)
            return True
        if (self.save_steps is not None and self.step % self.save_steps == 0) or (
                self.save_seconds is not None and self.elapsed - self.last_save_elapsed >= self.save_seconds):
            self.end_cost.busy("other")
            self.save(best=False)
            return True
        return False

    def validation_loss(self) -> Optional[float]:
        """Mean nats/char over the validation split (or the --val-chars windows of it, the same every time), in fp32,
        summed across ranks (each scores its share)."""
        from ..inference.evaluation import score_ids, scored_chars

        val, streams, limit = self.run_.splits.val, self.cfg.batch_size, self.cfg.val_chars
        if len(val) < 2:
            return None
        self.hooks.validating(self)
        compute_dtype, self.model.compute_dtype = self.model.compute_dtype, None
        try:
            with self.averaged(), self.display.validating(scored_chars(len(val), streams, limit),
                                                          final=self.finishing is not None, of=len(val) - 1):
                score = score_ids(self.model, val, streams=streams, chunk=self.cfg.seq_len, device=self.device,
                                  rank=self.dist.rank, world=self.dist.world, limit=limit)
        finally:
            self.model.compute_dtype = compute_dtype
        nats, chars = self.dist.sum_values([score.nats, float(score.chars)])
        return nats / chars

    def sample_if_due(self) -> None:
        """A short sample every --sample-every steps (default: at each evaluation; 0: never) and at the end: to
        samples.txt (rank 0) and above the progress bar (unless --quiet)."""
        from .samplelog import Sampler, header

        every = getattr(self.cfg, "sample_every", None)
        if every == 0 or (self.step % (every or self.cfg.eval_every) != 0 and self.finishing is None):
            return
        self.end_cost.busy("other")  # on every rank alike, though rank 0 alone samples: their clocks are agreed
        if not self.dist.is_main:
            return
        if self.sampler is None:
            self.sampler = Sampler(self.model.config, self.run_.vocab)
        with self.averaged():
            text = self.sampler(self.model)
        self.samples.write(self.step, self.last_val, self.last_val_step, text)
        shown = text.replace("\r\n", "\n").replace("\r", "\\r")  # a lone CR would overprint the line
        self.display.message(f"{header(self.step, self.last_val, self.last_val_step)}\n{shown}")

    def averaged(self):
        """A context in which the model holds the weights a user gets (--ema's averages, else as trained)."""
        return self.average.applied() if self.average is not None else contextlib.nullcontext()

    def stop_on_signal(self, code: int, saved: bool) -> None:
        if not saved:
            self.save(best=False)
        name = "SIGINT" if code == EXIT_SIGINT else "SIGTERM"
        raise Interrupted(f"{name}: stopped after step {self.step}; saved {self.latest_path} "
                          f"(continue with: charrnn train --resume {self.run_.run_dir})" if self.dist.is_main else "",
                          code)

    # -- checkpoints ----------------------------------------------------------------------------------------------

    def save(self, best: bool) -> None:
        """latest.pt (and best.pt, and a step file with --keep-last) on rank 0; a failure on rank 0 is raised on
        every rank together."""
        run_dir = self.run_.run_dir
        paths = [self.latest_path] + ([self.best_path] if best else [])
        if self.cfg.keep_last:
            paths.append(os.path.join(run_dir, ckpt_io.step_name(self.step)))
        payload = self.snapshot()  # every rank takes part in its collectives
        failure = self.metrics.failure or self.samples.failure
        if self.dist.is_main and failure is None:
            try:
                ckpt_io.save_checkpoint(payload, paths)
                if self.cfg.keep_last:
                    # only now that the new checkpoint is in place; never the file this run resumed from, and never
                    # a later one left by an abandoned continuation
                    resumed_from = self.run_.resumed["path"] if self.run_.resumed is not None else None
                    ckpt_io.prune_step_checkpoints(run_dir, self.cfg.keep_last, protect=resumed_from, upto=self.step)
            except CharrnnError as exc:
                failure = exc
        failure = self.dist.agree_on_failure(failure)  # also the barrier that keeps ranks together
        if failure is not None:
            raise failure
        self.last_save_elapsed = self.elapsed

    def snapshot(self) -> dict:
        import torch

        from .resume import rng_snapshot

        dist, cfg, run = self.dist, self.cfg, self.run_
        # collectives first: every rank must take part, whichever writes
        hidden = torch.cat(dist.all_gather(self.state.detach()), dim=-2) if dist.enabled else self.state.detach()
        rng = rng_snapshot(dist, self.device)
        return {
            "model_config": to_dict(self.model.config),
            "train_config": to_dict(cfg),
            "vocab": run.vocab.chars,
            "model": self.average.state_dict() if self.average is not None else self.weights(),
            "train_weights": self.weights() if self.average is not None else None,
            "optimizer": to_cpu(self.optimizer.state_dict()),
            "progress": {
                "step": self.step,
                "epoch": self.epoch,
                "batch": self.batch_index,
                "elapsed": self.elapsed,
                "best_val_loss": self.best_val,
                "chars_seen": self.step * cfg.batch_size * cfg.seq_len,
                "world_size": dist.world,
                "schedule_steps": self.stop.horizon,
                "skipped_in_a_row": self.skipped_in_a_row,
                "ema_updates": self.average.updates if self.average is not None else 0,
                "step_limit": run.step_limit,
                "stopped_by": self.finishing,  # set in the run's last checkpoint: how it ended
            },
            "hidden": hidden.cpu(),
            "rng": rng,
            "corpus": {"source": run.text.source, "sha256": run.text.sha256, "chars": run.text.chars},
            "precision": run.plan.as_dict(),
            "model_size": run.size_choice,
            "grad_scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "torch_version": str(torch.__version__),
            "saved_at": time.time(),
        }

    def weights(self) -> dict:
        return {k: v.detach().cpu() for k, v in self.model.state_dict().items()}

    def result(self, stopped_by: str) -> TrainResult:
        return TrainResult(
            run_dir=self.run_.run_dir,
            latest=self.latest_path,
            best=self.best_path if os.path.exists(self.best_path) else None,
            step=self.step,
            epoch=self.epoch,
            best_val_loss=self.best_val,
            last_val_loss=self.last_val,
            last_train_loss=self.last_loss,
            elapsed=self.elapsed,
            stopped_by=stopped_by,
            val_history=self.val_history,
            wall=self.clock() - self.command_started,
            elapsed_before=self.elapsed_before,
            step_limit=self.run_.step_limit,
            expected_steps=self.run_.expected_steps,
        )
