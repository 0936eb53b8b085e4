"""The paper's settings (§5) in one place, so every task, diagnostic and benchmark agrees on them.

Learning rates live with the optimizer registry (``optim/factory.py``).
"""

from __future__ import annotations

# Coordinate MLPs (§5): 5 linear layers × 256 for images and occupancy.
HIDDEN_FEATURES = 256
NUM_LAYERS = 5
SINE_OMEGA = 30.0  # SIREN's ω

# Image fitting (§5.1): batch 512, Gaussian σ = 0.05, 256 × 256 targets.
IMAGE_SIGMA = 0.05
IMAGE_BATCH = 512
IMAGE_SIZE = 256

# Occupancy (§5.2, SAPE's protocol): 1M fresh points per epoch, batch 50k, Gaussian σ = 0.09.
OCCUPANCY_SIGMA = 0.09
OCCUPANCY_BATCH = 50_000
OCCUPANCY_POINTS_PER_EPOCH = 1_000_000
