"""Segmentation architectures with selectable attention, one per module (imported on demand by the factory)."""
