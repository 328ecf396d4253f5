"""kvmonai networks: attention blocks and segmentation architectures."""
