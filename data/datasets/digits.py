"""``digits``: the UCI handwritten digits shipped with scikit-learn, laid out like MNIST.

1,797 real scans, 8 x 8 with intensities 0-16 (each pixel counts the ink of a 4 x 4 block of
the original 32 x 32 bitmap). No download: the data is part of scikit-learn. MNIST's layout
is reproduced: the digit is scaled into a 20 x 20 box (bilinear, which keeps the strokes
smooth where nearest-neighbour would draw 2.5-pixel blocks), its 0-16 ink scaled to 0-255,
and it is placed in a 28 x 28 field so that its centre of mass falls on the field's centre.
There is no official test set (scikit-learn ships only UCI's test part), so the merged
70/15/15 split is the only one.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from data.datasets.core import DatasetSpec, OfficialImages, add_dataset
from utils import UserError

FIELD = 28
BOX = 20
INK_LEVELS = 16  # the scans count ink pixels in 4 x 4 blocks: 0 to 16

# channel_statistics(read_digits(...).images) over all 1,797 images after the layout above
# (population standard deviation of all pixels in [0, 1]); tests/test_data.py recomputes them.
DIGITS_MEAN = (0.155739,)
DIGITS_STD = (0.277321,)


def mnist_layout(scans: np.ndarray) -> torch.Tensor:
    """(N, 8, 8) scans with values 0-16 -> (N, 1, 28, 28) uint8, digit in a 20 x 20 box centred by mass."""
    ink = torch.as_tensor(np.asarray(scans), dtype=torch.float32).unsqueeze(1) * (255 / INK_LEVELS)
    # Bilinear upsampling is a convex combination of neighbours, so values stay within 0-255.
    boxes = F.interpolate(ink, size=(BOX, BOX), mode="bilinear", align_corners=False)
    boxes = boxes.round().to(torch.uint8).squeeze(1).numpy()

    field_centre = (FIELD - 1) / 2  # 13.5: pixel centres run 0..27
    row_ink, col_ink = boxes.sum(axis=2, dtype=np.float64), boxes.sum(axis=1, dtype=np.float64)
    total = np.maximum(row_ink.sum(axis=1), 1e-12)   # a blank scan stays blank, wherever it goes
    coords = np.arange(BOX)
    # Whole-pixel shifts that bring the centre of mass to the field's centre (as MNIST), as far
    # as the ink (not the whole box) stays inside the field.
    shifts = []
    for profile in (row_ink, col_ink):
        centre = (profile * coords).sum(axis=1) / total
        inked = profile > 0
        first = inked.argmax(axis=1)
        last = BOX - 1 - inked[:, ::-1].argmax(axis=1)
        wanted = np.floor(field_centre - centre + 0.5).astype(np.int64)
        shifts.append(np.clip(wanted, -first, FIELD - 1 - last))
    fields = np.zeros((len(boxes), FIELD + 2 * BOX, FIELD + 2 * BOX), dtype=np.uint8)
    for field, box, top, left in zip(fields, boxes, *shifts):
        # The margin of BOX on every side takes the empty part of a box shifted past the edge.
        field[BOX + top:BOX + top + BOX, BOX + left:BOX + left + BOX] = box
    return torch.from_numpy(fields[:, None, BOX:BOX + FIELD, BOX:BOX + FIELD].copy())


def read_digits(data_dir: Path, download: bool) -> OfficialImages:
    del data_dir, download  # shipped with scikit-learn
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise UserError("the digits dataset comes with scikit-learn: pip install scikit-learn") from exc
    digits = load_digits()
    return OfficialImages(images=mnist_layout(digits.images),
                          labels=torch.as_tensor(digits.target, dtype=torch.int64),
                          official_train_count=None)


add_dataset(DatasetSpec(name="digits", in_channels=1, image_size=FIELD, num_classes=10,
                        mean=DIGITS_MEAN, std=DIGITS_STD, read=read_digits,
                        where="nothing: the digits come with scikit-learn"))
