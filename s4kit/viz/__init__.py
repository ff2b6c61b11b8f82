"""Figures: prediction overlays, per-class IoU, t-SNE of representations with prototypes."""
