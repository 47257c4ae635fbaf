class QuantError(ValueError):
    """Input the quantization library cannot take: unknown type, row length a block does not divide."""
