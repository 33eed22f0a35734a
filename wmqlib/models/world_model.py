"""``WorldModel``: DINO-WM's encoder, predictor, action/proprio encoders and decoder behind one planning API.

Latent layout (DINO-WM, ``concat_dim: 1``): every patch token of a frame carries the frame's visual token, its
proprio embedding and its action embedding, concatenated along features,

    z[b, t, p] = [ visual (Dv) | proprio (Ep) | action (Ea) ],   z: (B, T, P, D),  D = Dv + Ep + Ea.

The predictor maps a window of at most ``num_hist`` frames to the same shape, output frame t predicting frame t+1.
``rollout`` encodes nothing: it starts from encoded observations (encode them once, even for thousands of
candidate action sequences) and feeds its own predictions back, replacing the action slice of each predicted
frame with the next planned action. The proprio latent of a frame is read from its first token, as DINO-WM does.

``compile_rollout()`` makes ``rollout`` run the predictor through ``torch.compile`` (inductor: C++ on the CPU,
Triton on CUDA). It is off by default: the first calls of every new window shape pay the compilation (seconds to
minutes), which only pays back over long planning runs. Where compilation fails (no C++ compiler, an unsupported
Python) the rollout warns once, says why, and runs eager.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from wmqlib.models.base import STAT_NAMES, WorldModelBase
from wmqlib.models.config import WorldModelConfig
from wmqlib.models.decoder import ConvDecoder
from wmqlib.models.embeddings import StepEmbedding
from wmqlib.models.encoder import ViTEncoder
from wmqlib.models.errors import CheckpointError
from wmqlib.models.predictor import ViTPredictor
from wmqlib.models.preprocess import resize_images

MAX_STATS_FILE_BYTES = 1 << 20
# torch.compile'd ``module(x)`` calls, one per (mode, dynamic): the module is an argument, so nothing here holds a
# model (no leak, nothing in a state_dict, a deepcopy or a pickle) and every predictor of one structure shares the
# compiled code. None marks options whose compilation failed in this process: those rollouts run eager.
_COMPILED: dict[tuple[str | None, bool | None], Callable[[nn.Module, torch.Tensor], torch.Tensor] | None] = {}


def _call(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return module(x)


class WorldModel(WorldModelBase):
    """A DINO-WM world model sized by ``config``; parameters are drawn from ``seed`` (global RNG untouched).

    Submodules: ``encoder`` (ViTEncoder), ``predictor`` (ViTPredictor), ``action_encoder`` and
    ``proprio_encoder`` (StepEmbedding), ``decoder`` (ConvDecoder). The z-score statistics, ``provenance``, the
    env-unit conversions and ``from_state_dict`` come from ``WorldModelBase``.
    """

    architecture = "dinowm"  # the quantization points ``wmqlib.quant.points`` declares for this layout

    def __init__(self, config: WorldModelConfig, seed: int = 0) -> None:
        if not isinstance(config, WorldModelConfig):
            raise TypeError(f"WorldModel needs a WorldModelConfig, got {type(config).__name__}")
        super().__init__(config)
        c = config
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.encoder = ViTEncoder(c.encoder_dim, c.encoder_depth, c.encoder_heads, c.encoder_mlp_dim,
                                      c.patch_size, c.encoder_pos_grid)
            self.predictor = ViTPredictor(c.num_patches, c.num_hist, c.latent_dim, c.predictor_depth,
                                          c.predictor_heads, c.predictor_dim_head, c.predictor_mlp_dim,
                                          c.predictor_dropout, c.predictor_emb_dropout)
            self.action_encoder = StepEmbedding(c.action_dim, c.action_emb_dim)
            self.proprio_encoder = StepEmbedding(c.proprio_dim, c.proprio_emb_dim)
            self.decoder = ConvDecoder(c.encoder_dim, c.decoder_channel, c.decoder_res_blocks,
                                       c.decoder_res_channel, c.decoder_n_embed, c.decoder_strides)
        self.rollout_compile: dict[str, Any] | None = None  # torch.compile options of the rollout; None = eager

    # ----- properties and normalisation statistics -----

    @property
    def device(self) -> torch.device:
        """Device of the model's weights."""
        return self.predictor.pos_embedding.device

    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype of the model's weights (inputs are cast to it)."""
        return self.predictor.pos_embedding.dtype

    # ----- encoding -----

    def encode_obs(self, visual: torch.Tensor, proprio: torch.Tensor) -> dict[str, torch.Tensor]:
        """visual (B, T, 3, img, img) in [-1, 1], z-scored proprio (B, T, p) ->
        {"visual": (B, T, P, Dv), "proprio": (B, T, Ep)}."""
        c = self.config
        visual = self._input("visual", visual, (None, None, 3, c.img_size, c.img_size))
        proprio = self._input("proprio", proprio, (visual.shape[0], visual.shape[1], c.proprio_dim))
        b, t = visual.shape[:2]
        images = resize_images(visual.reshape(b * t, 3, c.img_size, c.img_size), c.encoder_img_size)
        tokens = self.encoder(images).reshape(b, t, c.num_patches, c.encoder_dim)
        return {"visual": tokens, "proprio": self.proprio_encoder(proprio)}

    def encode(self, visual: torch.Tensor, proprio: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """Observations and z-scored actions (B, T, Da) -> latents z (B, T, P, D) = [visual | proprio | action]."""
        obs = self.encode_obs(visual, proprio)
        b, t, p, _ = obs["visual"].shape
        action = self._input("action", action, (b, t, self.action_dim))
        act = self.action_encoder(action)
        c = self.config
        return torch.cat([
            obs["visual"],
            obs["proprio"][:, :, None, :].expand(b, t, p, c.proprio_emb_dim),
            act[:, :, None, :].expand(b, t, p, c.action_emb_dim),
        ], dim=-1)

    def split_latent(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        """z (B, T, P, D) -> {"visual": (B, T, P, Dv), "proprio": (B, T, Ep), "action": (B, T, Ea)} (views).

        Proprio and action are read from the first token, as DINO-WM does.
        """
        c = self.config
        dv, ep = c.encoder_dim, c.proprio_emb_dim
        return {"visual": z[..., :dv], "proprio": z[..., 0, dv:dv + ep], "action": z[..., 0, dv + ep:]}

    # ----- prediction -----

    def compile_rollout(self, enabled: bool = True, mode: str | None = None, dynamic: bool | None = None
                        ) -> WorldModel:
        """Run ``rollout``'s predictor through ``torch.compile(..., mode=mode, dynamic=dynamic)``; returns self.

        One compiled ``predictor(window)`` call serves every model of the same structure (its copies included).
        enabled=False returns to eager. Numerics: the same maths with fused kernels (float reassociation only; the
        planner-level agreement is tested in tests/test_compile.py). Compilation happens at the first rollout of
        every new input shape; if it fails, a warning names the reason and the rollout runs eager from then on.
        """
        if not isinstance(enabled, bool):
            raise TypeError(f"WorldModel.compile_rollout: enabled must be True or False, got {enabled!r}")
        if mode is not None and not isinstance(mode, str):
            raise TypeError(f"WorldModel.compile_rollout: mode must be a torch.compile mode string or None, "
                            f"got {mode!r}")
        if dynamic is not None and not isinstance(dynamic, bool):
            raise TypeError(f"WorldModel.compile_rollout: dynamic must be True, False or None, got {dynamic!r}")
        self.rollout_compile = {"mode": mode, "dynamic": dynamic} if enabled else None
        return self

    def _rollout_predict(self, window: torch.Tensor) -> torch.Tensor:
        """``predictor(window)``, compiled when ``compile_rollout`` asked for it and compilation works."""
        options = getattr(self, "rollout_compile", None)  # absent on models unpickled from an older wmq
        if options is None:
            return self.predictor(window)
        key = (options["mode"], options["dynamic"])
        if key not in _COMPILED:
            # Every (model structure, window shape) is one more compiled graph of ``_call``: FP, weight-only, W8A8
            # per-token and per-tensor copies and 1..num_hist-frame windows exceed dynamo's default of 8, past
            # which it would silently run eager.
            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
            _COMPILED[key] = torch.compile(_call, mode=options["mode"], dynamic=options["dynamic"])
        compiled = _COMPILED[key]
        if compiled is None:
            return self.predictor(window)
        try:
            return compiled(self.predictor, window)
        except Exception as err:  # noqa: BLE001 - any compiler failure falls back; a real error recurs in eager
            text = str(err).strip()
            reason = text.splitlines()[0][:300] if text else "no message"
            warnings.warn(f"WorldModel.rollout: torch.compile is unavailable here ({type(err).__name__}: {reason}); "
                          "the rollout runs eager", RuntimeWarning, stacklevel=3)
            _COMPILED[key] = None
            return self.predictor(window)

    def predict(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, T, P, D), T <= num_hist -> (B, T, P, D); frame-causal, output frame t predicts frame t+1."""
        c = self.config
        z = self._input("z", z, (None, None, c.num_patches, c.latent_dim))
        b, t = z.shape[:2]
        if t > c.num_hist:
            raise ValueError(f"WorldModel.predict: z has {t} frames, the predictor window is num_hist={c.num_hist}")
        return self.predictor(z.reshape(b, t * c.num_patches, c.latent_dim)).reshape(z.shape)

    def forward(self, visual: torch.Tensor, proprio: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """One teacher-forced step for training: ``predict(encode(visual, proprio, action))``, (B, T, P, D)."""
        return self.predict(self.encode(visual, proprio, action))

    def rollout(self, z0: dict[str, torch.Tensor], actions: torch.Tensor) -> dict[str, torch.Tensor]:
        """Imagine H steps from encoded start observations.

        z0: {"visual": (B0, 1, P, Dv), "proprio": (B0, 1, Ep)} from ``encode_obs``; actions: z-scored (B, H, Da).
        B0 == 1 (one start shared by all B sequences) or B0 divides B: sequence b starts from z0[b // (B // B0)],
        i.e. episode-major order (B = episodes * samples). Starts are broadcast, never re-encoded or copied per
        sample. Returns {"visual": (B, H+1, P, Dv), "proprio": (B, H+1, Ep)}, index 0 the start, index k the
        prediction after k actions. Differentiable with respect to ``actions``.
        """
        c = self.config
        p, dv, ep, d = c.num_patches, c.encoder_dim, c.proprio_emb_dim, c.latent_dim
        actions = self._input("actions", actions, (None, None, self.action_dim))
        b, horizon = actions.shape[:2]
        visual0 = self._input("z0['visual']", z0["visual"], (None, 1, p, dv))
        b0 = visual0.shape[0]
        proprio0 = self._input("z0['proprio']", z0["proprio"], (b0, 1, ep))
        if b % b0:
            raise ValueError(f"WorldModel.rollout: {b0} start latents do not divide {b} action sequences")
        act = self.action_encoder(actions)  # (B, H, Ea)

        # One buffer for the whole imagined trajectory: frames are written in place, windows are views of it.
        z = actions.new_empty(b, horizon + 1, p, d)
        grouped = z.view(b0, b // b0, horizon + 1, p, d)
        grouped[:, :, 0, :, :dv] = visual0[:, None, 0]
        grouped[:, :, 0, :, dv:dv + ep] = proprio0[:, :, None, :]
        z[:, :horizon, :, dv + ep:] = act[:, :, None, :]
        for step in range(horizon):
            start = max(0, step + 1 - c.num_hist)
            window = z[:, start:step + 1].reshape(b, (step + 1 - start) * p, d)
            pred = self._rollout_predict(window)[:, -p:]  # (B, P, D): the prediction of frame step+1
            if step + 1 < horizon:
                z[:, step + 1, :, :dv + ep] = pred[..., :dv + ep]  # its action slice is the next planned action
            else:
                z[:, step + 1] = pred
        return {"visual": z[..., :dv], "proprio": z[:, :, 0, dv:dv + ep]}

    # ----- decoding -----

    def decode(self, visual: torch.Tensor) -> torch.Tensor:
        """Visual latents (B, T, P, Dv) -> images (B, T, 3, img_size, img_size), about [-1, 1] (visualisation)."""
        c = self.config
        visual = self._input("visual latents", visual, (None, None, c.num_patches, c.encoder_dim))
        b, t = visual.shape[:2]
        images = self.decoder(visual.reshape(b * t, c.num_patches, c.encoder_dim))
        return images.reshape(b, t, *images.shape[1:])


def nonfinite_weights(model: nn.Module) -> dict[str, int]:
    """``{state_dict key: count}`` of the floating tensors of ``model`` holding NaN or inf (empty when all finite)."""
    return {k: int((~torch.isfinite(v)).sum()) for k, v in model.state_dict().items()
            if v.is_floating_point() and v.device.type != "meta" and not torch.isfinite(v).all()}


def read_normalization(normalization: dict[str, Any] | str | Path | None) -> tuple[dict[str, Any] | None, str]:
    """``(statistics, where they come from)`` from None, a dict, or the path of a JSON file holding the dict.

    A file that is missing, too large (over 1 MiB), not JSON or not a mapping raises CheckpointError naming it.
    """
    if normalization is None:
        return None, ""
    if isinstance(normalization, (str, Path)):
        path = Path(normalization)
        if not path.is_file():
            raise CheckpointError(f"normalization file not found: {path} is not a file")
        if path.stat().st_size > MAX_STATS_FILE_BYTES:
            raise CheckpointError(f"normalization file {path} is {path.stat().st_size} bytes; statistics take a few "
                                  f"hundred (at most {MAX_STATS_FILE_BYTES} are read)")
        try:
            data = json.loads(path.read_bytes().decode("utf-8"))
        except (ValueError, RecursionError) as error:
            raise CheckpointError(f"normalization file {path} is not valid JSON ({type(error).__name__}: "
                                  f"{str(error)[:200]})") from None
        if not isinstance(data, dict):
            raise CheckpointError(f"normalization file {path} must hold a JSON object with keys {list(STAT_NAMES)}, "
                                  f"got a {type(data).__name__}")
        return data, f"read from {path}"
    if not isinstance(normalization, dict):
        raise TypeError(f"normalization must be a dict with keys {list(STAT_NAMES)} or the path of a JSON file "
                        f"holding one, got {type(normalization).__name__}")
    return normalization, "given by the caller"


def merge_normalization(given: dict[str, Any] | None, given_source: str, carried: dict[str, Any] | None,
                        carried_source: str, shapes: dict[str, tuple[int, ...]] | None = None,
                        missing_hint: str = "") -> tuple[dict[str, Any], str]:
    """The four statistics and a description of where each came from: ``given`` ones win, the others come from
    ``carried`` (the checkpoint's own: a wmq folder's stored ones, DINO-WM's published constants). A statistic in
    neither raises ValueError naming it (``missing_hint`` says how to supply it); unknown keys, wrong shapes
    (``shapes``: name -> expected shape), non-finite values or a std <= 0 raise ValueError naming the statistic and
    where it came from (a file, the checkpoint). Sources are short phrases ("given by the caller", "read from
    <file>", "DINO-WM published constants", "stored in <file>").
    """
    given = dict(given or {})
    where = f" ({given_source})" if given_source.startswith("read from") else ""
    unknown = sorted(map(str, set(given) - set(STAT_NAMES)))
    if unknown:
        raise ValueError(f"normalization{where} has unknown keys {unknown}; allowed: {list(STAT_NAMES)}")
    missing = [name for name in STAT_NAMES if name not in given and (carried is None or name not in carried)]
    if missing:
        raise ValueError(f"normalization{where} is missing {missing} and the checkpoint carries no value for "
                         f"them{': ' + missing_hint if missing_hint else ''}")
    stats, sources = {}, {}
    for name in STAT_NAMES:
        value, source = (given[name], given_source) if name in given else (carried[name], carried_source)
        where = "" if source == "given by the caller" else f" ({source})"
        try:
            stat = torch.as_tensor(value, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError) as error:
            raise ValueError(f"normalization{where} {name} must be a list of numbers, got {type(value).__name__} "
                             f"({str(error)[:100]})") from None
        if shapes is not None and tuple(stat.shape) != tuple(shapes[name]):
            raise ValueError(f"normalization{where} {name} must have shape {tuple(shapes[name])}, got "
                             f"{tuple(stat.shape)}")
        if not torch.isfinite(stat).all() or (name.endswith("_std") and not (stat > 0).all()):
            raise ValueError(f"normalization{where} {name} must be finite{' and > 0' if name.endswith('_std') else ''}"
                             f", got {stat.flatten()[:8].tolist()}")
        stats[name] = stat.tolist()
        sources.setdefault(source, []).append(name)
    if len(sources) == 1:
        return stats, next(iter(sources))
    order = sorted(sources, key=lambda source: source != given_source)  # the given ones first
    return stats, "; ".join(f"{', '.join(sources[source])}: {source}" for source in order)


