"""Semantic editing with in-domain inverted codes (paper Sec. 4.3).

Modules (each function is named after what it does; module and function names overlap on purpose, so import
the modules):
  interpolate  linear interpolation between W+ codes
  manipulate   moving codes along a boundary normal, conditional (orthogonalised) normals
  boundaries   boundary files (official pickled .npy read safely, project .npz) and InterFaceGAN training
  style_mix    copying fine layers of style codes into content codes
  diffuse      semantic diffusion: paste a crop, re-invert with a masked objective
  jobs         the editing jobs as library functions (models + arrays in, results + files out)
  cli          the `edit.py` subcommands: flags -> inputs -> one job
"""
