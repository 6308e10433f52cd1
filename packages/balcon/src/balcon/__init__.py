"""balcon: self-supervised contrastive learning as an approximation of supervised
objectives; the balanced contrastive loss and the prototype representation bias."""
