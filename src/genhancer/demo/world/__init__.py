"""A procedural world of small captioned scenes: the embedded, offline testbed (version 2).

Real CLIP is blind to fine detail because contrastive training rarely needs it: coarse
content already tells a batch's captions apart, while the details MMVP asks about are
plainly visible (a vision-only model separates its pairs easily). This world is built to
reproduce that. Every scene is one object (12 kinds, 7 colours) on one of 8 background
textures, and carries nine *fine* attributes, one per MMVP-VLM category. Each fine cue is
a mark a few pixels across that a vision model sees at 64 px (version 1 used 2-4-pixel
marks, several crowded on the object, and the reconstruction loss never learnt them), and
there are only six marks per scene: three on the object, three in the image's corners.

=========================  ============  ==============================================
MMVP category              field         cue (64 px scene, object radius ~16 px)
=========================  ============  ==============================================
Orientation and Direction  direction     arrow in the bottom-left corner: left/right/up/down
Presence of Spec. Features hole          see-through hole at the object's centre: yes / no
State and Condition        state         zig-zag crack across the object: intact / cracked
Quantity and Count         count         1-3 tally bars in the top-left corner
Positional and Relational  ball_side     ball left / right / above / below the object
Color and Appearance       ball_color    the ball's colour (6 colours, none an object colour)
Structural Characteristics outline       thin vs thick dark outline of the silhouette
Texts                      text          digit 2-9 in the top-right corner
Viewpoint and Perspective  view          object seen close-up vs from far away (scale)
=========================  ============  ==============================================

Captions always name the kind and the background (the colour most of the time) and name
one fine attribute only with a small probability, so a text tower learns the words while
contrastive training barely needs them. Benchmark pairs differ in exactly one fine field.
Nuisances (tint, pattern phase, position, size jitter) are never captioned and kept small,
so that what the global token misses, and a reconstruction must recover, is mostly the
fine cues.

Everything is a pure function of a seed: scene ``i`` of a stream is drawn from its own
``random.Random`` keyed by (stream, seed, i), so a corpus of ``n`` images is a prefix of
one of ``n + 1`` images, and reruns write byte-identical files. ``WORLD_VERSION`` and
:func:`world_fingerprint` identify the generator; assets trained on it record both.

The package, bottom up: ``vocab`` (words, values, phrases), ``geometry`` (silhouettes, cue
sizes), ``checks`` (argument checks), ``render`` (pixels), ``scene`` (``Scene``: fields,
captions, statements), ``sampling`` (seeded streams, the benchmark reservation) and
``writers`` (the folders on disk, ``write_world``, ``world_fingerprint``). Everything public
is re-exported here; import from ``genhancer.demo.world``.
"""

from genhancer.demo.world.render import make_grid
from genhancer.demo.world.sampling import is_reserved, sample_scene, scene_stream
from genhancer.demo.world.scene import Scene, mentioned_fine_attribute
from genhancer.demo.world.vocab import (
    BACKGROUNDS,
    COARSE_ATTRIBUTES,
    COLORS,
    FINE_ATTRIBUTES,
    KINDS,
    MMVP_CATEGORIES,
    SIGN_COLORS,
    TINTS,
    WORLD_VERSION,
)
from genhancer.demo.world.writers import (
    PART_DIRS,
    PART_SEED_OFFSETS,
    world_fingerprint,
    write_coarse_folder,
    write_corpus,
    write_mmvp_benchmark,
    write_probe_set,
    write_world,
)

__all__ = [
    "BACKGROUNDS",
    "SIGN_COLORS",
    "COARSE_ATTRIBUTES",
    "COLORS",
    "FINE_ATTRIBUTES",
    "KINDS",
    "MMVP_CATEGORIES",
    "PART_DIRS",
    "PART_SEED_OFFSETS",
    "Scene",
    "TINTS",
    "is_reserved",
    "make_grid",
    "mentioned_fine_attribute",
    "sample_scene",
    "scene_stream",
    "write_coarse_folder",
    "write_corpus",
    "write_mmvp_benchmark",
    "write_probe_set",
    "write_world",
    "WORLD_VERSION",
    "world_fingerprint",
]
