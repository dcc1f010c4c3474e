"""Which scenes a seed names: every scene drawn from its own ``random.Random`` keyed by
(stream, seed, index), and the hash that reserves ~1/8 of all scenes for the benchmark."""

from __future__ import annotations

import dataclasses
import hashlib
import random
from collections.abc import Iterator

from genhancer.demo.world.checks import _check_count, _check_seed
from genhancer.demo.world.scene import _NUISANCE_RANGE, Scene
from genhancer.demo.world.vocab import BACKGROUNDS, COLORS, FINE_ATTRIBUTES, KINDS, TINTS
from genhancer.errors import DataError

_RESERVED_BUCKETS = 8


def is_reserved(scene: Scene) -> bool:
    """True for the ~1/8 of all scenes kept for the benchmark: no other writer emits them.

    A stable hash (not Python's salted ``hash``) so the split is the same in every process.
    """
    digest = hashlib.blake2b(repr(scene.key()).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % _RESERVED_BUCKETS == 0


def _rng(stream: str, seed: int, index: int) -> random.Random:
    # A string seed goes through SHA-512 in CPython: stable across runs and platforms.
    return random.Random(f"genhancer-world/{stream}/{_check_seed(seed)}/{index}")


def sample_scene(rng: random.Random, **fixed) -> Scene:
    """Every field uniform and independent (so no fine attribute is predictable from
    another), except those given in ``fixed``."""
    f = {
        "kind": rng.choice(KINDS),
        "color": rng.choice(tuple(COLORS)),
        "background": rng.choice(tuple(BACKGROUNDS)),
        "tint": rng.choice(tuple(TINTS)),
        "bg_variant": rng.randrange(2),
        "dx": rng.randint(-_NUISANCE_RANGE, _NUISANCE_RANGE),
        "dy": rng.randint(-_NUISANCE_RANGE, _NUISANCE_RANGE),
        "scale_jitter": rng.randint(-1, 1),
    }
    for name, values in FINE_ATTRIBUTES.items():
        f[name] = rng.choice(values)
    f.update(fixed)
    return Scene(**f)


def _sample_open(stream: str, seed: int, index: int, **fixed) -> tuple[Scene, random.Random]:
    rng = _rng(stream, seed, index)
    while True:
        scene = sample_scene(rng, **fixed)
        if not is_reserved(scene):
            return scene, rng


def scene_stream(n: int, seed: int, stream: str = "corpus") -> Iterator[Scene]:
    """The scenes ``write_corpus`` (or the probe / coarse writers) would render, in order."""
    if stream not in ("corpus", "probe"):
        raise DataError(f"stream must be 'corpus' or 'probe', got {stream!r}")
    for i in range(_check_count(n, "n")):
        yield _sample_open(stream, seed, i)[0]


def _bench_pair(seed: int, index: int, attribute: str) -> tuple[Scene, Scene]:
    """Two reserved scenes that differ in ``attribute`` only; rejection is cheap (~64 draws
    of a few microseconds) because reservation is a hash, not a render."""
    rng = _rng("bench", seed, index)
    values = FINE_ATTRIBUTES[attribute]
    while True:
        base = sample_scene(rng)
        v1, v2 = rng.sample(values, 2)
        a = dataclasses.replace(base, **{attribute: v1})
        b = dataclasses.replace(base, **{attribute: v2})
        if is_reserved(a) and is_reserved(b):
            return a, b
