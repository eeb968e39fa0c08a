"""Scene presets of the B-mode simulator: probe geometry, tissue maps, artifacts, ground truth and reports.

A scene describes anatomy in world millimetres (x lateral, z depth below the skin at the probe centre) and
returns, for every beam sample of every frame, the scatterer amplitude (`echo`), coherent specular reflectors
(`spec`) and extra attenuation (`att`, nepers/mm, for acoustic shadows). The physics lives in `synthetic.py`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

Params = dict[str, Any]
_NUMBERS = ["no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]


# -- geometry ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Geometry:
    """Probe and display geometry: beam grid (n_samples x n_lines) and a size x size display of isotropic pixels."""

    probe: str  # "linear" (rectangle) or "convex" (sector)
    depth_mm: float
    n_samples: int
    n_lines: int
    size: int
    width_mm: float = 38.0  # linear aperture
    radius_mm: float = 50.0  # convex radius of curvature
    half_angle_deg: float = 35.0  # convex half field of view
    margin: float = 0.04  # display border (fraction of size) left black around the imaging region

    @property
    def dz(self) -> float:
        return self.depth_mm / (self.n_samples - 1)

    @property
    def half_angle(self) -> float:
        return math.radians(self.half_angle_deg)

    @property
    def line_spacing_mm(self) -> float:
        """Lateral distance between neighbouring lines (convex: at mid depth)."""
        if self.probe == "linear":
            return self.width_mm / (self.n_lines - 1)
        return (self.radius_mm + self.depth_mm / 2) * 2 * self.half_angle / (self.n_lines - 1)

    def beam_coords(self) -> tuple[np.ndarray, np.ndarray]:
        """Probe-frame (x, z) in mm of every beam sample: two n_samples x n_lines float64 arrays."""
        s = np.arange(self.n_samples)[:, None] * self.dz
        if self.probe == "linear":
            x = -self.width_mm / 2 + np.arange(self.n_lines)[None, :] * self.line_spacing_mm
            xx, zz = np.broadcast_arrays(x, s)
            return xx.copy(), zz.copy()
        th = -self.half_angle + np.arange(self.n_lines)[None, :] * (2 * self.half_angle / (self.n_lines - 1))
        r = self.radius_mm + s
        return r * np.sin(th), r * np.cos(th) - self.radius_mm

    def extent(self) -> tuple[float, float, float, float]:
        """(x_min, x_max, z_min, z_max) of the imaging region in probe-frame mm."""
        if self.probe == "linear":
            return -self.width_mm / 2, self.width_mm / 2, 0.0, self.depth_mm
        far = self.radius_mm + self.depth_mm
        return -far * math.sin(self.half_angle), far * math.sin(self.half_angle), \
            self.radius_mm * (math.cos(self.half_angle) - 1), self.depth_mm

    @property
    def pixel_size_mm(self) -> float:
        x0, x1, z0, z1 = self.extent()
        return max(x1 - x0, z1 - z0) / (self.size * (1 - 2 * self.margin))

    def display_coords(self) -> tuple[np.ndarray, np.ndarray]:
        """Probe-frame (x, z) in mm of every display pixel centre: two size x size arrays."""
        p = self.pixel_size_mm
        _, _, z0, _ = self.extent()
        idx = np.arange(self.size) + 0.5
        x = (idx - self.size / 2) * p
        z = z0 + (idx - self.margin * self.size) * p
        xx, zz = np.broadcast_arrays(x[None, :], z[:, None])
        return xx.copy(), zz.copy()

    def to_pixels(self, x: np.ndarray | float, z: np.ndarray | float) -> tuple[Any, Any]:
        """Probe-frame mm -> display (column, row) in pixel units (pixel centres at integers)."""
        p = self.pixel_size_mm
        _, _, z0, _ = self.extent()
        return np.asarray(x) / p + self.size / 2 - 0.5, (np.asarray(z) - z0) / p + self.margin * self.size - 0.5

    def display_to_beam(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(sample index, line index, inside-region bool) of every display pixel: size x size arrays."""
        x, z = self.display_coords()
        if self.probe == "linear":
            s = z / self.dz
            line = (x + self.width_mm / 2) / self.line_spacing_mm
        else:
            r = np.hypot(x, z + self.radius_mm)
            th = np.arctan2(x, z + self.radius_mm)
            s = (r - self.radius_mm) / self.dz
            line = (th + self.half_angle) / (2 * self.half_angle / (self.n_lines - 1))
        inside = (s >= 0) & (s <= self.n_samples - 1) & (line >= 0) & (line <= self.n_lines - 1)
        return s, line, inside


def beam_grid(size: int, probe: str) -> tuple[int, int]:
    """(n_samples, n_lines) used for a display of `size` pixels: beam space is ~1.5 x size deep."""
    return max(64, int(round(1.5 * size))), max(32, int(round((0.75 if probe == "convex" else 0.625) * size)))


# -- frames and scene interface ---------------------------------------------------------------------
@dataclass(frozen=True)
class MotionStyle:
    """Probe motion of a preset: in-plane drift amplitudes, elevational sweep speed (slices/frame) and jumps."""

    shift_mm: float = 1.0
    lift_mm: float = 0.3
    tilt_deg: float = 1.0
    speed: tuple[float, float] = (0.1, 0.3)
    jump_prob: float = 0.05
    n_slices: int = 10


@dataclass
class SceneContext:
    """World positions of all beam samples of all frames (T x Z x X, mm) plus per-frame elevation and time."""

    geometry: Geometry
    x: np.ndarray
    z: np.ndarray
    elev: np.ndarray  # T x 1 x 1, elevational position in slice units
    time: np.ndarray  # T x 1 x 1, seconds
    tex: np.ndarray  # T x Z x X unit-variance scatterer field that moves with the tissue
    cache: dict = field(default_factory=dict)


class Scene:
    """Base class of a preset. Subclasses fill the class attributes and the methods below."""

    name = ""
    probe = "linear"
    classes: list[str] = []
    frames_fixed: int | None = None  # 1 for image presets
    group_size = 1  # consecutive items sharing a subject (group) id
    motion = MotionStyle()
    tissue_grey = 100.0  # display grey of unit-echo tissue at 0 dB gain

    def sample_subject(self, rng: np.random.Generator, size: int) -> Params:
        return {}

    def sample(self, rng: np.random.Generator, label: str | None, subject: Params, size: int) -> Params:
        raise NotImplementedError

    def tissue(self, p: Params, ctx: SceneContext) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """(echo, spec, att), each T x Z x X (or broadcastable); spec/att may be None."""
        raise NotImplementedError

    def artifacts(self, p: Params, ctx: SceneContext) -> np.ndarray | None:
        """Beam-space reverberation artifacts added to the scatterer field (T x Z x X) or None."""
        return None

    def masks(self, p: Params, x: np.ndarray, z: np.ndarray, elev: float) -> tuple[np.ndarray | None, dict]:
        """Ground-truth mask (bool H x W) at frame 0 from display-pixel world coords, plus auxiliary arrays."""
        return None, {}

    def target(self, p: Params) -> float | None:
        return None

    def findings(self, p: Params) -> dict:
        raise NotImplementedError

    def report(self, f: dict) -> str:
        raise NotImplementedError


def common_params(rng: np.random.Generator, alpha_db_mm: float) -> Params:
    """Acquisition settings varied per video: gain, dynamic range, TGC, PSF, noise."""
    return {
        "gain_db": float(rng.uniform(-5, 5)),
        "dr_db": float(rng.uniform(50, 66)),
        "alpha_db_mm": alpha_db_mm * float(rng.uniform(0.85, 1.15)),
        "tgc": float(rng.uniform(0.85, 1.05)),
        "psf_axial": float(rng.uniform(1.0, 1.4)),  # Gaussian envelope sigma, samples
        "psf_f0": float(rng.uniform(0.22, 0.28)),  # carrier, cycles per sample
        "psf_lateral": float(rng.uniform(0.7, 1.1)),  # sigma, lines
        "noise_db": float(rng.uniform(-50, -44)),
    }


def _bump(d: np.ndarray, w: float) -> np.ndarray:
    return np.exp(-0.5 * (d / w) ** 2)


def _layers(rng: np.random.Generator, depth_mm: float, skin: float, fat_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """Knots (depth mm, echo) of a piecewise-linear body-wall echo profile: skin, fat, muscle layers."""
    zs = [0.0, 0.6, 0.9, fat_mm, fat_mm + 0.4]
    vs = [skin, skin, rng.uniform(0.4, 0.65), rng.uniform(0.4, 0.65), rng.uniform(0.8, 1.1)]
    z = fat_mm + 0.4
    while z < depth_mm + 10:
        z += rng.uniform(3, 9)
        zs.append(z)
        vs.append(rng.uniform(0.75, 1.25))
    return np.asarray(zs), np.asarray(vs)


def _fascia(rng: np.random.Generator, lo: float, hi: float, n: int) -> list[tuple[float, float, float]]:
    """(depth, slope, amplitude) of n weak specular fascia lines between depths lo and hi."""
    return [(float(rng.uniform(lo, hi)), float(rng.uniform(-0.05, 0.05)), float(rng.uniform(0.6, 1.6)))
            for _ in range(n if hi > lo else 0)]


def _fascia_spec(lines: list, x: np.ndarray, z: np.ndarray, w: float) -> np.ndarray:
    out = np.zeros(np.broadcast_shapes(x.shape, z.shape), np.float32)
    for depth, slope, amp in lines:
        out += amp * _bump(z - (depth + slope * x), w)
    return out


def ramanujan_perimeter(a: float, b: float) -> float:
    """Ellipse perimeter from semi-axes a, b (Ramanujan's first approximation)."""
    return math.pi * (3 * (a + b) - math.sqrt((3 * a + b) * (a + 3 * b)))


# -- carotid ----------------------------------------------------------------------------------------
class CarotidScene(Scene):
    """Linear-probe carotid artery (transverse or longitudinal) with a plaque of one of three echogenicities."""

    name = "carotid"
    probe = "linear"
    classes = ["hyperechoic", "mixed", "hypoechoic"]
    group_size = 3
    motion = MotionStyle(shift_mm=1.0, lift_mm=0.3, tilt_deg=1.5, speed=(0.12, 0.35), jump_prob=0.06, n_slices=12)

    def sample_subject(self, rng: np.random.Generator, size: int) -> Params:
        depth = float(rng.choice([18.0, 22.0, 26.0]))
        r = float(rng.uniform(4.0, 5.5))
        zc = float(np.clip(rng.uniform(0.45, 0.6) * depth, r + 4.0, depth - r - 3.0))
        fat = float(rng.uniform(2.0, 4.5))
        knots = _layers(rng, depth, float(rng.uniform(1.8, 2.6)), fat)
        jug = None
        if rng.random() < 0.6:
            rx, rz = float(rng.uniform(3.5, 6.5)), float(rng.uniform(1.2, 3.0))
            jz = zc - r - float(rng.uniform(1.5, 3.0)) - rz
            if jz - rz > fat + 1:
                jug = (float(rng.uniform(-5, 5)), jz, rx, rz)
        return {
            "depth": depth, "width": float(rng.choice([22.0, 26.0, 30.0])), "radius": r, "zc": zc,
            "xc": float(rng.uniform(-5, 5)), "base": float(rng.uniform(0.8, 1.25)),
            "knots": knots, "fascia": _fascia(rng, fat + 1, zc - r - 1.5, int(rng.integers(1, 4))), "jugular": jug,
            "meander": (float(rng.uniform(0.5, 2.5)), float(rng.uniform(0, 2 * math.pi)), float(rng.uniform(0, 0.8))),
            "striation": (float(rng.uniform(1.2, 2.5)), float(rng.uniform(0.1, 0.3))),
        }

    def sample(self, rng: np.random.Generator, label: str | None, subject: Params, size: int) -> Params:
        p = dict(subject)
        n_s, n_l = beam_grid(size, self.probe)
        p["geometry"] = Geometry("linear", subject["depth"], n_s, n_l, size, width_mm=subject["width"])
        p.update(common_params(rng, 0.6))
        r = subject["radius"]
        p["plaque"] = label
        p["view"] = "transverse" if rng.random() < 0.5 else "longitudinal"
        p["location"] = "far wall" if rng.random() < 0.65 else "near wall"
        p["thickness"] = float(rng.uniform(2.5, min(5.0, 0.95 * r)))
        p["half_width"] = math.radians(float(rng.uniform(50, 90)))
        p["angle"] = math.radians((90.0 if p["location"] == "far wall" else -90.0) + float(rng.uniform(-30, 30)))
        p["length"] = float(rng.uniform(10, 20))
        p["xp"] = float(rng.uniform(-9, 9))
        p["slope"] = float(rng.uniform(-0.06, 0.06))
        p["bulb"] = float(rng.uniform(0.1, 0.3)) if rng.random() < 0.5 else 0.0
        p["bulb_x"] = float(rng.uniform(-12, 12)) * (1 if rng.random() < 0.5 else -1)
        p["pulse"] = (float(rng.uniform(1.0, 1.5)), float(rng.uniform(0, 2 * math.pi)), float(rng.uniform(0.02, 0.04)))
        p["e_peak"] = float(rng.uniform(0, self.motion.n_slices - 1))
        p["shadow"] = 0.0
        if label == "hyperechoic":  # calcified: bright, with a bright surface, usually shadowing
            p["fac"] = float(rng.uniform(3.5, 6.0))
            p["cap"] = float(rng.uniform(2.0, 4.0))
            if rng.random() < 0.75:
                p["shadow"] = float(rng.uniform(0.5, 1.0))  # one-way nepers behind the plaque
        elif label == "mixed":  # heterogeneous: bright and dark patches, occasionally a focal calcification
            p["hi"], p["lo"] = float(rng.uniform(2.0, 3.2)), float(rng.uniform(0.12, 0.3))
            p["pattern"] = rng.uniform([0.8, 0.8, 0.6, 0, 0, 0], [2.0, 2.0, 1.5, 6.3, 6.3, 6.3]).tolist()
            p["cap"] = float(rng.uniform(0.5, 1.5)) if rng.random() < 0.5 else 0.0
            if rng.random() < 0.15:
                p["shadow"] = float(rng.uniform(0.3, 0.6))
        else:  # lipid-rich: nearly as dark as blood, outlined by a thin fibrous cap
            p["fac"] = float(rng.uniform(0.1, 0.25))
            p["cap"] = float(rng.uniform(0.4, 1.0))
        return p

    def _shapes(self, p: Params, x: np.ndarray, z: np.ndarray, elev: np.ndarray, time: np.ndarray) -> dict:
        """Lumen/plaque masks, wall distances and specular weights at world positions."""
        amp_x, phase, amp_z = p["meander"]
        k = self.motion.n_slices
        xc = p["xc"] + amp_x * np.sin(2 * math.pi * elev / k + phase)
        zc = p["zc"] + amp_z * np.cos(2 * math.pi * elev / k + phase)
        f_h, ph, a_h = p["pulse"]
        r = p["radius"] * (1 + a_h * np.sin(2 * math.pi * f_h * time + ph))
        t = p["thickness"] * (0.85 + 0.15 * np.cos(2 * math.pi * (elev - p["e_peak"]) / k))
        if p["view"] == "transverse":
            u, v = x - xc, z - zc
            rho = np.hypot(u, v)
            d = (np.arctan2(v, u) - p["angle"] + math.pi) % (2 * math.pi) - math.pi
            prof = np.clip(1 - (d / p["half_width"]) ** 2, 0, 1)
            inner = r - t * prof
            plaque = (rho < r) & (rho >= inner) & (prof > 0)
            lumen = rho < inner
            dwall = rho - r  # > 0 outside the lumen
            cos_n = np.abs(v) / np.maximum(rho, 1e-6)  # beam (z) against wall normal
            dcap = rho - inner
            local = (u, v)
        else:
            zcx = zc + p["slope"] * (x - p["xc"])
            rx = r * (1 + p["bulb"] / (1 + np.exp(-(x - p["bulb_x"]) / 2.0)))
            top, bot = zcx - rx, zcx + rx
            prof = np.clip(1 - ((x - p["xp"]) / (p["length"] / 2)) ** 2, 0, 1)
            if p["location"] == "far wall":
                plaque = (z < bot) & (z >= bot - t * prof) & (prof > 0)
                lumen = (z > top) & (z < bot - t * prof)
                dcap = z - (bot - t * prof)
            else:
                plaque = (z > top) & (z <= top + t * prof) & (prof > 0)
                lumen = (z > top + t * prof) & (z < bot)
                dcap = (top + t * prof) - z
            dwall = np.maximum(top - z, z - bot)
            cos_n = np.ones_like(dwall)
            local = (x - p["xp"], z - zcx)
        return {"plaque": plaque, "lumen": lumen, "dwall": dwall, "cos": cos_n, "dcap": dcap, "prof": prof,
                "local": local}

    def tissue(self, p: Params, ctx: SceneContext) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        x, z, g = ctx.x, ctx.z, ctx.geometry
        base = p["base"]
        lam, strength = p["striation"]
        echo = (base * np.interp(z, *p["knots"]).astype(np.float32))
        echo *= (1 + strength * np.sin(2 * math.pi * z / lam + 0.4 * np.sin(x / 6.0))).astype(np.float32)
        w = 0.6 * g.dz
        spec = _fascia_spec(p["fascia"], x, z, w)
        if p["jugular"] is not None and p["view"] == "transverse":
            jx, jz, rx, rz = p["jugular"]
            q = ((x - p["xc"] - jx) / rx) ** 2 + ((z - jz) / rz) ** 2
            echo = np.where(q < 1, 0.03 * base, echo)
            spec += 0.8 * _bump(np.sqrt(q) - 1, 0.6 * g.dz / rz).astype(np.float32)
        s = self._shapes(p, x, z, ctx.elev, ctx.time)
        wall = (s["dwall"] >= 0) & (s["dwall"] < 0.9)
        echo = np.where(wall, 1.4 * base, echo)
        echo = np.where(s["lumen"], 0.025 * base, echo)
        plaque = s["plaque"]
        if p["plaque"] == "mixed":
            echo[plaque] = base * self._mixed(p, s["local"], plaque)
        else:
            echo = np.where(plaque, p["fac"] * base, echo)
        spec += (s["cos"] * (1.0 * _bump(s["dwall"], w) + 2.5 * _bump(s["dwall"] - 0.8, w))).astype(np.float32)
        if p["cap"] > 0:
            spec += (p["cap"] * s["cos"] * _bump(s["dcap"], w) * (s["prof"] > 0)).astype(np.float32)
        att = None
        if p["shadow"] > 0:  # thin absorbing layer at the plaque's deep edge: the plaque stays bright, below is dark
            deep = s["dwall"] if p["location"] == "far wall" else s["dcap"]
            layer = _bump(deep, 0.4) / (0.4 * math.sqrt(2 * math.pi))
            att = (p["shadow"] * layer * (s["prof"] > 0)).astype(np.float32)
        return echo.astype(np.float32), spec, att

    @staticmethod
    def _mixed(p: Params, local: tuple, where: np.ndarray) -> np.ndarray:
        """Echo factors of a heterogeneous plaque: bright and dark patches (at the plaque's points)."""
        u = np.broadcast_to(local[0], where.shape)[where]
        v = np.broadcast_to(local[1], where.shape)[where]
        k1, k2, k3, f1, f2, f3 = p["pattern"]
        field_ = np.sin(k1 * u + f1) * np.cos(k2 * v + f2) + 0.5 * np.sin(k3 * (u + v) + f3)
        return p["lo"] + (p["hi"] - p["lo"]) / (1 + np.exp(-5 * field_))

    def masks(self, p: Params, x: np.ndarray, z: np.ndarray, elev: float) -> tuple[np.ndarray | None, dict]:
        s = self._shapes(p, x, z, np.asarray(elev), np.asarray(0.0))
        return s["plaque"], {"lumen": s["lumen"].astype(np.uint8)}

    def findings(self, p: Params) -> dict:
        return {"organ": "carotid artery", "view": p["view"], "plaque": p["plaque"], "location": p["location"],
                "thickness_mm": round(p["thickness"], 1), "acoustic_shadow": bool(p["shadow"] > 0)}

    def report(self, f: dict) -> str:
        shadow = " with posterior acoustic shadowing" if f["acoustic_shadow"] else ""
        return (f"{f['view'].capitalize()} view of the carotid artery shows a {f['plaque']} plaque on the "
                f"{f['location']}, {f['thickness_mm']:.1f} mm thick{shadow}.")


# -- lung -------------------------------------------------------------------------------------------
class LungScene(Scene):
    """Convex-probe lung: chest wall, ribs with shadows, pleural line, A-lines, B-lines, consolidation (score 0-3)."""

    name = "lung"
    probe = "convex"
    classes = ["0", "1", "2", "3"]
    group_size = 3
    motion = MotionStyle(shift_mm=0.5, lift_mm=0.4, tilt_deg=0.8, speed=(0.05, 0.15), jump_prob=0.02, n_slices=6)
    tissue_grey = 95.0

    def sample_subject(self, rng: np.random.Generator, size: int) -> Params:
        depth = float(rng.choice([100.0, 120.0, 140.0]))
        pleura = float(rng.uniform(12, 24))
        fat = float(rng.uniform(2, 6))
        return {
            "depth": depth, "radius": float(rng.choice([40.0, 50.0, 60.0])),
            "half_angle": float(rng.choice([30.0, 35.0])),
            "pleura": pleura, "base": float(rng.uniform(0.8, 1.2)),
            "knots": _layers(rng, pleura, float(rng.uniform(1.6, 2.4)), fat),
            "fascia": _fascia(rng, fat + 1, pleura - 3, int(rng.integers(1, 4))),
        }

    def sample(self, rng: np.random.Generator, label: str | None, subject: Params, size: int) -> Params:
        p = dict(subject)
        sev = int(label or 0)
        n_s, n_l = beam_grid(size, self.probe)
        g = Geometry("convex", subject["depth"], n_s, n_l, size, radius_mm=subject["radius"],
                     half_angle_deg=subject["half_angle"])
        p["geometry"] = g
        p.update(common_params(rng, 0.25))
        p["severity"] = sev
        half = (g.radius_mm + p["pleura"]) * g.half_angle  # lateral half-width (arc length) at the pleura
        p["arc"] = g.radius_mm + p["pleura"]
        ribs = []
        for side in (-1, 1):
            if rng.random() < (0.55 if sev < 2 else 0.3):
                ribs.append((side * half * float(rng.uniform(0.8, 1.05)), float(rng.uniform(8, 12)),
                             p["pleura"] - float(rng.uniform(1.5, 4)), float(rng.uniform(5, 9))))
        p["ribs"] = ribs
        irregular = sev == 3 or rng.random() < [0.0, 0.3, 0.6, 1.0][sev]
        p["irregular"] = bool(irregular)
        p["jitter"] = (rng.uniform(0.4, 0.9, 3) if irregular else rng.uniform(0.05, 0.2, 3)).tolist()
        p["jitter_w"] = (rng.uniform(0.3, 0.9, 3) if irregular else rng.uniform(0.05, 0.2, 3)).tolist()
        p["jitter_ph"] = rng.uniform(0, 2 * math.pi, 4).tolist()
        p["pleura_amp"] = float(rng.uniform(5, 8))
        p["pleura_w"] = float(rng.uniform(0.6, 1.0)) if irregular else float(rng.uniform(0.3, 0.45))
        p["slide"] = (float(rng.uniform(0.5, 2.0)), float(rng.uniform(0.2, 0.35)), float(rng.uniform(0, 2 * math.pi)))
        # consolidation (severity 3): subpleural tissue-like region
        p["consolidation"] = None
        if sev == 3:
            length = float(rng.uniform(15, 28))
            uc = float(rng.uniform(-half * 0.6 + length / 2, half * 0.6 - length / 2)) if half * 1.2 > length else 0.0
            n_air = int(rng.integers(2, 7))
            air = np.column_stack([rng.uniform(-0.4, 0.4, n_air), rng.uniform(0.15, 0.7, n_air)]).tolist()
            p["consolidation"] = (uc, length, float(rng.uniform(12, 35)), float(rng.uniform(0.5, 0.9)), air,
                                  float(rng.uniform(0.5, 1.2)), float(rng.uniform(0, 2 * math.pi)))
        # A-lines and B-lines
        p["a_ratio"] = float(rng.uniform(0.45, 0.65)) if sev == 0 else (
            float(rng.uniform(0.35, 0.55)) if sev == 1 and rng.random() < 0.5 else 0.0)
        n_b = int(rng.choice([[0, 0, 1, 2], [3, 4], [6, 7, 8], [5, 6, 7, 8]][sev]))
        blocked = [(r[0], r[1] / 2 + 2.5) for r in ribs]
        if p["consolidation"] is not None:
            blocked.append((p["consolidation"][0], p["consolidation"][1] / 2 + 2.0))
        blines = self._place_blines(rng, n_b, half * 0.85, blocked, 5.0 if sev <= 1 else 3.0)
        if sev >= 2:  # confluent: one B-line merges with its neighbour
            u0, w0, i0, f0 = blines[0]
            blines[1] = (u0 + float(rng.uniform(1.5, 2.5)), w0, i0, f0 + 1.0)
        p["blines"] = sorted(blines)
        return p

    @staticmethod
    def _place_blines(rng, n: int, half: float, blocked: list, sep: float) -> list[tuple[float, float, float, float]]:
        """(u position mm, width mm, intensity, flicker phase) of n B-lines in the free intercostal space."""
        out: list[tuple[float, float, float, float]] = []
        for _attempt in range(400):
            if len(out) == n:
                break
            u = float(rng.uniform(-half, half))
            if any(abs(u - c) < w for c, w in blocked) or any(abs(u - b[0]) < sep for b in out):
                continue
            out.append((u, float(rng.uniform(0.7, 1.4)), float(rng.uniform(0.7, 1.1)), float(rng.uniform(0, 6.3))))
        for attempt in range(2000):  # crowded field: tighter spacing (confluent), never fewer B-lines
            if len(out) == n:
                break
            u = float(rng.uniform(-half, half))
            if attempt < 1000 and any(abs(u - c) < w for c, w in blocked):
                continue
            out.append((u, float(rng.uniform(0.7, 1.2)), float(rng.uniform(0.7, 1.1)), float(rng.uniform(0, 6.3))))
        return sorted(out)

    def _shapes(self, p: Params, x: np.ndarray, z: np.ndarray, time: np.ndarray) -> dict:
        R = p["geometry"].radius_mm
        rho = np.hypot(x, z + R) - R
        u = np.arctan2(x, z + R) * p["arc"]
        amp, f_b, ph = p["slide"]
        slide = amp * (np.sin(2 * math.pi * f_b * time + ph) - math.sin(ph))
        ul = u - slide
        a, w, phs = p["jitter"], p["jitter_w"], p["jitter_ph"]
        jit = sum(a[i] * np.sin(w[i] * ul + phs[i]) for i in range(3))
        dp = rho - (p["pleura"] + jit)
        rib_any = np.zeros(np.broadcast_shapes(rho.shape), bool)
        for ur, wr, dr, _amp in p["ribs"]:
            rib_any |= np.abs(u - ur) < wr / 2
        return {"rho": rho, "u": u, "ul": ul, "dp": dp, "rib": rib_any}

    def tissue(self, p: Params, ctx: SceneContext) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        g, base = p["geometry"], p["base"]
        s = self._shapes(p, ctx.x, ctx.z, ctx.time)
        ctx.cache.update(s)
        rho, u, ul, dp = s["rho"], s["u"], s["ul"], s["dp"]
        w = 0.6 * g.dz
        wall = base * np.interp(rho, *p["knots"])
        lung = base * (0.04 + 0.12 * np.exp(-np.maximum(dp, 0) / 8.0))
        echo = np.where(dp < 0, wall, lung)
        # pleura: coherent bright line plus bright speckle; irregular = thick, wavy and fragmented
        gaps = 1.0
        if p["irregular"]:
            gaps = 0.5 + 0.5 * (np.sin(0.7 * ul + p["jitter_ph"][3]) * np.sin(0.23 * ul) > -0.3)
        band = _bump(dp, p["pleura_w"])
        echo = echo + 2.5 * base * band
        spec = (p["pleura_amp"] * gaps * _bump(dp, max(w, p["pleura_w"] * 0.5))).astype(np.float32)
        spec += _fascia_spec(p["fascia"], u * 0, rho, w)
        att = np.zeros(echo.shape, np.float32)
        for ur, wr, dr, amp in p["ribs"]:
            inside = np.abs(u - ur) < wr / 2
            surf = dr + 0.03 * (u - ur) ** 2
            spec += (amp * inside * _bump(rho - surf, w)).astype(np.float32)
            att += (1.5 * (inside & (rho > surf + 0.5))).astype(np.float32)
        c = p["consolidation"]
        if c is not None:
            uc, length, depth, fac, air, ripple, rph = c
            frac = np.clip(1 - (2 * (ul - uc) / length) ** 2, 0, None)
            h = depth * np.sqrt(frac) * (1 + 0.2 * np.sin(ripple * ul + rph))
            inside = (dp > 0) & (dp < h) & (frac > 0)
            ctx.cache["consolidation_frac"] = frac
            echo = np.where(inside, fac * base, echo)
            for au, ad in air:
                spec += (2.5 * _bump(ul - (uc + au * length), 0.8) * _bump(dp - ad * depth, w * 1.5)).astype(np.float32)
            spec += (1.5 * inside * _bump(dp - h, 1.2)).astype(np.float32)  # shred-like deep border
        return echo.astype(np.float32), spec, att

    def artifacts(self, p: Params, ctx: SceneContext) -> np.ndarray | None:
        """A-lines (pleura repeats at multiples of its depth) and B-lines (comet tails from pleura to bottom)."""
        dp, ul = ctx.cache["dp"], ctx.cache["ul"]
        n_t, n_z, n_x = dp.shape
        cross = dp >= 0
        has = cross.any(axis=1)  # T x X
        idx = np.where(has, cross.argmax(axis=1), n_z).astype(np.float32)  # first sample below the pleura
        ul_p = np.take_along_axis(ul, np.minimum(idx, n_z - 1).astype(np.int64)[:, None, :], axis=1)  # T x 1 x X
        t = ctx.time
        weight = np.zeros_like(ul_p)
        for ub, wb, ib, fph in p["blines"]:
            weight += ib * (0.8 + 0.2 * np.sin(2 * math.pi * 0.7 * t + fph)) * _bump(ul_p - ub, wb)
        cons = np.zeros_like(ul_p)
        c = p["consolidation"]
        if c is not None:
            cons = (np.abs(ul_p - c[0]) < c[1] / 2).astype(np.float32)
        s = np.arange(n_z, dtype=np.float32)[None, :, None]
        top = idx[:, None, :]
        out = np.zeros((n_t, n_z, n_x), np.float32)
        if p["blines"]:
            below = np.clip(s - top - 1.0, 0, 1)
            stri = 1 + 0.5 * np.cos(2 * math.pi * (s - top) / 4.0)
            out += 4.0 * p["base"] * weight * (1 - cons) * below * stri * ctx.tex
        if p["a_ratio"] > 0:
            keep = (1 - np.clip(weight, 0, 1)) * (1 - cons) * has[:, None, :]
            k = 2
            while True:
                centre = k * top
                if float(centre.min()) > n_z + 3:
                    break
                out += p["pleura_amp"] * p["a_ratio"] ** (k - 1) * keep * _bump(s - centre, 0.6 * k ** 0.3)
                k += 1
        return out

    def masks(self, p: Params, x: np.ndarray, z: np.ndarray, elev: float) -> tuple[np.ndarray | None, dict]:
        g = p["geometry"]
        s = self._shapes(p, x, z, np.asarray(0.0))
        band = max(1.2, g.pixel_size_mm)
        pleura = (np.abs(s["dp"]) < band) & ~s["rib"]
        apex = g.to_pixels(0.0, -g.radius_mm)
        angles = [math.degrees(b[0] / p["arc"]) for b in p["blines"]]
        return pleura, {"apex_px": (float(apex[0]), float(apex[1])), "b_line_angles_deg": angles}

    def findings(self, p: Params) -> dict:
        return {"organ": "lung", "score": p["severity"], "a_lines": bool(p["a_ratio"] > 0),
                "b_lines": len(p["blines"]), "confluent_b_lines": bool(p["severity"] >= 2),
                "consolidation": p["consolidation"] is not None, "pleural_irregularity": p["irregular"]}

    def report(self, f: dict) -> str:
        n = f["b_lines"]
        blines = "no B-lines" if n == 0 else f"{_NUMBERS[n] if n < len(_NUMBERS) else n} B-line{'s' if n > 1 else ''}"
        if f["confluent_b_lines"] and n:
            blines += ", partly confluent,"
        pleura = "an irregular" if f["pleural_irregularity"] else "a smooth"
        alines = "with A-lines" if f["a_lines"] else "without A-lines"
        cons = "a subpleural consolidation" if f["consolidation"] else "no consolidation"
        return f"Lung ultrasound shows {blines} below {pleura} pleural line, {alines}, and {cons}."


# -- fetal head -------------------------------------------------------------------------------------
class FetalHeadScene(Scene):
    """Convex-probe fetal head (transthalamic plane): skull ring ellipse, brain, midline, in amniotic fluid."""

    name = "fetal-head"
    probe = "convex"
    classes: list[str] = []
    frames_fixed = 1
    motion = MotionStyle(shift_mm=0.0, lift_mm=0.0, tilt_deg=0.0, speed=(0.0, 0.0), jump_prob=0.0, n_slices=2)
    tissue_grey = 90.0

    def sample(self, rng: np.random.Generator, label: str | None, subject: Params, size: int) -> Params:
        p: Params = {"base": float(rng.uniform(0.8, 1.2))}
        p.update(common_params(rng, 0.22))
        radius = float(rng.choice([40.0, 50.0, 60.0]))
        half = float(rng.choice([30.0, 35.0]))
        wall = float(rng.uniform(8, 22))
        a = float(rng.uniform(18, 52))
        b = a * float(rng.uniform(0.72, 0.88))
        psi = float(rng.uniform(-math.pi / 2, math.pi / 2))
        n_s, n_l = beam_grid(size, self.probe)
        for _ in range(60):
            hz = math.hypot(a * math.sin(psi), b * math.cos(psi))
            need = wall + 6 + 2 * hz + 8
            options = [d for d in (80.0, 100.0, 120.0, 140.0, 160.0) if d >= need]
            if options:
                depth = options[0]
                g = Geometry("convex", depth, n_s, n_l, size, radius_mm=radius, half_angle_deg=half)
                for _try in range(40):
                    zc = float(rng.uniform(wall + 6 + hz, depth - 4 - hz))
                    xc = float(rng.uniform(-0.4, 0.4) * (radius + zc) * math.sin(g.half_angle))
                    if self._fits(g, xc, zc, a, b, psi, wall + 4):
                        p.update(geometry=g, xc=xc, zc=zc, a=a, b=b, psi=psi, wall=wall)
                        break
                if "geometry" in p:
                    break
            a, b = a * 0.95, b * 0.95
        if "geometry" not in p:
            raise RuntimeError("fetal-head scene: no head placement fits the sector (should not happen)")
        p["skull"] = float(np.clip(0.07 * a, 1.6, 3.5))
        p["skull_amp"] = float(rng.uniform(6, 10))
        p["skull_echo"] = float(rng.uniform(4, 6))
        p["skull_att"] = float(rng.uniform(0.04, 0.1))
        p["brain"] = float(rng.uniform(0.25, 0.45))
        p["midline"] = float(rng.uniform(1.5, 3.0))
        p["knots"] = _layers(rng, wall, float(rng.uniform(1.6, 2.4)), float(rng.uniform(2, 6)))
        p["fascia"] = _fascia(rng, 4, wall - 1, int(rng.integers(1, 3)))
        p["placenta"] = float(rng.uniform(10, 25)) if rng.random() < 0.5 else 0.0
        p["body"] = None
        if rng.random() < 0.6:
            ang = float(rng.uniform(0, 2 * math.pi))
            br = float(rng.uniform(0.6, 0.9) * a)
            dist = a + br + float(rng.uniform(4, 10))
            p["body"] = (p["xc"] + dist * math.cos(ang), p["zc"] + dist * math.sin(ang), br, br * 0.8,
                         float(rng.uniform(0.5, 0.8)))
        return p

    @staticmethod
    def _fits(g: Geometry, xc: float, zc: float, a: float, b: float, psi: float, top: float) -> bool:
        t = np.linspace(0, 2 * math.pi, 90, endpoint=False)
        bx = xc + a * np.cos(t) * math.cos(psi) - b * np.sin(t) * math.sin(psi)
        bz = zc + a * np.cos(t) * math.sin(psi) + b * np.sin(t) * math.cos(psi)
        rho = np.hypot(bx, bz + g.radius_mm) - g.radius_mm
        th = np.abs(np.arctan2(bx, bz + g.radius_mm))
        return bool((rho > top).all() and (rho < g.depth_mm - 4).all() and (th < g.half_angle - math.radians(3)).all())

    @staticmethod
    def _ellipse(p: Params, x: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(u, v, signed distance to the ellipse mm, |z-component| of its normal) at world positions."""
        a, b, psi = p["a"], p["b"], p["psi"]
        c, s = math.cos(psi), math.sin(psi)
        dx, dz = x - p["xc"], z - p["zc"]
        u, v = dx * c + dz * s, -dx * s + dz * c
        gu, gv = u / a**2, v / b**2
        q = np.sqrt((u / a) ** 2 + (v / b) ** 2)
        gn = np.hypot(gu, gv)
        sd = (q - 1) * q / np.maximum(gn, 1e-9)
        nz = np.abs(gu * s + gv * c) / np.maximum(gn, 1e-9)
        return u, v, sd, nz

    def tissue(self, p: Params, ctx: SceneContext) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        x, z, g, base = ctx.x, ctx.z, p["geometry"], p["base"]
        R = g.radius_mm
        rho = np.hypot(x, z + R) - R
        w = 0.6 * g.dz
        u, v, sd, nz = self._ellipse(p, x, z)
        a, b, th = p["a"], p["b"], p["skull"]
        echo = np.full(sd.shape, 0.05 * base, np.float32)  # amniotic fluid
        echo = np.where(rho < p["wall"], base * np.interp(rho, *p["knots"]), echo)
        echo = np.where((rho >= p["wall"]) & (rho < p["wall"] + 4), 1.3 * base, echo)
        if p["placenta"]:
            placenta = (rho >= p["wall"] + 4) & (rho < p["wall"] + 4 + p["placenta"]) & (sd > th + 3)
            echo = np.where(placenta, 1.4 * base, echo)
        if p["body"] is not None:
            bx, bz, ra, rb, fac = p["body"]
            inb = ((x - bx) / ra) ** 2 + ((z - bz) / rb) ** 2 < 1
            echo = np.where(inb & (sd > th + 2) & (rho > p["wall"] + 4), fac * base, echo)
        brain = sd < -th / 2
        echo = np.where(brain, p["brain"] * base, echo)
        thal = (((u + 0.05 * a) / (0.15 * a)) ** 2 + ((np.abs(v) - 0.18 * b) / (0.12 * b)) ** 2) < 1
        echo = np.where(brain & thal, 0.12 * base, echo)
        csp = (np.abs(u - 0.35 * a) < 0.12 * a) & (np.abs(v) < 0.08 * b)
        echo = np.where(brain & csp, 0.04 * base, echo)
        ring = np.abs(sd) <= th / 2
        echo = np.where(ring, p["skull_echo"] * base, echo)
        spec = _fascia_spec(p["fascia"], x * 0, rho, w)
        spec += (p["skull_amp"] * (0.5 + 0.5 * nz) * _bump(sd, max(w, th / 3))).astype(np.float32)
        mid = (np.abs(u) < 0.85 * a) & ~csp & brain
        spec += (p["midline"] * (0.3 + 0.7 * abs(math.cos(p["psi"]))) * mid * _bump(v, w)).astype(np.float32)
        att = (p["skull_att"] * ring).astype(np.float32)
        return echo.astype(np.float32), spec, att

    def masks(self, p: Params, x: np.ndarray, z: np.ndarray, elev: float) -> tuple[np.ndarray | None, dict]:
        g = p["geometry"]
        u, v, _, _ = self._ellipse(p, x, z)
        inside = (u / p["a"]) ** 2 + (v / p["b"]) ** 2 <= 1
        cx, cy = g.to_pixels(p["xc"], p["zc"])
        px = g.pixel_size_mm
        return inside, {"ellipse_px": (float(cx), float(cy), p["a"] / px, p["b"] / px, p["psi"])}

    def target(self, p: Params) -> float | None:
        return ramanujan_perimeter(p["a"], p["b"])

    def findings(self, p: Params) -> dict:
        return {"organ": "fetal head", "view": "transthalamic",
                "head_circumference_mm": round(ramanujan_perimeter(p["a"], p["b"]), 1),
                "biparietal_diameter_mm": round(2 * p["b"], 1), "occipitofrontal_diameter_mm": round(2 * p["a"], 1),
                "cephalic_index": round(100 * p["b"] / p["a"], 1)}

    def report(self, f: dict) -> str:
        return (f"Transthalamic view of the fetal head: head circumference {f['head_circumference_mm']:.1f} mm, "
                f"biparietal diameter {f['biparietal_diameter_mm']:.1f} mm, occipitofrontal diameter "
                f"{f['occipitofrontal_diameter_mm']:.1f} mm.")


SCENES: dict[str, Scene] = {s.name: s for s in (CarotidScene(), LungScene(), FetalHeadScene())}
