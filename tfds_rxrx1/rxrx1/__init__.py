"""The rxrx1 TFDS dataset folder (builder, card, dummy data)."""
