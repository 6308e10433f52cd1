"""Self-supervised contrastive learning as an approximation of supervised objectives; balanced contrastive loss."""
