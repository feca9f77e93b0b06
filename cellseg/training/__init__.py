"""Training: everything ``cellseg train`` needs and inference never does.

    cellseg train --config unet_tiny --data data/synth/competition --out runs/unet_tiny

- ``loop``: ``get_args_parser()`` / ``main(args)``, the orchestration, read top to bottom.
- ``data``: records and their split, the epoch order, the one training DataLoader.
- ``state``: ``TrainState`` (model, optimiser, schedule, scaler, EMA, counters, RNG) with
  ``state_dict()`` / ``load_state_dict()``.
- ``engine``: ``train_one_epoch`` (AMP, grad accumulation, non-finite abort), ``evaluate``,
  optimiser / LR schedule / EMA builders.
- ``bookkeeping``: logs, validation, checkpoint and early-stop cadence, Ctrl-C.
- ``checkpoints``: writing ``last.pt`` / ``best.pt`` (the format is ``cellseg.checkpoint``).
- ``log``: ``log.csv`` / ``steps.csv`` / ``curves.png``.
- ``distributed``: torchrun / DDP helpers.

Layering: inference (``cellseg.infer``), ``cellseg.models``, ``cellseg.data`` and
``cellseg.kaggle`` never import this package.
"""
