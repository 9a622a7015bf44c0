"""Memory layout of the model's variables on the torch backend."""

from keras_hyperiqa import compat


def use_torch_kernel_layout(variables):
    """torch only: keep every 4-D variable in torch's (out, in, h, w) memory order.

    Keras stores convolution kernels as (h, w, in, out) and its torch backend
    permutes them to torch's (out, in, h, w) at every call; on a row-major
    tensor that permute is a copy before each forward and backward
    convolution, and autograd then returns the kernel gradient in
    (out, in, h, w) order, so the optimizer's elementwise updates mix memory
    orders (several times slower on the CPU). Storing the kernel, and its
    Adam slots, in (out, in, h, w) order makes the permute a free view and
    every update same-strided. Shapes and values are unchanged: this is a
    memory layout, changed in place (``compat.set_torch_memory_layout``:
    existing references stay valid, ``assign`` keeps it). Idempotent.
    """
    for variable in variables:
        value = variable.value
        if value.ndim != 4 or value.permute(3, 2, 0, 1).is_contiguous():
            continue
        compat.set_torch_memory_layout(
            variable, value.detach().permute(3, 2, 0, 1).contiguous().permute(2, 3, 1, 0))
