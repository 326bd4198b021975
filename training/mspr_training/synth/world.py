"""The rendered multi-scene world: rooms with pillars, furniture, posters and colour markers.

Each scene is an axis-aligned room ``[0, Lx] x [0, Ly] x [0, Lz]`` (metres, z up); its frame
is the scene frame of the datasets written from it. Everything is deterministic in the seed.
"""
import colorsys
from dataclasses import dataclass

import numpy as np

from mspr_training.synth.textures import GREY_SURFACES, Material, PHOTOS

#: Room faces seen from inside, in primitive-id order: (name, axis, side 0 = low / 1 = high).
ROOM_FACES = (('wall_x0', 0, 0), ('wall_x1', 0, 1), ('wall_y0', 1, 0), ('wall_y1', 1, 1),
              ('floor', 2, 0), ('ceiling', 2, 1))
#: Saturated marker colours: channels that are 0 stay 0 under any lighting, so a test can
#: recognise a marker pixel from its colour alone.
MARKER_COLOURS = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0), (1.0, 1.0, 0.0),
                  (1.0, 0.0, 1.0), (0.0, 1.0, 1.0), (1.0, 0.5, 0.0), (0.5, 0.0, 1.0))
MARKER_SIZE = 0.16
WALL_GAP = 0.02


@dataclass(frozen=True)
class SceneStyle:
    """Layout recipe of one named scene kind (sizes in metres before the seeded jitter)."""

    name: str
    size: tuple
    pillars: int
    round_pillars: bool
    wall_objects: int
    free_objects: int
    posters: int
    object_depth: float = 0.8


STYLES = (
    SceneStyle('atrium', (12.0, 10.0, 4.5), 4, True, 4, 2, 5),
    SceneStyle('corridor', (16.0, 4.6, 3.2), 4, False, 4, 0, 6, object_depth=0.45),
    SceneStyle('lab', (9.0, 7.5, 3.2), 1, False, 5, 2, 4),
    SceneStyle('library', (11.0, 8.0, 3.5), 2, False, 7, 1, 3),
    SceneStyle('gallery', (14.0, 7.0, 4.0), 2, True, 2, 1, 8),
    SceneStyle('workshop', (10.0, 9.0, 3.8), 3, True, 5, 2, 3),
    SceneStyle('hall', (13.0, 11.0, 5.0), 4, False, 3, 3, 4),
    SceneStyle('studio', (8.0, 8.0, 3.0), 0, False, 5, 2, 5),
)
#: Free space kept between furniture and the walkway, metres.
WALKWAY_MARGIN = 0.65
#: Largest inner distance of the walkway from the walls, metres.
WALKWAY_OUTER = 2.8
MAX_SCENES = len(STYLES)


@dataclass(frozen=True)
class Box:
    """Axis-aligned box ``lo`` .. ``hi`` (3,) metres; ``kind`` is pillar/object/poster/marker."""

    lo: tuple
    hi: tuple
    material: Material
    kind: str

    def bounds(self):
        """Return float64 (2, 3) of the lowest and highest corner."""
        return np.array([self.lo, self.hi], dtype=np.float64)

    def footprint_distance(self, xy):
        """Return (N,) distances from floor points (N, 2) to the footprint (0 inside)."""
        lo, hi = np.asarray(self.lo[:2]), np.asarray(self.hi[:2])
        outside = np.maximum(np.maximum(lo - xy, xy - hi), 0.0)
        return np.hypot(outside[:, 0], outside[:, 1])


@dataclass(frozen=True)
class Cylinder:
    """Vertical cylinder of ``radius`` around ``centre`` (x, y) from ``z0`` to ``z1``."""

    centre: tuple
    radius: float
    z0: float
    z1: float
    material: Material
    kind: str

    def bounds(self):
        """Return float64 (2, 3) corners of the bounding box."""
        x, y = self.centre
        return np.array([[x - self.radius, y - self.radius, self.z0],
                         [x + self.radius, y + self.radius, self.z1]])

    def footprint_distance(self, xy):
        """Return (N,) distances from floor points (N, 2) to the disc (0 inside)."""
        return np.maximum(np.linalg.norm(xy - np.asarray(self.centre), axis=1) - self.radius, 0)


@dataclass(frozen=True)
class Scene:
    """One room.

    Attributes:
        name: scene name.
        size: (Lx, Ly, Lz) metres.
        face_materials: materials of the six ROOM_FACES in order.
        objects: boxes and cylinders inside; primitive id of ``objects[i]`` is ``6 + i``.
        walkway: (inner, outer) distances from the walls of a band around the room that holds
            no furniture; camera paths run inside it.
    """

    name: str
    size: tuple
    face_materials: tuple
    objects: tuple
    walkway: tuple

    @property
    def num_primitives(self):
        """Return the number of primitive ids (6 room faces + objects)."""
        return len(ROOM_FACES) + len(self.objects)

    def primitive(self, primitive_id):
        """Return the object of a primitive id >= 6 (room faces have no object)."""
        return self.objects[primitive_id - len(ROOM_FACES)]

    def marker_ids(self):
        """Return the primitive ids of the colour markers."""
        return [len(ROOM_FACES) + i for i, o in enumerate(self.objects) if o.kind == 'marker']

    def obstacles(self):
        """Return the objects a camera must keep clear of (pillars and furniture)."""
        return [o for o in self.objects if o.kind in ('pillar', 'object')]

    def contains_camera(self, position) -> bool:
        """Return True when a point (3,) is inside the room and outside every solid object."""
        point = np.asarray(position, dtype=np.float64)
        if np.any(point <= 0) or np.any(point >= np.asarray(self.size)):
            return False
        for item in self.objects:
            lo, hi = item.bounds()
            if isinstance(item, Cylinder):
                inside = (np.hypot(*(point[:2] - np.asarray(item.centre))) < item.radius
                          and item.z0 < point[2] < item.z1)
            else:
                inside = bool(np.all(point > lo) and np.all(point < hi))
            if inside:
                return False
        return True

    def clearance(self, xy) -> np.ndarray:
        """Return (N,) horizontal distances from floor points (N, 2) to walls and obstacles."""
        xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
        size = np.asarray(self.size[:2])
        distance = np.minimum(xy, size - xy).min(axis=1)
        for obstacle in self.obstacles():
            distance = np.minimum(distance, obstacle.footprint_distance(xy))
        return distance


@dataclass(frozen=True)
class World:
    """Named scenes built from one seed."""

    seed: int
    scenes: tuple

    @property
    def scene_names(self):
        """Return the scene names in build order."""
        return [scene.name for scene in self.scenes]

    def scene(self, name) -> Scene:
        """Return the scene called ``name``."""
        for scene in self.scenes:
            if scene.name == name:
                return scene
        raise KeyError(f'no scene {name!r}; scenes: {self.scene_names}')


def build_world(seed=0, num_scenes=3) -> World:
    """Return ``num_scenes`` (1..MAX_SCENES) scenes named after STYLES, built from ``seed``.

    Scenes get disjoint poster photographs where possible and distinct surface textures and
    tints, so that they look different.
    """
    if not 1 <= num_scenes <= MAX_SCENES:
        raise ValueError(f'num_scenes must be in 1..{MAX_SCENES}, got {num_scenes}')
    rng = np.random.default_rng([seed, 0])
    photos = list(rng.permutation(PHOTOS))
    surfaces = list(rng.permutation(GREY_SURFACES))
    hues = rng.permutation(num_scenes) / num_scenes + rng.uniform(0, 1.0 / num_scenes)
    scenes = []
    for index, style in enumerate(STYLES[:num_scenes]):
        palette = _Palette(
            photos=[photos[(index * 3 + k) % len(photos)] for k in range(4)],
            surfaces=[surfaces[(index * 3 + k) % len(surfaces)] for k in range(4)],
            hue=float(hues[index]))
        scenes.append(_build_scene(style, palette, np.random.default_rng([seed, index + 1])))
    return World(seed=seed, scenes=tuple(scenes))


@dataclass(frozen=True)
class _Palette:
    """Textures and base hue one scene draws its materials from."""

    photos: list
    surfaces: list
    hue: float

    def tint(self, rng, saturation=0.35, value=1.0, hue_jitter=0.05):
        """Return an RGB tint near the palette hue."""
        hue = (self.hue + rng.uniform(-hue_jitter, hue_jitter)) % 1.0
        return colorsys.hsv_to_rgb(hue, saturation * rng.uniform(0.7, 1.0),
                                   value * rng.uniform(0.85, 1.0))

    def surface(self, rng, tile_m, **tint):
        """Return a tiled, tinted grey-surface material."""
        return Material(str(rng.choice(self.surfaces)), self.tint(rng, **tint), tile_m)

    def photo(self, rng, tile_m=None):
        """Return a colour-photo material (stretched when ``tile_m`` is None)."""
        return Material(str(rng.choice(self.photos)), (1.0, 1.0, 1.0), tile_m)


def _build_scene(style, palette, rng):
    """Return one Scene from a style, its palette and its own random generator."""
    size = tuple(float(s * rng.uniform(0.9, 1.1)) for s in style.size[:2]) + (style.size[2],)
    face_materials = (
        palette.surface(rng, 1.6), palette.surface(rng, 1.6), palette.surface(rng, 1.6),
        palette.surface(rng, 1.6),
        palette.surface(rng, 1.2, saturation=0.5, value=0.8),
        palette.surface(rng, 2.5, saturation=0.1),
    )
    inner = style.object_depth + WALL_GAP + WALKWAY_MARGIN
    walkway = (inner, min(WALKWAY_OUTER, min(size[:2]) / 2 - 0.25))
    layout = _Layout(size, walkway, rng)
    for _ in range(style.pillars):
        layout.add_pillar(palette.surface(rng, 0.8, saturation=0.2), style.round_pillars)
    for _ in range(style.wall_objects):
        layout.add_wall_object(palette.photo(rng, tile_m=0.9), style.object_depth)
    for _ in range(style.free_objects):
        layout.add_free_object(palette.photo(rng, tile_m=0.7))
    for _ in range(style.posters):
        layout.add_poster(palette.photo(rng))
    for colour in MARKER_COLOURS:
        layout.add_marker(Material('', colour, None))
    return Scene(style.name, size, face_materials, tuple(layout.objects), walkway)


class _Layout:
    """Places objects in a room without overlaps, keeping the walkway band free.

    Furniture stands against the walls (within ``walkway[0] - WALKWAY_MARGIN`` of them) or in the
    interior (beyond ``walkway[1] + WALKWAY_MARGIN``). A placement that finds no room after its
    attempts is left out, deterministically: the room is full.
    """

    def __init__(self, size, walkway, rng):
        """Start an empty room of ``size`` (Lx, Ly, Lz) with its walkway (inner, outer)."""
        self.size = size
        self.walkway = walkway
        self.rng = rng
        self.objects = []

    def _free(self, lo_xy, hi_xy, margin):
        """Return True when the footprint keeps ``margin`` from every placed obstacle."""
        corners = np.array([lo_xy, hi_xy])
        for other in self.objects:
            if other.kind not in ('pillar', 'object'):
                continue
            other_lo, other_hi = other.bounds()[:, :2]
            if np.all(corners[0] < other_hi + margin) and np.all(corners[1] > other_lo - margin):
                return False
        return True

    def _attempts(self):
        """Return the retry budget of one placement."""
        return range(200)

    def _interior(self, half_x, half_y):
        """Return a random centre (x, y) in the interior for a footprint, or None if too small."""
        inset = self.walkway[1] + WALKWAY_MARGIN
        lx, ly, _ = self.size
        if lx - 2 * (inset + half_x) <= 0 or ly - 2 * (inset + half_y) <= 0:
            return None
        return (float(self.rng.uniform(inset + half_x, lx - inset - half_x)),
                float(self.rng.uniform(inset + half_y, ly - inset - half_y)))

    def add_pillar(self, material, round_pillar):
        """Add a floor-to-ceiling pillar in the interior, else flanking a wall."""
        lz = self.size[2]
        for _ in self._attempts():
            half = float(self.rng.uniform(0.18, 0.35))
            centre = self._interior(half, half)
            if centre is None:
                # No interior (a corridor): a slim column by a wall, clear of the walkway.
                half = min(half, (self.walkway[0] - WALKWAY_MARGIN) / 2 - 0.05)
                lo, hi = self._against_wall(2 * half, 2 * half, 0.05)
                centre = ((lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2)
            x, y = centre
            if self._free((x - half, y - half), (x + half, y + half), 1.2):
                if round_pillar:
                    self.objects.append(Cylinder((x, y), half, 0.0, lz, material, 'pillar'))
                else:
                    self.objects.append(Box((x - half, y - half, 0.0), (x + half, y + half, lz),
                                            material, 'pillar'))
                return

    def add_wall_object(self, material, max_depth):
        """Add a cabinet, shelf or crate standing against a wall."""
        for _ in self._attempts():
            width = float(self.rng.uniform(0.6, 2.0))
            depth = float(self.rng.uniform(0.3, max_depth))
            height = float(self.rng.uniform(0.5, 2.2))
            lo, hi = self._against_wall(width, depth, WALL_GAP)
            if self._free(lo, hi, 0.3):
                self.objects.append(Box((*lo, 0.0), (*hi, height), material, 'object'))
                return

    def add_free_object(self, material):
        """Add a table-like box standing in the interior (none when there is no interior)."""
        for _ in self._attempts():
            sx, sy = (float(v) for v in self.rng.uniform(0.5, 1.3, size=2))
            centre = self._interior(sx / 2, sy / 2)
            if centre is None:
                continue
            lo = (centre[0] - sx / 2, centre[1] - sy / 2)
            hi = (centre[0] + sx / 2, centre[1] + sy / 2)
            if self._free(lo, hi, 0.8):
                height = float(self.rng.uniform(0.4, 1.1))
                self.objects.append(Box((*lo, 0.0), (*hi, height), material, 'object'))
                return

    def add_poster(self, material):
        """Add a thin photo panel on a wall between 0.9 and 2.9 m high."""
        lz = self.size[2]
        for _ in self._attempts():
            width = float(self.rng.uniform(0.8, 1.8))
            height = width * float(self.rng.uniform(0.6, 0.9))
            bottom = float(self.rng.uniform(0.9, min(1.6, lz - 0.3 - height)))
            lo, hi = self._against_wall(width, 0.03, 0.0)
            if self._free(lo, hi, 0.2):
                self.objects.append(Box((*lo, bottom), (*hi, bottom + height), material,
                                        'poster'))
                return

    def add_marker(self, material):
        """Add a small solid-colour cube on a wall or on top of a piece of furniture."""
        furniture = [o for o in self.objects if o.kind == 'object']
        half = MARKER_SIZE / 2
        if furniture and self.rng.uniform() < 0.4:
            top = furniture[int(self.rng.integers(len(furniture)))]
            (x0, y0, _), (x1, y1, z1) = top.bounds()
            x = float(self.rng.uniform(x0 + half, x1 - half))
            y = float(self.rng.uniform(y0 + half, y1 - half))
            self.objects.append(Box((x - half, y - half, z1), (x + half, y + half, z1 + 2 * half),
                                    material, 'marker'))
            return
        for _ in self._attempts():
            lo, hi = self._against_wall(MARKER_SIZE, MARKER_SIZE, 0.0)
            z = float(self.rng.uniform(0.4, self.size[2] - 0.6))
            box = Box((*lo, z), (*hi, z + MARKER_SIZE), material, 'marker')
            if self._free(lo, hi, 0.1) and not self._overlaps_panel(box):
                self.objects.append(box)
                return

    def _overlaps_panel(self, box):
        """Return True when ``box`` intersects a poster or another marker."""
        lo, hi = box.bounds()
        for other in self.objects:
            if other.kind in ('poster', 'marker'):
                other_lo, other_hi = other.bounds()
                if np.all(lo < other_hi) and np.all(hi > other_lo):
                    return True
        return False

    def _against_wall(self, width, depth, gap):
        """Return floor footprint corners (lo, hi) of a random spot along a random wall."""
        lx, ly, _ = self.size
        wall = int(self.rng.integers(4))
        along = ly if wall < 2 else lx
        start = float(self.rng.uniform(0.3, max(0.31, along - width - 0.3)))
        if wall == 0:
            return (gap, start), (gap + depth, start + width)
        if wall == 1:
            return (lx - gap - depth, start), (lx - gap, start + width)
        if wall == 2:
            return (start, gap), (start + width, gap + depth)
        return (start, ly - gap - depth), (start + width, ly - gap)
