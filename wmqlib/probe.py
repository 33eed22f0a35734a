"""What a world model's representations carry: a ridge state probe on the visual latent, and the outlier statistics
of the inputs of every quantized linear.

State probe. A frame's visual latent is the encoder's patch tokens, flattened, x = vec(z_visual) in R^F with
F = P * Dv. The probe is linear ridge regression from x to the part of the env state that decides success
(``state_components``; an angle a is regressed as (sin a, cos a) and read back with atan2):

    W(lambda) = argmin_W ||(X - mean_X) W - (Y - mean_Y)||^2 + lambda ||W||^2,   yhat(x) = (x - mean_X) W + mean_Y

solved in closed form through the eigendecomposition of the smaller of the two Gram matrices
(X^T X when F <= N, else X X^T), so the whole penalty path costs one decomposition. The penalty lambda =
r * (mean eigenvalue) is chosen from a fixed grid of r on a validation split of the TRAINING trajectories (the
criterion: the validation mean squared error of each target divided by that target's training variance, summed),
then the probe is refitted on all training frames. It is scored on frames of OTHER trajectories (held out by
trajectory, not by frame: frames of one trajectory are near-duplicates), as the root mean squared error per state
component in env units (px; degrees for the angle, the error wrapped to [-180, 180]) and divided by the env's success
tolerance for that component. ``spread`` is the error of the best constant prediction on the same frames (the
held-out standard deviation; for an angle the RMS wrapped deviation from its circular mean): a probe whose error
equals the spread has found nothing.

Sample size matters: with fewer training frames than a few times F the held-out error measures the shortage of
frames as much as the representation (the chosen penalty then comes out large), so size ``probe_frames`` to the
latent width and keep the sizes fixed when comparing models.

The probe measures what a representation carries, so fit it on each model's own latents (``probe_model``); a probe
fitted on one model's latents can also be scored on another's (``RidgeProbe.score``), which measures how far the
other's latents moved in the directions the first one uses.

Outlier statistics (``outlier_stats``), from a calibration capture (``wmqlib.quant.capture_calibration``), for the
input x of every quantized linear (``wmqlib.quant.points``):

    max_over_median = max_c m_c / median_c m_c,  m_c = max over tokens of |x[:, c]|   (all calibration tokens)
    kurtosis        = E[(x - mu)^4] / E[(x - mu)^2]^2 over every entry of the sampled input rows (Pearson; 3 for
                      a Gaussian)

A few channels far larger than the rest (large max_over_median, large kurtosis) are what make per-tensor activation
and low-bit weight quantization of large pretrained ViTs hard.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

from wmqlib.envs import collect_trajectories, env_class, env_names, make_env
from wmqlib.plan import PlanningModel, encode_observations
from wmqlib.quant import Calibration, find_points
from wmqlib.validate import check_choice, check_float, check_int, check_type

PENALTY_GRID = tuple(float(r) for r in np.logspace(-8, 3, 23))
"""Ridge penalties r (relative to the mean eigenvalue of the training Gram matrix) tried on the validation split."""

PROBE_COLUMNS = ("component", "unit", "error", "spread", "tolerance", "error_over_tolerance",
                 "spread_over_tolerance", "frames")
OUTLIER_COLUMNS = ("part", "block", "layer", "linear", "channels", "max_over_median", "kurtosis", "tokens")


# ----- what the probe predicts ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class StateComponent:
    """One probed part of the env state.

    name: e.g. "agent_x"; column: its index in the env's state vector (S,);
    unit: "px" or "deg" (an angle: regressed as sin / cos, scored in degrees);
    tolerance: the env's success tolerance for it, in ``unit`` (a position tolerance bounds the norm of the whole
        position difference, so one coordinate's error over it is a lower bound of its share of the budget).
    """

    name: str
    column: int
    unit: str
    tolerance: float

    def __post_init__(self) -> None:
        check_int("StateComponent.column", self.column, 0)
        check_choice("StateComponent.unit", self.unit, ("px", "deg"))
        check_float("StateComponent.tolerance", self.tolerance, 0.0, strict=True)

    @property
    def is_angle(self) -> bool:
        return self.unit == "deg"


def state_components(env: str) -> tuple[StateComponent, ...]:
    """The state components that decide success in ``env`` ("wall" | "pusht"), with their tolerances."""
    check_choice("env", env, env_names())
    return tuple(StateComponent(*component) for component in env_class(env).success_components)


def state_targets(states: np.ndarray, components: tuple[StateComponent, ...]) -> np.ndarray:
    """Regression targets float64 (N, K) of states (N, S): one column per position, (sin, cos) per angle."""
    states = np.asarray(states, dtype=np.float64)
    cols = []
    for c in components:
        if c.column >= states.shape[-1]:
            raise ValueError(f"state component {c.name!r} reads column {c.column}, states have {states.shape[-1]}")
        value = states[:, c.column]
        cols += [np.sin(value), np.cos(value)] if c.is_angle else [value]
    return np.stack(cols, axis=1)


# ----- frames -------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ProbeFrames:
    """Frames of scripted trajectories, flattened trajectory-major (N = n_traj * (traj_len + 1) frames).

    env: env name; frames: uint8 (N, img, img, 3); proprio: raw float32 (N, p); states: float64 (N, S);
    trajectory: int64 (N,) the trajectory each frame belongs to (0 .. n_traj - 1).
    """

    env: str
    frames: np.ndarray
    proprio: np.ndarray
    states: np.ndarray
    trajectory: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.frames)
        if self.frames.dtype != np.uint8 or self.frames.ndim != 4 or self.frames.shape[-1] != 3:
            raise ValueError(f"ProbeFrames.frames must be uint8 (N, H, W, 3), got {self.frames.dtype} "
                             f"{self.frames.shape}")
        for field in ("proprio", "states", "trajectory"):
            if len(getattr(self, field)) != n:
                raise ValueError(f"ProbeFrames.{field} must have {n} rows (one per frame), got "
                                 f"{len(getattr(self, field))}")

    def __len__(self) -> int:
        return len(self.frames)


def probe_frames(env: str, n_traj: int, traj_len: int, seed: int, img_size: int) -> ProbeFrames:
    """Render ``n_traj`` scripted trajectories of ``traj_len`` actions (``wmqlib.envs.collect_trajectories``, the
    training data's policy, trajectories from ``seed``) at ``img_size`` px (the model's ``config.img_size``).

    Frames of different seeds come from different trajectories: fit on one seed, score on another.
    """
    check_choice("env", env, env_names())
    check_int("n_traj", n_traj, 2)
    check_int("traj_len", traj_len, 1)
    check_int("seed", seed, 0)
    renderer = make_env(env, render_size=img_size)
    states, _ = collect_trajectories(env, n_traj, traj_len, seed, progress=False)
    flat = states.reshape(-1, states.shape[-1])
    obs = renderer.observe(flat)
    trajectory = np.repeat(np.arange(n_traj, dtype=np.int64), traj_len + 1)
    return ProbeFrames(env, obs["visual"], obs["proprio"], flat, trajectory)


def encode_frames(model: PlanningModel, data: ProbeFrames, chunk: int = 256) -> torch.Tensor:
    """Visual latents of ``data``'s frames, flattened: float32 (N, P * Dv) on the CPU.

    Encodes through ``wmqlib.plan.encode_observations`` (``prepare_obs`` + ``encode_obs``), as planning does, so a
    quantized copy from ``wmqlib.quant.quantize`` is probed through its own (fake-quantized) encoder.
    """
    check_type("data", data, ProbeFrames, "a ProbeFrames (from probe_frames)")
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    try:
        latents = encode_observations(model, {"visual": data.frames, "proprio": data.proprio}, chunk=chunk)
    finally:
        if was_training:
            model.train()
    visual = latents["visual"]  # (N, 1, P, Dv)
    return visual.reshape(visual.shape[0], -1).float().cpu()


# ----- ridge ----------------------------------------------------------------------------------------------------

def _as_latents(latents: torch.Tensor | np.ndarray, field: str = "latents") -> torch.Tensor:
    x = torch.as_tensor(np.asarray(latents) if not isinstance(latents, torch.Tensor) else latents)
    if x.ndim != 2 or not x.is_floating_point():
        raise ValueError(f"{field} must be a float (N, F) matrix, got {x.dtype} {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{field} must be finite; it holds NaN or inf")
    return x.detach().cpu().double()


@dataclass(frozen=True)
class _RidgePath:
    """W(lambda) = basis @ diag(1 / (eig + lambda)) @ coef for every lambda, from one eigendecomposition."""

    x_mean: torch.Tensor  # (F,)
    y_mean: torch.Tensor  # (K,)
    basis: torch.Tensor  # (F, r)
    eig: torch.Tensor  # (r,)
    coef: torch.Tensor  # (r, K)

    @classmethod
    def fit(cls, x: torch.Tensor, y: torch.Tensor) -> "_RidgePath":
        x_mean, y_mean = x.mean(0), y.mean(0)
        xc, yc = x - x_mean, y - y_mean
        if xc.shape[1] <= xc.shape[0]:  # primal: X^T X = V E V^T, W = V (E + l)^-1 V^T X^T Y
            eig, vec = torch.linalg.eigh(xc.T @ xc)
            basis, coef = vec, vec.T @ (xc.T @ yc)
        else:  # dual: X X^T = U E U^T, W = X^T U (E + l)^-1 U^T Y
            eig, vec = torch.linalg.eigh(xc @ xc.T)
            basis, coef = xc.T @ vec, vec.T @ yc
        return cls(x_mean, y_mean, basis, eig.clamp_min(0.0), coef)

    def scale(self) -> float:
        """Mean eigenvalue of the Gram matrix: the unit of the relative penalties."""
        return max(float(self.eig.mean()), 1e-30)

    def weight(self, penalty: float) -> torch.Tensor:
        """(F, K) ridge weights for the absolute penalty ``penalty``."""
        return self.basis @ (self.coef / (self.eig + penalty)[:, None])


@dataclass(frozen=True)
class RidgeProbe:
    """A fitted linear probe: ``predict(latents (N, F)) -> targets (N, K)`` (see ``state_targets``).

    components: what it predicts; penalty: the relative ridge penalty chosen on the validation split;
    x_mean (F,), weight (F, K), y_mean (K,): float64 CPU tensors.
    """

    components: tuple[StateComponent, ...]
    penalty: float
    x_mean: torch.Tensor
    weight: torch.Tensor
    y_mean: torch.Tensor

    def predict(self, latents: torch.Tensor | np.ndarray) -> np.ndarray:
        """Predicted targets float64 (N, K) of latents (N, F)."""
        x = _as_latents(latents)
        if x.shape[1] != self.weight.shape[0]:
            raise ValueError(f"latents have {x.shape[1]} features, the probe was fitted on {self.weight.shape[0]}")
        return ((x - self.x_mean) @ self.weight + self.y_mean).numpy()

    def score(self, latents: torch.Tensor | np.ndarray, states: np.ndarray) -> pd.DataFrame:
        """Per-component errors on held-out frames: one row per component, columns ``PROBE_COLUMNS``.

        latents: (N, F) of frames the probe was NOT fitted on; states: (N, S) their env states.
        """
        return probe_errors(self.predict(latents), states, self.components)


def fit_probe(latents: torch.Tensor | np.ndarray, states: np.ndarray, trajectory: np.ndarray,
              components: tuple[StateComponent, ...], val_fraction: float = 0.25, seed: int = 0,
              penalties: tuple[float, ...] = PENALTY_GRID) -> RidgeProbe:
    """Fit a ridge probe from latents (N, F) to the components of states (N, S).

    trajectory: (N,) the trajectory of each frame; ``val_fraction`` of the trajectories (at least one; chosen by a
    permutation from ``seed``) are held out to choose the penalty among ``penalties`` (relative to the mean
    eigenvalue), then the probe is refitted on every frame.
    """
    x = _as_latents(latents)
    trajectory = np.asarray(trajectory)
    if len(states) != len(x) or len(trajectory) != len(x):
        raise ValueError(f"latents, states and trajectory must have the same rows, got {len(x)}, {len(states)}, "
                         f"{len(trajectory)}")
    check_float("val_fraction", val_fraction, 0.0, 1.0, strict=True)
    check_int("seed", seed, 0)
    if len(penalties) == 0:
        raise ValueError("penalties must hold at least one relative ridge penalty, got none")
    for k, r in enumerate(penalties):
        check_float(f"penalties[{k}]", r, 0.0, strict=True)
    y = torch.from_numpy(state_targets(states, components))
    ids = np.unique(trajectory)
    if len(ids) < 2:
        raise ValueError(f"fit_probe needs frames of at least 2 trajectories (one for validation), got {len(ids)}")
    n_val = min(len(ids) - 1, max(1, round(val_fraction * len(ids))))
    val_ids = np.random.default_rng(seed).permutation(ids)[:n_val]
    val = torch.from_numpy(np.isin(trajectory, val_ids))
    path = _RidgePath.fit(x[~val], y[~val])
    x_val = (x[val] - path.x_mean) @ path.basis  # (n_val, r)
    y_var = y[~val].var(0, unbiased=False).clamp_min(1e-12)
    losses = []
    for r in penalties:
        pred = x_val @ (path.coef / (path.eig + r * path.scale())[:, None]) + path.y_mean
        losses.append(float(((pred - y[val]) ** 2).mean(0).div(y_var).sum()))
    best = float(penalties[int(np.argmin(losses))])
    full = _RidgePath.fit(x, y)
    return RidgeProbe(tuple(components), best, full.x_mean, full.weight(best * full.scale()), full.y_mean)


def probe_errors(predicted: np.ndarray, states: np.ndarray, components: tuple[StateComponent, ...]) -> pd.DataFrame:
    """RMS error per component of predicted targets (N, K) against states (N, S), with the spread and tolerances."""
    states = np.asarray(states, dtype=np.float64)
    predicted = np.asarray(predicted, dtype=np.float64)
    rows, k = [], 0
    for c in components:
        truth = states[:, c.column]
        if c.is_angle:
            guess = np.arctan2(predicted[:, k], predicted[:, k + 1])
            centre = math.atan2(np.sin(truth).mean(), np.cos(truth).mean())  # circular mean
            error, spread = (math.degrees(_rms(_wrap(guess - truth))), math.degrees(_rms(_wrap(truth - centre))))
            k += 2
        else:
            error, spread = _rms(predicted[:, k] - truth), float(truth.std())
            k += 1
        rows.append({"component": c.name, "unit": c.unit, "error": error, "spread": spread,
                     "tolerance": c.tolerance, "error_over_tolerance": error / c.tolerance,
                     "spread_over_tolerance": spread / c.tolerance, "frames": len(truth)})
    return pd.DataFrame(rows, columns=list(PROBE_COLUMNS))


def _wrap(angle: np.ndarray) -> np.ndarray:
    """Angles wrapped to [-pi, pi)."""
    return (angle + np.pi) % (2 * np.pi) - np.pi


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x))))


def probe_model(model: PlanningModel, train: ProbeFrames, test: ProbeFrames, val_fraction: float = 0.25,
                seed: int = 0, chunk: int = 256) -> pd.DataFrame:
    """Fit a state probe on ``model``'s latents of ``train`` frames and score it on ``test`` frames (other
    trajectories: e.g. ``probe_frames`` with another seed). One row per state component (``PROBE_COLUMNS``).

    Frames are rendered once and probed for any number of models (FP, each quantized copy): only encoding and one
    fit per model are repeated.
    """
    if train.env != test.env:
        raise ValueError(f"train and test frames come from different envs: {train.env!r} and {test.env!r}")
    components = state_components(train.env)
    probe = fit_probe(encode_frames(model, train, chunk), train.states, train.trajectory, components,
                      val_fraction, seed)
    return probe.score(encode_frames(model, test, chunk), test.states)


# ----- outliers -------------------------------------------------------------------------------------------------

def max_over_median(absmax: torch.Tensor) -> float:
    """max_c m_c / median_c m_c of per-channel max |x| values m (C,); inf when the median channel is all zeros."""
    absmax = absmax.double()
    median = float(absmax.median())
    return float(absmax.max()) / median if median > 0 else math.inf


def kurtosis(x: torch.Tensor) -> float:
    """Pearson kurtosis E[(x - mu)^4] / E[(x - mu)^2]^2 of all entries of ``x`` (3 for a Gaussian); NaN if constant."""
    x = x.double().flatten()
    centred = x - x.mean()
    m2 = float(centred.pow(2).mean())
    return float(centred.pow(4).mean()) / m2 ** 2 if m2 > 0 else math.nan


def outlier_stats(model: nn.Module, calibration: Calibration) -> pd.DataFrame:
    """Outlier statistics of the input of every quantized linear of ``model`` that ``calibration`` has seen.

    model: the FP model the calibration was captured on (its quantization points name the rows);
    calibration: from ``wmqlib.quant.capture_calibration`` (e.g. ``wmqlib.evaluate.collect_calibration``).
    Returns one row per linear, in model order, columns ``OUTLIER_COLUMNS``: part ("encoder" / "predictor", the
    top-level module), block (the block index), layer (qkv / proj / fc1 / fc2), linear (module name), channels,
    max_over_median (over all calibration tokens), kurtosis (over the sampled rows) and tokens (rows seen).
    """
    check_type("calibration", calibration, Calibration, "a wmqlib.quant.Calibration")
    points = find_points(model)
    seen = [name for name in points.linears if name in set(calibration.linears)]
    if not seen:
        raise ValueError(f"calibration holds none of the model's {len(points.linears)} quantized linears; capture it "
                         f"on this model (it holds {calibration.linears[:3]}...)")
    rows = []
    for name in seen:
        unit = points.unit_of(name).name
        block = next((int(part) for part in unit.split(".") if re.fullmatch(r"\d+", part)), -1)
        rows.append({"part": name.split(".")[0], "block": block, "layer": points.role(name), "linear": name,
                     "channels": int(calibration.absmax(name).numel()),
                     "max_over_median": max_over_median(calibration.absmax(name)),
                     "kurtosis": kurtosis(calibration.rows(name)), "tokens": calibration.tokens_seen(name)})
    return pd.DataFrame(rows, columns=list(OUTLIER_COLUMNS))
