"""TokenLinear: an nn.Linear whose CPU inference runs as a oneDNN pointwise convolution."""
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from mask2former.layers import TokenLinear, token_linear
from mask2former.modeling.pixel_decoder import msdeformattn
from mask2former.modeling.pixel_decoder.msdeformattn import MSDeformAttnTransformerEncoderLayer


@pytest.fixture
def convolutions(monkeypatch):
    """Counts the F.conv2d calls TokenLinear makes."""
    calls = []
    real = token_linear.F.conv2d

    def counted(*args, **kwargs):
        calls.append(args[0].shape)
        return real(*args, **kwargs)

    monkeypatch.setattr(token_linear.F, "conv2d", counted)
    return calls


def _layer(dtype=torch.float32, in_features=64, out_features=48):
    torch.manual_seed(0)
    return TokenLinear(in_features, out_features).to(dtype)


@pytest.mark.parametrize("shape", [(2, 300, 64), (300, 64), (1, 2, 5, 64)])
def test_inference_equals_linear_to_float_rounding(convolutions, shape):
    layer = _layer()
    x = torch.randn(shape)
    with torch.no_grad():
        out = layer(x)
    assert convolutions, "the CPU inference path should run the pointwise convolution"
    expected = F.linear(x, layer.weight, layer.bias)
    assert out.shape == expected.shape and out.dtype == torch.float32 and out.is_contiguous()
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_bfloat16_and_strided_inputs(convolutions):
    layer = _layer(torch.bfloat16)
    x = torch.randn(3, 64, 200).to(torch.bfloat16).transpose(1, 2)  # [3, 200, 64], not contiguous
    with torch.no_grad():
        out = layer(x)
    assert convolutions and out.dtype == torch.bfloat16
    expected = F.linear(x.float(), layer.weight.float(), layer.bias.float())
    torch.testing.assert_close(out.float(), expected, rtol=2e-2, atol=2e-2)


def test_training_and_tracing_keep_f_linear(convolutions):
    layer = _layer()
    x = torch.randn(4, 10, 64, requires_grad=True)
    out = layer(x)
    assert torch.equal(out, F.linear(x, layer.weight, layer.bias))
    out.sum().backward()
    assert x.grad is not None and layer.weight.grad is not None
    traced = torch.jit.trace(layer.eval(), torch.randn(4, 10, 64), check_trace=False)
    assert "conv" not in str(traced.graph) and "linear" in str(traced.graph)
    assert not convolutions


def test_state_dict_is_that_of_nn_linear():
    layer, plain = _layer(), nn.Linear(64, 48)
    assert isinstance(layer, nn.Linear)
    assert {k: v.shape for k, v in layer.state_dict().items()} == {k: v.shape for k, v in plain.state_dict().items()}
    plain.load_state_dict(layer.state_dict())


def test_encoder_layer_projections_run_as_convolutions(convolutions):
    """The deformable-attention encoder's projections and feed-forward network take the path."""
    torch.manual_seed(0)
    layer = MSDeformAttnTransformerEncoderLayer(d_model=32, d_ffn=64, n_levels=1, n_heads=2, n_points=2).eval()
    src, pos = torch.randn(1, 12, 32), torch.randn(1, 12, 32)
    reference = torch.rand(1, 12, 1, 2)
    shapes, starts = torch.tensor([[3, 4]]), torch.tensor([0])
    with torch.no_grad():
        out = layer(src, pos, reference, shapes, starts)
    # value, offsets, attention weights, output projection, linear1, linear2
    assert len(convolutions) == 6
    assert out.shape == (1, 12, 32) and torch.isfinite(out).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_encoder_feed_forward_in_token_chunks_is_bitwise_the_whole(monkeypatch, dtype):
    torch.manual_seed(0)
    layer = MSDeformAttnTransformerEncoderLayer(d_model=32, d_ffn=64, n_levels=1, n_heads=2, n_points=2).eval().to(dtype)
    src, pos = torch.randn(2, 30, 32).to(dtype), torch.randn(2, 30, 32).to(dtype)
    reference = torch.rand(2, 30, 1, 2)
    shapes, starts = torch.tensor([[5, 6]]), torch.tensor([0])
    with torch.no_grad():
        whole = layer(src, pos, reference, shapes, starts)
        monkeypatch.setattr(msdeformattn, "FFN_CHUNK_TOKENS", 7)
        chunks = []
        monkeypatch.setattr(layer, "feed_forward", lambda x, f=layer.feed_forward: chunks.append(x.shape[1]) or f(x))
        chunked = layer(src, pos, reference, shapes, starts)
    assert chunks == [7, 7, 7, 7, 2]
    assert torch.equal(chunked, whole)
