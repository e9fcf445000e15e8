"""What a training step holds in memory and computes, counted without running it on a GPU.

    memory = LiveMemory()
    with memory:                          # every tensor a torch op makes is counted until it is freed
        ...
    memory.peak, memory.at_peak           # bytes, and the bytes of each role at that moment

`LiveMemory` counts the storage of every tensor alive, once per storage (views share it), by role
(weights, gradients, optimizer state, the rest: activations and temporaries). It counts what the
program asks for, as an allocator that rounds nothing and caches nothing would hold it; the same
counter runs on real tensors and on fake ones (`fake_modules`: shapes and dtypes only, no memory),
which is how the two are compared. `cuda_fp32_ops` gives CPU autocast CUDA's rules for the ops CUDA
keeps in fp32, so that a step on the CPU holds the dtypes it would hold on a GPU.
`FlopCount` counts FLOPs by torch's formulas.
"""
from __future__ import annotations

import collections
import contextlib
import warnings
import weakref

import torch
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

ACTIVATIONS = "activations"  # every storage not given another role: inputs, saved activations, temporaries


class LiveMemory(TorchDispatchMode):
    """Bytes of the tensor storages alive now, by role, and their peak over the time it was entered."""

    def __init__(self):
        super().__init__()
        self.role: dict[int, str] = {}   # id of a live storage -> its role
        self.size: dict[int, int] = {}   # id of a live storage -> its bytes
        self.now = collections.Counter()  # role -> bytes alive
        self.total = self.peak = 0
        self.at_peak: dict[str, int] = {}
        self.counting = True
        self.phase = self.peak_phase = ""  # what the program does now (the caller says so), and at the peak
        self.phase_peaks: dict[str, int] = {}  # the peak of each phase ("backward": while autograd runs)

    def assign(self, tensors, role: str) -> None:
        """Count these tensors' storages under `role` (storages seen before move to it)."""
        for tensor in tensors:
            storage = tensor.untyped_storage()
            key = id(storage)  # a live storage keeps its Python object, so its id is stable while alive
            if key in self.role:
                self.now[self.role[key]] -= self.size[key]
                self.total -= self.size[key]
            else:
                self.size[key] = storage.nbytes()
                weakref.finalize(storage, self._free, key)
            self.role[key] = role
            self.now[role] += self.size[key]
            self.total += self.size[key]
        self._note_peak()

    @contextlib.contextmanager
    def paused(self):
        """Tensors made meanwhile are not counted (what a real run keeps off the GPU, such as a file read
        into CPU memory)."""
        self.counting = False
        try:
            yield
        finally:
            self.counting = True

    def reset_peak(self) -> None:
        self.peak, self.at_peak, self.peak_phase, self.phase_peaks = self.total, dict(self.now), self.phase, {}

    def _free(self, key: int) -> None:
        self.now[self.role.pop(key)] -= self.size[key]
        self.total -= self.size.pop(key)

    def _note_peak(self) -> None:
        phase = "backward" if torch._C._current_autograd_node() is not None else self.phase
        self.phase_peaks[phase] = max(self.phase_peaks.get(phase, 0), self.total)
        if self.total > self.peak:
            self.peak, self.at_peak, self.peak_phase = self.total, dict(self.now), phase

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not self.counting:
            return out
        new = [t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor)
               and id(t.untyped_storage()) not in self.role and t.untyped_storage().nbytes() > 0]
        if new:
            self.assign(new, ACTIVATIONS)
        return out


class NoValues(TorchDispatchMode):
    """A number read out of a tensor that has none (meta, fake: `.item()`) is 1. Counting needs no values: the
    few that code reads here (a LoRA's alpha, AdamW's step count) scale numbers and shape nothing."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default and (args[0].is_meta or isinstance(args[0], FakeTensor)):
            return 1 if not args[0].is_floating_point() else 1.0
        return func(*args, **(kwargs or {}))


def fake_modules(modules, mode: FakeTensorMode) -> None:
    """Turn every parameter and buffer of `modules` (built on the meta device) into a fake CPU tensor in
    place: the same Python objects (optimizers and parameter lists that hold them stay valid), the same
    storage (so a LiveMemory keeps counting it), and now able to run autograd and autocast."""
    done = set()
    for module in modules:
        for tensor in [*module.parameters(), *module.buffers()]:
            if id(tensor) in done or isinstance(tensor, FakeTensor):
                continue
            fake = FakeTensor(mode, tensor.detach(), torch.device("cpu"))
            fake.requires_grad_(tensor.requires_grad)
            if isinstance(tensor, torch.nn.Parameter):
                fake._is_param = True
            torch.utils.swap_tensors(tensor, fake)
            done.add(id(tensor))


# CUDA's autocast runs these in fp32 whatever its input dtype (PyTorch's aten/src/ATen/autocast_mode.h, the
# fp32 lists); CPU autocast leaves most of them in the input's dtype. Norms and upsampling are the ones a
# UNet calls on bf16 activations.
CUDA_FP32_OPS = """acos asin cosh erfinv exp expm1 log log10 log2 log1p reciprocal rsqrt sinh tan pow.Tensor_Scalar
pow.Tensor_Tensor pow.Scalar softplus layer_norm native_layer_norm group_norm frobenius_norm.dim nuclear_norm
nuclear_norm.dim cosine_similarity poisson_nll_loss cosine_embedding_loss nll_loss nll_loss2d hinge_embedding_loss
kl_div l1_loss smooth_l1_loss huber_loss mse_loss margin_ranking_loss multilabel_margin_loss soft_margin_loss
triplet_margin_loss multi_margin_loss binary_cross_entropy_with_logits dist pdist cdist renorm logsumexp
upsample_nearest1d upsample_nearest1d.vec _upsample_nearest_exact1d _upsample_nearest_exact1d.vec
upsample_nearest2d upsample_nearest2d.vec _upsample_nearest_exact2d _upsample_nearest_exact2d.vec
upsample_nearest3d upsample_nearest3d.vec _upsample_nearest_exact3d _upsample_nearest_exact3d.vec
upsample_linear1d upsample_linear1d.vec upsample_bilinear2d upsample_bilinear2d.vec _upsample_bilinear2d_aa
_upsample_bilinear2d_aa.vec upsample_trilinear3d upsample_trilinear3d.vec upsample_bicubic2d upsample_bicubic2d.vec
_upsample_bicubic2d_aa _upsample_bicubic2d_aa.vec prod prod.dim_int softmax.int log_softmax.int cumprod cumsum
sum sum.dim_IntList""".split()
# (the last line, CUDA's "fp32, or the dtype asked for" ops, compute in fp32 from the input without a copy of it;
# here the input is copied to fp32 first. None of them sees a bf16 input in these training steps.)
LOW_PRECISION = (torch.bfloat16, torch.float16)


def _fp32_kernel(op):
    def kernel(*args, **kwargs):
        args, kwargs = pytree.tree_map_only(
            torch.Tensor, lambda t: t.float() if t.dtype in LOW_PRECISION else t, (args, kwargs))
        with torch._C._ExcludeDispatchKeyGuard(torch._C.DispatchKeySet(torch._C.DispatchKey.AutocastCPU)):
            return op(*args, **kwargs)
    return kernel


@contextlib.contextmanager
def cuda_fp32_ops():
    """While it lasts, CPU autocast keeps CUDA's fp32 ops in fp32 (matmuls, convolutions and attention already
    run in the autocast dtype on both), so that a step counted on the CPU holds the dtypes a GPU's holds. It
    must span backward too: gradient checkpointing recomputes the forward there, under the same autocast."""
    library = torch.library.Library("aten", "IMPL")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a few of these already have a CPU autocast kernel: the same rule
        for name in CUDA_FP32_OPS:
            packet, _, overload = name.partition(".")
            op = getattr(getattr(torch.ops.aten, packet), overload or "default")
            library.impl(name, _fp32_kernel(op), "AutocastCPU")
    try:
        yield
    finally:
        library._destroy()


class FlopCount(TorchDispatchMode):
    """FLOPs (a multiply-add is 2) of the matmuls, convolutions and attention run meanwhile, forward and
    backward, by torch's formulas (torch.utils.flop_counter), with the CPU's fused attention kernel counted
    as CUDA's. Not FlopCounterMode itself: its per-module tracking keeps every activation alive until it
    exits, which would distort the memory count."""

    def __init__(self):
        super().__init__()
        aten = torch.ops.aten
        self.formulas = FlopCounterMode(custom_mapping={
            aten._scaled_dot_product_flash_attention_for_cpu: _attention_flops,
            aten._scaled_dot_product_flash_attention_for_cpu_backward: _attention_backward_flops}).flop_registry
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = self.formulas.get(func._overloadpacket)
        if formula is not None:
            self.total += formula(*args, **kwargs, out_val=out)
        return out


def _attention_flops(query, key, value, *args, **kwargs) -> int:  # the arguments' shapes
    return sdpa_flop_count(query, key, value)


def _attention_backward_flops(grad_out, query, key, value, *args, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out, query, key, value)
