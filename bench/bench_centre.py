"""The ceiling of each UNet centre target: perfect maps of the truth, decoded, scored.

    .venv/bin/python -m bench centre     # ~3 CPU-min (../shared/data/sartorius_409)

For every annotated image of ``sartorius_409`` the target maps are built from its true masks
(``cellseg.data.targets.unet_maps``) once per kind of centre channel (``CENTRES``: "distance",
"peak"), decoded with the kit's default decode (``InferenceConfig().decode`` through
``decode_unet``, what ``predict`` uses) and scored against the truth with the
competition metric. A network that learned its targets perfectly scores this; where it is far
below 1 the encoding itself loses cells. A second table blurs every map by a Gaussian of 1 px
first, a stand-in for a network's smooth output: an encoding whose seeds vanish under it asks
the network for sharper maps than it draws. Prints the mean score per cell type and the cells
decoded against the true count.
"""

from __future__ import annotations

import time

import numpy as np


def ceiling(records, blur: float = 0.0) -> dict[str, dict[str, tuple[float, int, int, int]]]:
    """Per centre kind and cell type: (mean score, images, cells decoded, true cells) of the
    perfect maps of ``records`` (annotated ``ImageRecord``s) decoded with the default decode;
    ``blur`` > 0 smooths each (3, H, W) map stack by a Gaussian of that sigma in px first."""
    from scipy.ndimage import gaussian_filter

    from cellseg.core.metrics import match_image
    from cellseg.data.targets import CENTRES, unet_maps
    from cellseg.infer.config import InferenceConfig
    from cellseg.models.unet_decode import decode_unet

    decode = InferenceConfig().decode

    rows: dict[str, dict[str, list]] = {c: {} for c in CENTRES}
    for r in records:
        masks = r.masks()
        for c in CENTRES:
            maps = unet_maps(masks, centre=c)
            if blur:
                maps = np.stack([gaussian_filter(m, blur) for m in maps])
            inst = decode_unet(maps, **decode)
            s = match_image(list(r.rles), inst.to_rles(), shape=r.shape).score
            row = rows[c].setdefault(str(r.cell_type), [[], 0, 0])
            row[0].append(s)
            row[1] += len(inst)
            row[2] += len(masks)
    return {c: {t: (float(np.mean(v[0])), len(v[0]), v[1], v[2]) for t, v in sorted(per.items())}
            for c, per in rows.items()}


def main() -> None:
    from bench import shared_train_records
    from cellseg.infer.config import InferenceConfig

    records = shared_train_records()
    if records is None:
        return
    t0 = time.process_time()
    print(f"{len(records)} images, perfect maps decoded with the default decode "
          f"{InferenceConfig().decode}")
    for blur in (0.0, 1.0):
        table = ceiling(records, blur)
        types = list(next(iter(table.values())))
        print("\n" + ("maps as built" if not blur else f"maps blurred by a Gaussian of {blur:g} px")
              + "\n")
        print("| centre | " + " | ".join(f"{t} ({table['distance'][t][1]})" for t in types)
              + " | all | cells decoded / true |")
        print("|---|" + "---:|" * (len(types) + 1) + "---|")
        for c, per in table.items():
            mean = sum(v[0] * v[1] for v in per.values()) / sum(v[1] for v in per.values())
            print(f"| {c} | " + " | ".join(f"{per[t][0]:.3f}" for t in types)
                  + f" | {mean:.3f} | "
                  + ", ".join(f"{t} {per[t][2]:,} / {per[t][3]:,}" for t in types) + " |")
    print(f"\n{(time.process_time() - t0) / 60:.1f} CPU-min")


if __name__ == "__main__":
    main()
