"""Procedural concrete-defect images: the package's built-in dataset.

CI, the tests and ``make demo`` need a dataset that needs no download, yet a
segmentation model should have to *learn* something on it: if a brightness
threshold solved it, a broken training loop would look just as good as a
working one. So the generator draws weathered concrete with the defects of the
class schema and, on purpose, background that looks like damage:

* **texture**: a per-image grey tone with a slight colour tint, multi-scale
  noise, aggregate stones and dark air pores, shaded by a light direction;
* **crack**: thin branching random-walk strokes 1-6 px wide whose width varies
  along the crack, with a darker core and jagged edges;
* **spalling**: irregular recessed patches with rough outlines, rougher and
  darker texture and lit/shadowed walls;
* **rebar**: rusty ribbed bars with cylinder shading, only inside spalls;
* **nuisances** (all background): formwork joints, dark and rust stains,
  soft shadows, illumination gradients, blur and sensor noise. Pores, joints
  and shadows are as dark as crack cores, so intensity alone cannot separate
  the classes.

Every labelled image contains at least one crack or spall. Image ``index`` of
``seed`` depends on nothing else: its random streams are spawned from
``numpy.random.SeedSequence([seed, index])``, so a dataset of 3 images is the
prefix of one of 10, byte for byte.

Everything is vectorised numpy/scipy; Python loops only run over strokes,
stains and bars, never over pixels. A 128x128 image takes about 40 ms on one
core (64 images with their PNGs: under 3 s).
"""

from __future__ import annotations

import math
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage
from tqdm import tqdm

from semiseg_helpers.classes import class_index

__all__ = ["SYNTHETIC_CLASSES", "UNLABELED_INDEX_OFFSET", "generate_dataset",
           "reference_crack", "render_sample"]

SYNTHETIC_CLASSES: tuple[str, ...] = ("background", "crack", "spalling", "rebar")
"""The classes the generator draws; mask values are their indices in
:data:`semiseg_helpers.classes.CLASS_NAMES` (``class_index`` below fails at
import if a name is not in the schema)."""

BACKGROUND, CRACK, SPALLING, REBAR = (class_index(name) for name in SYNTHETIC_CLASSES)

UNLABELED_INDEX_OFFSET: int = 1_000_000_000
"""Unlabelled image ``j`` is ``render_sample(seed, UNLABELED_INDEX_OFFSET + j)``.

A fixed offset (rather than ``n_labeled + j``) keeps unlabelled images
independent of how many labelled ones were asked for, and distinct from them.
"""

MIN_SIZE: int = 32
_MAX_CRACK_HALF_WIDTH = 2.5  # px from the centreline: widths up to 6 px


# ---------------------------------------------------------------------------
# Noise
# ---------------------------------------------------------------------------

def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int],
                  cells: tuple[float, float]) -> np.ndarray:
    """Smooth random field of ``shape`` with about ``cells`` features per axis.

    Cubic upsampling of a coarse Gaussian grid: band-limited noise whose
    feature size is ``shape / cells``, far cheaper than filtering white noise
    with a wide Gaussian. Normalised to zero mean and unit std.
    """
    grid_shape = tuple(max(2, int(round(c))) for c in cells)
    grid = rng.standard_normal(grid_shape)
    zoom = [s / g for s, g in zip(shape, grid_shape)]
    field = ndimage.zoom(grid, zoom, order=3, mode="reflect", grid_mode=True)
    field = field[: shape[0], : shape[1]]
    return (field - field.mean()) / (field.std() + 1e-8)


def _fractal_noise(rng: np.random.Generator, size: int, base_cells: float = 3.0,
                   octaves: int = 5, persistence: float = 0.55) -> np.ndarray:
    """Sum of octaves of :func:`_smooth_noise`, each twice as fine and
    ``persistence`` times as strong: the self-similar roughness of natural
    surfaces. Zero mean, unit std."""
    total = np.zeros((size, size))
    for octave in range(octaves):
        cells = min(base_cells * 2 ** octave, size / 1.5)
        total += persistence ** octave * _smooth_noise(rng, (size, size), (cells, cells))
    return (total - total.mean()) / (total.std() + 1e-8)


def _fine_noise(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    """Pixel-scale grain (white noise blurred by ``sigma``), unit std."""
    field = ndimage.gaussian_filter(rng.standard_normal((size, size)), sigma, mode="wrap")
    return (field - field.mean()) / (field.std() + 1e-8)


def _smooth_1d(rng: np.random.Generator, t: np.ndarray, spacing: float) -> np.ndarray:
    """Piecewise-linear random profile along ``t`` with knots every ``spacing``,
    values in ``[-1, 1]``: how a crack's width or a bar's bend drifts."""
    lo, hi = float(t.min()), float(t.max())
    n_knots = max(2, int(math.ceil((hi - lo) / spacing)) + 2)
    knots = lo + spacing * np.arange(n_knots)
    return np.interp(t, knots, rng.uniform(-1.0, 1.0, n_knots))


def _smoothstep(x: np.ndarray) -> np.ndarray:
    """C1 ramp from 0 (x <= 0) to 1 (x >= 1)."""
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates ``(y, x)`` as float arrays."""
    yy, xx = np.mgrid[0:size, 0:size]
    return yy.astype(np.float64), xx.astype(np.float64)


# ---------------------------------------------------------------------------
# Concrete surface
# ---------------------------------------------------------------------------

@dataclass
class _Surface:
    """The image being built: albedo (RGB, roughly 0..1) and a height map.

    Keeping height separate lets one hill-shading pass light pores, spall
    walls and exposed aggregate consistently from the same direction.
    """

    rgb: np.ndarray     # (H, W, 3) float
    height: np.ndarray  # (H, W) float, in pixels


def _base_colour(rng: np.random.Generator) -> np.ndarray:
    """Grey tone with a slight warm or cool tint, different per image."""
    grey = rng.uniform(0.42, 0.72)
    tint = rng.normal(0.0, 0.015, 3) + rng.uniform(-0.02, 0.035) * np.array([1.0, 0.2, -1.0])
    return grey * (1.0 + tint)


def _stones(rng: np.random.Generator, size: int, sigma: float, fraction: float) -> np.ndarray:
    """Aggregate: blobs of band-passed noise above a quantile, each stone
    (connected component) given its own tone offset in ``[-1, 1]``."""
    field = _fine_noise(rng, size, sigma)
    blobs = field > np.quantile(field, 1.0 - fraction)
    labels, n = ndimage.label(blobs)
    tones = np.concatenate([[0.0], rng.uniform(-1.0, 1.0, n)])
    return tones[labels]


def _pores(rng: np.random.Generator, size: int, density: float) -> np.ndarray:
    """Air voids (bugholes): disks of random radius 0.6-2.2 px and depth;
    returns a 0..1 depth profile."""
    centres = rng.random((size, size)) < density
    radius = np.where(centres, rng.uniform(0.6, 2.2, (size, size)), 0.0)
    depth = np.where(centres, rng.uniform(0.4, 1.0, (size, size)), 0.0)
    if not centres.any():
        return np.zeros((size, size))
    dist, (iy, ix) = ndimage.distance_transform_edt(~centres, return_indices=True)
    return depth[iy, ix] * _smoothstep((radius[iy, ix] + 0.5 - dist) / 1.2)


def _concrete(rng: np.random.Generator, size: int) -> _Surface:
    """Intact weathered concrete: tone, mottling, sand grain, faint
    aggregate, pores.

    On a cast surface the aggregate hides under cement paste, so stones only
    tint it faintly and add no relief (raised stones read as hammered metal);
    they come through in spalls, where the paste is gone.
    """
    base = _base_colour(rng)
    mottling = _fractal_noise(rng, size, base_cells=rng.uniform(2, 5), octaves=6)
    grain = _fine_noise(rng, size, 0.6)
    specks = np.where(rng.random((size, size)) < 0.03, rng.uniform(-1, 1, (size, size)), 0.0)
    stones = _stones(rng, size, sigma=rng.uniform(1.4, 2.4), fraction=rng.uniform(0.05, 0.12))
    pores = _pores(rng, size, density=rng.uniform(0.0003, 0.0025))

    shade = (1.0 + rng.uniform(0.04, 0.1) * mottling + rng.uniform(0.015, 0.04) * grain
             + 0.08 * specks + rng.uniform(0.01, 0.04) * stones
             - rng.uniform(0.45, 0.7) * pores)
    rgb = base[None, None, :] * shade[..., None]
    # Slight per-channel mottling: real concrete is never a pure grey.
    chroma = _smooth_noise(rng, (size, size), (4, 4))
    rgb *= 1.0 + 0.015 * chroma[..., None] * np.array([1.0, 0.0, -1.0])
    height = 0.4 * mottling + 0.25 * grain - 1.5 * pores
    return _Surface(rgb=rgb, height=height)


def _hillshade(height: np.ndarray, light: np.ndarray, strength: float) -> np.ndarray:
    """Relative Lambertian shading of a height map lit from ``light``
    (unit ``(dy, dx, dz)`` towards the light); 1 on flat ground."""
    gy, gx = np.gradient(height)
    normal = np.stack([-gy, -gx, np.ones_like(height)])
    normal /= np.linalg.norm(normal, axis=0, keepdims=True)
    lambert = np.tensordot(light, normal, axes=1)
    return np.clip(1.0 + strength * (lambert / light[2] - 1.0), 0.35, 1.6)


# ---------------------------------------------------------------------------
# Spalling and rebar
# ---------------------------------------------------------------------------

def _spall_shape(rng: np.random.Generator, size: int) -> np.ndarray:
    """One irregular blob: a rotated ellipse whose radius is perturbed by
    fractal noise, so the outline is rough at every scale."""
    yy, xx = _grid(size)
    cy, cx = rng.uniform(0.15, 0.85, 2) * size
    ry, rx = rng.uniform(0.09, 0.3, 2) * size
    angle = rng.uniform(0.0, math.pi)
    dy, dx = yy - cy, xx - cx
    u = (dx * math.cos(angle) + dy * math.sin(angle)) / rx
    v = (-dx * math.sin(angle) + dy * math.cos(angle)) / ry
    radius = np.hypot(u, v)
    rough = _fractal_noise(rng, size, base_cells=rng.uniform(3, 6), octaves=5, persistence=0.6)
    blob = (radius + rng.uniform(0.15, 0.3) * rough < 1.0) | (radius < 0.3)
    # Keep the piece containing the centre and fill its holes: one patch.
    labels, _ = ndimage.label(blob)
    centre_label = labels[int(np.clip(cy, 0, size - 1)), int(np.clip(cx, 0, size - 1))]
    return ndimage.binary_fill_holes(labels == centre_label)


def _carve_spall(rng: np.random.Generator, surface: _Surface, spall: np.ndarray,
                 size: int) -> None:
    """Recess ``spall`` into the surface: darker and rougher, with exposed
    coarse aggregate, and a depth profile that the hill-shading turns into
    a lit wall and a shadowed wall."""
    scale = size / 128
    depth = ndimage.gaussian_filter(spall.astype(np.float64), sigma=1.2 * scale + 0.5)
    rough = _fractal_noise(rng, size, base_cells=6, octaves=6, persistence=0.7)
    grit = _fine_noise(rng, size, 0.7)
    coarse = _stones(rng, size, sigma=rng.uniform(1.6, 2.6) * scale,
                     fraction=rng.uniform(0.2, 0.35))

    tone = rng.uniform(0.68, 0.92) * (1.0 + 0.08 * rough + 0.06 * grit + 0.12 * coarse)
    tint = 1.0 + rng.uniform(-0.02, 0.06) * np.array([1.0, 0.3, -0.8])
    inside = depth[..., None]
    surface.rgb = surface.rgb * (1.0 - inside + inside * tone[..., None] * tint)
    relief = 1.0 * rough + 0.5 * grit + 1.2 * (coarse != 0)
    surface.height = surface.height + depth * (relief - rng.uniform(3.0, 6.0) * scale)


@dataclass(frozen=True)
class _Bar:
    """Geometry of one reinforcing bar, over the whole image."""

    mask: np.ndarray        # (H, W) bool, the bar before clipping to the spall
    across: np.ndarray      # (H, W) signed distance from the (slightly bent) axis, px
    along: np.ndarray       # (H, W) distance along the axis, px
    radius: float
    across_dir: np.ndarray  # (dy, dx) unit vector in which `across` grows


def _rebar_bar(rng: np.random.Generator, exposed: np.ndarray, size: int,
               horizontal: bool) -> _Bar:
    """A straight-ish bar through a random pixel of ``exposed``, running
    roughly horizontally or vertically as reinforcement cages do."""
    yy, xx = _grid(size)
    py, px = np.unravel_index(rng.choice(np.flatnonzero(exposed)), exposed.shape)
    angle = (0.0 if horizontal else math.pi / 2) + rng.normal(0.0, math.radians(6))
    along = (xx - px) * math.cos(angle) + (yy - py) * math.sin(angle)
    across = -(xx - px) * math.sin(angle) + (yy - py) * math.cos(angle)
    radius = rng.uniform(2.2, 5.0) * size / 128
    across = across + 0.15 * radius * _smooth_1d(rng, along, spacing=12.0)
    return _Bar(mask=np.abs(across) < radius, across=across, along=along, radius=radius,
                across_dir=np.array([math.cos(angle), -math.sin(angle)]))


def _rust(rng: np.random.Generator, bar: _Bar, light: np.ndarray) -> np.ndarray:
    """Colour of a corroded ribbed bar: rust tones mottled by noise, shaded
    as a cylinder lit from ``light``, with slanted transverse ribs."""
    size = bar.across.shape[0]
    t = np.clip(bar.across / bar.radius, -1.0, 1.0)
    light_across = float(light[:2] @ bar.across_dir)
    lambert = np.clip(t * light_across + np.sqrt(1.0 - t ** 2) * light[2], 0.0, 1.0)
    lit = 0.15 + 1.05 * lambert ** 1.5
    pitch = rng.uniform(1.1, 1.6) * bar.radius + 2.0
    phase = 2 * math.pi * (bar.along + 0.35 * bar.across) / pitch
    ribs = 0.82 + 0.3 * np.maximum(np.cos(phase), 0.0) ** 2
    mix = _smoothstep(0.45 + 0.4 * _fractal_noise(rng, size, base_cells=8, octaves=5))
    dark = np.array([0.24, 0.14, 0.09])
    orange = np.array([0.58, 0.31, 0.14]) * rng.uniform(0.85, 1.1)
    colour = dark * (1.0 - mix[..., None]) + orange * mix[..., None]
    flakes = 1.0 + 0.15 * _fine_noise(rng, size, 0.7)
    return colour * (lit * ribs * flakes)[..., None]


def _lay_rebar(rng: np.random.Generator, rgb: np.ndarray, spall: np.ndarray,
               light: np.ndarray, size: int) -> np.ndarray:
    """Expose one or two rusty bars inside ``spall``, drawing into ``rgb``
    in place (bar, its cast shadow, rust bleeding into the concrete).
    Returns the exposed-bar mask.

    Bars are clipped to the spall eroded by a rim, so concrete always
    surrounds exposed steel, as on a real member.
    """
    rim = max(2, int(round(1.5 * size / 128)))
    exposed = ndimage.binary_erosion(spall, iterations=rim)
    rebar = np.zeros_like(spall)
    if exposed.sum() < 12:
        return rebar
    horizontal = bool(rng.random() < 0.5)
    for k in range(1 + int(rng.random() < 0.3)):  # sometimes a crossing bar (mesh)
        bar = _rebar_bar(rng, exposed, size, horizontal ^ bool(k))
        visible = bar.mask & exposed
        if visible.sum() < 8:
            continue
        distance = np.abs(bar.across)
        concrete = spall & ~visible & ~rebar
        bleed = concrete & (distance < bar.radius + 5.0 * size / 128)
        closeness = 1.0 - (distance[bleed] - bar.radius) / (5.0 * size / 128)
        rgb[bleed] *= 1.0 - 0.3 * closeness[:, None] * np.array([0.0, 0.4, 0.8])
        # The bar stands proud of the spall floor: shadow on the side away from the light.
        light_across = float(light[:2] @ bar.across_dir)
        reach = bar.radius * abs(light_across) / light[2] + 1.0
        shadow = concrete & (distance < bar.radius + reach) & (bar.across * light_across < 0)
        rgb[shadow] *= 0.55
        rgb[visible] = _rust(rng, bar, light)[visible]
        rebar |= visible
    return rebar


# ---------------------------------------------------------------------------
# Cracks
# ---------------------------------------------------------------------------

_STEP = 0.5  # px between centreline samples: dense enough to rasterise gap-free


@dataclass(frozen=True)
class _Stroke:
    """One crack or branch, sampled every ``_STEP`` px along its centreline."""

    points: np.ndarray      # (N, 2) (y, x)
    heading: np.ndarray     # (N,) direction of travel, radians
    half_width: np.ndarray  # (N,) px from the centreline to the crack edge
    darkness: np.ndarray    # (N,) fraction of light the core swallows


def _walk(rng: np.random.Generator, start: np.ndarray, heading: float, length: float,
          max_half_width: float, darkness: float, taper_start: bool) -> _Stroke:
    """A crack-like random walk: slowly drifting direction, a fine zig-zag
    (the jagged path of a crack around aggregate), width drifting along it
    and tapering to a hairline tip."""
    n = max(4, int(length / _STEP))
    s = np.arange(n) * _STEP
    heading_s = (heading + 0.35 * _smooth_1d(rng, s, 14.0)
                 + np.cumsum(rng.normal(0.0, 0.035, n)))
    steps = _STEP * np.stack([np.sin(heading_s), np.cos(heading_s)], axis=1)
    points = start + np.cumsum(steps, axis=0) - steps[0]
    zigzag = 0.6 * _smooth_1d(rng, s, 2.5)
    points += zigzag[:, None] * np.stack([np.cos(heading_s), -np.sin(heading_s)], axis=1)

    taper = np.clip((length - s) / (0.25 * length), 0.0, 1.0) ** 0.6
    if taper_start:
        taper *= np.clip(s / (0.25 * length), 0.0, 1.0) ** 0.6
    profile = 0.6 + 0.4 * _smooth_1d(rng, s, 10.0)
    half_width = np.maximum(0.3, max_half_width * profile * taper)
    shade = darkness * (0.8 + 0.2 * _smooth_1d(rng, s, 20.0))
    return _Stroke(points, heading_s, half_width, shade)


def _add_with_branches(rng: np.random.Generator, parent: _Stroke, level: int,
            strokes: list[_Stroke]) -> None:
    """Add ``parent`` to ``strokes`` with thinner, shorter side cracks
    growing off it, and off those (two levels deep)."""
    strokes.append(parent)
    if level >= 2:
        return
    n = len(parent.points)
    length = n * _STEP
    for _ in range(rng.poisson(1.4 if level == 0 else 0.6)):
        i = int(rng.integers(int(0.1 * n), max(int(0.1 * n) + 1, int(0.85 * n))))
        turn = rng.choice((-1.0, 1.0)) * rng.uniform(0.35, 1.2)
        child = _walk(rng, parent.points[i], parent.heading[i] + turn,
                      length=rng.uniform(0.15, 0.5) * length,
                      max_half_width=parent.half_width[i] * rng.uniform(0.5, 0.85),
                      darkness=float(parent.darkness[i]) * rng.uniform(0.8, 1.0),
                      taper_start=False)
        _add_with_branches(rng, child, level + 1, strokes)


def _crack_strokes(rng: np.random.Generator, size: int) -> list[_Stroke]:
    """One to three main cracks with their branches; each main crack is
    centred on a point inside the image so it always shows."""
    strokes: list[_Stroke] = []
    for _ in range(int(rng.choice((1, 1, 2, 2, 3)))):
        main = _walk(rng, np.zeros(2), rng.uniform(0.0, 2 * math.pi),
                     length=rng.uniform(0.45, 1.3) * size,
                     max_half_width=rng.uniform(0.5, _MAX_CRACK_HALF_WIDTH),
                     darkness=rng.uniform(0.5, 0.8), taper_start=True)
        centre = rng.uniform(0.15, 0.85, 2) * size
        main = _Stroke(main.points + centre - main.points[len(main.points) // 2],
                       main.heading, main.half_width, main.darkness)
        _add_with_branches(rng, main, 0, strokes)
    return strokes


def _rasterise_cracks(rng: np.random.Generator, strokes: list[_Stroke],
                      size: int) -> tuple[np.ndarray, np.ndarray]:
    """Crack mask and darkening map from the strokes.

    The centreline samples are rasterised with their half-widths; one
    Euclidean distance transform then gives every pixel its distance to the
    nearest centreline pixel and, through its index, that pixel's
    half-width, so variable-width strokes cost a single vectorised pass.
    A little noise on the half-width makes the edges jagged.
    """
    points = np.concatenate([s.points for s in strokes])
    half_width = np.concatenate([s.half_width for s in strokes])
    darkness = np.concatenate([s.darkness for s in strokes])
    iy, ix = np.rint(points).astype(np.int64).T
    inside = (iy >= 0) & (iy < size) & (ix >= 0) & (ix < size)
    iy, ix, half_width, darkness = iy[inside], ix[inside], half_width[inside], darkness[inside]

    centre = np.zeros((size, size), dtype=bool)
    centre[iy, ix] = True
    width_map = np.zeros((size, size))
    dark_map = np.zeros((size, size))
    np.maximum.at(width_map, (iy, ix), half_width)
    np.maximum.at(dark_map, (iy, ix), darkness)
    if not centre.any():
        return centre, np.zeros((size, size))

    jitter = np.clip(0.3 * _fine_noise(rng, size, 0.8), -0.45, 0.45)
    dist, (ny, nx) = ndimage.distance_transform_edt(~centre, return_indices=True)
    nearest_width = width_map[ny, nx]
    edge = nearest_width + jitter
    mask = centre | (dist <= edge)
    soft = _smoothstep(edge + 0.8 - dist)  # ~1 inside, fades within a pixel outside
    core = np.exp(-0.5 * (dist / (0.45 * nearest_width + 0.45)) ** 2)
    return mask, dark_map[ny, nx] * (0.55 * soft + 0.45 * core)


def reference_crack(shape: tuple[int, int], centre: tuple[float, float], heading: float,
                    length: float, width: float, curvature: float = 0.0) -> np.ndarray:
    """A crack of known geometry, for checking measurements
    (:mod:`semiseg_helpers.quantify`): the pixels whose centres lie within
    ``width / 2`` of a centreline of ``length`` px.

    The centreline is a straight segment (``curvature`` 0) or a circular
    arc of radius ``1 / |curvature|``, whose midpoint is ``centre`` ``(y,
    x)`` and whose direction there is ``heading`` (radians; 0 along +x,
    pi/2 along +y). Its ends are round (a capsule), so it is ``width`` wide
    wherever it is measured across, and ``length + width`` long from tip
    to tip along its centreline. Returns a ``(H, W)`` bool mask.
    """
    if not (length > 0 and width > 0):
        raise ValueError(f"length and width must be positive, got {length} and {width}")
    if abs(curvature) * length > 1.8 * math.pi:
        raise ValueError(f"an arc of length {length} and curvature {curvature} "
                         "(nearly) closes on itself")
    yy, xx = _grid(max(shape))
    yy, xx = yy[:shape[0], :shape[1]], xx[:shape[0], :shape[1]]
    ty, tx = math.sin(heading), math.cos(heading)
    cy, cx = centre
    if curvature == 0:
        along = np.clip((yy - cy) * ty + (xx - cx) * tx, -length / 2, length / 2)
        distance = np.hypot(yy - (cy + along * ty), xx - (cx + along * tx))
    else:
        radius = 1.0 / curvature  # signed: the circle's centre is to the left for > 0
        oy, ox = cy + radius * tx, cx - radius * ty
        my, mx = cy - oy, cx - ox  # from the circle's centre to the arc's midpoint
        py, px = yy - oy, xx - ox
        angle = np.arctan2(my * px - mx * py, my * py + mx * px)
        half = length / (2 * abs(radius))
        on_arc = np.abs(angle) <= half
        ends = [(oy + my * math.cos(a) - mx * math.sin(a), ox + my * math.sin(a) + mx * math.cos(a))
                for a in (-half, half)]
        to_end = np.minimum(*(np.hypot(yy - ey, xx - ex) for ey, ex in ends))
        distance = np.where(on_arc, np.abs(np.hypot(py, px) - abs(radius)), to_end)
    return distance <= width / 2


# ---------------------------------------------------------------------------
# Nuisances: background that looks like damage
# ---------------------------------------------------------------------------

def _formwork_joints(rng: np.random.Generator, size: int) -> np.ndarray:
    """Straight thin dark lines right across the image (formwork board
    joints), with a faint raised lip; a multiplicative shading map."""
    yy, xx = _grid(size)
    shading = np.ones((size, size))
    for _ in range(int(rng.integers(1, 3))):
        angle = (math.pi / 2 if rng.random() < 0.5 else 0.0) + rng.normal(0.0, math.radians(1.0))
        oy, ox = rng.uniform(0.1, 0.9, 2) * size
        along = (xx - ox) * math.cos(angle) + (yy - oy) * math.sin(angle)
        across = -(xx - ox) * math.sin(angle) + (yy - oy) * math.cos(angle)
        width = rng.uniform(0.5, 1.1)
        strength = rng.uniform(0.35, 0.65) * (0.8 + 0.2 * _smooth_1d(rng, along, 15.0))
        line = np.exp(-0.5 * (across / width) ** 2)
        lip = np.exp(-0.5 * ((across - 2.0 * width - 0.8) / 0.8) ** 2)
        shading *= 1.0 - strength * line + 0.08 * lip
    return shading


def _stains(rng: np.random.Generator, size: int) -> np.ndarray:
    """Blotchy dark, rust-coloured or whitish (efflorescence) patches and
    run-down streaks; an RGB multiplicative map."""
    yy, xx = _grid(size)
    shading = np.ones((size, size, 3))
    colours = {"dark": np.array([0.7, 0.69, 0.67]), "rust": np.array([0.9, 0.77, 0.62]),
               "white": np.array([1.2, 1.2, 1.18])}
    for _ in range(int(rng.poisson(1.2))):
        kind = str(rng.choice(("dark", "dark", "rust", "white")))
        cy, cx = rng.uniform(0.0, 1.0, 2) * size
        if rng.random() < 0.35:  # a streak running down from a source
            field = _smooth_noise(rng, (size, size), (rng.uniform(1.5, 3.0), rng.uniform(8, 16)))
            sx = rng.uniform(0.04, 0.12) * size
            below = (_smoothstep((yy - cy) / (0.08 * size))
                     * np.exp(-np.maximum(yy - cy, 0.0) / (0.6 * size)))
            envelope = np.exp(-0.5 * ((xx - cx) / sx) ** 2) * below
        else:
            field = _fractal_noise(rng, size, base_cells=rng.uniform(2.0, 4.0), octaves=5)
            radius = rng.uniform(0.15, 0.45) * size
            envelope = np.exp(-0.5 * ((yy - cy) ** 2 + (xx - cx) ** 2) / radius ** 2)
        blotch = _smoothstep((0.8 * field + 1.6 * envelope - 1.2) / 0.9)
        colour = colours[kind] ** rng.uniform(0.5, 1.3)
        shading *= 1.0 - blotch[..., None] * (1.0 - colour)
    return shading


def _shadow(rng: np.random.Generator, size: int) -> np.ndarray:
    """A soft shadow with a wavy edge (a beam, a person, foliage)."""
    yy, xx = _grid(size)
    angle = rng.uniform(0.0, 2 * math.pi)
    oy, ox = rng.uniform(0.2, 0.8, 2) * size
    side = (xx - ox) * math.cos(angle) + (yy - oy) * math.sin(angle)
    side = side + 0.08 * size * _smooth_noise(rng, (size, size), (3, 3))
    softness = rng.uniform(1.5, 0.08 * size)
    return 1.0 - rng.uniform(0.25, 0.55) / (1.0 + np.exp(-side / softness))


def _illumination(rng: np.random.Generator, size: int) -> np.ndarray:
    """Uneven lighting: a linear gradient, a vignette and an exposure factor."""
    yy, xx = _grid(size)
    angle = rng.uniform(0.0, 2 * math.pi)
    ramp = ((xx - size / 2) * math.cos(angle) + (yy - size / 2) * math.sin(angle)) / size
    radius2 = ((xx - size / 2) ** 2 + (yy - size / 2) ** 2) / (size ** 2 / 2)
    return (rng.uniform(0.85, 1.15) * (1.0 + rng.uniform(0.0, 0.5) * ramp)
            * (1.0 - rng.uniform(0.0, 0.25) * radius2))


def _light_direction(rng: np.random.Generator) -> np.ndarray:
    """Unit vector ``(dy, dx, dz)`` towards the light, 35-65 degrees high."""
    azimuth = rng.uniform(0.0, 2 * math.pi)
    elevation = math.radians(rng.uniform(35.0, 65.0))
    return np.array([math.cos(elevation) * math.sin(azimuth),
                     math.cos(elevation) * math.cos(azimuth), math.sin(elevation)])


# ---------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------

def _check_int(name: str, value: object, minimum: int) -> int:
    """``value`` as an int >= ``minimum``, or an error naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {value} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


_STREAMS = ("plan", "surface", "spall", "rebar", "crack", "nuisance", "camera")


def _streams(seed: int, index: int) -> dict[str, np.random.Generator]:
    """Independent generators for each part of image ``(seed, index)``.

    ``plan`` draws only scalars (which defects, which nuisances, light), so
    an image has the same content at every ``size``; giving each part its
    own stream keeps a change in one part's draws from reshuffling the rest.
    """
    children = np.random.SeedSequence([seed, index]).spawn(len(_STREAMS))
    return {name: np.random.default_rng(child) for name, child in zip(_STREAMS, children)}


def render_sample(seed: int, index: int, size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """One image ``(H, W, 3) uint8`` RGB and its mask ``(H, W) uint8`` of
    class indices into :data:`semiseg_helpers.classes.CLASS_NAMES`.

    Depends only on ``(seed, index, size)``. The mask always holds a crack
    or a spall (rebar only inside spalls); nuisances are background.
    """
    seed = _check_int("seed", seed, 0)
    index = _check_int("index", index, 0)
    size = _check_int("size", size, MIN_SIZE)
    rng = _streams(seed, index)
    plan = rng["plan"]
    light = _light_direction(plan)
    scenario = plan.random()
    has_crack, has_spall = scenario < 0.72, scenario >= 0.45  # crack / both / spall
    n_spalls = 1 + int(plan.random() < 0.25)
    has_rebar = has_spall and plan.random() < 0.5
    has_joints, has_shadow, has_blur = plan.random(3) < (0.4, 0.4, 0.3)

    surface = _concrete(rng["surface"], size)
    spall = np.zeros((size, size), dtype=bool)
    for _ in range(n_spalls if has_spall else 0):
        spall |= _spall_shape(rng["spall"], size)
    if has_spall:
        _carve_spall(rng["spall"], surface, spall, size)
    rgb = surface.rgb * _hillshade(surface.height, light, plan.uniform(0.5, 0.9))[..., None]

    rebar = _lay_rebar(rng["rebar"], rgb, spall, light, size) if has_rebar else np.zeros_like(spall)

    crack = np.zeros_like(spall)
    if has_crack:
        crack, darkness = _rasterise_cracks(rng["crack"], _crack_strokes(rng["crack"], size), size)
        crack &= ~spall  # inside a spall the surface a crack runs in is gone
        rgb *= 1.0 - np.where(spall, 0.0, darkness)[..., None]

    nuisance = rng["nuisance"]
    if has_joints:
        rgb *= np.where(spall, 1.0, _formwork_joints(nuisance, size))[..., None]
    rgb *= _stains(nuisance, size)
    if has_shadow:
        rgb *= _shadow(nuisance, size)[..., None]
    rgb *= _illumination(nuisance, size)[..., None]

    camera = rng["camera"]
    rgb *= 1.0 + camera.normal(0.0, 0.02, 3)  # white balance
    if has_blur:
        rgb = ndimage.gaussian_filter(rgb, sigma=(camera.uniform(0.5, 1.3),) * 2 + (0.0,))
    noise = camera.uniform(0.004, 0.025)
    rgb += noise * (camera.standard_normal((size, size, 1))
                    + 0.4 * camera.standard_normal((size, size, 3)))

    mask = np.full((size, size), BACKGROUND, dtype=np.uint8)
    mask[spall] = SPALLING
    mask[rebar] = REBAR
    mask[crack] = CRACK
    image = np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)
    return image, mask


def _readme(seed: int, size: int, n_labeled: int, n_unlabeled: int) -> str:
    """The one-paragraph provenance note written next to the data."""
    return (
        f"Synthetic concrete-defect images generated procedurally by "
        f"semiseg_helpers.data.synthetic.generate_dataset(seed={seed}, size={size}, "
        f"n_labeled={n_labeled}, n_unlabeled={n_unlabeled}). images/synth_NNNNN.png "
        f"is render_sample(seed={seed}, index=NNNNN, size={size}) and masks/ holds its "
        f"class-index mask (values listed in classes.txt); unlabeled/synth_uNNNNN.png is "
        f"render_sample with index {UNLABELED_INDEX_OFFSET} + NNNNN. Each {size}x{size} "
        f"image shows weathered concrete (tinted grey, multi-scale noise, aggregate, "
        f"pores) with thin branching cracks and/or recessed spalls, sometimes with "
        f"exposed rusty rebar, plus background nuisances (formwork joints, stains, "
        f"shadows, illumination gradients, blur, sensor noise). Every labelled image "
        f"contains at least one crack or spall. Regenerating with the same arguments "
        f"gives identical files.\n"
    )


def _write_dataset(root: Path, n_labeled: int, n_unlabeled: int, size: int, seed: int,
                   progress: bool) -> None:
    """Render every image into ``root`` (an empty directory)."""
    (root / "images").mkdir()
    (root / "masks").mkdir()
    if n_unlabeled:
        (root / "unlabeled").mkdir()
    jobs = [(i, f"synth_{i:05d}", True) for i in range(n_labeled)]
    jobs += [(UNLABELED_INDEX_OFFSET + j, f"synth_u{j:05d}", False) for j in range(n_unlabeled)]
    for index, name, labelled in tqdm(jobs, desc="synthetic", unit="img", disable=not progress):
        image, mask = render_sample(seed, index, size)
        if labelled:
            Image.fromarray(image).save(root / "images" / f"{name}.png")
            Image.fromarray(mask).save(root / "masks" / f"{name}.png")
        else:
            Image.fromarray(image).save(root / "unlabeled" / f"{name}.png")
    (root / "classes.txt").write_text(
        "".join(f"{class_index(name)} {name}\n" for name in SYNTHETIC_CLASSES))
    (root / "README.txt").write_text(_readme(seed, size, n_labeled, n_unlabeled))


def generate_dataset(out_dir: str | Path, n_labeled: int = 64, n_unlabeled: int = 0,
                     size: int = 128, seed: int = 0, progress: bool = False) -> Path:
    """Write the generic folder layout and return ``out_dir``::

        out_dir/images/synth_00000.png     RGB
        out_dir/masks/synth_00000.png      mode "L", pixel value = class index
        out_dir/unlabeled/synth_u00000.png RGB, only if n_unlabeled > 0
        out_dir/classes.txt                "<value> <class name>" per line
        out_dir/README.txt                 how it was generated

    Files are written into a hidden sibling folder that is renamed into
    place at the end, so an interrupted run leaves nothing half-written.
    ``out_dir`` may exist only if it is an empty directory.
    """
    n_labeled = _check_int("n_labeled", n_labeled, 0)
    n_unlabeled = _check_int("n_unlabeled", n_unlabeled, 0)
    size = _check_int("size", size, MIN_SIZE)
    seed = _check_int("seed", seed, 0)
    if n_labeled + n_unlabeled == 0:
        raise ValueError("n_labeled + n_unlabeled must be > 0, got 0 images to generate")
    if n_labeled > UNLABELED_INDEX_OFFSET:
        raise ValueError(f"n_labeled must be <= {UNLABELED_INDEX_OFFSET}, got {n_labeled}")

    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ValueError(f"out_dir {str(out_dir)!r} exists and is not an empty directory; "
                         "choose a new path or remove it first")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = out_dir.parent / f".{out_dir.name}.{uuid.uuid4().hex[:12]}.partial"
    staging.mkdir()
    try:
        _write_dataset(staging, n_labeled, n_unlabeled, size, seed, progress)
        if out_dir.exists():
            out_dir.rmdir()  # empty (checked above); rename cannot replace it everywhere
        os.replace(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir

