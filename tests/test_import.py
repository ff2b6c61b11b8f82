"""``s4kit import allspark``: an official AllSpark checkpoint (xmed-lab/AllSpark layout, built
here with random weights) becomes a run folder that ``s4kit eval`` reads."""
import torch

from s4kit.cli import main
from s4kit.engine.runs import load_run_step

C, H, K, D, N = 256, 2, 11, 64, 4  # mit_b0 stage-4 width, heads, digits classes, decoder width, 2x2 tokens
WIDTHS = (32, 64, 160, 256)


def official_state(seed=0):
    """An official ``train_allspark.py`` checkpoint's ``model``: DDP ``module.`` prefix,
    ModelBuilder ``backbone`` (NVlabs MiT names) + ``decoder`` (SemiDecoder: ``allspark``,
    ``decoder`` = SegFormerHead with mmcv ConvModule ``linear_fuse.conv`` / ``linear_fuse.bn``)."""
    from segmentation_models_pytorch.encoders.mix_transformer import mix_transformer_encoders

    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s: 0.1 * torch.randn(*s, generator=g)  # noqa: E731
    spec = mix_transformer_encoders["mit_b0"]
    mit = spec["encoder"](**spec["params"])
    state = {f"module.backbone.{k}": rnd(*v.shape) if v.is_floating_point() else v.clone()
             for k, v in mit.state_dict().items()}
    a, d = "module.decoder.allspark.", "module.decoder.decoder."
    for m in ("map_in.0.", "map_out.0."):
        state.update({a + m + "weight": rnd(C, C, 1, 1), a + m + "bias": rnd(C)})
    for m in ("attn_norm.", "encoder_norm."):
        state.update({a + m + "weight": 1 + rnd(C), a + m + "bias": rnd(C)})
    for m in ("q_u", "k_u", "v_u", "q_l2u", "k_l2u", "v_l2u"):
        state[a + f"attn.{m}.weight"] = rnd(H * C, C)
    state.update({a + "attn.out_u.weight": rnd(C, H * C), a + "attn.out_l2u.weight": rnd(C, H * C),
                  a + "attn.kv_queue": torch.randn(K, C, N, generator=g),
                  a + "attn.queue_ptr": torch.randint(0, C, (K,), generator=g)})
    for i, w in enumerate(WIDTHS, 1):
        state.update({d + f"linear_c{i}.proj.weight": rnd(D, w), d + f"linear_c{i}.proj.bias": rnd(D)})
    state.update({d + "linear_fuse.conv.weight": rnd(D, 4 * D, 1, 1), d + "linear_fuse.bn.weight": 1 + rnd(D),
                  d + "linear_fuse.bn.bias": rnd(D), d + "linear_fuse.bn.running_mean": rnd(D),
                  d + "linear_fuse.bn.running_var": 1 + rnd(D).abs(),
                  d + "linear_fuse.bn.num_batches_tracked": torch.tensor(7),
                  d + "linear_pred.weight": rnd(K, D, 1, 1), d + "linear_pred.bias": rnd(K)})
    return state


def official_unlabeled_branch(state, z):
    """The official CrossAttnMem unlabeled branch, written from its code: heads split as
    view(B, N, h, C), attention over channels, IN on each (C x C) logit matrix, output
    flattened from (B, N, C, h), i.e. column c*h + head, then ``out_u``."""
    p = "module.decoder.allspark.attn."
    B = z.shape[0]
    q, k, v = (z @ state[p + f"{n}.weight"].T for n in ("q_u", "k_u", "v_u"))  # (B, N, hC)
    heads = lambda t: t.view(B, N, H, C).permute(0, 2, 1, 3)  # noqa: E731  (B, h, N, C)
    logits = heads(q).transpose(-1, -2) @ heads(k)  # (B, h, C, C)
    logits = torch.nn.functional.instance_norm(logits)
    o = logits.softmax(-1) @ heads(v).transpose(-1, -2)  # (B, h, C, N)
    o = o.permute(0, 3, 2, 1).reshape(B, N, C * H)
    return o @ state[p + "out_u.weight"].T


def test_import_allspark_maps_keys_permutes_heads_and_eval_reads_it(tmp_path, digits_root, capsys):
    state = official_state()
    ckpt = tmp_path / "latest.pth"
    torch.save({"model": state, "epoch": 79, "previous_best": 70.1}, ckpt)
    out = tmp_path / "imported"
    assert main(["import", "allspark", str(ckpt), "--out", str(out), f"data.root={digits_root}"]) == 0
    assert (out / ".s4kit-run").is_file() and (out / "config.yaml").is_file()
    cfg, method, step = load_run_step(out)  # what ``s4kit eval`` loads (strict)
    assert step == 0 and cfg.model.encoder == "mit_b0" and cfg.method.heads == H and cfg.model.decoder_dim == D
    net = method.student
    # the unlabeled branch equals the official one on the same tokens (needs the head-order permutation)
    z = torch.randn(3, N, C)
    with torch.no_grad():
        got = net.bottleneck.attn.unlabeled_branch(z)
        want = official_unlabeled_branch(state, z)
        assert torch.allclose(got, want, atol=1e-4)
        unpermuted = net.bottleneck.attn.out_u.weight.clone()
        net.bottleneck.attn.out_u.weight.copy_(state["module.decoder.allspark.attn.out_u.weight"])
        assert not torch.allclose(net.bottleneck.attn.unlabeled_branch(z), want, atol=1e-2)
        net.bottleneck.attn.out_u.weight.copy_(unpermuted)
    # every other tensor lands unchanged (linear layers as 1x1 convolutions)
    d = "module.decoder.decoder."
    assert torch.equal(net.linear[2].weight[:, :, 0, 0], state[d + "linear_c3.proj.weight"])
    assert torch.equal(net.fuse[1].running_var, state[d + "linear_fuse.bn.running_var"])
    assert torch.equal(net.classifier.bias, state[d + "linear_pred.bias"])
    assert torch.equal(net.bottleneck.attn.memory.queue, state["module.decoder.allspark.attn.kv_queue"])
    assert torch.equal(net.bottleneck.norm_out.weight, state["module.decoder.allspark.encoder_norm.weight"])
    assert torch.equal(net.encoder.mit.block4[1].mlp.fc2.weight, state["module.backbone.block4.1.mlp.fc2.weight"])
    assert main(["eval", str(out)]) == 0  # the s4kit command reads the folder end to end
    capsys.readouterr()


def test_import_allspark_refuses_unknown_and_missing_keys_in_one_line(tmp_path, digits_root, capsys):
    state = official_state()
    extra = dict(state, **{"module.decoder.allspark.attn.temperature": torch.ones(1)})
    torch.save({"model": extra}, tmp_path / "extra.pth")
    assert main(["import", "allspark", str(tmp_path / "extra.pth"), "--out", str(tmp_path / "a"),
                 f"data.root={digits_root}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown keys ['module.decoder.allspark.attn.temperature']" in err
    lacking = {k: v for k, v in state.items() if k != "module.decoder.decoder.linear_c2.proj.bias"}
    torch.save(lacking, tmp_path / "lacking.pth")  # a bare state_dict is accepted too
    assert main(["import", "allspark", str(tmp_path / "lacking.pth"), "--out", str(tmp_path / "b"),
                 f"data.root={digits_root}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "student.linear.1.bias" in err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()  # nothing written on refusal
