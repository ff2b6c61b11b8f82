"""Notebook 05 (AllSpark's channel cross-attention) under papermill with tiny settings."""
import json

from conftest import run_notebook


def test_notebook_05_headless(tmp_path, digits_root):
    nb = run_notebook("05_channel_cross_attention.ipynb", tmp_path, FAST=True, DATA_ROOT=str(digits_root),
                      DEVICE="cpu")
    text = json.dumps(nb)
    for claim in ("notebook labeled branch == s4kit ChannelCrossAttention.labeled_branch",
                  "eval-mode AllSpark == per-image channel self-attention",
                  "notebook CSG == s4kit channel_groups", "notebook FIFO == s4kit SemanticMemory"):
        assert claim in text
