"""Data sets: the competition folder, LIVECell, the synthetic generator, and training pipelines.

Every loader returns ``ImageRecord`` objects (``cellseg.data.record``), so models, metrics and
training never care which data set an image came from.
"""
