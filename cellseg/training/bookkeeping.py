"""Everything around the train step: logs, validation, checkpoints, early stopping, Ctrl-C.

    keeper = Bookkeeper(cfg, state, files, dist, cadence, val=validator, log=log)
    stats = train_one_epoch(state, loader, opts, after_step=keeper.after_step)
    stop = keeper.end_epoch(stats)
    keeper.finish()

Cadence (``cellseg.config.TrainSection``) in epochs and in optimiser steps: step rows go to
``steps.csv`` every ``log_every`` steps (kept in memory, written with the checkpoints); validation
runs every ``val_every`` epochs / ``val_every_steps`` steps and at the end; ``last.pt`` is
written every ``save_every`` epochs / ``save_every_steps`` steps, at the end and when the run is
interrupted; ``best.pt`` only when the validation score improves. ``curves.png`` is redrawn
after a validation and at the end. So a step costs forward, backward and optimiser plus one host
sync, and nothing else between cadence points. Only rank 0 validates and writes under DDP.

SIGINT/SIGTERM (``stop_requests``) only raise a flag; the loop stops after the optimiser step in
flight, at a consistent point, writes ``last.pt`` and exits with 130. A second Ctrl-C interrupts
at once.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator

from cellseg.config import TrainSection
from cellseg.training import distributed as D
from cellseg.training.checkpoints import RunCheckpoints
from cellseg.training.log import TrainLog

if TYPE_CHECKING:  # pragma: no cover
    from cellseg.training.state import TrainState

_NOT_LOSSES = ("lr", "images", "batches", "seconds")


@dataclass(frozen=True)
class Plan:
    """The run's length: ``steps_per_epoch`` and ``total_steps`` (the LR schedule's span)."""

    batches_per_epoch: int
    steps_per_epoch: int
    total_steps: int

    @classmethod
    def of(cls, tc: TrainSection, batches_per_epoch: int) -> "Plan":
        steps = max(1, -(-batches_per_epoch // tc.grad_accum))
        total = steps * tc.epochs
        if tc.max_steps is not None:
            total = min(total, tc.max_steps)
        return cls(batches_per_epoch, steps, total)

    @property
    def epochs(self) -> int:
        return -(-self.total_steps // self.steps_per_epoch)


class StopFlag:
    """Set by SIGINT/SIGTERM (see ``stop_requests``); read once per optimiser step."""

    def __init__(self) -> None:
        self.signal: int | None = None

    def __bool__(self) -> bool:
        return self.signal is not None


@contextlib.contextmanager
def stop_requests() -> Iterator[StopFlag]:
    """Turn the first SIGINT/SIGTERM into a flag (the loop stops cleanly); a second SIGINT
    raises KeyboardInterrupt as usual. Outside the main thread nothing is installed."""
    flag = StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):  # noqa: ARG001
        if flag:
            raise KeyboardInterrupt
        flag.signal = signum
        print(f"\n{signal.Signals(signum).name}: stopping after this step and writing last.pt "
              "(again to stop at once)", file=sys.stderr, flush=True)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


class Bookkeeper:
    """Logs, validation, checkpoints and stop decisions of one run (see module docstring).

    validate: ``(model) -> metrics dict with "score"``, or None when there are no validation
    images (then ``best.pt`` is the final weights, flagged ``selection: last_no_validation``).
    """

    def __init__(self, tc: TrainSection, state: "TrainState", files: RunCheckpoints,
                 plan: Plan, dist: Any, *, validate: Callable[[Any], dict] | None,
                 stop: StopFlag, log: Callable[[str], None]) -> None:
        self.tc, self.state, self.files, self.plan, self.dist = tc, state, files, plan, dist
        self.validate, self.stop, self.log = validate, stop, log
        self.main = dist.is_main
        self.train_log = TrainLog(files.out)
        self.interrupted = False
        self.early_stopped = False

    # ----------------------------------------------------------------------------- step
    def after_step(self, state: "TrainState", losses: dict[str, float] | None) -> bool:
        """Called after every optimiser step; True stops the epoch."""
        tc, step = self.tc, state.step
        if losses is not None and self.main:
            self.train_log.add_step({"step": step, "epoch": state.epoch,
                                     "lr": state.optimizer.param_groups[0]["lr"], **losses})
        # the epoch's last batch and the run's last step are handled by end_epoch
        at_epoch_end = state.batch_in_epoch >= self.plan.batches_per_epoch
        if not at_epoch_end and step < self.plan.total_steps:
            if _due(step, tc.val_every_steps):
                self._validate()
            if _due(step, tc.save_every_steps):
                self._save()
        # under DDP every rank must leave the epoch at the same step
        self.interrupted = D.any_rank(bool(self.stop), self.dist.device)
        self.early_stopped = D.any_rank(self.early_stopped, self.dist.device)
        return self.interrupted or self.early_stopped

    # ----------------------------------------------------------------------------- epoch
    def end_epoch(self, stats: dict[str, float]) -> bool:
        """Epoch row, epoch-cadence validation and save; return True when the run must stop."""
        state, tc = self.state, self.tc
        stats = D.mean_over_ranks(stats, self.dist.device)
        finished = state.batch_in_epoch >= self.plan.batches_per_epoch
        epoch_no = state.epoch + 1  # the epoch just trained (1-based), finished or not
        if finished:
            state.end_epoch()
        done = state.step >= self.plan.total_steps or (finished and state.epoch >= tc.epochs)
        # a step cadence that falls on the epoch's last step is honoured here (after_step
        # leaves epoch ends to this method)
        validated = (done or finished and (_due(epoch_no, tc.val_every)
                                           or _due(state.step, tc.val_every_steps))) \
            and self._validate()
        row: dict[str, Any] = {"epoch": epoch_no, "step": state.step, "lr": stats["lr"],
                               "seconds": round(stats["seconds"], 2),
                               "images_per_s": round(stats["images"] * self.dist.world_size
                                                     / max(stats["seconds"], 1e-9), 3)}
        row.update({k: v for k, v in stats.items() if k not in _NOT_LOSSES})
        if validated:
            row.update({f"val_{k}": v for k, v in state.metrics.items()
                        if k == "score" or k.startswith("score_")})
        if self.main:
            self.train_log.add_epoch(row)
            msg = f"epoch {epoch_no}: loss {stats.get('loss', float('nan')):.4f}"
            if validated:
                msg += f", val score {state.metrics['score']:.4f} (best {state.best_score:.4f})"
            self.log(msg)
        stop = done or self.interrupted or self.early_stopped
        if stop or finished and (_due(epoch_no, tc.save_every)
                                 or _due(state.step, tc.save_every_steps)):
            self._save(plot=validated or stop)
        if self.early_stopped:
            self.log(f"early stop: no improvement in {state.bad_vals} validations")
        return bool(D.broadcast_object(stop))

    def finish(self) -> None:
        """End of run (also after an interrupt): final ``last.pt``, ``best.pt`` without
        validation, logs and curves."""
        if self.validate is None and self.main:
            self.files.save_best(self.state, "last_no_validation")
        self._save(plot=True)
        D.barrier()

    # ----------------------------------------------------------------------------- helpers
    def _validate(self) -> bool:
        if self.validate is None or not self.main:
            return False
        state = self.state
        improved = state.record_validation(self.validate(state.eval_model))
        if improved:
            self.files.save_best(state, "val_score")
        patience = self.tc.early_stop_patience
        self.early_stopped = patience is not None and state.bad_vals >= patience
        return True

    def _save(self, plot: bool = False) -> None:
        if not self.main:
            return
        # logs first: a kill between the two leaves rows beyond last.pt, which a resume drops
        # (TrainLog.resume); the other order would lose the rows of the step last.pt holds
        self.files.check_out()
        self.train_log.write(plot=plot)
        self.files.save_last(self.state)


def _due(count: int, every: int) -> bool:
    """A cadence of ``every`` (0: off) falls on ``count``."""
    return every > 0 and count % every == 0
