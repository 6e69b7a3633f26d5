"""Evaluation: fastMRI-exact reconstruction metrics (NMSE, PSNR, SSIM)."""
