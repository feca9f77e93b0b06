"""Kaggle kit: offline kernels with bundled weights and wheels, uploads, push/submit, rehearsal.

    cellseg/kaggle/api.py              the only module that imports ``kaggle`` (lazily)
    cellseg/kaggle/kernel.py           build-kernel: kernel-metadata.json + one code file
    cellseg/kaggle/kernel_template.py  renders templates/kernel_main.py (stdlib-only script)
    cellseg/kaggle/wheels.py           build-wheels: the offline wheels dataset
    cellseg/kaggle/rehearse.py         run a kernel locally as Kaggle would, internet off

Importing this package imports nothing else.
"""
