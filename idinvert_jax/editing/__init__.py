"""Semantic editing with in-domain inverted codes: interpolation, manipulation, style mixing, diffusion."""
from idinvert_jax.editing.boundaries import Boundary, load_boundary, save_boundary, train_boundary
from idinvert_jax.editing.interpolate import interpolate, interpolate_all_pairs
from idinvert_jax.editing.manipulate import conditional_direction, edit_distances, layerwise_direction, manipulate
from idinvert_jax.editing.style_mix import default_mix_layer_start, mix_styles
