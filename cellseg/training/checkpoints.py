"""Writing a run's checkpoints: ``last.pt`` to resume from, ``best.pt`` to ship.

    files = RunCheckpoints(out, spec=model.spec.to_dict(), config=to_dict(cfg), data=desc)
    files.save_last(state)                  # full resume state (optimiser, schedule, RNG, ...)
    files.save_best(state, selection="val_score")

The file format (plain types, ``torch.load(weights_only=True)``, sha256 sidecar) and loading a
model for inference live in ``cellseg.checkpoint``, which inference and the Kaggle kernel use
without importing anything from ``cellseg.training``.

``best.pt`` carries the weights (and EMA weights), the config, data description and metrics, but
no optimiser or RNG state: it is a third of ``last.pt``'s size for an Adam-trained network and
is never resumed from. Its ``selection`` key says how it was chosen: ``"val_score"`` (best
validation score so far) or ``"last_no_validation"`` (the run had no validation images, so these
are simply the final weights).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from cellseg.checkpoint import save_checkpoint

if TYPE_CHECKING:  # pragma: no cover
    from cellseg.training.state import TrainState

SELECTIONS = ("val_score", "last_no_validation")


class RunCheckpoints:
    """``last.pt`` / ``best.pt`` of one run folder; ``meta`` (spec, config, data, ...) goes into
    both."""

    def __init__(self, out: str | Path, **meta: Any) -> None:
        self.out = Path(out)
        self.meta = meta
        self.last_step: int | None = None  # optimiser step of the newest last.pt
        # called before a write when the folder is gone (deleted mid-run); it may recreate it
        self.on_missing_out: Callable[[], None] | None = None

    def check_out(self) -> None:
        """Before writing anything into the folder: call ``on_missing_out`` when it is gone."""
        if not self.out.is_dir() and self.on_missing_out is not None:
            self.on_missing_out()

    @property
    def last_path(self) -> Path:
        return self.out / "last.pt"

    @property
    def best_path(self) -> Path:
        return self.out / "best.pt"

    def save_last(self, state: "TrainState") -> None:
        """The full resume state at this point (skipped when this step is already saved)."""
        if self.last_step == state.step and self.last_path.exists():
            return
        self.check_out()
        save_checkpoint(self.last_path, **self.meta, **state.state_dict())
        self.last_step = state.step

    def save_best(self, state: "TrainState", selection: str) -> None:
        """The current weights as ``best.pt``; ``selection`` in ``SELECTIONS``."""
        if selection not in SELECTIONS:
            raise ValueError(f"selection {selection!r}; valid: {', '.join(SELECTIONS)}")
        metrics = state.best_metrics if selection == "val_score" else state.metrics
        self.check_out()
        save_checkpoint(self.best_path, **self.meta, model=state.model.state_dict(),
                        ema=state.ema.state_dict() if state.ema is not None else None,
                        epoch=state.epoch, step=state.step, metrics=metrics,
                        best_score=state.best_score, selection=selection)
