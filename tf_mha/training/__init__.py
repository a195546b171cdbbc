"""Training under `tf.distribute` (`tools/train.py`'s library): strategies and
precision policies by name, the distributed trainer, and user-model tasks.

May import `tf_mha.ops` (argument checks) and Keras; nothing above it.
"""

from tf_mha.training.strategies import POLICIES
from tf_mha.training.strategies import STRATEGIES
from tf_mha.training.strategies import TpuUnavailable
from tf_mha.training.strategies import is_chief
from tf_mha.training.strategies import logical_cpus
from tf_mha.training.strategies import make_strategy
from tf_mha.training.strategies import set_policy
from tf_mha.training.trainer import OPTIMIZERS
from tf_mha.training.trainer import Examples
from tf_mha.training.trainer import Result
from tf_mha.training.trainer import Trainer
from tf_mha.training.trainer import batch_schedule
from tf_mha.training.trainer import distribute
