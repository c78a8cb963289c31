"""Building blocks of :class:`csekit.modeling.encoder.Encoder`: poolers, the ST folder format, model
resolution, atomic directory writes and fast inference."""
