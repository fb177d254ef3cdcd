"""The op library shared by every space: dimension-agnostic layers and blocks."""
from nasseg.ops.blocks import ConvNormAct, Downsample, OutputHead, Resample, StackedConv, Upsample
from nasseg.ops.uxnet_ops import (EXPANSION_OPS, NORMAL_OPS, REDUCTION_OPS, expansion_op,
                                  normal_op, reduction_op)
from nasseg.ops.layers import (avg_pool_type, check_spatial_dims, conv_transpose_type, conv_type,
                               expand_kernel, interp_mode, max_pool_type, norm_type)

__all__ = ["ConvNormAct", "StackedConv", "Downsample", "Upsample", "Resample", "OutputHead",
           "conv_type", "conv_transpose_type", "norm_type", "max_pool_type", "avg_pool_type",
           "check_spatial_dims", "interp_mode", "expand_kernel", "NORMAL_OPS", "REDUCTION_OPS",
           "EXPANSION_OPS", "normal_op", "reduction_op", "expansion_op"]
