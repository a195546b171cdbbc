"""Input pipelines: packing variable-length examples into fixed-length rows
with segment ids and positions (`pack`), for `segment_ids=` attention.

May import TensorFlow and `tf_mha.ops`; no Keras, nothing above.
"""

from tf_mha.data.packing import pack
from tf_mha.data.packing import padding_fraction

__all__ = ["pack", "padding_fraction"]
