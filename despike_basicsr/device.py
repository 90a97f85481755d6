"""Device helpers shared by the benchmarks and GPU checks."""
from typing import Union

import torch


def synchronize(device: Union[str, torch.device]) -> None:
    """Wait for the device's queued work (CUDA kernels run asynchronously); a no-op on the CPU. Time measurements
    call it before reading the clock."""
    device = torch.device(device)
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
