"""wmqlib.quant: post-training fake quantization of world models (DINO-WM's ViT encoder and predictor, the RSSM's
convolutions, MLPs and GRU matrices: each architecture declares its points in ``points``).

One primitive (``fake_quantize(x, QuantSpec(bits, granularity, symmetric))``), one recipe dataclass per method
(``RTN``, ``OMSE``, ``AWQ``, ``SmoothQuant``, ``OmniQuant``, ``GPTQ``), one entry point::

    with capture_calibration(model) as calib:
        model(calibration_inputs)                      # FP forwards
    qmodel, report = quantize(model, AWQ(4, PerGroup(128)), calib, scope="predictor")
    report.table                                       # one row per quantized linear

The default quantization points (block linears and their inputs) are defined in ``points``.  A search returns a
plain dict of tensors (``search_params``) that ``save_params`` stores and ``apply_params`` re-applies.
``quantwm_reference(method, w_bits, ...)`` gives the paper code's (QuantWM's) configuration of each method.
``RTN(4, rotation="hadamard")`` rotates every linear's input first (QuaRot-style, see ``rotation``).
"""

from .api import apply_params, assign_recipes, load_params, quantize, save_params, search_params
from .awq import AWQ
from .calibration import Calibration, capture_calibration
from .gptq import GPTQ
from .omniquant import OmniQuant
from .omse import OMSE
from .points import QuantPoints, ScalePair, Unit, find_points
from .quantwm import REFERENCE_METHODS, is_quantwm_reference, quantwm_reference
from .qlinear import ActQuantizer, QuantConv2d, QuantLinear, ScaledActivation
from .recipe import Recipe, recipe_from_names, recipe_types, register
from .rotation import ROTATIONS, hadamard_available, rotation_matrix
from .report import QuantReport, sqnr_db
from .rtn import RTN
from .smoothquant import SmoothQuant
from .spec import (
    PerChannel, PerGroup, PerTensor, PerToken, QuantSpec, fake_quantize, granularity_from_name, qparams, scale_shape,
)

__all__ = [
    "recipe_from_names",
    "AWQ", "GPTQ", "OMSE", "RTN", "ActQuantizer", "Calibration", "OmniQuant", "PerChannel", "PerGroup", "PerTensor",
    "PerToken", "QuantConv2d", "QuantLinear", "QuantPoints", "QuantReport", "QuantSpec", "REFERENCE_METHODS",
    "ROTATIONS", "Recipe",
    "ScalePair", "ScaledActivation", "SmoothQuant", "Unit", "apply_params", "assign_recipes", "capture_calibration",
    "fake_quantize", "find_points", "granularity_from_name", "hadamard_available", "is_quantwm_reference",
    "load_params", "qparams", "quantize", "quantwm_reference", "recipe_types", "register", "rotation_matrix",
    "save_params", "scale_shape", "search_params", "sqnr_db",
]
