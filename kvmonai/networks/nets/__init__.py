"""Segmentation architectures with selectable attention, one per module (imported on demand by the factory).

Constructors: each network's ``__init__`` checks every argument before anything is built (early ``ValueError``s
that name the argument, as MONAI's networks do), then builds the layers in forward order. They are long on purpose:
the checks and the layer shapes they guard read top to bottom, and split helpers would each need most of the
arguments.
"""
