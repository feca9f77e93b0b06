"""cellseg: cell instance segmentation kit for Sartorius (Kaggle 2021) and LIVECell.

Importing the package does no work: no torch, no network, no files. Submodules are imported
explicitly (``from cellseg import rle``; ``from cellseg.metrics import score``).
"""

__version__ = "0.1.0"
