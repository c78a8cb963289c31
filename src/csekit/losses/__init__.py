"""Pure loss functions of embeddings: no state, no distributed calls.

All logits are computed in float32 (float64 inputs stay float64), whatever the input precision.
"""

from csekit.losses.cosine import cosine_matrix
from csekit.losses.focal_info_nce import focal_info_nce
from csekit.losses.info_nce import info_nce
from csekit.losses.margin import bidirectional_margin_loss

__all__ = ["bidirectional_margin_loss", "cosine_matrix", "focal_info_nce", "info_nce"]
