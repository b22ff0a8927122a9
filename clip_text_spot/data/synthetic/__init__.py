"""Synthetic scene text rendered on the fly: the default data when no dataset is given.

``SyntheticDetSource`` (images with several words and their polygons) and ``SyntheticRecSource`` (word crops with
labels) are deterministic random-access sources; see ``sources``, ``render``, ``words``, ``backgrounds``, ``fonts``.
"""

from clip_text_spot.data.synthetic.render import TextStyle
from clip_text_spot.data.synthetic.sources import REC_STYLE, SyntheticDetSource, SyntheticRecSource, sample_rng

__all__ = ["REC_STYLE", "SyntheticDetSource", "SyntheticRecSource", "TextStyle", "sample_rng"]
