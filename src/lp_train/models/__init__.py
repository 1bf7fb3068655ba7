"""LivePortrait networks: plain nn.Modules (no lightning / hydra / omegaconf imports)."""
