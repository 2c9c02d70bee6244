"""The built-in synthetic benchmark: real H.264 ``.mp4`` clips of moving, recolouring, appearing and
resizing shapes, with captions such as "a small red square moves left, then up".

Why it looks like this:
  * The task needs the video, not one frame: every caption describes a change over time.
  * Some captions can only be told apart by frame *order*. "turns from red to blue" and "turns from blue
    to red", "appears" and "disappears", "grows" and "shrinks", and a motion and its exact reversal are
    rendered so that their sampled frames are the same set in reverse order. Evaluation splits contain
    such twin pairs on purpose, so a head that ignores order (mean pooling) cannot solve every query.
  * Content changes once per second (one keyframe per second, held for ``fps`` frames), so the 1-fps
    CLIP4Clip sampler and the segment samplers see exactly the keyframes, and twin clips have identical
    frame sets.
  * Captions are unique within each evaluation split, so R@1 is well defined; chance is 1/N.
Everything is deterministic given the seed, byte for byte (see ``write_mp4`` for the x264 settings that
make it so).
"""

from __future__ import annotations

import json
import logging
import os
import random
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from tvr.atomic import replacing, write_text
from tvr.data.parallel import process_pool

log = logging.getLogger(__name__)

FORMAT_VERSION = 2  # 2: x264 without mbtree (version 1 files differed between generations)
ANNOTATION_FILE = "annotations.json"
PENDING_FILE = ".generating.json"  # names the version and config of a generation still in progress
SHAPES = ("square", "circle", "triangle")
COLORS = {"red": (225, 45, 45), "green": (40, 200, 70), "blue": (55, 95, 240), "yellow": (235, 215, 45)}
SIZES = {"small": 10, "large": 18}
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up"}
PERPENDICULAR = {"left": ("up", "down"), "right": ("up", "down"), "up": ("left", "right"), "down": ("left", "right")}
REVERSED_KIND = {"appears": "disappears", "disappears": "appears", "grows": "shrinks", "shrinks": "grows"}
STEP_PX = 8
PATH_JITTER_PX = 3
GROW_SIZES = (6, 20)


@dataclass(frozen=True)
class Event:
    """What happens in one clip; ``kind`` is one of moves, turns, appears, disappears, grows, shrinks."""

    kind: str
    shape: str
    color: str = ""
    size: str = ""
    color2: str = ""
    first: str = ""
    then: str = ""

    @property
    def caption(self) -> str:
        if self.kind == "moves":
            return f"a {self.size} {self.color} {self.shape} moves {self.first}, then {self.then}"
        if self.kind == "turns":
            return f"a {self.size} {self.shape} turns from {self.color} to {self.color2}"
        if self.kind in ("grows", "shrinks"):
            return f"a {self.color} {self.shape} {self.kind}"
        return f"a {self.size} {self.color} {self.shape} {self.kind}"

    def reversed(self) -> "Event":
        """The event seen backwards in time."""
        if self.kind == "moves":
            return replace(self, first=OPPOSITE[self.then], then=OPPOSITE[self.first])
        if self.kind == "turns":
            return replace(self, color=self.color2, color2=self.color)
        return replace(self, kind=REVERSED_KIND[self.kind])


def all_events() -> list[Event]:
    events = []
    for shape in SHAPES:
        for color in COLORS:
            for size in SIZES:
                for first, options in PERPENDICULAR.items():
                    events += [Event("moves", shape, color, size, first=first, then=then) for then in options]
                events += [Event(kind, shape, color, size) for kind in ("appears", "disappears")]
            events += [Event(kind, shape, color) for kind in ("grows", "shrinks")]
        for size in SIZES:
            events += [Event("turns", shape, c1, size, color2=c2) for c1 in COLORS for c2 in COLORS if c1 != c2]
    return events


@dataclass(frozen=True)
class Keyframe:
    visible: bool
    x: float
    y: float
    size: float
    color: str


def keyframes(event: Event, seconds: int, frame_size: int, rng: random.Random) -> list[Keyframe]:
    """One state per second; the second half of the clip differs from the first."""
    half = seconds // 2
    if event.kind == "grows" or event.kind == "shrinks":
        low, high = GROW_SIZES
        sizes = [low + (high - low) * k / (seconds - 1) for k in range(seconds)]
        if event.kind == "shrinks":
            sizes.reverse()
        x, y = _random_position(rng, frame_size, high / 2, [(0, 0)])
        return [Keyframe(True, x, y, s, event.color) for s in sizes]
    side = SIZES[event.size]
    if event.kind == "moves":
        (dx1, dy1), (dx2, dy2) = DIRECTIONS[event.first], DIRECTIONS[event.then]
        offsets = []
        for k in range(seconds):
            first_steps, then_steps = min(k, half - 1), max(k - (half - 1), 0)
            offsets.append(
                (STEP_PX * (first_steps * dx1 + then_steps * dx2), STEP_PX * (first_steps * dy1 + then_steps * dy2))
            )
        x0, y0 = _centred_path_start(rng, frame_size, offsets)
        return [Keyframe(True, x0 + ox, y0 + oy, side, event.color) for ox, oy in offsets]
    x, y = _random_position(rng, frame_size, side / 2, [(0, 0)])
    states = []
    for k in range(seconds):
        late = k >= half
        if event.kind == "turns":
            states.append(Keyframe(True, x, y, side, event.color2 if late else event.color))
        else:
            visible = late if event.kind == "appears" else not late
            states.append(Keyframe(visible, x, y, side, event.color))
    return states


def _random_position(rng: random.Random, frame_size: int, radius: float, offsets) -> tuple[float, float]:
    margin = radius + 1
    xs, ys = [o[0] for o in offsets], [o[1] for o in offsets]
    x = rng.uniform(margin - min(xs), frame_size - margin - max(xs))
    y = rng.uniform(margin - min(ys), frame_size - margin - max(ys))
    return x, y


def _centred_path_start(rng: random.Random, frame_size: int, offsets) -> tuple[float, float]:
    """Paths are centred (up to a small jitter) so the set of visited positions reveals the path's shape."""
    xs, ys = [o[0] for o in offsets], [o[1] for o in offsets]
    centre = frame_size / 2
    x = centre - (min(xs) + max(xs)) / 2 + rng.uniform(-PATH_JITTER_PX, PATH_JITTER_PX)
    y = centre - (min(ys) + max(ys)) / 2 + rng.uniform(-PATH_JITTER_PX, PATH_JITTER_PX)
    return x, y


def render_frame(state: Keyframe, shape: str, frame_size: int, background: int, noise: np.ndarray) -> np.ndarray:
    image = np.full((frame_size, frame_size, 3), background, dtype=np.float32) + noise
    if state.visible:
        yy, xx = np.mgrid[0:frame_size, 0:frame_size].astype(np.float32) + 0.5
        half = state.size / 2
        if shape == "square":
            inside = (np.abs(xx - state.x) <= half) & (np.abs(yy - state.y) <= half)
        elif shape == "circle":
            inside = (xx - state.x) ** 2 + (yy - state.y) ** 2 <= half**2
        else:  # triangle pointing up: width grows linearly from apex to base
            top = state.y - half
            inside = (yy >= top) & (yy <= state.y + half) & (np.abs(xx - state.x) <= (yy - top) / 2)
        image[inside] = COLORS[state.color]
    return np.clip(image, 0, 255).astype(np.uint8)


def write_mp4(path: Path, frames: list[np.ndarray], fps: int) -> None:
    """H.264 (libx264, yuv420p) with a keyframe every second, written to a temp file then renamed."""
    import av

    with replacing(path) as tmp, av.open(str(tmp), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames[0].shape[1], frames[0].shape[0]
        stream.pix_fmt = "yuv420p"
        # mbtree off: with it on, x264 encoded the same frames differently now and then within one process
        # (3 in 60 encodes of one clip), so two generations differed; threads=1 for the same reason
        options = {"crf": "20", "preset": "veryfast", "g": str(fps), "threads": "1", "x264-params": "mbtree=0"}
        stream.options = options
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@dataclass(frozen=True)
class SyntheticConfig:
    num_train: int = 1600
    num_val: int = 100
    num_test: int = 100
    twin_fraction: float = 0.5
    seconds: int = 8
    fps: int = 2
    frame_size: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        if self.frame_size < 2 or self.frame_size % 2:  # 4:2:0 chroma halves each side
            raise ValueError(f"frame_size must be an even number of pixels, got {self.frame_size}")


@dataclass(frozen=True)
class ClipSpec:
    video_id: str
    event: Event
    keyframes: tuple[Keyframe, ...]
    background: int
    noise_seed: int


def plan_split(split: str, count: int, config: SyntheticConfig) -> list[ClipSpec]:
    """Decide every clip of a split (events, positions, noise seeds) before rendering anything."""
    rng = random.Random(f"{config.seed}-{split}")
    events = all_events()
    twins = round(count * config.twin_fraction / 2)
    plan: list[tuple[Event, Event | None]] = []  # (event, reversed twin or None)
    if split == "train":
        for _ in range(twins):
            event = rng.choice(events)
            plan.append((event, event.reversed()))
        plan += [(rng.choice(events), None) for _ in range(count - 2 * twins)]
    else:
        if count > len(events):
            raise ValueError(f"an evaluation split holds at most {len(events)} unique captions, asked for {count}")
        rng.shuffle(events)
        used: set[str] = set()
        for event in events:
            if len(plan) == twins:
                break
            partner = event.reversed()
            if event.caption not in used and partner.caption not in used:
                used.update((event.caption, partner.caption))
                plan.append((event, partner))
        singles = [event for event in events if event.caption not in used][: count - 2 * twins]
        plan += [(event, None) for event in singles]
    specs: list[ClipSpec] = []
    for event, twin in plan:
        frames = tuple(keyframes(event, config.seconds, config.frame_size, rng))
        background = rng.randint(8, 48)
        specs.append(ClipSpec(f"{split}_{len(specs):05d}", event, frames, background, rng.getrandbits(32)))
        if twin is not None:
            specs.append(ClipSpec(f"{split}_{len(specs):05d}", twin, frames[::-1], background, rng.getrandbits(32)))
    return specs


def render_clip(spec: ClipSpec, config: SyntheticConfig) -> list[np.ndarray]:
    noise_rng = np.random.default_rng(spec.noise_seed)
    size = config.frame_size
    frames = []
    for state in spec.keyframes:
        for _ in range(config.fps):
            noise = noise_rng.normal(0.0, 5.0, size=(size, size, 1)).astype(np.float32)
            frames.append(render_frame(state, spec.event.shape, size, spec.background, noise))
    return frames


def _render_and_write(job: tuple[ClipSpec, SyntheticConfig, str, bool]) -> str:
    spec, config, video_dir, keep_existing = job
    path = Path(video_dir) / f"{spec.video_id}.mp4"
    if not (keep_existing and path.is_file() and path.stat().st_size > 0):
        write_mp4(path, render_clip(spec, config), config.fps)
    return spec.video_id


def ensure_synthetic_dataset(root: str | Path, config: SyntheticConfig, workers: int | None = None) -> Path:
    """Generate the dataset into ``root`` unless an identical one is already there; return the annotation path.

    Re-running is cheap and safe: videos of the same generation (version and config) are kept, missing
    ones are rendered, and the annotation file (written last, atomically) marks a complete dataset.
    """
    root = Path(root)
    annotation_path, pending_path = root / ANNOTATION_FILE, root / PENDING_FILE
    wanted = {"version": FORMAT_VERSION, "config": asdict(config)}
    finished = _read_identity(annotation_path)
    if finished == wanted and _videos_complete(root, json.loads(annotation_path.read_text())):
        return annotation_path
    # Videos already on disk are kept only when they belong to this very generation (an interrupted one,
    # or a finished one with files missing); those of another version or config are rendered again.
    keep_existing = wanted in (finished, _read_identity(pending_path))
    video_dir = root / "videos"
    video_dir.mkdir(parents=True, exist_ok=True)
    write_text(pending_path, json.dumps(wanted))
    splits = {
        name: plan_split(name, count, config)
        for name, count in (("train", config.num_train), ("val", config.num_val), ("test", config.num_test))
    }
    jobs = [(spec, config, str(video_dir), keep_existing) for specs in splits.values() for spec in specs]
    log.info("generating %d synthetic videos into %s", len(jobs), video_dir)
    workers = workers or min(4, os.cpu_count() or 1)
    from tqdm import tqdm

    with process_pool(workers) as pool:
        for _ in tqdm(
            pool.imap_unordered(_render_and_write, jobs, chunksize=16), total=len(jobs), desc="synthetic videos"
        ):
            pass
    annotations = {
        "format": "tvr-synthetic",
        **wanted,
        "splits": {
            name: [
                {
                    "video_id": s.video_id,
                    "video": f"videos/{s.video_id}.mp4",
                    "caption": s.event.caption,
                    "event": asdict(s.event),
                }
                for s in specs
            ]
            for name, specs in splits.items()
        },
    }
    write_text(annotation_path, json.dumps(annotations, indent=1))
    pending_path.unlink()
    return annotation_path


def _read_identity(path: Path) -> dict | None:
    """The version and config a generation record names, or None when there is no readable record."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return {"version": record.get("version"), "config": record.get("config")} if isinstance(record, dict) else None


def _videos_complete(root: Path, annotations: dict) -> bool:
    for entries in annotations["splits"].values():
        for entry in entries:
            path = root / entry["video"]
            if not (path.is_file() and path.stat().st_size > 0):
                return False
    return True
