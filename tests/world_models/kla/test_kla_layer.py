"""KLA layer and block: shapes, dynamics parametrisation, causality, state carrying, gradients."""

from __future__ import annotations

import math

import pytest
import torch

from world_models.kla import KLABlock, KLALayer, KLAState, kla_filter

F64 = torch.float64


@pytest.fixture
def layer() -> KLALayer:
    torch.manual_seed(0)
    return KLALayer(8, d_state=4, expand=2, backend="scan").double()


def test_output_shapes_and_belief(layer):
    x = torch.randn(3, 11, 8, dtype=F64)
    out = layer(x)
    assert out.out.shape == (3, 11, 8) and out.out_var.shape == (3, 11, 8)
    assert out.mean.shape == (3, 11, 16, 4) and out.var.shape == (3, 11, 16, 4)
    assert out.y.shape == (3, 11, 16) and out.y_var.shape == (3, 11, 16)
    assert out.state.lam.shape == (3, 16, 4) and out.state.conv.shape == (3, 16, 3)
    assert torch.isfinite(out.out).all()
    assert (out.var > 0).all() and (out.out_var >= 0).all()
    # The state is the last filtered belief.
    torch.testing.assert_close(1.0 / out.state.lam, out.var[:, -1])
    torch.testing.assert_close(out.state.eta / out.state.lam, out.mean[:, -1])


@torch.no_grad()
def test_transition_parametrisation(layer):
    a, p = layer.transition()
    assert ((a > 0) & (a < 1)).all() and (p > 0).all()
    rate = torch.exp(layer.theta)
    step = torch.nn.functional.softplus(layer.delta) + 1e-7
    # Mamba-style init: Delta log-uniform in [1e-3, 0.1], a_c = -1.
    assert float(step.min()) >= 1e-3 * (1 - 1e-6) and float(step.max()) <= 0.1 * (1 + 1e-6)
    torch.testing.assert_close(a, torch.exp(-step))
    # OU: exact variance of dx = -|a_c| x dt + sqrt(p_c) dW over Delta.
    ou = layer.p_c * (1 - torch.exp(-2 * rate * step)) / (2 * rate)
    torch.testing.assert_close(p, ou.clamp_min(1e-7))
    # For small |a_c| Delta the OU noise tends to the ZOH noise p_c Delta.
    zoh = KLALayer(8, d_state=4, noise="zoh").double()
    zoh.load_state_dict(layer.state_dict())
    _, p_zoh = zoh.transition()
    assert torch.allclose(p, p_zoh, rtol=0.11)
    assert (p < p_zoh).all()


def test_keys_and_queries_are_unit_norm(layer):
    x = torch.randn(2, 5, 8, dtype=F64)
    *_, prec, k, q, _ = layer.sensor_outputs(x)
    torch.testing.assert_close(k.norm(dim=-1), torch.ones(2, 5, dtype=F64))
    torch.testing.assert_close(q.norm(dim=-1), torch.ones(2, 5, dtype=F64))
    assert (prec > 0).all() and (prec <= 1e4).all()


def test_layer_matches_hand_wired_filter(layer):
    x = torch.randn(2, 9, 8, dtype=F64)
    out = layer(x)
    zc, g, v, prec, k, q, _ = layer.sensor_outputs(x)
    a, p = layer.transition()
    ref = kla_filter(v, prec, k, a, p, q=q, backend="reference")
    torch.testing.assert_close(out.mean, ref.mean)
    y = ref.y + layer.skip * zc
    torch.testing.assert_close(out.out, layer.out_proj(y * torch.nn.functional.silu(g)))


def test_causality(layer):
    x = torch.randn(1, 12, 8, dtype=F64)
    base = layer(x).out
    x2 = x.clone()
    x2[:, 7] += 1.0
    changed = (layer(x2).out - base).abs().amax(dim=-1)[0]
    assert (changed[:7] == 0).all()
    assert (changed[7:] > 0).all()


def test_split_with_state_equals_one_pass(layer):
    x = torch.randn(2, 15, 8, dtype=F64)
    full = layer(x)
    first = layer(x[:, :6])
    second = layer(x[:, 6:], first.state)
    torch.testing.assert_close(torch.cat([first.out, second.out], 1), full.out)
    torch.testing.assert_close(torch.cat([first.var, second.var], 1), full.var)


def test_token_by_token_decode_equals_one_pass(layer):
    x = torch.randn(2, 7, 8, dtype=F64)
    full = layer(x).out
    state = layer.init_state(2, dtype=F64)
    outs = []
    for t in range(7):
        o = layer(x[:, t : t + 1], state)
        outs.append(o.out)
        state = o.state
    torch.testing.assert_close(torch.cat(outs, 1), full)


def test_backends_agree(layer):
    x = torch.randn(2, 20, 8, dtype=F64)
    out_scan = layer(x).out
    layer.backend = "reference"
    torch.testing.assert_close(layer(x).out, out_scan, rtol=1e-10, atol=1e-12)


def test_gradients_reach_every_parameter(layer):
    x = torch.randn(2, 10, 8, dtype=F64, requires_grad=True)
    out = layer(x)
    (out.out.square().sum() + out.out_var.sum()).backward()
    for name, prm in layer.named_parameters():
        assert prm.grad is not None and torch.isfinite(prm.grad).all(), name
        assert prm.grad.abs().sum() > 0, name
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_gradcheck_small_layer():
    torch.manual_seed(1)
    lay = KLALayer(3, d_state=2, expand=1, d_conv=2, backend="scan").double()
    x = torch.randn(1, 4, 3, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda inp: lay(inp).out, (x,), eps=1e-6, atol=1e-7)


@torch.no_grad()
def test_float32_and_autocast_paths():
    torch.manual_seed(0)
    lay = KLALayer(8, d_state=4)
    x = torch.randn(2, 16, 8)
    out32 = lay(x).out
    assert out32.dtype == torch.float32 and torch.isfinite(out32).all()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out_bf = lay(x)
    # the filter itself runs in float32 even under autocast
    assert out_bf.mean.dtype == torch.float32
    assert torch.isfinite(out_bf.out).all()
    assert float((out_bf.out.float() - out32).abs().max()) < 0.05 * float(out32.abs().max()) + 1e-3


def test_bad_layer_arguments():
    with pytest.raises(ValueError, match="noise"):
        KLALayer(4, noise="brownian")
    lay = KLALayer(4, d_state=2)
    with pytest.raises(ValueError, match="x must be"):
        lay(torch.randn(2, 3, 5))


def test_block_stack_trains_a_step():
    torch.manual_seed(0)
    blocks = torch.nn.Sequential(*(KLABlock(16, d_state=4) for _ in range(2)))
    x = torch.randn(2, 12, 16)
    y = blocks(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    opt = torch.optim.SGD(blocks.parameters(), lr=0.1)
    target = torch.randn_like(y)
    loss0 = torch.nn.functional.mse_loss(y, target)
    loss0.backward()
    opt.step()
    loss1 = torch.nn.functional.mse_loss(blocks(x), target)
    assert loss1.item() < loss0.item()


def test_block_returns_state_for_streaming():
    torch.manual_seed(0)
    blk = KLABlock(8, d_state=4).double()
    x = torch.randn(1, 10, 8, dtype=F64)
    full, state = blk(x, return_state=True)
    assert isinstance(state, KLAState)
    first, s1 = blk(x[:, :4], return_state=True)
    second = blk(x[:, 4:], state=s1)
    torch.testing.assert_close(torch.cat([first, second], 1), full)
    assert blk.mixer.no_weight_decay() == {"theta", "delta"}
    assert math.isclose(float(blk.mixer.skip.detach()), -1.0)
