"""Schedule values equal the float64 formulas (scaled-linear DDPM, 1000 steps)."""

import math

import torch

from lib_lora.sd import schedule


def _ac64(t):
    b = [(math.sqrt(0.00085) + (math.sqrt(0.012) - math.sqrt(0.00085)) * i / 999) ** 2 for i in range(1000)]
    prod = 1.0
    for i in range(t + 1):
        prod *= 1 - b[i]
    return prod, b[t]


def test_betas_and_alphas_cumprod():
    ac = schedule.alphas_cumprod()
    assert ac.dtype == torch.float64 and ac.shape == (1000,)
    for t in (0, 1, 499, 998, 999):
        want, beta = _ac64(t)
        assert math.isclose(ac[t].item(), want, rel_tol=1e-12)
        assert math.isclose(schedule.betas()[t], beta, rel_tol=1e-12)
    assert math.isclose(schedule.betas()[0], 0.00085, rel_tol=1e-12)
    assert math.isclose(schedule.betas()[-1], 0.012, rel_tol=1e-12)


def test_noise_v_target_snr_and_min_snr_weight():
    x0 = torch.randn(3, 4, 2, 2)
    eps = torch.randn(3, 4, 2, 2)
    t = torch.tensor([0, 500, 999])
    xt = schedule.add_noise(x0, eps, t)
    v = schedule.v_target(x0, eps, t)
    for i, ti in enumerate(t.tolist()):
        a, _ = _ac64(ti)
        assert torch.allclose(xt[i].double(), math.sqrt(a) * x0[i].double() + math.sqrt(1 - a) * eps[i].double(), atol=1e-6)
        assert torch.allclose(v[i].double(), math.sqrt(a) * eps[i].double() - math.sqrt(1 - a) * x0[i].double(), atol=1e-6)
        assert math.isclose(schedule.snr(t)[i].item(), a / (1 - a), rel_tol=1e-12)
    s = schedule.snr(t)
    w = schedule.min_snr_weight(t, 5.0)
    wv = schedule.min_snr_weight(t, 5.0, v_prediction=True)
    assert torch.allclose(w.double(), torch.clamp(s, max=5.0) / s, rtol=1e-6)
    assert torch.allclose(wv.double(), torch.clamp(s, max=5.0) / (s + 1), rtol=1e-6)
    assert w[0] < 1 and w[2] == 1  # high SNR at t=0 is capped, low SNR at t=999 keeps weight 1


def test_ldm_buffers_and_zero_terminal_snr():
    buf = schedule.ldm_buffers()
    assert buf["alphas_cumprod"].dtype == torch.float32 and len(buf) == 12
    assert torch.equal(buf["alphas_cumprod"], schedule.alphas_cumprod().float())
    assert buf["alphas_cumprod_prev"][0] == 1.0
    z = schedule.zero_terminal_snr(schedule.alphas_cumprod())
    assert z[-1] == 0 and math.isclose(z[0].item(), schedule.alphas_cumprod()[0].item(), rel_tol=1e-12)
