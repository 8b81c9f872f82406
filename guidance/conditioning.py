"""Which image conditions the SDS of a random view, and with what relative pose (SPEC section 4).

Poses are in orbit_camera terms (cam_utils): elevation offsets relative to the configured
elevation (negative = above), azimuth 0 = the input view. The anchor table rows are
``(azimuth, elevation offset)`` as in :data:`cam_utils.ZERO123PP_V11_ANCHORS`.
"""
from __future__ import annotations

import math
import random
from typing import Sequence

import cam_utils

REFERENCE_VIEW = -1


def sample_random_view(rng: random.Random, elevation_cfg: float) -> tuple[int, int]:
    """Draw the pose of one random training view (SPEC section 4, step 2).

    Returns:
        (d_elevation, azimuth): integer degrees. ``d_elevation`` is the offset from
        ``elevation_cfg`` in ``[max(min(-30, -30 - e), -80 - e), min(max(30, 30 - e), 80 - e))``
        (so the absolute elevation stays within [-80, 80) and the range is at least +-30 around
        the input view); ``azimuth`` is in ``[-180, 180)``.
    """
    e = elevation_cfg
    low = int(math.floor(max(min(-30, -30 - e), -80 - e)))
    high = int(math.floor(min(max(30, 30 - e), 80 - e)))
    if high <= low:
        raise ValueError(f"elevation {elevation_cfg} leaves no room for random views: use a value in (-80, 80)")
    d_elevation = rng.randrange(low, high)
    azimuth = rng.randrange(-180, 180)
    return d_elevation, azimuth


def anchor_for_azimuth(azimuth: float, num_anchors: int) -> int:
    """Anchor index whose azimuth sector holds ``azimuth`` (degrees, any sign).

    SPEC: k = floor(azimuth / 60) for azimuth > 0 and floor((360 + azimuth) / 60) for azimuth < 0,
    i.e. floor((azimuth mod 360) / sector) with sector = 360 / num_anchors (60 for six anchors).
    With the Zero123++ layout (anchor k at 60 k + 30 degrees) this is the nearest anchor.
    """
    sector = 360.0 / num_anchors
    return min(int(math.floor((azimuth % 360.0) / sector)), num_anchors - 1)


def wrap_degrees(angle: float) -> float:
    """``angle`` mapped into [-180, 180)."""
    return (angle + 180.0) % 360.0 - 180.0


def choose_condition_view(
    azimuth: int,
    d_elevation: float,
    anchor_table: Sequence[Sequence[float]] | None,
    rng: random.Random,
    reference_prob: float = 0.6,
    reference_azimuth: float = 30.0,
) -> tuple[int, float, float]:
    """Pick the conditioning image of a random view and the view's pose relative to it.

    If ``|azimuth| < reference_azimuth`` (30), or with probability ``reference_prob`` (0.6)
    otherwise, the reference frame conditions, with the pose ``(d_elevation, azimuth)``. Else the
    anchor ``k`` whose sector holds the azimuth (:func:`anchor_for_azimuth`) conditions, with the
    pose relative to it: ``d_elevation - anchor elevation`` and ``azimuth - anchor azimuth``, the
    anchor azimuth taken in the same range as the sample's (330 is -30 for a sample at -45), so
    the relative azimuth is the short way round, within +-sector/2.

    ``anchor_table`` None means :func:`cam_utils.anchor_table`'s default (Zero123++ v1.1); an
    empty table (no anchor images) means the reference always conditions. ``rng`` is drawn from
    (one ``rng.random()``) only when ``|azimuth| >= reference_azimuth`` and there are anchors.

    Returns:
        (view, rel_elevation, rel_azimuth): view = -1 for the reference, k for anchor k.
    """
    table = () if anchor_table is not None and len(anchor_table) == 0 else cam_utils.anchor_table(anchor_table)
    if abs(azimuth) < reference_azimuth or not table or rng.random() < reference_prob:
        return REFERENCE_VIEW, float(d_elevation), float(azimuth)
    k = anchor_for_azimuth(azimuth, len(table))
    anchor_azimuth, anchor_elevation = table[k]
    rel_azimuth = wrap_degrees(float(azimuth) - anchor_azimuth)
    return k, float(d_elevation) - anchor_elevation, rel_azimuth
