"""A procedural RGB-D renderer: rooms with boxes, spheres and cylinders, ray cast in torch.

Each scene is a room (floor, ceiling and four walls: an axis-aligned box seen from inside) with
1–5 objects standing on the floor: boxes (turned about the vertical axis), spheres and upright
cylinders. Every surface is textured with an image of the image set (tiled over the room's
surfaces at a random scale, wrapped around the objects), shaded Lambertian by a directional
light from above plus an ambient term, with the objects' shadows (a second ray cast towards the
light). A pinhole camera stands in the room at a random height, yaw, downward pitch and field of
view. Per pixel the renderer gives RGB and the **metric z-depth** (metres along the optical axis,
as NYU-style depth maps store it).

Units and frames: metres; world y up, the room spans ``x in [-half_width, half_width]``,
``y in [0, height]``, ``z in [FRONT_WALL, back]``; the camera looks along +z before its yaw and
pitch. Rays are cast in batches of scenes with every pixel at once: rays are
``o + t d`` with ``d = forward + a right + b up`` (not normalised), so the hit parameter ``t``
*is* the z-depth.

Everything is drawn from one ``torch.Generator`` (all scene parameters up front), so a scene
depends only on the seed and its index.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

__all__ = [
    "RGBDScenes",
    "SceneParams",
    "SyntheticRGBDOptions",
    "make_scenes",
    "render_scenes",
    "sample_scene_params",
]

FRONT_WALL = -1.5
"""z of the wall behind the camera."""
BOX, SPHERE, CYLINDER = 0, 1, 2
ROOM_SURFACES = 6
"""Surface ids 0..5: left wall (x-), right wall (x+), floor (y-), ceiling (y+), front wall (z-),
back wall (z+); object k is surface 6 + k."""
_EPS = 1e-4
_INF = float("inf")


class SyntheticRGBDOptions(BaseModel):
    """``data.options`` of ``synthetic_rgbd``."""

    model_config = ConfigDict(extra="forbid")

    scenes: int = Field(default=2000, gt=0)
    min_objects: int = Field(default=1, ge=0)
    max_objects: int = Field(default=5, ge=0)
    shadows: bool = True
    seed: int = 0
    images: int | None = Field(default=None, gt=1)
    """Use only the first N images of the image set (None: all)."""


@dataclass
class SceneParams:
    """Everything that decides N scenes with K object slots. Slot ``k`` holds an object of kind
    ``k % 3`` (:data:`BOX`, :data:`SPHERE`, :data:`CYLINDER`) when ``present[:, k]``; the
    sampler picks a random subset of the slots, so every mix of kinds occurs."""

    half_width: Tensor  # (N,) room spans x in [-half_width, half_width]
    back: Tensor  # (N,) z of the back wall
    height: Tensor  # (N,) ceiling height
    camera: Tensor  # (N, 3) camera centre
    yaw: Tensor  # (N,) radians, positive turns right (towards +x)
    pitch: Tensor  # (N,) radians, negative looks down
    fov: Tensor  # (N,) horizontal field of view, radians
    light: Tensor  # (N, 3) unit vector towards the light
    ambient: Tensor  # (N,)
    present: Tensor  # (N, K) bool
    position: Tensor  # (N, K, 2) (x, z) on the floor
    size: Tensor  # (N, K, 3) boxes: half extents (x, y, z); spheres: radius in [0];
    # cylinders: radius in [0], height in [1]
    turn: Tensor  # (N, K) boxes: rotation about y, radians
    room_texture: Tensor  # (N, 6) image index per room surface
    object_texture: Tensor  # (N, K) image index per object
    tile: Tensor  # (N, 6) metres per texture repeat on each room surface

    def __len__(self) -> int:
        return int(self.half_width.shape[0])

    @property
    def kind(self) -> Tensor:
        """(N, K) the kind of each slot: ``k % 3``."""
        return (torch.arange(self.size.shape[1]) % 3).expand(len(self), -1)

    def rows(self, start: int, stop: int) -> SceneParams:
        return SceneParams(**{k: v[start:stop] for k, v in self.__dict__.items()})


@dataclass
class RGBDScenes:
    """Rendered scenes: ``rgb`` (N, 3, S, S) uint8, ``depth`` (N, S, S) float32 metres
    (z-depth), ``surface`` (N, S, S) int64 (surface id, see :data:`ROOM_SURFACES`),
    ``focal`` (N,) focal length in pixels."""

    rgb: Tensor
    depth: Tensor
    surface: Tensor
    focal: Tensor


def sample_scene_params(
    n: int, num_images: int, opts: SyntheticRGBDOptions, generator: torch.Generator
) -> SceneParams:
    """Draw ``n`` scenes from ``generator`` (CPU), in a fixed order."""
    if opts.min_objects > opts.max_objects:
        raise ValueError(f"min_objects={opts.min_objects} > max_objects={opts.max_objects}")
    g, k = generator, max(opts.max_objects, 1)
    count = torch.randint(opts.min_objects, opts.max_objects + 1, (n,), generator=g)

    def uniform(shape: tuple[int, ...], lo: float, hi: float) -> Tensor:
        return lo + (hi - lo) * torch.rand(shape, generator=g)

    half_width = uniform((n,), 2.0, 4.0)
    back = uniform((n,), 5.0, 9.0)
    height = uniform((n,), 2.6, 3.4)
    camera = torch.stack(
        [uniform((n,), -0.3, 0.3) * half_width, uniform((n,), 1.2, 1.8), uniform((n,), -0.6, 0.2)],
        1,
    )
    azimuth = uniform((n,), 0.0, 2 * math.pi)
    elevation = uniform((n,), math.radians(35), math.radians(70))
    light = torch.stack([torch.cos(elevation) * torch.cos(azimuth), torch.sin(elevation),
                         torch.cos(elevation) * torch.sin(azimuth)], 1)  # fmt: skip
    kind = torch.arange(k).expand(n, k) % 3
    a, b, c = uniform((n, k), 0.25, 0.7), uniform((n, k), 0.4, 1.6), uniform((n, k), 0.25, 0.7)
    size = torch.stack([a, torch.where(kind == BOX, b / 2, b), c], -1)
    margin = 0.8
    x = uniform((n, k), -1.0, 1.0) * (half_width[:, None] - margin)
    z = 1.5 + torch.rand((n, k), generator=g) * (back[:, None] - margin - 1.5)
    return SceneParams(
        half_width=half_width,
        back=back,
        height=height,
        camera=camera,
        yaw=uniform((n,), -math.radians(25), math.radians(25)),
        pitch=uniform((n,), -math.radians(25), -math.radians(5)),
        fov=uniform((n,), math.radians(55), math.radians(70)),
        light=light,
        ambient=uniform((n,), 0.25, 0.45),
        present=torch.rand((n, k), generator=g).argsort(1).argsort(1) < count[:, None],
        position=torch.stack([x, z], -1),
        size=size,
        turn=uniform((n, k), 0.0, math.pi),
        room_texture=torch.randint(0, num_images, (n, ROOM_SURFACES), generator=g),
        object_texture=torch.randint(0, num_images, (n, k), generator=g),
        tile=uniform((n, ROOM_SURFACES), 0.6, 1.6),
    )


def camera_rays(params: SceneParams, size: int) -> tuple[Tensor, Tensor, Tensor]:
    """Ray origins (N, 1, 3), directions (N, S*S, 3) with unit forward component (so the hit
    parameter is the z-depth), and the focal length (N,) in pixels."""
    focal = (size / 2) / torch.tan(params.fov / 2)
    cy, sy = torch.cos(params.yaw), torch.sin(params.yaw)
    cp, sp = torch.cos(params.pitch), torch.sin(params.pitch)
    forward = torch.stack([sy * cp, sp, cy * cp], -1)  # (N, 3)
    right = torch.stack([cy, torch.zeros_like(cy), -sy], -1)
    up = torch.linalg.cross(forward, right)
    pix = torch.arange(size, dtype=torch.float32) + 0.5 - size / 2
    v, u = torch.meshgrid(pix, pix, indexing="ij")  # rows (down), columns (right)
    a = u.reshape(1, -1, 1) / focal[:, None, None]
    b = -v.reshape(1, -1, 1) / focal[:, None, None]
    d = forward[:, None] + a * right[:, None] + b * up[:, None]
    return params.camera[:, None], d, focal


def _room_hit(o: Tensor, d: Tensor, params: SceneParams) -> tuple[Tensor, Tensor]:
    """Exit of rays from inside the room box: (t (N, P), surface id (N, P))."""
    lo = torch.stack([-params.half_width, torch.zeros_like(params.back),
                      torch.full_like(params.back, FRONT_WALL)], -1)[:, None]  # fmt: skip
    hi = torch.stack([params.half_width, params.height, params.back], -1)[:, None]
    bound = torch.where(d > 0, hi, lo)
    t = torch.where(d.abs() > 1e-12, (bound - o) / d, torch.full_like(d, _INF))
    t_min, axis = t.min(-1)
    positive = torch.gather(d, -1, axis[..., None])[..., 0] > 0
    return t_min, axis * 2 + positive.long()


def _sphere_hit(o: Tensor, d: Tensor, center: Tensor, radius: Tensor) -> Tensor:
    """Nearest t > 0 of rays (N, P, 3) with spheres (N, K, 3) / (N, K): (N, P, K), inf = miss."""
    oc = o[:, :, None] - center[:, None]  # (N, P|1, K, 3)
    a = (d * d).sum(-1)[..., None]
    b = 2 * (d[:, :, None] * oc).sum(-1)
    c = (oc * oc).sum(-1) - radius[:, None] ** 2
    disc = b * b - 4 * a * c
    t = (-b - torch.sqrt(disc.clamp_min(0))) / (2 * a)
    return torch.where((disc >= 0) & (t > _EPS), t, torch.full_like(t, _INF))


def _cylinder_hit(
    o: Tensor, d: Tensor, base: Tensor, radius: Tensor, height: Tensor
) -> tuple[Tensor, Tensor]:
    """Upright cylinders standing on y = 0 at ``base`` (N, K, 2) = (x, z): (t, on_cap) (N, P, K)."""
    ox = o[..., 0:1] - base[:, None, :, 0]  # (N, P|1, K)
    oz = o[..., 2:3] - base[:, None, :, 1]
    dx, dy, dz = d[..., 0:1], d[..., 1:2], d[..., 2:3]
    a = (dx * dx + dz * dz).clamp_min(1e-12)
    b = 2 * (dx * ox + dz * oz)
    c = ox * ox + oz * oz - radius[:, None] ** 2
    disc = b * b - 4 * a * c
    t_side = (-b - torch.sqrt(disc.clamp_min(0))) / (2 * a)
    y_side = o[..., 1:2] + t_side * dy
    side_ok = (disc >= 0) & (t_side > _EPS) & (y_side >= 0) & (y_side <= height[:, None])
    t_side = torch.where(side_ok, t_side, torch.full_like(t_side, _INF))
    safe_dy = torch.where(dy.abs() > 1e-12, dy, torch.full_like(dy, 1e-12))
    t_cap = (height[:, None] - o[..., 1:2]) / safe_dy
    cx, cz = ox + t_cap * dx, oz + t_cap * dz
    cap_ok = (
        (t_cap > _EPS)
        & (cx * cx + cz * cz <= radius[:, None] ** 2)
        & (o[..., 1:2] > height[:, None])
    )
    t_cap = torch.where(cap_ok, t_cap, torch.full_like(t_cap, _INF))
    return torch.minimum(t_side, t_cap), t_cap < t_side


def _to_box(v: Tensor, turn: Tensor) -> Tensor:
    """World vectors (..., 3) -> the frame of boxes turned by ``turn`` (broadcastable to
    ``v.shape[:-1]``) about y."""
    c, s = torch.cos(turn), torch.sin(turn)
    x, y, z = v.unbind(-1)
    return torch.stack([c * x - s * z, y, s * x + c * z], -1)


def _from_box(v: Tensor, turn: Tensor) -> Tensor:
    """Inverse of :func:`_to_box`."""
    c, s = torch.cos(turn), torch.sin(turn)
    x, y, z = v.unbind(-1)
    return torch.stack([c * x + s * z, y, -s * x + c * z], -1)


def _box_hit(
    o: Tensor, d: Tensor, center: Tensor, half: Tensor, turn: Tensor
) -> tuple[Tensor, Tensor]:
    """Boxes (centres (N, K, 3), half extents (N, K, 3), turned about y): (t, face axis)."""
    n, p, k = d.shape[0], d.shape[1], center.shape[1]
    lo = _to_box(o[:, :, None] - center[:, None], turn[:, None])  # (N, P|1, K, 3)
    ld = _to_box(d[:, :, None].expand(n, p, k, 3), turn[:, None])
    ld = torch.where(ld.abs() > 1e-12, ld, torch.full_like(ld, 1e-12))
    t1 = (-half[:, None] - lo) / ld
    t2 = (half[:, None] - lo) / ld
    t_near, axis = torch.minimum(t1, t2).max(-1)
    t_far = torch.maximum(t1, t2).min(-1).values
    ok = (t_near <= t_far) & (t_near > _EPS)
    return torch.where(ok, t_near, torch.full_like(t_near, _INF)), axis


def _object_hits(
    o: Tensor, d: Tensor, params: SceneParams
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Nearest object per ray: (t, slot, cylinder-cap flag, box face axis), each (N, P).

    Slot ``k`` holds a ``k % 3`` object (:data:`BOX`, :data:`SPHERE`, :data:`CYLINDER`), so each
    intersection test runs only on the slots of its kind."""
    size, pos, present = params.size, params.position, params.present
    n, p, k = d.shape[0], d.shape[1], size.shape[1]
    t = torch.full((n, p, k), _INF)
    cap = torch.zeros(n, p, k, dtype=torch.bool)
    axis = torch.zeros(n, p, k, dtype=torch.long)
    b, sp, cy = slice(BOX, None, 3), slice(SPHERE, None, 3), slice(CYLINDER, None, 3)
    if size[:, b].shape[1]:
        centre = torch.stack([pos[:, b, 0], size[:, b, 1], pos[:, b, 1]], -1)
        t[..., b], axis[..., b] = _box_hit(o, d, centre, size[:, b], params.turn[:, b])
    if size[:, sp].shape[1]:
        centre = torch.stack([pos[:, sp, 0], size[:, sp, 0], pos[:, sp, 1]], -1)
        t[..., sp] = _sphere_hit(o, d, centre, size[:, sp, 0])
    if size[:, cy].shape[1]:
        t[..., cy], cap[..., cy] = _cylinder_hit(o, d, pos[:, cy], size[:, cy, 0], size[:, cy, 1])
    t = torch.where(present[:, None], t, torch.full_like(t, _INF))
    t_best, slot = t.min(-1)
    pick = slot[..., None]
    return t_best, slot, torch.gather(cap, -1, pick)[..., 0], torch.gather(axis, -1, pick)[..., 0]


def _object_frame(
    rel: Tensor, kind: Tensor, size: Tensor, turn: Tensor, cap: Tensor, face: Tensor
) -> tuple[Tensor, Tensor]:
    """Normals (M, 3) and texture coordinates (M, 2) of M object hit points.

    ``rel`` (M, 3) is the hit point relative to the object's foot point ``(x, 0, z)``; ``kind``,
    ``turn``, ``cap``, ``face`` (M,) and ``size`` (M, 3) describe the object hit."""
    x, y, z = rel.unbind(-1)
    zero = torch.zeros_like(x)
    radius = size[:, 0].clamp_min(1e-6)
    # spheres: normal from the centre; (longitude, latitude)
    s_normal = (rel - torch.stack([zero, size[:, 0], zero], -1)) / radius[:, None]
    s_uv = torch.stack([torch.atan2(s_normal[:, 2], s_normal[:, 0]) / math.pi,
                        torch.acos(s_normal[:, 1].clamp(-1, 1)) / math.pi], -1)  # fmt: skip
    # cylinders: the side (angle, height) or the top cap (planar)
    radial = torch.stack([x, zero, z], -1) / radius[:, None]
    up = torch.stack([zero, torch.ones_like(x), zero], -1)
    c_normal = torch.where(cap[:, None], up, radial)
    c_side = torch.stack([torch.atan2(z, x) / math.pi, y / size[:, 1].clamp_min(1e-6)], -1)
    c_uv = torch.where(cap[:, None], rel[:, [0, 2]] / (2 * radius[:, None]) + 0.5, c_side)
    # boxes: local coordinates in [-1, 1]; the face's other two give (u, v)
    centred = rel - torch.stack([zero, size[:, 1], zero], -1)
    local = _to_box(centred, turn) / size.clamp_min(1e-6)
    sign = torch.gather(local, 1, face[:, None]).sign()
    b_normal = _from_box(torch.zeros_like(local).scatter_(1, face[:, None], sign), turn)
    first = torch.where(face == 0, 2, 0)[:, None]
    second = torch.where(face == 1, 2, 1)[:, None]
    b_uv = torch.cat([torch.gather(local, 1, first), torch.gather(local, 1, second)], 1) * 0.5 + 0.5
    is_sphere, is_cyl = (kind == SPHERE)[:, None], (kind == CYLINDER)[:, None]
    normal = torch.where(is_sphere, s_normal, torch.where(is_cyl, c_normal, b_normal))
    uv = torch.where(is_sphere, s_uv, torch.where(is_cyl, c_uv, b_uv))
    return normal, uv


def _surface_frame(
    hit: Tensor, surface: Tensor, slot: Tensor, cap: Tensor, face: Tensor, params: SceneParams
) -> tuple[Tensor, Tensor, Tensor]:
    """Normals (N, P, 3), texture coordinates (N, P, 2) (any real values; textures repeat)
    and texture image indices (N, P) of the hit points."""
    n, p = surface.shape
    x, y, z = hit.unbind(-1)
    # room: inward normals; (u, v) from the two in-plane coordinates in units of the tile
    room = surface.clamp_max(ROOM_SURFACES - 1)
    axis = room // 2
    sign = torch.where(room % 2 == 1, -1.0, 1.0)
    normal = torch.zeros(n, p, 3).scatter_(-1, axis[..., None], sign[..., None])
    tile = torch.gather(params.tile, 1, room)
    uv = torch.stack([torch.where(axis == 0, z, x), torch.where(axis == 1, z, y)], -1)
    uv = uv / tile[..., None]
    image = torch.gather(params.room_texture, 1, room)
    # objects: only at the pixels that see one
    scene, pixel = (surface >= ROOM_SURFACES).nonzero(as_tuple=True)
    if scene.numel():
        k = slot[scene, pixel]
        foot = params.position[scene, k]
        rel = hit[scene, pixel] - torch.stack([foot[:, 0], torch.zeros_like(foot[:, 0]),
                                               foot[:, 1]], -1)  # fmt: skip
        obj_normal, obj_uv = _object_frame(
            rel,
            params.kind[scene, k],
            params.size[scene, k],
            params.turn[scene, k],
            cap[scene, pixel],
            face[scene, pixel],
        )
        normal[scene, pixel] = obj_normal
        uv[scene, pixel] = obj_uv
        image[scene, pixel] = params.object_texture[scene, k]
    return normal, uv, image


def _sample_wrapped(images: Tensor, index: Tensor, uv: Tensor) -> Tensor:
    """Bilinear texture lookup with wrap-around: images (M, 3, h, w), index (N, P) into them,
    uv (N, P, 2) (1 = one repeat) -> (N, P, 3)."""
    m, _, h, w = images.shape
    flat = images.permute(0, 2, 3, 1).reshape(m * h * w, 3)
    fx = uv[..., 0] * w - 0.5
    fy = uv[..., 1] * h - 0.5
    x0, y0 = torch.floor(fx), torch.floor(fy)
    wx, wy = (fx - x0)[..., None], (fy - y0)[..., None]
    x0, y0 = x0.long(), y0.long()
    base = index * (h * w)

    def tap(yy: Tensor, xx: Tensor) -> Tensor:
        return flat[base + torch.remainder(yy, h) * w + torch.remainder(xx, w)]

    top = tap(y0, x0) * (1 - wx) + tap(y0, x0 + 1) * wx
    bottom = tap(y0 + 1, x0) * (1 - wx) + tap(y0 + 1, x0 + 1) * wx
    return top * (1 - wy) + bottom * wy


def render_scenes(
    images: Tensor, params: SceneParams, size: int, shadows: bool = True
) -> RGBDScenes:
    """Ray cast scenes.

    Args:
        images: (M, 3, h, w) float in [0, 1], the textures.
        params: from :func:`sample_scene_params` (or written by hand, e.g. in tests).
        size: image side S (pixels).
        shadows: cast a second ray from each hit point towards the light; points whose ray
            meets an object get only the ambient light.

    Returns:
        :class:`RGBDScenes`.
    """
    n = len(params)
    o, d, focal = camera_rays(params, size)
    t_room, surface = _room_hit(o, d, params)
    t_obj, slot, cap, face = _object_hits(o, d, params)
    on_obj = t_obj < t_room
    t = torch.where(on_obj, t_obj, t_room)
    surface = torch.where(on_obj, ROOM_SURFACES + slot, surface)
    hit = o + t[..., None] * d
    normal, uv, tex_slot = _surface_frame(hit, surface, slot, cap, face, params)
    albedo = _sample_wrapped(images, tex_slot, uv)
    light = params.light[:, None]
    lambert = (normal * light).sum(-1).clamp_min(0)
    if shadows:
        origin = hit + normal * 1e-3
        t_shadow, *_ = _object_hits(origin, light.expand_as(origin), params)
        lambert = torch.where(torch.isfinite(t_shadow), torch.zeros_like(lambert), lambert)
    ambient = params.ambient[:, None]
    shade = ambient + (1 - ambient) * lambert
    rgb = (albedo * shade[..., None]).clamp(0, 1)
    rgb = (rgb * 255).round().to(torch.uint8).view(n, size, size, 3).permute(0, 3, 1, 2)
    return RGBDScenes(
        rgb=rgb.contiguous(),
        depth=t.view(n, size, size).float(),
        surface=surface.view(n, size, size),
        focal=focal,
    )


def make_scenes(
    images: np.ndarray,
    opts: SyntheticRGBDOptions,
    *,
    size: int = 64,
    seed_offset: int = 0,
    chunk: int = 64,
) -> RGBDScenes:
    """``opts.scenes`` scenes at ``size`` px textured from an image set ``(M, h, w, 3)`` uint8;
    deterministic in ``(opts.seed, seed_offset)`` and independent of ``chunk``."""
    if opts.images is not None:
        images = images[: opts.images]
    tex = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255
    g = torch.Generator().manual_seed(opts.seed * 1_000_003 + seed_offset)
    params = sample_scene_params(opts.scenes, len(tex), opts, g)
    parts = [
        render_scenes(tex, params.rows(i, min(i + chunk, len(params))), size, opts.shadows)
        for i in range(0, len(params), chunk)
    ]
    return RGBDScenes(*(torch.cat([getattr(p, f) for p in parts]) for f in
                        ("rgb", "depth", "surface", "focal")))  # fmt: skip
