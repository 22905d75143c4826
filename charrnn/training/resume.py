"""Resuming a run: which options may change, the configuration a resumed run uses, and the RNG state a checkpoint
saves and restores (so that a stopped and resumed run equals an uninterrupted one)."""

from __future__ import annotations

import dataclasses
from typing import Optional

from ..config import ModelConfig, TrainConfig, from_dict, to_dict
from ..errors import DataError, UsageError

# options that may differ when resuming; any other difference is refused
RESUMABLE_CHANGES = {"max_steps", "epochs", "time_budget", "eval_every", "val_chars", "log_every", "device", "kernel",
                     "precision", "save_every", "keep_last", "on_nonfinite", "sample_every", "ema"}
# the learning-rate schedule and clipping may change on resume only when asked for (allow_lr_change), because the
# run then no longer equals an uninterrupted one
LR_CHANGES = {"lr", "min_lr_frac", "warmup_steps", "schedule_steps", "grad_clip"}


def merge_configs(resumed: dict, model_config: ModelConfig, train_config: TrainConfig, explicit: set,
                  allow_lr_change: bool = False) -> tuple[ModelConfig, TrainConfig]:
    """The checkpoint's configuration with the options the user set on purpose (`explicit`) that may change;
    UsageError naming each option set to something else that may not."""
    if resumed.get("format") == "charrnn-safetensors":  # charrnn.store.modelfile: the weights alone, nothing to resume
        raise UsageError(f"cannot resume from {resumed['path']}: a .safetensors model file holds no optimizer or "
                         f"data state; resume from the run's checkpoint (its latest.pt)")
    saved_model = from_dict(ModelConfig, resumed["model_config"])
    saved_train = from_dict(TrainConfig, resumed["train_config"])
    if "ema" not in resumed["train_config"]:  # saved before --ema existed: it trained without an average
        saved_train.ema = 0.0
    if "optimizer" not in resumed["train_config"]:  # saved before --optimizer existed: it trained with AdamW
        saved_train.optimizer = "adamw"
    changeable = RESUMABLE_CHANGES | (LR_CHANGES if allow_lr_change else set())
    for what, new_cfg, old_cfg in (("architecture", model_config, saved_model),
                                   ("training configuration", train_config, saved_train)):
        differences = []
        for name in to_dict(old_cfg):
            if name in explicit and name not in changeable and name != "vocab_size":
                new, old = getattr(new_cfg, name), getattr(old_cfg, name)
                if new != old and not (name == "dropout" and new is None or name == "optimizer" and new == "auto"):
                    # auto accepts what was decided
                    differences.append(f"--{name.replace('_', '-')} {new} (checkpoint has {old})")
        if differences:
            hint = ""
            if what != "architecture" and any(d.split()[0][2:].replace("-", "_") in LR_CHANGES for d in differences):
                hint = " (--allow-lr-change accepts a changed learning-rate schedule or clipping)"
            raise UsageError(f"cannot resume with a different {what}: " + "; ".join(differences) + hint)
    changes = {name: getattr(train_config, name) for name in changeable & explicit if hasattr(saved_train, name)}
    return saved_model, dataclasses.replace(saved_train, **changes)


def check_corpus(resumed: dict, text, vocab) -> None:
    """The corpus and its characters must be the run's own."""
    saved = resumed["corpus"]
    if text.sha256 != saved["sha256"]:
        raise DataError(
            f"cannot resume: the corpus {text.source} differs from the one this run was trained on "
            f"({text.chars} characters, sha256 {text.sha256[:12]}...; the run's had {saved['chars']} "
            f"characters, sha256 {saved['sha256'][:12]}...)"
        )
    from ..data.vocab import Vocab

    if Vocab(resumed["vocab"]) != vocab:
        raise DataError("cannot resume: the corpus's characters differ from the checkpoint's vocabulary")


def rng_snapshot(dist, device) -> dict:
    """torch's CPU generator (each rank's, under torch.distributed) and, on CUDA, the device's generator that
    dropout draws from. A collective under torch.distributed: every rank must call it."""
    import torch

    rng = {"torch": torch.get_rng_state()}
    if dist.enabled:
        rng["torch_ranks"] = dist.all_gather(torch.get_rng_state())
    if device.type == "cuda":
        rng["cuda_ranks"] = dist.all_gather(torch.cuda.get_rng_state(device))
    return rng


def restore_rng(rng: dict, dist, device) -> None:
    """The generators as `rng_snapshot` saved them (this rank's share). Not restored (not saved): cuDNN's own
    dropout state and the MPS generator, so a GPU run with cuDNN dropout resumes close to, not equal to, an
    uninterrupted one."""
    import torch

    torch.set_rng_state(rng["torch_ranks"][dist.rank] if dist.enabled and "torch_ranks" in rng else rng["torch"])
    if device.type == "cuda" and "cuda_ranks" in rng:
        torch.cuda.set_rng_state(rng["cuda_ranks"][dist.rank], device)


def schedule_change_warning(progress: dict, horizon: Optional[int], step: int) -> Optional[str]:
    old = progress.get("schedule_steps")
    if old is not None and horizon != old and step < (horizon or 0):
        return (f"the learning-rate schedule now decays over {horizon} steps instead of {old}, so this run will "
                f"differ from an uninterrupted one (pass --schedule-steps to fix the schedule's length)")
    return None


def starting_state(run, steps, streams: int):
    """The carried hidden state the loop starts from (this rank's `streams`), with `steps` (training.step.Step)
    and the RNG where a resumed run left them; a fresh distributed run seeds each rank's dropout masks apart."""
    import logging

    import torch

    resumed = run.resumed
    if resumed is None:
        if run.dist.enabled:
            torch.manual_seed(run.cfg.seed + 1 + run.dist.rank)  # distinct dropout masks per rank
        return steps.model.init_state(streams, run.device)
    steps.restore(resumed)
    restore_rng(resumed["rng"], run.dist, run.device)
    log = logging.getLogger("charrnn")
    log.info(f"resuming {resumed['path']} at step {resumed['progress']['step']}")
    warning = schedule_change_warning(resumed["progress"], run.stop.horizon, resumed["progress"]["step"])
    if warning:
        log.warning(warning)
    return resumed["hidden"][..., run.shard, :].to(run.device)  # (..., B, H): this rank's streams
