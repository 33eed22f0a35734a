import json

import numpy as np
import pytest
import torch

from wmqlib.envs import TrajectoryData, TrajectoryWindows, generate_dataset, make_env


@pytest.fixture(scope="module")
def wall_file(tmp_path_factory):
    return generate_dataset("wall", 6, 12, seed=3, img_size=16, path=tmp_path_factory.mktemp("d") / "wall.npz",
                            progress=False)


@pytest.fixture(scope="module")
def pusht_file(tmp_path_factory):
    return generate_dataset("pusht", 3, 10, seed=3, img_size=20, path=tmp_path_factory.mktemp("d") / "pusht.npz",
                            progress=False)


def test_dataset_arrays_are_consistent(wall_file, pusht_file):
    for path, env_name, (n, t, size) in ((wall_file, "wall", (6, 12, 16)), (pusht_file, "pusht", (3, 10, 20))):
        data = TrajectoryData.load(path)
        env = make_env(env_name)
        assert data.env == env_name and len(data) == n and data.traj_len == t and data.img_size == size
        assert data.frames.shape == (n, t + 1, size, size, 3) and data.frames.dtype == np.uint8
        assert data.states.shape == (n, t + 1, env.state_dim) and data.proprio.shape == (n, t + 1, env.proprio_dim)
        # the actions reproduce the stored states, and frames and proprio are those of the states
        np.testing.assert_array_equal(env.rollout_states(data.states[:, 0], data.actions)[:, 1:], data.states[:, 1:])
        np.testing.assert_array_equal(data.frames[1, 4], env.observe(data.states[1, 4:5], size)["visual"][0])
        np.testing.assert_array_equal(data.proprio, env.proprio_of(data.states))
        assert data.meta["seed"] == 3 and data.meta["format_version"] == 1


def test_normalisation_statistics_cover_the_whole_dataset(wall_file):
    data = TrajectoryData.load(wall_file)
    np.testing.assert_allclose(data.action_mean, data.actions.reshape(-1, 2).mean(0))
    np.testing.assert_allclose(data.action_std, data.actions.reshape(-1, 2).std(0, ddof=1))
    np.testing.assert_allclose(data.proprio_mean, data.proprio.reshape(-1, 2).astype(float).mean(0), rtol=1e-6)
    env = make_env("wall")
    assert data.meta["crossed_fraction"] == pytest.approx(env.crossed(data.states).mean())


def test_same_seed_same_file_contents(wall_file, tmp_path):
    again = TrajectoryData.load(generate_dataset("wall", 6, 12, 3, 16, tmp_path / "again.npz", progress=False))
    other = TrajectoryData.load(generate_dataset("wall", 6, 12, 4, 16, tmp_path / "other.npz", progress=False))
    first = TrajectoryData.load(wall_file)
    for name in ("frames", "actions", "states", "action_std"):
        np.testing.assert_array_equal(getattr(again, name), getattr(first, name))
    assert not np.array_equal(other.states, first.states)


def test_windows_stack_frameskip_actions_and_normalise(wall_file):
    data = TrajectoryData.load(wall_file)
    windows = TrajectoryWindows(data, num_hist=1, frameskip=5)
    assert len(windows) == 6 * (12 - 2 * 5 + 1)
    item = windows[3 * 3 + 2]  # trajectory 3, start 2
    assert item["visual"].shape == (2, 3, 16, 16) and item["visual"].dtype == torch.float32
    assert item["proprio"].shape == (2, 2) and item["action"].shape == (2, 10) and item["state"].shape == (2, 2)
    frames = data.frames[3, [2, 7]]
    np.testing.assert_allclose(item["visual"].numpy(), (frames.transpose(0, 3, 1, 2) / 255.0 - 0.5) / 0.5, atol=1e-6)
    z = (data.actions[3, 2:12] - data.action_mean) / data.action_std
    np.testing.assert_allclose(item["action"].numpy(), np.concatenate([z[:5].ravel()[None], z[5:].ravel()[None]]),
                               rtol=1e-6)
    np.testing.assert_allclose(item["action"][1, :2].numpy(), z[5], rtol=1e-6)  # row n = actions n*f .. n*f+f-1
    np.testing.assert_allclose(item["proprio"].numpy(), (data.proprio[3, [2, 7]] - data.proprio_mean) /
                               data.proprio_std, rtol=1e-5)
    np.testing.assert_allclose(item["state"].numpy(), data.states[3, [2, 7]], rtol=1e-6)
    every = torch.stack([windows[i]["action"] for i in range(len(windows))])
    assert every.min() >= -5 and every.max() <= 5
    assert float(torch.stack([windows[i]["visual"] for i in range(len(windows))]).min()) >= -1.0
    with pytest.raises(IndexError):
        windows[len(windows)]


def test_windows_refuse_spans_longer_than_trajectories(pusht_file):
    data = TrajectoryData.load(pusht_file)
    assert len(TrajectoryWindows(data, num_hist=1, frameskip=5)) == 3
    with pytest.raises(ValueError, match=r"\(num_hist \+ 1\) \* frameskip = 15 env steps exceeds"):
        TrajectoryWindows(data, num_hist=2, frameskip=5)
    with pytest.raises(ValueError, match="num_hist must be an int >= 1"):
        TrajectoryWindows(data, num_hist=0, frameskip=1)


def test_split_keeps_statistics_and_partitions(wall_file):
    data = TrajectoryData.load(wall_file)
    train, val = data.split(0.34, seed=1)
    assert len(train) == 4 and len(val) == 2
    assert sorted(train.states[:, 0, 0].tolist() + val.states[:, 0, 0].tolist()) == sorted(data.states[:, 0, 0])
    np.testing.assert_array_equal(train.action_std, data.action_std)
    with pytest.raises(ValueError, match="val_fraction"):
        data.split(1.5)


def test_bad_paths_and_files_are_reported(tmp_path):
    with pytest.raises(ValueError, match="path must end in .npz"):
        generate_dataset("wall", 2, 3, 0, 16, tmp_path / "x.bin", progress=False)
    with pytest.raises(ValueError, match="img_size must be in"):
        generate_dataset("wall", 2, 3, 0, 2, tmp_path / "x.npz", progress=False)
    with pytest.raises(ValueError, match="env must be one of"):
        generate_dataset("maze", 2, 3, 0, 16, tmp_path / "x.npz", progress=False)
    with pytest.raises(FileNotFoundError, match="no dataset file"):
        TrajectoryData.load(tmp_path / "missing.npz")
    np.savez(tmp_path / "other.npz", frames=np.zeros((1, 2, 4, 4, 3), np.uint8), meta=np.array(json.dumps({})))
    with pytest.raises(ValueError, match="not a wmq dataset: missing arrays"):
        TrajectoryData.load(tmp_path / "other.npz")
    assert not list(tmp_path.glob("*.partial*"))


def test_pusht_data_policies_mix_the_pusher_into_demonstrations():
    from wmqlib.envs import collect_trajectories

    mixed_states, mixed_actions = collect_trajectories("pusht", 4, 12, seed=5, progress=False, policy="mixed")
    pusher_states, _ = collect_trajectories("pusht", 4, 12, seed=5, progress=False, policy="pusher")
    demo_states, _ = collect_trajectories("pusht", 4, 12, seed=5, progress=False, policy="demo")
    np.testing.assert_array_equal(mixed_states[3], pusher_states[3])  # every 4th trajectory: the pusher
    np.testing.assert_array_equal(mixed_states[:3], demo_states[:3])
    assert not np.array_equal(demo_states[3], pusher_states[3])
    with pytest.raises(ValueError, match="data policy .*must be one of"):
        collect_trajectories("wall", 2, 5, seed=0, policy="demo")


def test_the_training_sampler_cuts_the_datasets_windows(wall_file):
    from wmqlib.fitting import Windows
    data = TrajectoryData.load(wall_file)
    windows, items = Windows(data, 2, 5), TrajectoryWindows(data, num_hist=1, frameskip=5)
    traj, start = windows.draw(4, torch.Generator().manual_seed(0))
    assert traj.shape == start.shape == (4,) and int(start.max()) < 12 - 2 * 5 + 1
    frames, actions, proprio = windows.gather(traj, start)
    pixels = windows.pixels(traj, frames)
    for b in range(4):  # window (trajectory i, start s) is the Dataset's item i * starts + s
        item = items[int(traj[b]) * (12 - 2 * 5 + 1) + int(start[b])]
        assert frames[b].tolist() == [int(start[b]), int(start[b]) + 5]
        torch.testing.assert_close(actions[b], item["action"])
        torch.testing.assert_close(proprio[b], item["proprio"])
        torch.testing.assert_close(pixels[b].permute(0, 3, 1, 2).float() / 127.5 - 1.0, item["visual"])
    again = Windows(data, 2, 5).draw(4, torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip(again, (traj, start)))  # the generator alone decides the draw
    shifted = {"action_mean": data.action_mean + 1.0, "action_std": data.action_std,
               "proprio_mean": data.proprio_mean, "proprio_std": data.proprio_std}
    _, moved, _ = Windows(data, 2, 5, stats=shifted).gather(traj, start)  # a model's statistics instead of the data's
    torch.testing.assert_close(moved, actions - torch.from_numpy(1.0 / data.action_std).float().repeat(5),
                               rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"trajectories of 12 steps are shorter than one window \(3 frames x "):
        Windows(data, 3, 5)
