import math

import pytest
import torch

from radio.hadamard import HadamardError, hadamard, normalized_hadamard
from radio.normalize import (
    NORMALIZERS,
    PHIS,
    all_reduce_moments,
    batch_moments,
    build_normalizer,
    check_normalizer,
    merge_moments,
    restart_statistics,
    store_global_statistics,
)
from radio.registry import RegistryError


def correlated(n: int, c: int, seed: int = 0) -> torch.Tensor:
    """Strongly correlated, anisotropic, off-centre data: eigenvalues spread over four decades."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(c, c, generator=g, dtype=torch.float64))
    scales = torch.logspace(-2, 2, c, dtype=torch.float64).sqrt()
    z = torch.randn(n, c, generator=g, dtype=torch.float64) * scales
    return z @ q.T + 5 * torch.randn(c, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("n", [256, 384, 768, 1024, 1152, 1280, 1536, 12, 20, 28, 36, 48, 96])
def test_hadamard_is_exact(n):
    h = hadamard(n)
    assert h.shape == (n, n) and set(h.unique().tolist()) == {-1, 1}
    assert torch.equal(h @ h.T, n * torch.eye(n, dtype=torch.int64))
    hn = normalized_hadamard(n)
    assert torch.allclose(hn.abs(), torch.full_like(hn, 1 / math.sqrt(n)))


@pytest.mark.parametrize("n, why", [(6, "no Hadamard matrix exists"), (10, "no Hadamard matrix exists"),
                                    (668, "no Sylvester/Paley/Kronecker construction")])
def test_hadamard_fails_loudly_where_none_is_known(n, why):
    with pytest.raises(HadamardError, match=f"order {n}: {why}"):
        hadamard(n)
    with pytest.raises(HadamardError):
        PHIS(n)
    with pytest.raises(HadamardError):
        check_normalizer("phis", n)


def test_unknown_normalizer_lists_the_valid_ones():
    with pytest.raises(RegistryError, match="valid normalizer names: channel_std, global_std, none, pca_whiten, phis"):
        build_normalizer("zca", 8)


def test_streaming_moments_equal_one_shot_moments():
    x = correlated(5000, 12)
    one = batch_moments(x)
    chunks = [x[:1], x[1:700], x[700:701], x[701:3000], x[3000:]]
    m = batch_moments(x[:0])
    for c in chunks:
        m = merge_moments(m, batch_moments(c))
    assert m.n.item() == 5000
    assert torch.allclose(m.mean, one.mean, atol=1e-12, rtol=0)
    assert torch.allclose(m.m2, one.m2, rtol=1e-10, atol=1e-8)
    # merging is symmetric
    a, b = batch_moments(x[:1234]), batch_moments(x[1234:])
    ab, ba = merge_moments(a, b), merge_moments(b, a)
    assert torch.allclose(ab.m2, ba.m2, rtol=1e-12) and torch.allclose(ab.mean, ba.mean, rtol=1e-12)


def test_streamed_phis_equals_one_shot_phis():
    x = correlated(4000, 48).float()
    streamed, once = PHIS(48), PHIS(48)
    for c in x.split(333):
        streamed.update(c)
    once.update(x)
    streamed.fit()
    once.fit()
    assert torch.allclose(streamed.phi, once.phi, rtol=1e-10)
    assert torch.allclose(streamed.weight, once.weight, atol=1e-5)
    assert torch.allclose(streamed(x), once(x), atol=1e-4)


@pytest.mark.parametrize("dim", [48, 256])
def test_phis_unit_variance_rotation_times_scalar_and_exact_inverse(dim):
    x = correlated(20000, dim, seed=dim)
    n = PHIS(dim)
    for c in x.split(4096):
        n.update(c.float())
    n.fit()
    w = n.weight.double()
    y = (x - n.mu.double()) @ w.T  # float64 application isolates the estimate from float32 rounding
    var = y.var(dim=0, unbiased=False)
    assert (var - 1).abs().max() < 1e-4, (var.min(), var.max())
    assert y.mean(dim=0).abs().max() < 1e-4
    # W = R / phi with R orthogonal: W W^T = phi^-2 I, and phi^2 is the mean eigenvalue of the covariance
    phi = n.phi.item()
    assert torch.allclose(w @ w.T * phi**2, torch.eye(dim, dtype=torch.float64), atol=1e-5)
    r = n.rotation.double()
    assert torch.allclose(r @ r.T, torch.eye(dim, dtype=torch.float64), atol=1e-5)
    cov = torch.cov(x.T, correction=0)
    assert abs(phi**2 - torch.trace(cov).item() / dim) < 1e-6 * phi**2
    # float32 forward -> inverse restores the input to float tolerance
    xf = x.float()
    assert torch.allclose(n.inverse(n(xf)), xf, atol=1e-4 * xf.abs().max().item())


@pytest.mark.parametrize("kind", ["global_std", "channel_std", "pca_whiten", "phis"])
def test_baselines_are_exactly_invertible_and_standardize_what_they_claim(kind):
    x = correlated(8000, 32, seed=3).float()
    n = build_normalizer(kind, 32)
    n.update(x)
    n.fit()
    y = n(x).double()
    assert torch.allclose(n.inverse(n(x)), x, atol=1e-3)
    var = y.var(dim=0, unbiased=False)
    if kind == "global_std":
        assert abs(((y - y.mean()) ** 2).mean().item() - 1) < 1e-3  # one scalar: the pooled variance is 1
        assert var.max() / var.min() > 3  # ... but the channels keep their spread
    elif kind == "pca_whiten":
        cov = torch.cov(y.T, correction=0)
        assert torch.allclose(cov, torch.eye(32, dtype=torch.float64), atol=5e-3)
    else:
        assert (var - 1).abs().max() < 1e-3


def test_identity_and_registry():
    assert set(NORMALIZERS.names()) >= {"none", "global_std", "channel_std", "pca_whiten", "phis"}
    x = torch.randn(3, 5, 8)
    n = build_normalizer("none", 8)
    assert torch.equal(n(x), x) and torch.equal(n.inverse(x), x) and not n.needs_statistics


def test_use_before_fit_and_update_after_freeze_are_errors():
    n = PHIS(8)
    with pytest.raises(RuntimeError, match="before fit"):
        n(torch.randn(2, 8))
    with pytest.raises(RuntimeError, match="at least 2 samples"):
        n.fit()
    with pytest.raises(ValueError, match="features have 6 channels"):
        n.update(torch.randn(4, 6))
    n.update(torch.randn(100, 8))
    n.freeze()
    assert not n.needs_statistics
    with pytest.raises(RuntimeError, match="after freeze"):
        n.update(torch.randn(4, 8))


def test_statistics_survive_a_state_dict_round_trip():
    x = correlated(3000, 12).float()
    n = build_normalizer("phis", 12)
    n.update(x)
    n.freeze()
    fresh = build_normalizer("phis", 12)
    fresh.load_state_dict(n.state_dict())
    assert bool(fresh.frozen) and fresh.count.item() == 3000
    assert torch.equal(fresh(x), n(x)) and torch.equal(fresh.inverse(x), n.inverse(x))


def _rank(rank: int, world: int, port: int, chunks, queue) -> None:
    import torch.distributed as dist

    # Plain data both ways (numpy in, lists out): a tensor put on a torch.multiprocessing queue is shared
    # through a file descriptor that the receiver opens later, after this process may have exited.
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        n = PHIS(12)
        n.update(torch.from_numpy(chunks[rank]))
        local_count = n.count.item()
        n.fit()
        fitted_w = n.weight.tolist()
        n.freeze()
        queue.put((rank, local_count, n.count.item(), fitted_w, n.weight.tolist(), n.running_m2.tolist()))
    finally:
        dist.destroy_process_group()


def test_statistics_are_all_reduced_across_ranks():
    import socket

    import torch.multiprocessing as mp

    x = correlated(3000, 12, seed=7).float()
    chunks = [x[:1000].numpy(), x[1000:].numpy()]  # unequal shares, different distributions merged exactly
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_rank, args=(r, 2, port, chunks, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = sorted(queue.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    once = PHIS(12)
    once.update(x)
    once.fit()
    assert [r[1] for r in results] == [1000, 2000]  # each rank streamed only its own share
    for _, _, total, fit_w, frozen_w, m2 in results:
        assert total == 3000
        fit_w, frozen_w, m2 = torch.tensor(fit_w), torch.tensor(frozen_w), torch.tensor(m2, dtype=torch.float64)
        assert torch.allclose(fit_w, once.weight, atol=1e-5) and torch.allclose(frozen_w, once.weight, atol=1e-5)
        assert torch.allclose(m2, once.running_m2, rtol=1e-9)
    assert all_reduce_moments(batch_moments(x)).n.item() == 3000  # no process group: the identity


def test_normalizer_runs_in_float32_even_under_autocast():
    x = correlated(500, 12).float()
    n = PHIS(12)
    n.update(x)
    n.fit()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, back = n(x), n.inverse(x)
    assert y.dtype == back.dtype == torch.float32
    assert torch.equal(y, n(x)) and torch.equal(back, n.inverse(x))


def test_checkpoint_statistics_of_the_normalizers_still_estimating():
    """store_global_statistics puts the running (here: single-process) statistics of the estimating
    normalizers into a state dict; restart_statistics zeroes them for a resuming rank other than 0; frozen
    ones keep theirs."""
    norms = {"a": build_normalizer("channel_std", 4), "b": build_normalizer("channel_std", 4),
             "c": build_normalizer("none", 4)}
    for n in ("a", "b"):
        norms[n].update(correlated(10, 4))
    norms["b"].freeze()
    state = {f"p.{n}.{k}": v.clone() for n, m in norms.items() for k, v in m.state_dict().items()}
    norms["a"].update(correlated(6, 4, seed=1))  # seen since the state dict was taken
    store_global_statistics(norms, state, "p.")
    assert float(state["p.a.count"]) == 16 and torch.equal(state["p.a.running_m2"], norms["a"].running_m2)
    restart_statistics(norms, state, "p.")
    assert float(state["p.a.count"]) == 0
    assert not state["p.a.running_mean"].any() and not state["p.a.running_m2"].any()
    assert float(state["p.b.count"]) == 10 and torch.equal(state["p.b.running_m2"], norms["b"].running_m2)
    assert state["p.b.running_m2"].any() and set(state) == {f"p.{n}.{k}" for n, m in norms.items()
                                                            for k in m.state_dict()}
