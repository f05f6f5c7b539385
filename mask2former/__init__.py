"""Mask2Former (Cheng et al., "Masked-attention Mask Transformer for Universal Image
Segmentation", CVPR 2022): one architecture for panoptic, instance and semantic segmentation."""
