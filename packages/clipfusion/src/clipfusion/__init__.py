"""CLIPFusion: CLIP + Stable Diffusion for zero/few-shot anomaly detection."""
