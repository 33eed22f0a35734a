"""The DINO-WM world model: architecture, planning API and checkpoint loading.

``WorldModel`` (encode / predict / rollout / decode) is sized by a ``WorldModelConfig``; ``load_world_model``
reads the shipped models by short name, wmq checkpoint folders and released DINO-WM folders (safely);
``save_world_model`` writes wmq's format.
"""

from wmqlib.models.checkpoint import (
    available_checkpoints, load_world_model, resolve_checkpoint, resolve_device, save_world_model,
)
from wmqlib.models.config import WorldModelConfig, dinowm_config
from wmqlib.models.errors import CheckpointError, NonFiniteWeightsWarning, UnsafeCheckpointError
from wmqlib.models.predictor import frame_causal_mask
from wmqlib.models.preprocess import stack_frameskip, unstack_frameskip
from wmqlib.models.world_model import STAT_NAMES, WorldModel

__all__ = [
    "STAT_NAMES", "CheckpointError", "NonFiniteWeightsWarning", "UnsafeCheckpointError", "WorldModel",
    "WorldModelConfig", "available_checkpoints", "dinowm_config", "frame_causal_mask", "load_world_model",
    "resolve_checkpoint", "resolve_device", "save_world_model", "stack_frameskip", "unstack_frameskip",
]
