"""wmq: post-training quantization of world models that plan.

Data flows one way through the modules: ``envs -> models -> quant -> plan -> evaluate -> study -> plots``.
"""

__version__ = "0.1.0"
