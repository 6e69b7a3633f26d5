"""Data layer: fastMRI-format files → volume index → scarcity subsets → slice dataset."""
