"""Import checkpoints of official implementations into s4kit run folders.

``s4kit import allspark CKPT --out RUN_DIR`` turns an official AllSpark checkpoint
(``github.com/xmed-lab/AllSpark``, ``train_allspark.py`` saves ``{"model": DDP state_dict,
"optimizer", "epoch", "previous_best"}`` as ``latest.pth`` / ``best.pth``) into a run folder
that ``s4kit eval RUN_DIR`` reads: ``.s4kit-run``, ``config.yaml`` (a preset with the
network's sizes read from the checkpoint) and ``checkpoints/last.pt``
(``{"step", "method"}``, as ``engine.trainer.save_checkpoint`` writes, without optimiser).

Key mapping (official ``ModelBuilder`` = ``backbone`` + ``decoder``, ``model/model_helper.py``;
``SemiDecoder``, ``AllSpark``, ``CrossAttnMem``, ``SegFormerHead`` in
``model/semseg/allspark.py``) to ``AllSparkMethod``'s student (allspark §2):

| official (``module.`` stripped) | s4kit (``student.``) |
|---|---|
| ``backbone.<k>`` (NVlabs MiT names) | ``encoder.mit.<k>`` |
| ``decoder.allspark.map_in.0.*`` / ``map_out.0.*`` | ``bottleneck.map_in.*`` / ``bottleneck.map_out.*`` |
| ``decoder.allspark.attn_norm.*`` / ``encoder_norm.*`` | ``bottleneck.norm_in.*`` / ``bottleneck.norm_out.*`` |
| ``decoder.allspark.attn.{q,k,v}_{u,l2u}.weight``, ``out_l2u.weight`` | ``bottleneck.attn.<same>.weight`` |
| ``decoder.allspark.attn.out_u.weight`` (hC columns, channel-major) | ``bottleneck.attn.out_u.weight`` (head-major: permuted) |
| ``decoder.allspark.attn.kv_queue`` / ``queue_ptr`` | ``bottleneck.attn.memory.queue`` / ``memory.ptr`` |
| ``decoder.decoder.linear_c{i}.proj.*`` (Linear) | ``linear.{i-1}.*`` (1x1 Conv: weight reshaped) |
| ``decoder.decoder.linear_fuse.conv.weight`` / ``linear_fuse.bn.*`` | ``fuse.0.weight`` / ``fuse.1.*`` |
| ``decoder.decoder.linear_pred.*`` | ``classifier.*`` |

Head order: the official unlabeled branch flattens its attention output (B, h, C, N) to
(B, N, C*h) with column c*h + head (channel-major); s4kit's ``unlabeled_branch`` uses column
head*C + c, so s4kit's W_out[:, head*C + c] = official W_out[:, c*h + head]. The labeled
branch is one head of hC channels in both: no permutation.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

from ..config import ConfigError, load_config, to_yaml
from ..io import atomic_path, atomic_write_text
from .trainer import CheckpointError, claim_run_dir, load_method_state

#: official number of classes -> the s4kit preset an import starts from
ALLSPARK_PRESETS = {21: "pascal/allspark", 19: "cityscapes/allspark", 81: "coco/allspark", 11: "digits/allspark"}

_MIT_DEPTHS = {(32, (2, 2, 2, 2)): "mit_b0", (64, (2, 2, 2, 2)): "mit_b1", (64, (3, 4, 6, 3)): "mit_b2",
               (64, (3, 4, 18, 3)): "mit_b3", (64, (3, 8, 27, 3)): "mit_b4", (64, (3, 6, 40, 3)): "mit_b5"}

_ATTN_SAME = ("q_u", "k_u", "v_u", "q_l2u", "k_l2u", "v_l2u", "out_l2u")


def out_u_official_to_s4kit(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """Permute the columns of the unlabeled branch's output projection, (C, hC) -> (C, hC):
    s4kit[:, head*C + c] = official[:, c*heads + head] (see the module docstring)."""
    c = weight.shape[1] // heads
    return weight.view(weight.shape[0], c, heads).transpose(1, 2).reshape(weight.shape[0], heads * c).clone()


def allspark_official_to_s4kit(state: dict[str, torch.Tensor], heads: int) -> dict[str, torch.Tensor]:
    """Map an official AllSpark ``state_dict`` (``module.`` prefix optional) to the keys of
    ``AllSparkMethod.state_dict()`` (``student.`` ...), strictly.

    Args:
        state: name -> tensor in the official layout.
        heads: h of the channel attention (``num_heads``), for the ``out_u`` permutation.

    Returns the s4kit state (new tensors where reshaped or permuted).
    Raises ``CheckpointError`` naming the keys the mapping does not know (one line).
    """
    out, unknown = {}, []
    for key, value in state.items():
        k = key[len("module."):] if key.startswith("module.") else key
        new = None
        if k.startswith("backbone."):
            new = "encoder.mit." + k[len("backbone."):]
        elif k.startswith("decoder.allspark."):
            rest = k[len("decoder.allspark."):]
            for old, mine in (("map_in.0.", "map_in."), ("map_out.0.", "map_out."), ("attn_norm.", "norm_in."),
                              ("encoder_norm.", "norm_out.")):
                if rest.startswith(old) and rest[len(old):] in ("weight", "bias"):
                    new = "bottleneck." + mine + rest[len(old):]
            if rest in {f"attn.{n}.weight" for n in _ATTN_SAME}:
                new = "bottleneck." + rest
            elif rest == "attn.out_u.weight":
                new, value = "bottleneck.attn.out_u.weight", out_u_official_to_s4kit(value, heads)
            elif rest == "attn.kv_queue":
                new = "bottleneck.attn.memory.queue"
            elif rest == "attn.queue_ptr":
                new = "bottleneck.attn.memory.ptr"
        elif k.startswith("decoder.decoder."):
            rest = k[len("decoder.decoder."):]
            m = re.fullmatch(r"linear_c([1-4])\.proj\.(weight|bias)", rest)
            if m:
                new = f"linear.{int(m.group(1)) - 1}.{m.group(2)}"
                if m.group(2) == "weight":
                    value = value[:, :, None, None]
            elif rest == "linear_fuse.conv.weight":
                new = "fuse.0.weight"
            elif rest.startswith("linear_fuse.bn.") and rest[len("linear_fuse.bn."):] in (
                    "weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
                new = "fuse.1." + rest[len("linear_fuse.bn."):]
            elif rest in ("linear_pred.weight", "linear_pred.bias"):
                new = "classifier." + rest.split(".")[1]
        if new is None:
            unknown.append(key)
        else:
            out["student." + new] = value
    if unknown:
        raise CheckpointError(f"official AllSpark checkpoint: unknown keys {unknown[:5]}"
                              f"{f' and {len(unknown) - 5} more' if len(unknown) > 5 else ''}")
    return out


def allspark_sizes(state: dict[str, torch.Tensor]) -> dict:
    """What the official state says about the network: ``encoder`` (mit_b0..b5, from the
    stage-1 width and the block depths), ``decoder_dim``, ``heads``, ``num_classes``,
    ``tokens`` (the memory's N). Raises ``CheckpointError`` naming a missing key or an
    unknown MiT layout."""
    s = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    need = ("backbone.patch_embed1.proj.weight", "decoder.decoder.linear_fuse.conv.weight",
            "decoder.decoder.linear_pred.weight", "decoder.allspark.attn.out_u.weight",
            "decoder.allspark.attn.kv_queue")
    missing = [k for k in need if k not in s]
    if missing:
        raise CheckpointError(f"official AllSpark checkpoint: missing keys {missing}")
    depths = tuple(1 + max([int(m.group(1)) for k in s if (m := re.match(rf"backbone\.block{i}\.(\d+)\.", k))],
                           default=-1) for i in range(1, 5))
    width = int(s["backbone.patch_embed1.proj.weight"].shape[0])
    encoder = _MIT_DEPTHS.get((width, depths))
    if encoder is None:
        raise CheckpointError(f"official AllSpark checkpoint: MiT with stage-1 width {width} and depths {depths} "
                              f"is none of {sorted(set(_MIT_DEPTHS.values()))}")
    out_u = s["decoder.allspark.attn.out_u.weight"]
    return {"encoder": encoder, "decoder_dim": int(s["decoder.decoder.linear_fuse.conv.weight"].shape[0]),
            "heads": int(out_u.shape[1] // out_u.shape[0]),
            "num_classes": int(s["decoder.decoder.linear_pred.weight"].shape[0]),
            "tokens": int(s["decoder.allspark.attn.kv_queue"].shape[-1])}


def _read_official(path: Path) -> tuple[dict, int]:
    """The model state of an official checkpoint (``{"model": ...}`` or a bare state_dict) and its epoch."""
    import pickle

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot read it as a checkpoint of tensors "
                              f"({str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__})")
    state = obj.get("model", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise CheckpointError(f"{path}: expected a state_dict or a dict with 'model' (official train_allspark.py)")
    epoch = obj.get("epoch", 0) if isinstance(obj.get("epoch", 0), int) else 0
    return state, epoch


def import_allspark(ckpt: str | Path, out: str | Path, config: str | None = None,
                    overrides: list[str] | tuple[str, ...] = ()) -> Path:
    """Write an s4kit run folder ``out`` from an official AllSpark checkpoint ``ckpt``.

    Args:
        ckpt: ``latest.pth`` / ``best.pth`` of ``train_allspark.py`` (or a bare state_dict).
        out: the new run folder (must not exist or be empty, or be an s4kit run folder).
        config: the preset or YAML the run starts from; default by the number of classes
            (``ALLSPARK_PRESETS``: 21 pascal, 19 cityscapes, 81 coco, 11 digits).
        overrides: more ``key=value`` config overrides (``data.root=...``, ``data.crop_size=...``).

    The config gets ``model.encoder``, ``model.decoder_dim`` and ``method.heads`` from the
    checkpoint. The memory length N must equal the config's (crop size, ``method.patch_num``):
    ``auto`` is tried, then ``literal`` (the official ``(s//32 + 1)^2``).

    Returns the run folder. Raises ``CheckpointError`` (unreadable file, unknown or missing
    keys, a shape that does not fit) or ``ConfigError`` (no preset for the class count, a
    memory length no crop gives, an occupied ``out``).
    """
    from ..methods import build_method

    ckpt, out = Path(ckpt), Path(out)
    state, epoch = _read_official(ckpt)
    sizes = allspark_sizes(state)
    if config is None:
        config = ALLSPARK_PRESETS.get(sizes["num_classes"])
        if config is None:
            raise ConfigError(f"{ckpt}: {sizes['num_classes']} classes: no AllSpark preset for it; pass --config")
    base = [f"model.encoder={sizes['encoder']}", f"model.decoder_dim={sizes['decoder_dim']}",
            f"method.heads={sizes['heads']}", "method.layer_scale=none",  # the official module has no gamma
            "model.pretrained=none", f"run.dir={out}"]
    method = cfg = None
    for patch in ("auto", "literal"):
        cfg = load_config(config, base + [f"method.patch_num={patch}", *overrides])
        if int(cfg.data.num_classes) != sizes["num_classes"]:
            raise ConfigError(f"{ckpt}: {sizes['num_classes']} classes, but {config} has data.num_classes="
                              f"{cfg.data.num_classes}")
        method = build_method(cfg)
        if method.bottleneck.tokens == sizes["tokens"]:
            break
    else:
        raise ConfigError(f"{ckpt}: its memory holds {sizes['tokens']} stage-4 tokens, data.crop_size="
                          f"{cfg.data.crop_size} gives {method.bottleneck.tokens}: pass the training crop "
                          "(data.crop_size=...)")
    mapped = allspark_official_to_s4kit(state, sizes["heads"])
    own = method.state_dict()
    missing = sorted(set(own) - set(mapped))
    if missing:
        raise CheckpointError(f"{ckpt}: official AllSpark checkpoint lacks keys for {missing[:5]}"
                              f"{f' and {len(missing) - 5} more' if len(missing) > 5 else ''}")
    load_method_state(method, mapped, ckpt)  # strict: names a shape mismatch
    run = claim_run_dir(out)
    atomic_write_text(run / "config.yaml", to_yaml(cfg))
    (run / "checkpoints").mkdir(exist_ok=True)
    with atomic_path(run / "checkpoints" / "last.pt") as tmp:
        torch.save({"step": 0, "method": method.state_dict(), "imported_from": str(ckpt),
                    "official_epoch": epoch}, tmp)
    return run
