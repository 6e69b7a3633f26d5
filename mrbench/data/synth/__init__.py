"""Offline physics-based synthetic brain data (``synth-brain``).

``tissue`` builds tissue-fraction maps (MNI ICBM152 2009a template shipped with
nilearn, or a procedural phantom), ``physics`` holds tissue parameters, pulse
sequences and signal equations, and ``subject`` simulates per-subject complex
images and fully sampled k-space.
"""
