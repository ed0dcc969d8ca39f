"""torch.compile(fullgraph=True, Inductor on CPU) of every family.

One small model chains all five families so that Inductor's start-up cost is paid once;
it is run through PWLU's phase change (phase I, realignment, phase II) and several ANAct
statistic updates, and compared with an eager copy after every step: outputs, input
gradients, parameter gradients, parameters and buffers.
"""
import copy

import torch
import torch.nn as nn

from grafs.activations.anact import ANAct
from grafs.activations.dyn import DynActivation
from grafs.activations.pwlu import PWLU
from grafs.activations.xielu import XIELU, XIPReLU


def _close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_all_families_compile_fullgraph_with_inductor():
    torch._dynamo.reset()
    torch.manual_seed(0)
    eager = nn.Sequential(
        XIELU(),
        PWLU(num_intervals=8, mode="channel", num_channels=3, phase1_steps=2),
        ANAct(nn.SiLU()),
        DynActivation(nn.GELU(), alpha_init=0.8, beta_init=0.1),
        XIPReLU(),
    )
    model = copy.deepcopy(eager)
    compiled = torch.compile(model, fullgraph=True)   # fullgraph: any graph break raises
    g = torch.Generator().manual_seed(1)
    for step in range(4):           # 2 phase-I calls, the realignment call, one phase-II call
        x = torch.randn(2, 3, 9, generator=g) * 1.5 + 0.2
        gout = torch.randn(2, 3, 9, generator=g)
        outs = []
        for m, fn in ((eager, eager), (model, compiled)):
            m.zero_grad(set_to_none=True)
            xi = x.clone().requires_grad_(True)
            y = fn(xi)
            y.backward(gout)
            outs.append((y.detach(), xi.grad))
        _close(outs[1][0], outs[0][0])
        _close(outs[1][1], outs[0][1])
        pe, pc = dict(eager.named_parameters()), dict(model.named_parameters())
        for name, p in pe.items():
            _close(pc[name].detach(), p.detach())
            if p.grad is not None:     # PWLU phase I: eager gives None, the traced graph zeros
                _close(pc[name].grad, p.grad)
            elif pc[name].grad is not None:
                assert not pc[name].grad.any()
        be, bc = dict(eager.named_buffers()), dict(model.named_buffers())
        for name, b in be.items():
            _close(bc[name], b)
    assert model[1].phase == 2 and int(model[1].num_steps) == 3
    assert int(model[2].num_batches_tracked) == 4
    # eval mode (PWLU's inference path, ANAct's running statistics) compiles as well
    eager.eval(); model.eval()
    x = torch.randn(2, 3, 9, generator=g)
    _close(compiled(x), eager(x))
    torch._dynamo.reset()
