"""ConvDecoder: the token grid maps back to the image size, with the released key layout."""

from __future__ import annotations

import pytest
import torch

from wmqlib.models.decoder import ConvDecoder


@pytest.mark.parametrize("strides, side", [((2, 2), 12), ((4, 2), 24), ((4, 4), 48)])
def test_upsamples_grid_to_image(strides: tuple[int, int], side: int) -> None:
    decoder = ConvDecoder(latent_dim=6, channel=4, n_res_block=1, res_channel=2, n_embed=3, strides=strides)
    assert decoder(torch.randn(2, 9, 6)).shape == (2, 3, side, side)


def test_released_key_layout() -> None:
    decoder = ConvDecoder(latent_dim=6, channel=4, n_res_block=1, res_channel=2, n_embed=3, strides=(4, 4))
    shapes = {k: tuple(v.shape) for k, v in decoder.state_dict().items()}
    stack = {"blocks.0.weight": (4, 6, 3, 3), "blocks.1.conv.1.weight": (2, 4, 3, 3),
             "blocks.1.conv.3.weight": (4, 2, 1, 1), "blocks.3.weight": (4, 2, 4, 4), "blocks.5.weight": (2, None, 4, 4)}
    assert shapes["quantize_b.embed"] == (6, 3) and shapes["quantize_b.cluster_size"] == (3,)
    for prefix, out in (("upsample_b.", 6), ("dec.", 3)):
        for key, shape in stack.items():
            want = tuple(out if s is None else s for s in shape)
            assert shapes[prefix + key] == want, prefix + key


def test_rejects_non_square_token_count() -> None:
    decoder = ConvDecoder(latent_dim=6, channel=4, n_res_block=1, res_channel=2, n_embed=3)
    with pytest.raises(ValueError, match="5 tokens do not form a square grid"):
        decoder(torch.randn(1, 5, 6))
