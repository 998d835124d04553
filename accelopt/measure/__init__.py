"""How one number is measured.

- ``timing``: synchronised wall-clock timing, peak memory, paired speedups and their intervals
- ``metrics``: the CLIP score and its loss, PSNR, SSIM, CLIP image similarity, learned metrics
- ``constraints``: the quality bounds a study holds its trials to
- ``pareto``: the one non-dominated filter over (speedup, loss) pairs
- ``environment``: package versions and the device's name, recorded beside every number
- ``load``: whether the machine was busy while the baseline was timed; threads per worker
"""
