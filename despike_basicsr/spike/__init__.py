"""Spike-camera physics and file formats: optics, the integrate-and-fire simulator, I/O, TFP/TFI and FPN calibration.

numpy (and torch where a function says so) only: nothing here imports basicsr or the training side.
"""
from .camera import firing_rate, sample_fpn, simulate, spike_count_closed_form
from .fpn import FPNCalibration, calibrate_fpn, load_fpn, save_fpn
from .io import (RecordingReader, SpikeFileError, load_spikes, pack_bits_frame, pack_time, read_dat, read_npz,
                 unpack_bits_frame, unpack_time, write_dat, write_npz)
from .optics import (ThinLens, coc_diameter, coc_radius_px, coc_to_sigma, display_to_linear, gaussian_blur,
                     gaussian_kernel, image_distance, linear_to_display, render_depth_defocus)
from .reconstruct import classical_display, rate_to_display, tfi, tfp

__all__ = [
    'FPNCalibration', 'RecordingReader', 'SpikeFileError', 'ThinLens', 'calibrate_fpn', 'classical_display',
    'coc_diameter', 'coc_radius_px', 'coc_to_sigma', 'display_to_linear', 'firing_rate', 'gaussian_blur',
    'gaussian_kernel', 'image_distance', 'linear_to_display', 'load_fpn', 'load_spikes', 'pack_bits_frame', 'pack_time',
    'rate_to_display', 'read_dat', 'read_npz', 'render_depth_defocus', 'sample_fpn', 'save_fpn', 'simulate',
    'spike_count_closed_form', 'tfi', 'tfp', 'unpack_bits_frame', 'unpack_time', 'write_dat', 'write_npz'
]
