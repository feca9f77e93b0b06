"""cellseg: cell instance segmentation kit for Sartorius (Kaggle 2021) and LIVECell.

Importing the package does no work: no torch, no network, no files. Submodules are imported
explicitly (``from cellseg.core import rle``; ``from cellseg.core.metrics import score``).
"""

__version__ = "0.2.0"
