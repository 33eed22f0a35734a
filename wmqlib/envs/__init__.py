"""Planning environments (Wall, PushT) as DINO-WM defines them, episode samplers and training datasets.

``make_env("wall" | "pusht", render_size=...)`` builds an environment; ``sample_episodes`` draws planning tasks by
seed; ``generate_dataset`` writes a training set that ``TrajectoryData.load`` and ``TrajectoryWindows`` serve.
"""

from wmqlib.envs.base import WmqEnv, env_class, env_names, make_env
from wmqlib.envs.pusht import PushT
from wmqlib.envs.wall import Wall, WallLayout
from wmqlib.envs.episodes import Episode, episode_seeds, sample_episodes  # noqa: E402  (needs the envs registered)
from wmqlib.envs.dataset import TrajectoryData, TrajectoryWindows, collect_trajectories, generate_dataset  # noqa: E402

__all__ = ["Episode", "PushT", "TrajectoryData", "TrajectoryWindows", "Wall", "WallLayout", "WmqEnv",
           "collect_trajectories", "env_class", "env_names", "episode_seeds", "generate_dataset", "make_env",
           "sample_episodes"]
