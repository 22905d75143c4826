"""The training loop: stateful truncated BPTT over parallel streams, clipping, the optimizer step (Muon and AdamW, or AdamW), warm-up + cosine decay.

    for each batch: detach the state (the truncation point) -> forward -> loss -> backward -> average across
    ranks -> clip -> step (or skip a non-finite one) -> schedule -> log -> evaluate and save -> stop?

`Trainer.run` is that loop; each policy is an object in a module of its own (the modules of training/, and the
metrics log in store/runlog.py), with its own tests.
"""

from __future__ import annotations

import logging
from typing import Optional

from .nonfinite import MAX_SKIPS_IN_A_ROW, NonFiniteGuard  # noqa: F401  (re-exported)
from .run import Run, TrainHooks, TrainResult, result_of
from .schedule import learning_rate
from .savepoints import Checkpoints, SavePoints, to_cpu  # noqa: F401
from .signals import Agreed, Agreement, SignalFlag, interrupted  # noqa: F401
from .step import Step, clip_gradients, make_optimizer  # noqa: F401
from ..store.metrics import LN2
from ..store.runlog import step_row

log = logging.getLogger("charrnn")

hooks = TrainHooks()  # tests replace it (tests/faults.py); train() reads it when it starts a run


class Trainer:
    def __init__(self, run: Run, hooks: TrainHooks = hooks):
        from .decide import AutoDropout
        from .progress import ProgressDisplay, RateMeter
        from .resume import starting_state
        from .samplelog import SamplesWhileTraining
        from .schedule import EndCost
        from .validation import Validation
        from ..store.runlog import MetricsLog

        self.run_, self.cfg, self.dist, self.device = run, run.cfg, run.dist, run.device
        self.hooks, self.stop, self.clock = hooks, run.stop, hooks.clock
        self.command_started = self.clock() if run.started is None else run.started
        self.startup = 0.0  # this command's seconds before its first step (agreed across ranks when training starts)
        p = (run.resumed or {}).get("progress", {})  # a resumed run's
        self.step, self.epoch, self.batch_index = p.get("step", 0), p.get("epoch", 0), p.get("batch", 0)
        self.elapsed_before = self.elapsed = p.get("elapsed", 0.0)
        self.finishing, self.last_loss = None, None  # finishing: the stop rule's reason once this step is the last
        self.local_batch = run.shard.stop - run.shard.start  # this rank's streams
        chars_per_step = self.cfg.batch_size * self.cfg.seq_len
        self.dropout = AutoDropout(run.model_config, self.stop, len(run.batcher), chars_per_step, first_step=self.step)
        self.steps, self.checkpoints = Step(run), Checkpoints(run)
        self.nonfinite = NonFiniteGuard(self.cfg.on_nonfinite, self.checkpoints.latest_path, self.device,
                                        p.get("skipped_in_a_row", 0))
        self.validation = Validation(run, hooks, best=p.get("best_val_loss"))
        self.state = starting_state(run, self.steps, self.local_batch)  # a resumed run's, with its RNG
        self.metrics = MetricsLog(run.run_dir, enabled=self.dist.is_main, hold_failures=self.dist.enabled)
        self.metrics.open(keep_upto=self.step)
        self.display = ProgressDisplay(run.progress, self.stop.total_steps, self.stop.budget, self.step,
                                       log_every=self.cfg.log_every)
        self.samples = SamplesWhileTraining(run, self.display, keep_upto=self.step)
        self.rate = RateMeter(chars_per_step)
        self.end_cost = EndCost.for_run(self.validation.scored_chars(), chars_per_step,
                                        self.steps.parameter_count(), self.steps.average is not None, self.elapsed)
        self.save_points = SavePoints(*self.cfg.save_interval(), elapsed=self.elapsed_before)
        self.validation.say_what_it_scores()
        # per-step host reads only where a step's outcome must be known at once: skipping a non-finite step, the
        # ranks' agreement, or a caller's on_step. Otherwise a non-finite step is noted on the device and the run
        # stops at the next read (a log, evaluation or save point), before anything is saved.
        self.agreement = Agreement(self.dist, self.cfg.on_nonfinite == "skip" or run.on_step is not None)

    # -- the loop -------------------------------------------------------------------------------------------------

    def run(self) -> TrainResult:
        from .allocator import keep_freed_memory
        from .sharing import for_device

        keep_freed_memory()  # each step reuses the last step's memory instead of faulting in fresh pages
        self.steps.model.train()
        start = self.clock()
        self.startup = self.dist.sum_values([start - self.command_started])[0] / self.dist.world
        # the CPU's threads, shared with other charrnn runs training on it (not between one torchrun job's ranks)
        self.share = for_device(self.device, self.dist.world)
        try:
            with SignalFlag() as self.signals:
                self.share.join()
                while (stopped_by := self.finishing or self.stop.reason(self.step, self.elapsed)) is None:
                    self.share.check(self.clock())
                    self.train_one_step(start)
        finally:
            self.share.leave()
            self.display.close()
            self.metrics.close()
        return result_of(self, stopped_by)

    def train_one_step(self, start: float) -> None:
        if self.batch_index == 0:
            self.state = self.steps.model.init_state(self.local_batch, self.device)  # each epoch starts cold
        x, y = self.steps.to_device(*self.run_.batcher.batch(self.batch_index, self.run_.shard))
        lr = learning_rate(self.cfg, self.step, self.stop.progress(self.step, self.elapsed, self.overhead()))
        self.steps.set_learning_rate(lr)
        # truncated BPTT: keep the state's value (row i of this batch continues row i of the last one) but cut the
        # graph, so backward stops at this window's start
        state_in = self.state.detach()
        loss, bad, self.state, grad_norm = self.steps.forward_backward(x, y, state_in,
                                                                       lambda loss: self.hooks.loss(self, loss))
        agreed = self.agreement.agree(loss, bad, self.signals, self.elapsed_before + (self.clock() - start))
        if agreed.loss is None:
            self.nonfinite.note(bad, self.step + 1)  # acted on at the next host read (read_loss)
        if agreed.finite:
            self.steps.optimizer_step()
            self.nonfinite.step_taken()
        else:  # raises unless --on-nonfinite skip allows one more; the next window starts from the last finite state
            self.nonfinite.skip_or_stop(self.step + 1)
            self.steps.drop_gradients()
            self.state = state_in
            self.metrics.row({"step": self.step + 1, "epoch": self.epoch, "skipped": "non-finite loss"})
        self.advance()
        self.hooks.after_step(self)
        self.elapsed = agreed.elapsed if agreed.elapsed is not None else self.elapsed_before + (self.clock() - start)
        self.observe_step()
        self.log_evaluate_and_save(agreed, loss, lr, grad_norm)

    def log_evaluate_and_save(self, agreed, loss, lr: float, grad_norm) -> None:
        rate = self.rate.tick()
        due = self.step % self.cfg.eval_every == 0
        self.finishing = self.stop.reason(self.step, self.elapsed, self.overhead(twice=due))
        evaluating = due or self.finishing is not None
        loss_value = self.read_loss(agreed, loss, evaluating or self.signals.code != 0)
        if self.step % self.cfg.log_every == 0 and agreed.finite:
            self.metrics.row(step_row(self.step, self.epoch, loss_value, lr, grad_norm, self.elapsed, rate))
        saved = self.evaluate_and_save(evaluating)
        if self.samples.due(self.step, final=self.finishing is not None):
            self.end_cost.busy("other")  # on every rank alike, though rank 0 alone samples: their clocks are agreed
            self.samples.take(self.step, self.steps, self.validation.last, self.validation.last_step)
        self.display.update(self.step, self.epoch, self.elapsed + self.startup, self.last_loss, self.validation.last,
                            lr, rate)
        if self.run_.on_step is not None:
            self.run_.on_step({"step": self.step, "epoch": self.epoch, "loss": loss_value, "lr": lr})
        # a single process acts on a signal at once; ranks act on the one they agreed on
        stop_code = agreed.stop_code if self.dist.enabled else self.signals.code
        if stop_code:
            self.stop_on_signal(stop_code, saved)

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
        self.dropout.observe(self.step, self.elapsed + self.startup, self.steps.model)

    def read_loss(self, agreed, loss, must: bool) -> Optional[float]:
        """The step's loss on the host: read from the device only at a log, evaluation or save point (each read
        waits for the GPU). First, whether any step since the last read was non-finite: then the run stops."""
        value = agreed.loss
        if value is None and (must or self.save_points.due(self.step, self.elapsed)
                              or self.step % self.cfg.log_every == 0):
            self.nonfinite.check_noted()
            value = loss.item()
        if agreed.finite and value is not None:
            self.last_loss = value
        return value

    def evaluate_and_save(self, evaluating: bool) -> bool:
        """Evaluate (and save latest, and best if improved) at evaluation points; else save at --save-every's save
        points. Returns whether a checkpoint was saved."""
        if evaluating:
            self.end_cost.busy("eval")
            val = self.validation.score(self, self.display, final=self.finishing is not None)
            if val is not None:
                self.metrics.row({"step": self.step, "val_loss": val, "val_bpc": val / LN2})
            self.save(best=self.validation.record(self.step, val))
            return True
        if self.save_points.due(self.step, self.elapsed):
            self.end_cost.busy("other")
            self.save(best=False)
            return True
        return False

    def save(self, best: bool) -> None:
        self.checkpoints.save(self, best, failure=self.metrics.failure or self.samples.log.failure)
        self.save_points.saved(self.elapsed)

    def stop_on_signal(self, code: int, saved: bool) -> None:
        if not saved:
            self.save(best=False)
        raise interrupted(code, self.step, self.checkpoints.latest_path, self.run_.run_dir, self.dist.is_main)
