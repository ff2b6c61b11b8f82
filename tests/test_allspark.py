"""AllSpark (docs/methods/allspark.md §13) and SegFormer: attention math, inference path,
semantic memory, CSG, memory size, strict MiT weight loading, one training step."""
import pytest
import torch
import torch.nn.functional as F

from s4kit.models import WeightsError
from s4kit.models.allspark import (AllSpark, ChannelCrossAttention, SemanticMemory, channel_attention, channel_groups,
                                   logit_moments, memory_tokens, standardize)
from s4kit.models.segformer import MiTEncoder, SegFormer, load_mit_weights, stage4_size


def _reference_attention(q, k, v):
    """A = softmax_row(IN(Q^T K)), O = A V^T, written with explicit sums (q (N, R), k, v (N, S))."""
    logits = torch.einsum("nr,ns->rs", q, k)
    logits = (logits - logits.mean()) / torch.sqrt(logits.var(unbiased=False) + 1e-5)
    a = torch.exp(logits) / torch.exp(logits).sum(1, keepdim=True)
    return torch.einsum("rs,ns->nr", a, v)


def test_channel_attention_matches_formula_and_rows_sum_to_one():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(6, n, generator=g, dtype=torch.float64) for n in (3, 5, 5))
    assert torch.allclose(channel_attention(q, k, v), _reference_attention(q, k, v), atol=1e-12)
    logits = standardize(q.T @ k)
    assert abs(logits.mean()) < 1e-9 and abs(logits.var(unbiased=False) - 1) < 1e-4  # §13.4
    # IN equals InstanceNorm2d without affine on a (B, h, R, S) tensor
    x = torch.randn(2, 3, 4, 7, generator=g, dtype=torch.float64)
    assert torch.allclose(standardize(x), torch.nn.InstanceNorm2d(3)(x), atol=1e-10)


def test_fused_channel_attention_equals_materialised_with_gradients():
    """The fused path (analytic IN moments + scaled_dot_product_attention) equals the
    materialised softmax(IN(Q^T K)) V^T in values and in the gradients of q, k and v,
    with the labeled branch's broadcast (one shared K/V for every query image)."""
    g = torch.Generator().manual_seed(5)
    q = (3.0 * torch.randn(3, 4, 6, generator=g, dtype=torch.float64) + 1.0).requires_grad_()
    k = (torch.randn(1, 4, 10, generator=g, dtype=torch.float64) - 2.0).requires_grad_()
    v = torch.randn(1, 4, 10, generator=g, dtype=torch.float64).requires_grad_()
    w = torch.randn(3, 4, 6, generator=g, dtype=torch.float64)
    mean, var = logit_moments(q, k)
    logits = q.transpose(-2, -1) @ k
    assert torch.allclose(mean, logits.mean((-2, -1)), atol=1e-10)
    assert torch.allclose(var, logits.var((-2, -1), unbiased=False), atol=1e-8)
    fused = channel_attention(q, k, v)  # no dropout module: fused path
    ref = (standardize(logits).softmax(-1) @ v.transpose(-2, -1)).transpose(-2, -1)
    assert fused.shape == (3, 4, 6) and torch.allclose(fused, ref, atol=1e-10)
    g_fused = torch.autograd.grad((fused * w).sum(), (q, k, v))
    g_ref = torch.autograd.grad((ref * w).sum(), (q, k, v))
    for a, b in zip(g_fused, g_ref):
        assert torch.allclose(a, b, atol=1e-9)
    # an active dropout takes the materialised path; p = 0 or eval mode the fused one
    drop = torch.nn.Dropout(0.5).train()
    torch.manual_seed(0)
    dropped = channel_attention(q, k, v, drop)
    assert not torch.allclose(dropped, ref, atol=1e-6)
    assert torch.allclose(channel_attention(q, k, v, drop.eval()), ref, atol=1e-10)
    assert torch.allclose(channel_attention(q, k, v, torch.nn.Dropout(0.0).train()), ref, atol=1e-10)


def test_channel_attention_permutations():
    """Permuting the N pixels of q, k and v together permutes the output's pixels the same
    way (equivariance: Q^T K sums over pixels); permuting the S key/value channels together
    leaves the output unchanged (invariance); permuting the R query channels permutes the
    output channels."""
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 9, n, generator=g, dtype=torch.float64) for n in (4, 6, 6))
    out = channel_attention(q, k, v)
    pix, ch, qc = torch.randperm(9, generator=g), torch.randperm(6, generator=g), torch.randperm(4, generator=g)
    assert torch.allclose(channel_attention(q[:, pix], k[:, pix], v[:, pix]), out[:, pix], atol=1e-12)
    assert torch.allclose(channel_attention(q, k[..., ch], v[..., ch]), out, atol=1e-12)
    assert torch.allclose(channel_attention(q[..., qc], k, v), out[..., qc], atol=1e-12)
    # permuting the pixels of k/v alone is NOT a symmetry (the pairing with q's pixels matters)
    assert not torch.allclose(channel_attention(q, k[:, pix], v[:, pix]), out[:, pix], atol=1e-6)


def _module(C=8, K=3, N=4, h=2, **kw):
    torch.manual_seed(0)
    m = AllSpark(C, K, N, heads=h, attn_drop=0.0, proj_drop=0.0, **kw).double()
    return m


def _manual_self_attention(m: AllSpark, c4):
    """Eval output of one image written out: labeled (l2u) weights, K/V from its own tokens."""
    B, C, hh, ww = c4.shape
    x = F.gelu(m.map_in(c4)).flatten(2).transpose(1, 2)[0]
    z = m.norm_in(x)
    a = m.attn
    q, k, v = z @ a.q_l2u.weight.T, z @ a.k_l2u.weight.T, z @ a.v_l2u.weight.T
    o = _reference_attention(q, k, v) @ a.out_l2u.weight.T
    y = m.norm_out(o + x).T.reshape(1, C, hh, ww)
    return F.gelu(m.map_out(y))


def test_inference_is_self_attention_with_l2u_weights():
    m = _module().eval()
    g = torch.Generator().manual_seed(2)
    c4 = torch.randn(2, 8, 2, 2, generator=g, dtype=torch.float64)
    queue, ptr = m.attn.memory.queue.clone(), m.attn.memory.ptr.clone()
    out = m(c4)
    for b in range(2):  # §13.1: per image, self-attention through the l2u weights
        assert torch.allclose(out[b:b + 1], _manual_self_attention(m, c4[b:b + 1]), atol=1e-10)
    with torch.no_grad():  # unchanged by the unlabeled-branch weights and the memory
        for lin in (m.attn.q_u, m.attn.k_u, m.attn.v_u, m.attn.out_u):
            lin.weight.add_(1.0)
        m.attn.memory.queue.mul_(5.0)
    assert torch.allclose(m(c4), out, atol=1e-12)
    assert torch.equal(m.attn.memory.ptr, ptr) and torch.equal(m.attn.memory.queue, queue * 5)  # §13.2
    # §13.3: with source='batch', image 0 depends on image 1; per image it does not
    c4b = c4.clone()
    c4b[1] += 1.0
    assert torch.allclose(m(c4b)[0], out[0], atol=1e-12)
    m.infer_source = "batch"
    assert not torch.allclose(m(c4)[0], m(c4b)[0], atol=1e-6)


def test_memory_inference_source():
    """eval_source='memory' (s4kit option): the labeled branch takes K/V from the memory,
    exactly labeled_branch(z, memory as K pseudo-images); it changes with the memory, not
    with the other images of the batch, and refuses a grid of another size."""
    m = _module().eval()
    m.infer_source = "memory"
    g = torch.Generator().manual_seed(4)
    c4 = torch.randn(2, 8, 2, 2, generator=g, dtype=torch.float64)
    out = m(c4)
    with torch.no_grad():
        x = F.gelu(m.map_in(c4)).flatten(2).transpose(1, 2)
        o = m.attn.labeled_branch(m.norm_in(x), m.attn.memory.queue.transpose(1, 2))
        ref = F.gelu(m.map_out(m.norm_out(o + x).transpose(1, 2).reshape(2, 8, 2, 2)))
    assert torch.allclose(out, ref, atol=1e-12)
    c4b = c4.clone()
    c4b[1] += 1.0
    assert torch.allclose(m(c4b)[0], out[0], atol=1e-12)
    with torch.no_grad():
        m.attn.memory.queue.mul_(2.0)
    assert not torch.allclose(m(c4), out, atol=1e-6)
    with pytest.raises(ValueError, match="tokens"):
        m(torch.randn(1, 8, 3, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="source"):
        m.attn.infer(torch.randn(1, 4, 8, dtype=torch.float64), "nope")


def test_training_branches_depend_on_the_right_inputs():
    m = _module().train()
    g = torch.Generator().manual_seed(3)
    c4 = torch.randn(4, 8, 2, 2, generator=g, dtype=torch.float64)  # 2 labeled + 2 unlabeled
    m.set_context(2)
    base = m(c4)
    c4_l = c4.clone()
    c4_l[:2] += 1.0  # §13.6: the unlabeled half does not see the labeled half
    m.set_context(2)
    assert torch.allclose(m(c4_l)[2:], base[2:], atol=1e-12)
    c4_u = c4.clone()
    c4_u[3] += 1.0  # §13.5: before the warm-up, labeled output depends on u ...
    m.set_context(2)
    assert not torch.allclose(m(c4_u)[:2], base[:2], atol=1e-6)
    m.set_context(2, None, use_memory=True)  # ... after it, on the memory and not on u (no enqueue here)
    mem = m(c4)
    m.set_context(2, None, use_memory=True)
    assert torch.allclose(m(c4_u)[:2], mem[:2], atol=1e-12)
    with torch.no_grad():
        m.attn.memory.queue.add_(1.0)
    m.set_context(2, None, use_memory=True)
    assert not torch.allclose(m(c4)[:2], mem[:2], atol=1e-6)
    with pytest.raises(RuntimeError, match="set_context"):
        m(c4)


def test_layer_scale_zero_starts_as_identity_and_learns_gamma():
    """layer_scale=zero: Y = gamma * attention + X, gamma (C,) from 0; the paper's module has no gamma."""
    assert _module().gamma is None and "gamma" not in dict(_module().named_parameters())
    m = _module(layer_scale="zero").train()
    g = torch.Generator().manual_seed(5)
    c4 = torch.randn(4, 8, 2, 2, generator=g, dtype=torch.float64)
    x = F.gelu(m.map_in(c4)).flatten(2).transpose(1, 2)  # (A1)
    identity = F.gelu(m.map_out(m.norm_out(x).transpose(1, 2).reshape(4, 8, 2, 2)))  # (A2) without attention
    m.set_context(2, None, use_memory=True)
    out = m(c4)
    assert torch.allclose(out, identity, atol=1e-12)  # gamma = 0: neither u nor the memory reaches the output
    out.square().sum().backward()
    assert m.gamma.grad.abs().min() > 0  # ... but gamma learns from the first step
    with torch.no_grad():
        m.gamma.fill_(0.5)
    attn = m.attn(m.norm_in(x), 2, None, True, (2, 2))
    y = m.norm_out(0.5 * attn + x).transpose(1, 2).reshape(4, 8, 2, 2)
    m.set_context(2, None, use_memory=True)
    assert torch.allclose(m(c4), F.gelu(m.map_out(y)), atol=1e-12)
    m.eval()  # the inference path is scaled too
    z = m.norm_in(x)
    y = m.norm_out(0.5 * m.attn.infer(z, "per_image") + x).transpose(1, 2).reshape(4, 8, 2, 2)
    assert torch.allclose(m(c4), F.gelu(m.map_out(y)), atol=1e-12)
    with pytest.raises(ValueError, match="layer_scale"):
        _module(layer_scale="one")


def test_memory_fifo_keeps_newest_entries_per_class():
    mem = SemanticMemory(num_classes=2, slots=4, tokens=1)
    mem.queue.zero_()
    mem.enqueue(torch.tensor([[1.0], [2.0], [3.0]]), torch.tensor([0, 0, 1]))
    assert mem.queue[0, :, 0].tolist() == [1, 2, 0, 0] and mem.queue[1, :, 0].tolist() == [3, 0, 0, 0]
    assert mem.ptr.tolist() == [2, 1]
    mem.enqueue(torch.tensor([[4.0], [5.0], [6.0]]), torch.tensor([0, 0, 0]))  # wraps around
    assert mem.queue[0, :, 0].tolist() == [6, 2, 4, 5] and mem.ptr.tolist() == [1, 1]
    mem.enqueue(torch.arange(10.0, 16.0)[:, None], torch.zeros(6, dtype=torch.long))  # n >= C: newest C survive
    assert sorted(mem.queue[0, :, 0].tolist()) == [12, 13, 14, 15] and mem.ptr.tolist() == [(1 + 6) % 4, 1]
    assert mem.queue[0, (mem.ptr[0] - 1) % 4, 0] == 15  # the newest sits just before the pointer
    with pytest.raises(ValueError, match="tokens"):
        mem.enqueue(torch.zeros(1, 2), torch.zeros(1, dtype=torch.long))


def test_training_forward_enqueues_post_ln_tokens():
    m = _module(C=8, K=3, N=4).train()
    g = torch.Generator().manual_seed(4)
    c4 = torch.randn(4, 8, 2, 2, generator=g, dtype=torch.float64)
    maps = torch.randn(2, 3, 8, 8, generator=g, dtype=torch.float64)
    m.set_context(2, maps, use_memory=False)
    m(c4)
    z_u = m.norm_in(F.gelu(m.map_in(c4[2:])).flatten(2).transpose(1, 2))
    groups = channel_groups(z_u, maps, (2, 2))
    counts = torch.bincount(groups.reshape(-1), minlength=3)
    assert counts.sum() == 2 * 8  # §13.8: every channel of every image goes to one class
    assert m.attn.memory.ptr.tolist() == (counts % 8).tolist()  # §13.9
    k = int(groups[0, 0])  # §13.10: the first slot of its class holds the first channel's map (detached)
    assert torch.allclose(m.attn.memory.queue[k, 0], z_u[0, :, 0].detach().to(m.attn.memory.queue.dtype))
    assert not m.attn.memory.queue.requires_grad


def test_channel_groups_hand_example_and_scale_invariance():
    # 2x2 grid, 2 classes: class 0 lives on the left column, class 1 on the right
    maps = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]], [[0.0, 1.0], [0.0, 1.0]]]])
    z = torch.tensor([[[2.0, 0.1, 1.0], [0.1, 3.0, 1.0], [2.0, 0.1, 1.0], [0.1, 3.0, 1.1]]])  # (1, N=4, C=3)
    assert channel_groups(z, maps, (2, 2)).tolist() == [[0, 1, 1]]
    scaled_maps = maps * torch.tensor([3.0, 0.2]).view(1, 2, 1, 1)
    scaled_z = z * torch.tensor([0.5, 7.0, 2.0])
    assert torch.equal(channel_groups(scaled_z, scaled_maps, (2, 2)), channel_groups(z, maps, (2, 2)))  # §13.11


def test_memory_size_matches_real_stage4_grid():
    enc = MiTEncoder("mit_b0", drop_path=0.0).eval()
    for crop in (32, 64, 96, 100, 127):
        with torch.no_grad():
            c4 = enc(torch.zeros(1, 3, crop, crop))[-1]
        assert c4.shape[-1] == stage4_size(crop) and memory_tokens(crop) == c4.shape[-1] * c4.shape[-2]


def test_memory_size_formula_for_paper_crops():
    for crop, side in ((321, 11), (513, 17), (769, 25), (801, 26), (512, 16)):  # §13.12
        assert memory_tokens(crop) == side ** 2
    assert memory_tokens(513, mode="literal") == 17 ** 2 and memory_tokens(512, mode="literal") == 17 ** 2 != 16 ** 2
    assert memory_tokens(32, input_scale=2.0) == 4


def test_bottleneck_parameter_count():
    m = AllSpark(512, 21, 289, heads=2)  # §13.13: about 4.72 M for C = 512, h = 2
    assert abs(sum(p.numel() for p in m.parameters()) / 1e6 - 4.72) < 0.01
    assert m.attn.q_u.weight.shape == (1024, 512) and m.attn.out_l2u.weight.shape == (512, 1024)  # §13.7


def test_segformer_outputs_and_strict_weights(tmp_path):
    enc = MiTEncoder("mit_b0")
    net = SegFormer(enc, num_classes=5, decoder_dim=16, input_scale=2.0)
    out = net(torch.randn(2, 3, 32, 32))
    assert out["logits"].shape == (2, 5, 16, 16) and out["feat"].shape == (2, 16, 16, 16)
    state = {k: v.clone() + 1 for k, v in enc.mit.state_dict().items()}
    good = tmp_path / "mit_b0.pth"
    torch.save({**state, "head.weight": torch.zeros(1000, 256), "head.bias": torch.zeros(1000)}, good)
    fresh = MiTEncoder("mit_b0")
    load_mit_weights(fresh, good)  # the classifier head is the only tolerated extra key
    assert all(torch.equal(fresh.mit.state_dict()[k], state[k]) for k in state)
    missing = dict(state)
    missing.pop("block4.0.attn.q.weight")
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(WeightsError, match="missing keys.*block4.0.attn.q.weight"):
        load_mit_weights(fresh, tmp_path / "missing.pth")
    torch.save({**state, "decode_head.x": torch.zeros(1)}, tmp_path / "extra.pth")
    with pytest.raises(WeightsError, match="unexpected keys.*decode_head.x"):
        load_mit_weights(fresh, tmp_path / "extra.pth")
    torch.save({**state, "norm4.weight": torch.ones(3)}, tmp_path / "shape.pth")
    with pytest.raises(WeightsError, match="shape mismatch"):
        load_mit_weights(fresh, tmp_path / "shape.pth")
    (tmp_path / "junk.pth").write_text("not a checkpoint")
    with pytest.raises(WeightsError, match="junk.pth"):
        load_mit_weights(fresh, tmp_path / "junk.pth")


def test_allspark_method_step_and_options(digits_root, tmp_path):
    from conftest import tiny_overrides
    from s4kit.config import ConfigError, load_config
    from s4kit.data.loaders import build_train_streams
    from s4kit.methods import build_method

    paper = ["method.framework=allspark", "method.confidence_threshold=0.0", "method.pl_forward=batch",
             "method.warmup_fraction=0.0625", "method.heads=2", "method.attn_drop=0.1",
             "method.eval_source=per_image", "method.unsup_warmup_fraction=0.0", "augment.mix=none",
             "method.layer_scale=none"]
    cfg = load_config("digits/allspark", tiny_overrides(digits_root, tmp_path, iters=16) + paper)
    torch.manual_seed(0)
    method = build_method(cfg)
    assert method.warmup_iters == 1 and method.bottleneck.tokens == 4
    groups = {g["name"]: g for g in method.param_groups()}
    assert any(p is method.bottleneck.map_in.weight for p in groups["decoder"]["params"])
    labeled_it, unlabeled_it = build_train_streams(cfg, 0, need_unlabeled=True)
    labeled, unlabeled = next(labeled_it), next(unlabeled_it)
    for it, use_memory in ((0, 0.0), (1, 1.0)):
        method.iteration = it
        out = method.train_step(labeled, unlabeled)
        assert out["memory"] == use_memory and out["pl_coverage"] == 100.0  # no confidence threshold
        assert torch.isfinite(out["loss_sup"]) and torch.isfinite(out["loss_unsup"])
    assert int(method.bottleneck.attn.memory.ptr.sum()) > 0
    # §13.14: the unlabeled half of the training forward is the weak crop itself (no photometric
    # view, no mixing), and L = 1/2 L_x + 1/2 L_u with L_u the plain CE on the eval-mode argmax
    n_l, size = labeled["image"].shape[0], unlabeled["image"].shape[-2:]
    # logits are resized with align_corners=False (official SemiDecoder.forward), not the ReCo family's True
    up = lambda t, ac=False: F.interpolate(t, size=size, mode="bilinear", align_corners=ac)  # noqa: E731
    pseudo = up(method.pseudo_label_forward(unlabeled["image"])).argmax(1)  # before the step updates BN statistics
    seen, forward = {}, method.student.forward
    method.student.forward = lambda x: seen.update(x=x, out=forward(x)) or seen["out"]
    out = method.train_step(labeled, unlabeled)
    del method.student.forward
    assert torch.equal(seen["x"][n_l:], unlabeled["image"])
    assert torch.allclose(out["loss_unsup"], 0.5 * F.cross_entropy(up(seen["out"]["logits"][n_l:]), pseudo), atol=1e-5)
    logits_l = seen["out"]["logits"][:n_l]
    assert torch.allclose(out["loss_sup"], 0.5 * F.cross_entropy(up(logits_l), labeled["mask"], ignore_index=255),
                          atol=1e-5)
    wrong = 0.5 * F.cross_entropy(up(logits_l, True), labeled["mask"], ignore_index=255)
    assert abs(out["loss_sup"].item() - wrong.item()) > 1e-4  # the check tells the two conventions apart
    pseudo_true = up(method.pseudo_label_forward(unlabeled["image"]), True).argmax(1)
    assert not torch.equal(pseudo_true, up(method.pseudo_label_forward(unlabeled["image"])).argmax(1))
    raw = method.forward_eval(unlabeled["image"])["logits"].float()  # evaluation: the same resize
    assert torch.allclose(method.predict(unlabeled["image"]), up(raw), atol=1e-6)
    assert not torch.allclose(method.predict(unlabeled["image"]), up(raw, True), atol=1e-3)
    cfg2 = load_config("digits/allspark", tiny_overrides(digits_root, tmp_path / "b", iters=16)
                       + ["method.framework=unimatch_allspark", "method.confidence_threshold=0.0",
                          "augment.mix=cutmix", "method.unsup_warmup_fraction=0.5", "method.pl_forward=memory",
                          "method.eval_source=memory"])
    m2 = build_method(cfg2)
    assert m2.unsup_warmup_iters == 8 and m2.bottleneck.infer_source == "memory"
    out = m2.train_step(labeled, unlabeled)  # iteration 0: L_u off, memory still warming up
    assert out["unsup_on"] == 0.0 and float(out["loss_unsup"]) == 0.0 and torch.isfinite(out["loss_sup"])
    m2.iteration = 8
    out = m2.train_step(labeled, unlabeled)
    assert out["unsup_on"] == 1.0 and out["memory"] == 1.0 and float(out["loss_unsup"]) > 0
    with pytest.raises(ConfigError, match="segformer"):
        load_config("digits/allspark", tiny_overrides(digits_root, tmp_path / "c") + ["model.name=deeplabv3plus"])


SYNC_MODES = ("allgather", "local", "rank0_broadcast_literal")


def _memory_worker(rank, world, init_file, out_dir):
    import torch.distributed as tdist

    tdist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        for mode in SYNC_MODES:
            torch.manual_seed(0)  # the same initial memory on both ranks
            attn = ChannelCrossAttention(channels=4, num_classes=2, tokens=3, heads=1, memory_sync=mode)
            if mode == "rank0_broadcast_literal" and rank == 1:
                attn.memory.queue.add_(100.0)  # rank 1's own history is replaced by rank 0's
            g = torch.Generator().manual_seed(10 + rank)
            z_u = torch.randn(1, 3, 4, generator=g) + 10 * rank  # (B_u, N, C): different on each rank
            maps = torch.randn(1, 2, 3, 1, generator=g)
            groups = attn.update_memory(z_u, maps, (3, 1))
            torch.save({"queue": attn.memory.queue, "ptr": attn.memory.ptr, "z": z_u, "groups": groups},
                       f"{out_dir}/{mode}_{rank}.pt")
    finally:
        tdist.destroy_process_group()


@pytest.fixture(scope="module")
def synced_memories(tmp_path_factory):
    import torch.multiprocessing as tmp_mp

    out = tmp_path_factory.mktemp("memsync")
    tmp_mp.spawn(_memory_worker, args=(2, str(out / "init"), str(out)), nprocs=2)  # one spawn for all modes
    return out


@pytest.mark.parametrize("mode", SYNC_MODES)
def test_memory_sync_across_two_gloo_ranks(mode, synced_memories):
    tmp_path = synced_memories
    r0, r1 = (torch.load(tmp_path / f"{mode}_{r}.pt") for r in (0, 1))
    torch.manual_seed(0)
    init = ChannelCrossAttention(channels=4, num_classes=2, tokens=3, heads=1).memory.queue

    def expected(*ranks):  # the initial memory after enqueueing these ranks' channels in order
        mem = SemanticMemory(2, 4, 3)
        mem.queue.copy_(init)
        for r in ranks:
            mem.enqueue(r["z"].transpose(1, 2).reshape(-1, 3), r["groups"].reshape(-1))
        return mem.queue, mem.ptr

    if mode == "allgather":  # identical memories holding both ranks' channels, rank 0's first
        want = {0: expected(r0, r1), 1: expected(r0, r1)}
    else:  # each rank enqueues only its own channels; literal: rank 1 starts from rank 0's memory
        want = {0: expected(r0), 1: expected(r1)}
    for r, got in ((0, r0), (1, r1)):
        assert torch.allclose(got["queue"], want[r][0]) and torch.equal(got["ptr"], want[r][1])
    if mode == "allgather":
        assert torch.equal(r0["queue"], r1["queue"])
