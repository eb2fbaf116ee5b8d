"""The LSTRL network (DESIGN.md section 1).

`resnet` (ResNet-18/34/50/101 backbone, torchvision names), `mae` (multi-granularity appearance extractor),
`bme` (bi-direction motion estimator), `lstrl` (`LSTRL`, `model_from_config`, `trainable_mask`), `macs`
(parameter and MAC counts from the jaxpr), `weights` (ImageNet import from torchvision/timm files).
"""
