"""Generation with a key/value cache: the compiled decoding loop, greedy or
sampled (`generate`, `greedy_generate`, `Sampling`), and its caches.

May import `tf_mha.ops` and `tf_mha.layers`; nothing above them.
"""

from tf_mha.generation.greedy import KVCache
from tf_mha.generation.greedy import cache_shape
from tf_mha.generation.greedy import generate
from tf_mha.generation.greedy import greedy_generate
from tf_mha.generation.samplers import Sampling
from tf_mha.generation.samplers import sample

__all__ = ["KVCache", "Sampling", "cache_shape", "generate", "greedy_generate", "sample"]
