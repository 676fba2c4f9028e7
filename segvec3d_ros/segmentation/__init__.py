"""Segmenters: turn valid points into per-point instance ids."""
