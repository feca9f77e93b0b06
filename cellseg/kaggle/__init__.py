"""Kaggle kit: offline kernels with bundled weights and wheels, uploads, push/submit, rehearsal.

    cellseg/kaggle/api.py              the only module that imports ``kaggle`` (lazily)
    cellseg/kaggle/image.py            the dated description of Kaggle's image (images/*.json) and
                                       its cached rehearsal env
    cellseg/kaggle/names.py            Kaggle's naming rules, checked before any network call
    cellseg/kaggle/kernel.py           build-kernel: kernel-metadata.json + one code file
    cellseg/kaggle/kernel_template.py  renders templates/kernel_main.py (stdlib-only script)
    cellseg/kaggle/wheels.py           build-wheels: the offline wheels dataset, for the image
    cellseg/kaggle/rehearse.py         run a kernel locally as Kaggle would (on its image), offline

Importing this package imports nothing else.
"""
