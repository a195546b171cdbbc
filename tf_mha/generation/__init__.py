"""Generation with a key/value cache: the compiled decoding loop and its
caches (`greedy_generate`, `KVCache`, `cache_shape`).

May import `tf_mha.ops` and `tf_mha.layers`; nothing above them.
"""

from tf_mha.generation.greedy import KVCache
from tf_mha.generation.greedy import cache_shape
from tf_mha.generation.greedy import greedy_generate
