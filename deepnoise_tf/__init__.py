"""DeepNoise for TensorFlow 2 / Keras 3 (Yang et al., Genomics Proteomics Bioinformatics 2023)."""

__version__ = "0.1.0"
