"""World models behind one planning API, and checkpoint loading.

``WorldModel`` (DINO-WM: encode / predict / rollout / decode) is sized by a ``WorldModelConfig``; ``RSSM`` (a
recurrent state-space model: encode_obs / rollout / decode) by an ``RSSMConfig``. ``load_world_model`` reads the
shipped models by short name, wmq checkpoint folders of either architecture and released DINO-WM folders (safely);
``save_world_model`` writes wmq's format.
"""

from wmqlib.models.checkpoint import (
    available_checkpoints, load_world_model, resolve_checkpoint, resolve_device, save_world_model,
)
from wmqlib.models.base import WorldModelBase
from wmqlib.models.config import ARCHITECTURES, RSSMConfig, WorldModelConfig, config_from_dict, dinowm_config
from wmqlib.models.errors import CheckpointError, NonFiniteWeightsWarning, UnsafeCheckpointError
from wmqlib.models.predictor import frame_causal_mask
from wmqlib.models.preprocess import stack_frameskip, unstack_frameskip
from wmqlib.models.rssm import RSSM
from wmqlib.models.world_model import STAT_NAMES, WorldModel

__all__ = [
    "ARCHITECTURES", "RSSM", "STAT_NAMES", "CheckpointError", "NonFiniteWeightsWarning", "RSSMConfig",
    "UnsafeCheckpointError", "WorldModel", "WorldModelBase", "WorldModelConfig", "available_checkpoints",
    "config_from_dict", "dinowm_config", "frame_causal_mask", "load_world_model",
    "resolve_checkpoint", "resolve_device", "save_world_model", "stack_frameskip", "unstack_frameskip",
]
