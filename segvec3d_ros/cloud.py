"""The ROS-free point cloud the whole pipeline works on."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# Return-strength fields of LiDAR drivers, in order of preference: `reflectivity` is
# calibrated (the same target reads the same at every range), `intensity` is raw signal.
INTENSITY_FIELDS = ('reflectivity', 'intensity')
# percentile of a frame's return strengths that is drawn white
_WHITE_PERCENTILE = 99.0


@dataclass
class Cloud:
    """Points in input order, possibly organized (height > 1), possibly with invalid points.

    xyz keeps non-finite points so that per-point outputs line up with the input message;
    `valid` says which points the segmenters may use.
    """

    xyz: np.ndarray                     # (N, 3) float32; invalid points stay (see `valid`)
    rgb: np.ndarray | None = None       # (N, 3) uint8, or None when the cloud has no colour
    height: int = 1                     # organized clouds: height * width == N
    width: int = 0
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # other fields, (N,) each

    def __post_init__(self) -> None:
        self.xyz = np.asarray(self.xyz, dtype=np.float32).reshape(-1, 3)
        if self.width == 0:
            self.width = len(self.xyz) // max(self.height, 1)
        if self.rgb is not None:
            self.rgb = np.asarray(self.rgb, dtype=np.uint8).reshape(-1, 3)
            if len(self.rgb) != len(self.xyz):
                raise ValueError(f'rgb has {len(self.rgb)} rows for {len(self.xyz)} points')
        if self.height * self.width != len(self.xyz):
            raise ValueError(
                f'height*width = {self.height}*{self.width} != {len(self.xyz)} points')

    def __len__(self) -> int:
        return len(self.xyz)

    @property
    def valid(self) -> np.ndarray:
        """Boolean mask of the real points: finite x, y and z, not all 0, `range` not 0.

        Drivers mark a missing return with NaN (depth cameras, PCL) or, as ouster-ros does,
        with x = y = z = 0 and a `range` field of 0; either of the two is enough here.
        """
        # Column by column: numpy's row reductions over 3 values took 9 times as long.
        finite, nonzero = np.isfinite(self.xyz), self.xyz != 0
        valid = (finite[:, 0] & finite[:, 1] & finite[:, 2]
                 & (nonzero[:, 0] | nonzero[:, 1] | nonzero[:, 2]))
        if 'range' in self.extra:
            valid &= np.asarray(self.extra['range']).reshape(-1) != 0
        return valid

    def appearance(self) -> np.ndarray | None:
        """(N, 3) uint8 colour the segmenters see: `rgb`, else a grey of the return strength.

        A colourless LiDAR cloud is shaded by its `reflectivity` or `intensity` field, scaled
        so that the frame's 99th percentile is white (drivers differ in units and range).
        None when the cloud has neither colour nor such a field.
        """
        if self.rgb is not None:
            return self.rgb
        name = next((n for n in INTENSITY_FIELDS
                     if n in self.extra and np.size(self.extra[n]) == len(self)), None)
        if name is None:
            return None
        strength = np.asarray(self.extra[name], dtype=np.float32).reshape(-1)
        usable = self.valid & np.isfinite(strength)
        white = np.percentile(strength[usable], _WHITE_PERCENTILE) if usable.any() else 0.0
        grey = np.zeros(len(self), dtype=np.uint8)
        if white > 0:
            grey[usable] = np.clip(strength[usable] * (255.0 / white), 0.0, 255.0)
        return np.repeat(grey[:, None], 3, axis=1)

    @property
    def is_organized(self) -> bool:
        return self.height > 1
